#!/usr/bin/env bash
# The built-in example: make a small real rootfs from Debian's busybox-static package and
# bootstrap it into a directory with virt.bootstrap.container_rootfs. Needs root (apt, chroot).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${DEMO_DIR:-/tmp/virt-bootstrap-demo}
mkdir -p "$work"

echo "== installing what the example needs"
if ! dpkg -s busybox-static >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi
python3 -m pip install -q 'ansible-core>=2.16' passlib

echo "== installing the collection from $repo"
ansible-galaxy collection build --force --output-path "$work" "$repo" >/dev/null
# --no-deps: the example uses only the module; the role's community.libvirt would be fetched from Galaxy.
ANSIBLE_COLLECTIONS_PATH="$work/collections" ansible-galaxy collection install --force --no-deps -p "$work/collections" \
    "$work"/virt-bootstrap-*.tar.gz >/dev/null

echo "== making a busybox rootfs tarball"
rootfs="$work/busybox-rootfs"
rm -rf "$rootfs" && mkdir -p "$rootfs"/{bin,etc,root,tmp,proc,sys,dev}
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\n' > "$rootfs/etc/group"
printf 'root:*:19000:0:99999:7:::\n' > "$rootfs/etc/shadow"
chmod 0640 "$rootfs/etc/shadow"
chmod 1777 "$rootfs/tmp"
tar --numeric-owner -C "$rootfs" -cJf "$work/busybox-rootfs.tar.xz" .
echo "   $(du -h "$work/busybox-rootfs.tar.xz" | cut -f1) $work/busybox-rootfs.tar.xz"

echo "== bootstrapping it with virt.bootstrap.container_rootfs"
ANSIBLE_COLLECTIONS_PATH="$work/collections" ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_INVENTORY_UNPARSED_WARNING=false \
    ansible-playbook -i localhost, -c local "$repo/demo/playbook.yml" \
    -e "ansible_python_interpreter=$(python3 -c 'import sys; print(sys.executable)')" \
    -e "demo_src=$work/busybox-rootfs.tar.xz demo_dest=$work/guests/busybox"
