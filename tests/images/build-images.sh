#!/usr/bin/env bash
# Build the real images the integration tests and the benchmark read, with the real tools
# (dpkg, debootstrap, umoci, skopeo, buildah, GNU tar). Idempotent: an artefact already in OUTDIR
# is kept; each one is built in OUTDIR/.work and moved into place only when complete. A different
# version of this script starts OUTDIR over.
#
#   tests/images/build-images.sh OUTDIR [busybox|debian|all]     (default: all; run as root)
#
# What it makes (TAG after the colon; see OUTDIR/images.txt once done):
#   rootfs/busybox/                      busybox-static + /etc basics + the test extras below
#   tarballs/busybox.tar{,.gz,.xz,.bz2,.zst}   that rootfs as a plain tarball in each compression
#   oci/busybox:multi                    umoci, 3 layers: whiteouts of files and a whole directory,
#                                        dir replaced by a file and back, hard links across layers,
#                                        a setuid binary changed
#   archives/busybox-docker.tar          skopeo docker-archive of oci/busybox:multi (busybox-multi:latest)
#   archives/busybox-oci.tar:multi       skopeo oci-archive of the same image
#   oci/busybox-zstd:multi               skopeo copy of oci/busybox:multi with zstd layers
#   oci/busybox-buildah:buildah          buildah (vfs): 3 commits of the same changes, buildah push
#                                        (buildah's diff breaks hard links across layers)
#   oci/busybox-buildah:buildah-raw      the same last commit written by buildah commit with
#                                        uncompressed layers
#   oci/busybox-multiarch:multiarch      index.json -> nested index -> amd64 + arm64 manifests
#                                        (per-arch top layer writes /etc/vb-arch)
#   oci/busybox-opaque:opaque            oci/busybox:multi + a GNU-tar layer with .wh..wh..opq markers,
#                                        a plain whiteout and a hard link to a lower layer's file
#   rootfs/debian/                       debootstrap --variant=minbase bookworm, apt caches removed
#   oci/debian:multi                     umoci, 3 layers, the same kinds of changes on Debian
set -euo pipefail

usage() { sed -n '2,8p' "${BASH_SOURCE[0]}" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
case ${2:-all} in busybox|debian|all) ;; *) usage ;; esac
[[ $(id -u) -eq 0 ]] || { echo "build-images.sh: run as root (owners, setuid, capabilities, debootstrap)" >&2; exit 2; }

OUT=$(mkdir -p "$1" && cd "$1" && pwd)
WHAT=${2:-all}
WORK=$OUT/.work
export LC_ALL=C TZ=UTC

log() { printf 'build-images: %s\n' "$*" >&2; }
have() { [[ -e $OUT/$1 ]] && { log "have $1"; return 0; } || return 1; }
fresh_work() { rm -rf "${WORK:?}/${1:?}"; mkdir -p "$WORK/$1"; printf '%s' "$WORK/$1"; }
publish() {  # publish TMP RELATIVE-NAME: move a finished artefact into place
  mkdir -p "$(dirname "$OUT/$2")"
  mv -T "$1" "$OUT/$2"
  log "made $2"
}

# Several targets (or a benchmark) may ask at once: one builds, the others wait and then skip.
exec 9>"$OUT/.lock"
flock 9

# Artefacts made by another version of this script may lack what the tests now look for: start over.
script_version=$(sha256sum < "${BASH_SOURCE[0]}" | cut -c1-64)
if [[ $(cat "$OUT/.script-version" 2>/dev/null || true) != "$script_version" ]]; then
  if [[ -n $(find "$OUT" -mindepth 1 -maxdepth 1 ! -name .lock -print -quit) ]]; then
    log "$OUT was built by another version of this script: rebuilding everything"
  fi
  rm -rf "${OUT:?}"/{rootfs,tarballs,oci,archives,.work,images.txt}
  printf '%s\n' "$script_version" > "$OUT/.script-version"
fi

debian_mirror() {
  local uri
  uri=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | tr ' ' '\n' | grep -v security | head -n1 || true)
  if [[ -z $uri ]]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
          /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  fi
  printf '%s' "${uri:-http://deb.debian.org/debian}"
}

# ---------------------------------------------------------------------------------------------
# Test content shared by every image: each line names what a test later asserts on.

# A regular file with a setuid bit, in a hard-link group, with a v2 file capability,
# with a user xattr, numeric owners unknown to /etc/passwd, a fifo, absolute and relative symlinks,
# and directories that later layers delete, replace or make opaque.
add_extras() {
  local root=$1
  mkdir -p "$root"/{etc,opt,srv,tmp,var/lib,usr/local/bin,usr/local/share}
  chmod 1777 "$root/tmp"
  echo "motd from layer 1" > "$root/etc/vb-motd"
  mkdir -p "$root/opt/olddir/sub"
  echo a > "$root/opt/olddir/a"; echo b > "$root/opt/olddir/b"; echo c > "$root/opt/olddir/sub/c"
  mkdir -p "$root/srv/data"; echo x > "$root/srv/data/x"; echo y > "$root/srv/data/y"
  echo "a file, a directory in layer 3" > "$root/srv/file-to-dir"
  mkdir -p "$root/var/lib/app"
  for name in one two three; do echo "$name" > "$root/var/lib/app/$name"; done
  mkdir -p "$root/opt/keep/sub"
  echo old1 > "$root/opt/keep/old1"; echo old2 > "$root/opt/keep/old2"; echo old3 > "$root/opt/keep/sub/old3"

  printf '#!/bin/sh\necho suid-tool v1\n' > "$root/usr/local/bin/suid-tool"
  chown 0:0 "$root/usr/local/bin/suid-tool"
  chmod 4755 "$root/usr/local/bin/suid-tool"
  ln "$root/usr/local/bin/suid-tool" "$root/usr/local/bin/suid-tool-link"

  printf '#!/bin/sh\nexec ping "$@"\n' > "$root/usr/local/bin/cap-tool"
  chmod 0755 "$root/usr/local/bin/cap-tool"
  set_capability "$root/usr/local/bin/cap-tool"

  mkdir -p "$root/usr/local/share/hl"
  echo "hard-linked content" > "$root/usr/local/share/hl/a"
  ln "$root/usr/local/share/hl/a" "$root/usr/local/share/hl/b"

  echo "owned by 1000" > "$root/usr/local/share/owned-1000"
  chown 1000:1000 "$root/usr/local/share/owned-1000"
  echo "owned by ids nobody has" > "$root/usr/local/share/owned-numeric"
  chown 12345:54321 "$root/usr/local/share/owned-numeric"
  echo "has a user xattr" > "$root/usr/local/share/xattr-file"
  setfattr -n user.vb.test -v hello "$root/usr/local/share/xattr-file"
  mkdir -p "$root/usr/local/share/sgid-dir"
  chown 0:50 "$root/usr/local/share/sgid-dir"
  chmod 2775 "$root/usr/local/share/sgid-dir"
  mkfifo -m 0640 "$root/var/lib/vb-fifo"
  ln -s /usr/local/bin/suid-tool "$root/usr/local/bin/abs-link"
  ln -s ../share/hl/a "$root/usr/local/bin/rel-link"
}

# cap_net_raw+ep. setcap writes a v2 blob here (as root, no namespaced root uid); without libcap2-bin
# write the same bytes: magic 0x02000000|EFFECTIVE, permitted {CAP_NET_RAW=13 -> 0x2000}, inheritable 0.
set_capability() {
  if command -v setcap >/dev/null 2>&1; then
    setcap cap_net_raw+ep "$1"
  else
    setfattr -n security.capability -v 0x0100000200200000000000000000000000000000 "$1"
  fi
}

# Layer 2: delete a file, delete a whole directory, replace a directory with a file,
# add a hard link to a file from layer 1, add a file.
mutate_layer2() {
  local root=$1
  rm "$root/etc/vb-motd"
  rm -rf "$root/opt/olddir"
  rm -rf "$root/srv/data"
  echo "srv/data is a file since layer 2" > "$root/srv/data"
  ln "$root/usr/local/share/hl/a" "$root/usr/local/share/hl/c"
  echo "added in layer 2" > "$root/usr/local/share/l2-added"
}

# Layer 3: change the setuid binary (content, mode, group) through its hard-link group, delete one
# name of a hard-link group, replace a file with a directory, delete and recreate a directory.
mutate_layer3() {
  local root=$1
  printf '#!/bin/sh\necho suid-tool v2\n' > "$root/usr/local/bin/suid-tool"
  chown 0:12 "$root/usr/local/bin/suid-tool"
  chmod 4750 "$root/usr/local/bin/suid-tool"
  rm "$root/usr/local/share/hl/b"
  rm "$root/srv/file-to-dir"
  mkdir "$root/srv/file-to-dir"
  echo "inside the new directory" > "$root/srv/file-to-dir/inside"
  rm -rf "$root/var/lib/app"
  mkdir "$root/var/lib/app"
  echo "fresh in layer 3" > "$root/var/lib/app/fresh"
  printf '#!/bin/sh\nexec nc "$@"\n' > "$root/usr/local/bin/cap-tool2"
  chmod 0755 "$root/usr/local/bin/cap-tool2"
  if command -v setcap >/dev/null 2>&1; then
    setcap cap_net_bind_service+ep "$root/usr/local/bin/cap-tool2"
  else
    setfattr -n security.capability -v 0x0100000200040000000000000000000000000000 "$root/usr/local/bin/cap-tool2"
  fi
}

# umoci: layer 1 from a directory, then layers 2 and 3 with the mutations above (plus optional
# per-distribution ones). umoci records changes with go-mtree and writes .wh. whiteouts.
umoci_three_layers() {  # LAYOUT TAG SOURCE-ROOTFS [extra-layer2-fn] [extra-layer3-fn]
  local layout=$1 tag=$2 src=$3 extra2=${4:-} extra3=${5:-} bundle
  bundle=$(fresh_work "bundle-$tag-$(basename "$layout")")
  rmdir "$bundle"
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  umoci unpack --image "$layout:$tag" "$bundle"
  cp -a "$src/." "$bundle/rootfs/"
  umoci repack --refresh-bundle --history.created_by "layer 1: $(basename "$src") rootfs" --image "$layout:$tag" "$bundle"
  mutate_layer2 "$bundle/rootfs"
  [[ -z $extra2 ]] || "$extra2" "$bundle/rootfs"
  umoci repack --refresh-bundle --history.created_by "layer 2: whiteouts, dir->file, cross-layer hard link" \
    --image "$layout:$tag" "$bundle"
  mutate_layer3 "$bundle/rootfs"
  [[ -z $extra3 ]] || "$extra3" "$bundle/rootfs"
  umoci repack --history.created_by "layer 3: setuid change, file->dir, recreated dir" --image "$layout:$tag" "$bundle"
  umoci config --image "$layout:$tag" --config.cmd /bin/sh --history.created_by 'config: cmd'
  umoci gc --layout "$layout"
  rm -rf "$bundle"
}

manifest_digest() {  # LAYOUT TAG
  python3 - "$1" "$2" <<'EOF'
import json, sys
index = json.load(open(sys.argv[1] + '/index.json'))
for entry in index['manifests']:
    if entry.get('annotations', {}).get('org.opencontainers.image.ref.name') == sys.argv[2]:
        print(entry['digest'])
        break
else:
    sys.exit('no tag %s in %s' % (sys.argv[2], sys.argv[1]))
EOF
}

# ---------------------------------------------------------------------------------------------
# busybox

build_busybox_rootfs() {
  have rootfs/busybox && return
  local work deb root debs
  work=$(fresh_work busybox-rootfs)
  # The package apt already holds (installing busybox-static leaves it there), else download it.
  debs=(/var/cache/apt/archives/busybox-static_*.deb)
  deb=${debs[-1]}
  if [[ ! -f $deb ]]; then
    (cd "$work" && apt-get download -q busybox-static >&2)
    debs=("$work"/busybox-static_*.deb)
    deb=${debs[0]}
  fi
  log "busybox from $deb"
  root=$work/rootfs
  mkdir -p "$root"
  dpkg -x "$deb" "$root"
  chmod 0755 "$root"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,proc,sys,dev,run,var/log,home}
  chmod 0700 "$root/root"
  # Applet links as busybox names them (bin/sh, usr/bin/awk, ...), relative to the rootfs.
  "$root/bin/busybox" --list-full | while read -r applet; do
    [[ -e $root/$applet || -L $root/$applet ]] && continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -s /bin/busybox "$root/$applet"
  done
  cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
  cat > "$root/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
kmem:x:12:
staff:x:50:
nogroup:x:65534:
EOF
  printf 'root:*:19500:0:99999:7:::\ndaemon:*:19500:0:99999:7:::\nnobody:*:19500:0:99999:7:::\n' > "$root/etc/shadow"
  chmod 0640 "$root/etc/shadow"
  chown 0:42 "$root/etc/shadow"
  cat > "$root/etc/os-release" <<'EOF'
NAME="BusyBox"
ID=busybox
VERSION_ID=1.35.0
PRETTY_NAME="BusyBox test rootfs (virt.bootstrap)"
EOF
  printf '# <fs> <mountpoint> <type> <opts> <dump> <pass>\n/dev/sda / ext4 defaults 0 1\n' > "$root/etc/fstab"
  echo busybox > "$root/etc/hostname"
  mknod -m 0666 "$root/dev/null" c 1 3
  add_extras "$root"
  publish "$root" rootfs/busybox
  rm -rf "$work"
}

build_busybox_tarballs() {
  local name missing=0
  for name in busybox.tar busybox.tar.gz busybox.tar.xz busybox.tar.bz2 busybox.tar.zst; do
    [[ -e $OUT/tarballs/$name ]] || missing=1
  done
  if [[ $missing -eq 0 ]]; then log "have tarballs/busybox.tar*"; return; fi
  local work
  work=$(fresh_work tarballs)
  tar -C "$OUT/rootfs/busybox" --format=pax --numeric-owner --xattrs --xattrs-include='*' --acls \
    -cf "$work/busybox.tar" .
  gzip -9 -n -c "$work/busybox.tar" > "$work/busybox.tar.gz"
  xz -T1 -c "$work/busybox.tar" > "$work/busybox.tar.xz"
  bzip2 -c "$work/busybox.tar" > "$work/busybox.tar.bz2"
  zstd -q -19 -c "$work/busybox.tar" > "$work/busybox.tar.zst"
  mkdir -p "$OUT/tarballs"
  for name in busybox.tar busybox.tar.gz busybox.tar.xz busybox.tar.bz2 busybox.tar.zst; do
    [[ -e $OUT/tarballs/$name ]] || publish "$work/$name" "tarballs/$name"
  done
  rm -rf "$work"
}

build_busybox_oci() {
  have oci/busybox && return
  local work
  work=$(fresh_work busybox-oci)
  umoci_three_layers "$work/layout" multi "$OUT/rootfs/busybox"
  publish "$work/layout" oci/busybox
  rm -rf "$work"
}

build_busybox_archives() {
  local work
  if ! have archives/busybox-docker.tar; then
    work=$(fresh_work busybox-docker)
    skopeo copy -q "oci:$OUT/oci/busybox:multi" "docker-archive:$work/busybox-docker.tar:busybox-multi:latest"
    publish "$work/busybox-docker.tar" archives/busybox-docker.tar
    rm -rf "$work"
  fi
  if ! have archives/busybox-oci.tar; then
    work=$(fresh_work busybox-oci-archive)
    skopeo copy -q "oci:$OUT/oci/busybox:multi" "oci-archive:$work/busybox-oci.tar:multi"
    publish "$work/busybox-oci.tar" archives/busybox-oci.tar
    rm -rf "$work"
  fi
}

build_busybox_zstd() {
  have oci/busybox-zstd && return
  local work
  work=$(fresh_work busybox-zstd)
  skopeo copy -q --dest-compress-format zstd "oci:$OUT/oci/busybox:multi" "oci:$work/layout:multi"
  if ! grep -q 'tar+zstd' "$work"/layout/blobs/sha256/* 2>/dev/null; then
    log "skopeo did not write zstd layers"; exit 1
  fi
  publish "$work/layout" oci/busybox-zstd
  rm -rf "$work"
}

build_busybox_buildah() {
  have oci/busybox-buildah && return
  local work ctr mnt
  work=$(fresh_work busybox-buildah)
  local bah=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
  ctr=$("${bah[@]}" from scratch)
  mnt=$("${bah[@]}" mount "$ctr")
  cp -a "$OUT/rootfs/busybox/." "$mnt/"
  "${bah[@]}" config --arch amd64 --os linux --cmd /bin/sh "$ctr"
  "${bah[@]}" commit -q --format oci "$ctr" vb-busybox:l1 >/dev/null
  "${bah[@]}" rm "$ctr" >/dev/null
  ctr=$("${bah[@]}" from --pull-never vb-busybox:l1)
  mnt=$("${bah[@]}" mount "$ctr")
  mutate_layer2 "$mnt"
  "${bah[@]}" commit -q --format oci "$ctr" vb-busybox:l2 >/dev/null
  "${bah[@]}" rm "$ctr" >/dev/null
  ctr=$("${bah[@]}" from --pull-never vb-busybox:l2)
  mnt=$("${bah[@]}" mount "$ctr")
  mutate_layer3 "$mnt"
  "${bah[@]}" commit -q --format oci "$ctr" vb-busybox:l3 >/dev/null
  "${bah[@]}" push -q vb-busybox:l3 "oci:$work/layout:buildah"
  # The same image with uncompressed layers (application/vnd.oci.image.layer.v1.tar), which only a
  # commit straight to an oci: destination writes (buildah push ignores --disable-compression).
  "${bah[@]}" commit -q --format oci "$ctr" "oci:$work/layout:buildah-raw" >/dev/null
  "${bah[@]}" rm "$ctr" >/dev/null
  "${bah[@]}" rmi -a -f >/dev/null || true
  publish "$work/layout" oci/busybox-buildah
  rm -rf "$work"
}

# Two manifests sharing the layers of oci/busybox:multi, each with its own top layer (/etc/vb-arch)
# and config (architecture amd64 or arm64), under one nested index tagged "multiarch".
build_busybox_multiarch() {
  have oci/busybox-multiarch && return
  local work arch
  work=$(fresh_work busybox-multiarch)
  cp -a "$OUT/oci/busybox" "$work/layout"
  for arch in amd64 arm64; do
    mkdir -p "$work/layer-$arch/etc"
    echo "$arch" > "$work/layer-$arch/etc/vb-arch"
    tar -C "$work/layer-$arch" --format=pax --numeric-owner --owner=0 --group=0 -cf "$work/layer-$arch.tar" etc/vb-arch
    umoci raw add-layer --history.created_by "layer 4: /etc/vb-arch for $arch" \
      --image "$work/layout:multi" --tag "tmp-$arch" "$work/layer-$arch.tar"
    umoci config --image "$work/layout:tmp-$arch" --tag "$arch" --architecture "$arch" --os linux --no-history
  done
  python3 - "$work/layout" <<'EOF'
import hashlib, json, os, sys
layout = sys.argv[1]
index_path = os.path.join(layout, 'index.json')
index = json.load(open(index_path))
by_tag = {m.get('annotations', {}).get('org.opencontainers.image.ref.name'): m for m in index['manifests']}
children = []
for arch in ('amd64', 'arm64'):
    entry = dict(by_tag[arch])
    entry.pop('annotations', None)
    entry['platform'] = {'architecture': arch, 'os': 'linux'}
    if arch == 'arm64':
        entry['platform']['variant'] = 'v8'
    children.append(entry)
nested = json.dumps({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json',
                     'manifests': children}, sort_keys=True).encode()
digest = hashlib.sha256(nested).hexdigest()
with open(os.path.join(layout, 'blobs', 'sha256', digest), 'wb') as f:
    f.write(nested)
index['manifests'] = [{'mediaType': 'application/vnd.oci.image.index.v1+json', 'digest': 'sha256:' + digest,
                       'size': len(nested),
                       'annotations': {'org.opencontainers.image.ref.name': 'multiarch'}}]
with open(index_path + '.new', 'w') as f:
    json.dump(index, f)
os.replace(index_path + '.new', index_path)
EOF
  # drop blobs nothing reaches any more (the old manifest/config of :multi and the temporary tags)
  python3 - "$work/layout" <<'EOF'
import json, os, sys
layout = sys.argv[1]
blob_dir = os.path.join(layout, 'blobs', 'sha256')
def load(d):
    return json.load(open(os.path.join(blob_dir, d.split(':', 1)[1])))
reached, todo = set(), list(json.load(open(os.path.join(layout, 'index.json')))['manifests'])
while todo:
    desc = todo.pop()
    reached.add(desc['digest'])
    mt = desc.get('mediaType', '')
    if mt.endswith('index.v1+json'):
        todo.extend(load(desc['digest'])['manifests'])
    elif mt.endswith('manifest.v1+json'):
        m = load(desc['digest'])
        todo.append(m['config'])
        reached.update(layer['digest'] for layer in m['layers'])
for name in os.listdir(blob_dir):
    if 'sha256:' + name not in reached:
        os.unlink(os.path.join(blob_dir, name))
EOF
  publish "$work/layout" oci/busybox-multiarch
  rm -rf "$work"
}

# A layer umoci and buildah never write: opaque markers (one before and one after an entry of the
# same layer), a plain whiteout, and a hard link whose target only a lower layer holds.
build_busybox_opaque() {
  have oci/busybox-opaque && return
  local work stage
  work=$(fresh_work busybox-opaque)
  cp -a "$OUT/oci/busybox" "$work/layout"
  stage=$work/stage
  mkdir -p "$stage"/{opt/keep,var/lib/app,usr/local/share/hl}
  chmod 0755 "$stage" "$stage"/{opt,opt/keep,var,var/lib,var/lib/app,usr,usr/local,usr/local/share,usr/local/share/hl}
  echo "written by the opaque layer, before its marker" > "$stage/opt/keep/new-before-marker"
  : > "$stage/opt/keep/.wh..wh..opq"
  : > "$stage/var/lib/app/.wh..wh..opq"
  echo "written by the opaque layer, after its marker" > "$stage/var/lib/app/after-marker"
  : > "$stage/usr/local/share/.wh.l2-added"
  echo "hard-linked content" > "$stage/usr/local/share/hl/a"
  ln "$stage/usr/local/share/hl/a" "$stage/usr/local/share/hl/d"
  # Keep the lower layers' directory modes so only the intended changes differ.
  touch -d '2024-01-01 00:00:00' "$stage"/{opt,var,var/lib,usr,usr/local,usr/local/share}
  cat > "$work/list" <<'EOF'
opt
opt/keep
opt/keep/new-before-marker
opt/keep/.wh..wh..opq
var
var/lib
var/lib/app
var/lib/app/.wh..wh..opq
var/lib/app/after-marker
usr
usr/local
usr/local/share
usr/local/share/.wh.l2-added
usr/local/share/hl
usr/local/share/hl/a
usr/local/share/hl/d
EOF
  tar -C "$stage" --format=pax --numeric-owner --owner=0 --group=0 --no-recursion -T "$work/list" -cf "$work/layer.tar"
  # Drop the link's first name: hl/d stays a hard-link entry naming hl/a, which only a lower layer has.
  tar --delete -f "$work/layer.tar" usr/local/share/hl/a
  umoci raw add-layer --history.created_by "layer 4: crafted opaque whiteouts" \
    --image "$work/layout:multi" --tag opaque "$work/layer.tar"
  umoci rm --image "$work/layout:multi"
  umoci gc --layout "$work/layout"
  publish "$work/layout" oci/busybox-opaque
  rm -rf "$work"
}

# ---------------------------------------------------------------------------------------------
# debian

build_debian_rootfs() {
  have rootfs/debian && return
  local work mirror start
  work=$(fresh_work debian-rootfs)
  mirror=$(debian_mirror)
  start=$SECONDS
  log "debootstrap --variant=minbase bookworm from $mirror (about 70 s)"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  rm -f "$work"/rootfs/var/cache/apt/archives/*.deb
  rm -rf "$work"/rootfs/var/lib/apt/lists/*
  log "debootstrap took $((SECONDS - start)) s"
  publish "$work/rootfs" rootfs/debian
  rm -rf "$work"
}

# Debian-specific changes on top of the shared ones: a big directory whiteout, a setuid bit
# removed from one real binary and one added to another.
debian_layer2() {
  rm -rf "$1/usr/share/doc"
  chmod u-s "$1/usr/bin/chsh"
}
debian_layer3() {
  chmod 6755 "$1/usr/bin/chage"   # setgid shadow already; add setuid
  rm -rf "$1/usr/share/locale"
}

build_debian_oci() {
  have oci/debian && return
  local work start
  work=$(fresh_work debian-oci)
  start=$SECONDS
  mkdir -p "$work/rootfs"
  cp -a "$OUT/rootfs/debian/." "$work/rootfs/"
  add_extras "$work/rootfs"
  umoci_three_layers "$work/layout" multi "$work/rootfs" debian_layer2 debian_layer3
  log "debian oci layout took $((SECONDS - start)) s"
  publish "$work/layout" oci/debian
  rm -rf "$work"
}

# ---------------------------------------------------------------------------------------------

summary() {
  local list=$OUT/images.txt path
  {
    printf '# %s (%s)\n' "$OUT" "$(date -u +%FT%TZ)"
    for path in rootfs/busybox rootfs/debian; do
      [[ -d $OUT/$path ]] && printf '%-36s %8s  %s entries\n' "$path" "$(du -sh "$OUT/$path" | cut -f1)" \
        "$(find "$OUT/$path" | wc -l)"
    done
    for path in "$OUT"/tarballs/* "$OUT"/archives/*; do
      [[ -f $path ]] && printf '%-36s %8s  sha256:%s\n' "${path#"$OUT"/}" "$(du -h "$path" | cut -f1)" \
        "$(sha256sum "$path" | cut -c1-64)"
    done
    for path in "$OUT"/oci/*; do
      [[ -d $path ]] || continue
      python3 - "$path" "$OUT" <<'EOF'
import json, os, sys
layout, out = sys.argv[1], sys.argv[2]
for entry in json.load(open(os.path.join(layout, 'index.json')))['manifests']:
    tag = entry.get('annotations', {}).get('org.opencontainers.image.ref.name', '')
    kind = 'index' if 'index' in entry['mediaType'] or 'list' in entry['mediaType'] else 'manifest'
    print('%-36s %8s  %s' % ('oci:%s:%s' % (os.path.relpath(layout, out), tag), kind, entry['digest']))
EOF
    done
  } > "$list.new"
  mv "$list.new" "$list"
  cat "$list"
}

started=$SECONDS
if [[ $WHAT == busybox || $WHAT == all ]]; then
  build_busybox_rootfs
  build_busybox_tarballs
  build_busybox_oci
  build_busybox_archives
  build_busybox_zstd
  build_busybox_buildah
  build_busybox_multiarch
  build_busybox_opaque
fi
if [[ $WHAT == debian || $WHAT == all ]]; then
  build_debian_rootfs
  build_debian_oci
fi
rm -rf "$WORK"
log "done in $((SECONDS - started)) s"
summary
