#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: container_rootfs
short_description: Turn a container image into a root filesystem for libvirt LXC guests
version_added: 0.1.0
description:
  - Writes the root filesystem of a container image or rootfs tarball into a directory on the managed host.
  - Layers are applied bottom-up in one streaming pass each, with OCI whiteouts and opaque directories,
    numeric owners, modes including setuid/setgid/sticky, mtimes, extended attributes (file capabilities),
    symlinks, hard links and fifos. Paths resolve inside O(dest), symlinks on the way included (as umoci
    resolves them); no entry is ever written outside O(dest).
  - The new rootfs is built beside O(dest) and swapped into place in one step; a failed run leaves the
    previous rootfs exactly as it was.
  - A state record kept beside O(dest) (in C(.NAME.virt-bootstrap), out of the guest's reach) holds the digest of
    what was applied, so a rerun with the same inputs reports no change and extracts nothing.
author:
  - virt.bootstrap contributors (!UNKNOWN)
options:
  src:
    description:
      - The image or rootfs to write.
      - A rootfs tarball on the managed host, as an absolute path or C(file:///path); uncompressed or
        compressed with gzip, xz, bzip2 or zstd (detected from the content, not the name).
      - C(docker-archive:/path.tar[:NAME:TAG|:@N]), the output of C(docker save) or skopeo.
      - C(oci:/path/to/layout[:TAG]), an OCI image layout directory.
      - C(oci-archive:/path.tar[:TAG]), an OCI image layout in a tar archive.
      - C(docker://[REGISTRY[:PORT]/]IMAGE[:TAG][@DIGEST]), an image in a registry, pulled directly over the
        OCI distribution API (no skopeo or container daemon needed). A registry that is not named is docker.io,
        so C(docker://debian) is C(docker.io/library/debian:latest).
      - C(virt-builder://TEMPLATE), a virt-builder template such as C(virt-builder://debian-12), built with
        C(virt-builder) (Debian package C(guestfs-tools)) and copied out with C(guestfish) (C(libguestfs-tools)).
        Every filesystem the guest's C(/etc/fstab) mounts (C(/boot), C(/boot/efi), ...) is copied into place;
        swap and partitions the guest does not mount are not. The guest's C(/dev) is not copied, and its
        C(/etc/fstab) has its entries commented out (the template's disks are not the container's). The root
        account is locked unless O(root_password) or O(root_password_hash) sets it; the password never reaches a
        command line. A rerun reads the repository index only; a new template revision rebuilds.
        See O(virt_builder_source) and RV(appliance_launches).
      - Required when O(state=present).
    type: str
    aliases: [uri]
  dest:
    description:
      - The directory that receives the rootfs. It is created if missing, with its parents.
      - An existing non-empty directory that this module did not create is refused unless O(force=true).
    type: path
    required: true
  format:
    description:
      - How the rootfs is written. V(dir) writes a plain directory tree.
      - V(qcow2) makes O(dest) a directory of qcow2 disk images, with a filesystem on the whole disk (no partition
        table, as libvirt LXC mounts it through nbd). With O(qcow2_layers=chain), C(layer-0.qcow2) ... C(layer-N.qcow2),
        one image per image layer, each backed by the one below (a relative backing file name, with its format), and
        on top one more, the guest's own, which holds the root password, the UID/GID maps and whatever the guest
        writes; give that one (RV(qcow2_top)) to the guest. Each image holds only what its layer changed.
      - V(qcow2) is written on the host with the same layer rules as V(dir) (each image mounted through
        qemu-storage-daemon, a loop device and the kernel's filesystem), which needs root, loop devices and the
        Debian packages qemu-utils, qemu-system-common, fuse3 and e2fsprogs (xfsprogs for V(xfs)). Where those
        are missing, one libguestfs appliance writes the whole chain instead; see O(qcow2_method).
    type: str
    choices: [dir, qcow2]
    default: dir
  qcow2_size:
    description:
      - The size of the disk (and its filesystem) for O(format=qcow2), for example V(4G).
      - By default it is worked out from the image (its bytes and entries, with room for the guest to write, at least
        512 MiB more). A qcow2 only stores what is written, so room left free costs no disk space.
    type: str
  qcow2_layers:
    description:
      - V(chain) writes one image per image layer, so guests made from the same image can share them.
      - V(flat) writes one C(rootfs.qcow2) with no backing file, for guests that share nothing. The tree is written
        beside O(dest) as for V(dir), then put into an ext4 image by C(mke2fs -d) (mtimes to the second) and
        converted. The guest writes into that image; a root password edit copies it.
    type: str
    choices: [chain, flat]
    default: chain
  qcow2_filesystem:
    description:
      - The filesystem of the qcow2 images.
    type: str
    choices: [ext4, xfs]
    default: ext4
  qcow2_method:
    description:
      - How O(qcow2_layers=chain) is written. Either way writes the same tree, so changing only this never rebuilds.
      - V(host-mount) mounts each image on the host and writes it with the layer applier of V(dir) (root, loop
        devices; about a second for a small image).
      - V(appliance) launches one libguestfs appliance (a small virtual machine; Debian packages libguestfs-tools and
        a kernel in C(/boot)) for the whole chain, for hosts without root or loop devices. Every layer is first
        applied on the host into a skeleton tree by the same applier, which turns it into paths to remove and a
        sanitised tar with canonical names, so the appliance never resolves a path of the image; the images are
        made from the appliance's disk on the host, each holding only its layer's delta. Tens of seconds under
        emulation. O(uid_map)/O(gid_map) are refused with it (a chown per entry through the appliance is far too
        slow), and so is O(qcow2_layer_store). A root password edit of a guest overlay needs a real C(/etc) (not a
        symlink) in the image.
      - V(auto) takes V(host-mount) when running as root with C(/dev/fuse) and loop devices that really attach, else
        V(appliance).
      - RV(qcow2_method) says which way ran (in check mode, which way a run would take) and RV(appliance_launches)
        how many appliances were launched.
      - Known differences of V(appliance) from V(dir), all rare in images, are listed in the collection's README.
    type: str
    choices: [auto, host-mount, appliance]
    default: auto
  qcow2_layer_store:
    description:
      - A directory (for example V(/var/lib/virt-bootstrap/layers)) that keeps the layer images of
        O(qcow2_layers=chain) for every guest made with it. Each image is named by a digest of the layers up to it and
        of O(qcow2_filesystem), O(qcow2_size) and O(device_nodes); a second guest from the same image (or one that
        only adds layers) writes only what the store lacks, and O(dest) then holds only the guest's overlay, backed
        by the store's top image (an absolute backing name).
      - Safe with concurrent runs; an image is never changed once it is in the store. Nothing is ever removed from
        it; delete images no guest uses by hand.
    type: path
  state:
    description:
      - V(present) makes O(dest) hold the rootfs of O(src).
      - V(absent) removes O(dest) and the state record.
    type: str
    choices: [present, absent]
    default: present
  platform:
    description:
      - The platform to pick from a multi-platform image, as C(os/arch[/variant]), for example C(linux/arm64).
      - Names are normalised as containerd does (C(aarch64) and C(arm64/v8) are C(arm64), C(x86_64) is C(amd64),
        C(armhf) is C(arm/v7), C(armel) is C(arm/v6)). When the index lacks the variant asked for, the best lower
        variant of the same architecture is taken (C(arm/v7) takes C(arm/v6), C(amd64/v3) takes C(amd64/v2)).
      - Defaults to the managed host's platform. A single-platform image is used whatever its platform unless
        this option is set, in which case the image must match it.
      - For C(virt-builder://), the template's architecture; C(linux/amd64) is C(x86_64), C(linux/arm64) is
        C(aarch64), C(linux/386) is C(i686), C(linux/arm/v7) is C(armv7l); C(ppc64le), C(ppc64), C(s390x) and
        C(riscv64) keep their names.
    type: str
  force:
    description:
      - Replace (or with O(state=absent), remove) a non-empty O(dest) that this module did not create.
    type: bool
    default: false
  username:
    description:
      - User name for the registry of a C(docker://) source. Requires O(password).
      - Without it, credentials come from O(auth_file) or the usual auth files, else the pull is anonymous.
    type: str
  password:
    description:
      - Password (or token) for the registry of a C(docker://) source.
    type: str
  auth_file:
    description:
      - An auth file (C(auth.json) or C(~/.docker/config.json) format) to take registry credentials from;
        when given, only this file is read.
      - When not given, the file named by the environment variable C(REGISTRY_AUTH_FILE) is the only one read;
        otherwise C(${XDG_RUNTIME_DIR}/containers/auth.json) (or C(/run/containers/UID/auth.json) without
        C(XDG_RUNTIME_DIR), where C(podman login) writes as root), C(${XDG_CONFIG_HOME:-~/.config}/containers/auth.json)
        and C(${DOCKER_CONFIG:-~/.docker}/config.json) are searched in that order, as podman does.
      - C(credHelpers) and C(credsStore) are honoured; C(identitytoken) entries are exchanged at the registry's token
        service.
      - The result says which file was used in RV(credentials_from), never the secret.
    type: path
  not_secure:
    description:
      - Do not verify the registry's TLS certificate, and talk plain HTTP to a registry that only speaks that.
    type: bool
    default: false
  ca_path:
    description:
      - A PEM file of CA certificates to verify the registry's TLS certificate with.
    type: path
  cache_dir:
    description:
      - Where downloaded blobs are kept, by digest, for later runs. Only complete, verified blobs enter it.
      - For C(virt-builder://), virt-builder's template cache is its C(virt-builder) subdirectory.
      - Defaults to C(/var/cache/virt-bootstrap) for root and C(~/.cache/virt-bootstrap) for other users.
    type: path
  cache_max_age:
    description:
      - At the end of a run with O(state=present), remove from the blob cache the blobs that no rootfs made with
        this cache holds and that were not used for this long, for example V(30d), V(12h) or V(1d12h) (units s, m,
        h, d, w; a bare number is seconds). V(0) removes every blob no rootfs holds.
      - Each run notes in the cache which blobs its O(dest) holds; a rootfs whose state record is gone (removed
        with O(state=absent), or by hand) holds none.
      - Safe with runs using the cache at the same time; pruning never waits for them, and a cache in use is
        left for a later run (RV(cache_pruned.in_use)). Not pruned by default. Cannot be combined with O(no_cache).
    type: str
  timeout:
    description:
      - Seconds a registry (or its token service) may take to answer, and to send a whole manifest, config or
        token, retries included (not the waits between them); and the most a layer download may take for each
        64 KiB. A layer download that stalls is resumed where it stopped, up to 5 times in a row.
      - A registry that accepts the connection and then sends nothing, or sends a byte at a time, fails the run
        after this long instead of holding it.
    type: float
    default: 60
  no_cache:
    description:
      - Download into a temporary cache that is removed at the end of the run. It lives in the bookkeeping
        directory beside O(dest), on the same filesystem as the rootfs.
      - For C(virt-builder://), virt-builder downloads the template for this run only (C(--no-cache)).
    type: bool
    default: false
  virt_builder_source:
    description:
      - For C(virt-builder://) sources, the URL of a virt-builder repository index (C(file:///srv/index),
        C(https://example.com/index)) used instead of the repositories configured on the managed host (which
        virt-builder would otherwise also try, and which may need the internet).
      - No signing key is configured for it, so its templates are checked against the index's checksums only.
      - Put no credentials in it; virt-builder hands the URL to C(curl) on its command line.
    type: str
  virt_builder_no_check_signature:
    description:
      - For C(virt-builder://) sources, do not check the digital signatures of the index and templates of the
        configured repositories (C(virt-builder --no-check-signature)). Only when you trust the way they reach you.
    type: bool
    default: false
  root_password:
    description:
      - Set the password of C(root) in the rootfs's C(/etc/shadow), hashed with SHA-512 crypt.
      - Only the C(root:) entry changes; every other line, the file's mode and owner stay as they were.
      - The rootfs must have C(/etc/shadow) with a root entry. Neither the password nor its hash is stored in
        the state record; a rerun checks the hash in the rootfs against the password.
      - Mutually exclusive with O(root_password_hash).
    type: str
  root_password_hash:
    description:
      - Like O(root_password), with an already hashed crypt(5) string such as C($6$salt$hash).
    type: str
  uid_map:
    description:
      - Shift file owners while writing, as C([[start, target, count], ...]) — for example
        V([[0, 100000, 65536]]) for a guest with a matching C(<idmap>). Each range may also be written as the
        command line's C(START:TARGET:COUNT) string, as in V(['0:100000:65536']).
      - Each id is mapped through the first range that holds it (no chaining); ids outside every range stay.
        Neither the source ranges nor the target ranges may overlap (two ids would get the same owner).
      - Needs root, and O(gid_map) with it (libvirt's C(<idmap>) maps both).
        The maps are part of what the state record compares, so changing a map rebuilds the rootfs.
    type: list
    elements: raw
  gid_map:
    description:
      - Shift file groups while writing, like O(uid_map).
    type: list
    elements: raw
  progress_log:
    description:
      - A file to append progress to, one JSON object per line with the keys C(status), C(value) (percent)
        and C(time), for watching a long run with C(tail -f).
    type: path
  device_nodes:
    description:
      - Create the device nodes an image carries (where the kernel allows it).
      - Off by default, and they are skipped and counted in RV(entries_skipped_by_reason). libvirt gives LXC guests a C(/dev) of
        their own, and a device node with the image's mode (a world-writable disk, say) would be open to every
        host user who can reach the rootfs.
    type: bool
    default: false
  max_size:
    description:
      - The most bytes the layers may expand to, all layers together (for example V(500M), V(20G)).
      - Protects the host against decompression bombs; raise it for very large images.
    type: str
    default: 64G
  update:
    description:
      - When an existing rootfs is rebuilt.
      - V(always) rebuilds it when the image's digest or an option that shapes the tree changes (a moved tag, a new
        UID map, another platform).
      - V(never) keeps whatever rootfs O(dest) holds once it holds one made by this module, without even asking the
        registry; only the root password (O(root_password), O(root_password_hash)) is still kept as asked.
      - A rebuild replaces the whole tree, so everything written inside the rootfs since it was made (by a guest or by
        hand) is discarded. Keep data that must survive a rebuild outside it, in a directory bind-mounted into the guest.
      - Either way a rootfs that a running guest uses (a process has it as its root or working directory) or that has
        something mounted inside it is never replaced or removed; the run fails and says which process or mount.
        In check mode a process using it gives a warning instead, with the change the run would make once the guest
        is stopped (the C(virt.bootstrap.libvirt_lxc) role decides so, then stops the guest before the rebuild).
    type: str
    choices: [always, never]
    default: always
attributes:
  check_mode:
    support: full
    description: Can run in check_mode and return changed status prediction without modifying target.
    details: Resolves the source and compares it with the state record; writes nothing.
  diff_mode:
    support: full
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    details: Shows the image digest and source recorded before and after.
  idempotent:
    support: full
    description: Rerunning with the same source content and options reports no change and extracts nothing.
    details: A source whose content changed (a new digest) is rebuilt.
  platform:
    support: full
    platforms: posix
    description: Target OS/families that can be operated against.
notes:
  - Registry requests honour C(https_proxy), C(http_proxy) and C(no_proxy) (and their upper-case forms) as Python's
    urllib reads them; set them with the task's C(environment:) keyword. Registry credentials go inside the HTTPS
    tunnel, and only a C(user:password@) in the proxy URL is sent to the proxy.
  - The new rootfs is flushed to disk (syncfs) before it is swapped in, and its record is written as a pending record
    first, so after a kill or a power loss at any point the next run knows which tree sits at O(dest).
  - O(dest) must not be a mount point (a filesystem of its own, such as an LV per guest). The rootfs is renamed into
    place, so use a directory inside the mounted filesystem as O(dest).
  - Setting or dropping O(root_password) edits the existing rootfs instead of rebuilding it. When it is dropped, the
    image's own root entry is put back.
  - Run as root to keep the owners from the image. Run as another user, every file is owned by that user,
    file capabilities and device nodes are skipped, and the result carries a warning.
  - Device nodes are skipped unless O(device_nodes=true); libvirt LXC guests get their own C(/dev) anyway.
  - With O(format=qcow2), setting or dropping O(root_password) writes a copy of the guest's overlay with the new root
    entry (what the guest wrote there is kept) and swaps it in; the image layers are not touched. Knowing whether the
    password is already set takes a read-only look into that overlay. Images that a process holds open (a running
    guest's nbd server) are never replaced.
  - zstd-compressed layers need the C(zstd) program (used when it is on PATH) or the Python package C(zstandard) on
    the managed host.
  - Layers are decompressed and hashed in a second thread while the first writes the tree. When the Python package
    C(isal) (python-isal) is installed on the managed host, gzip layers are inflated with it, about twice as fast as
    with zlib; it is optional and gives the same result.
requirements:
  - python >= 3.9
  - passlib (only for O(root_password))
seealso:
  - name: OCI image layer specification
    description: How layers, whiteouts and opaque directories apply.
    link: https://github.com/opencontainers/image-spec/blob/main/layer.md
"""

EXAMPLES = r"""
- name: Write an image as a chain of qcow2 layers for a guest
  virt.bootstrap.container_rootfs:
    src: docker://debian:bookworm
    dest: /var/lib/libvirt/images/web1
    format: qcow2
  register: web1_rootfs
  # web1_rootfs.qcow2_top is the image to give the guest

- name: Unpack a rootfs tarball into a directory
  virt.bootstrap.container_rootfs:
    src: /srv/images/alpine-minirootfs.tar.gz
    dest: /var/lib/libvirt/filesystems/web1

- name: Unpack the arm64 image of a multi-platform OCI layout
  virt.bootstrap.container_rootfs:
    src: oci:/srv/oci/debian:bookworm
    dest: /var/lib/libvirt/filesystems/builder
    platform: linux/arm64

- name: Pull an image from a private registry (credentials from the auth file podman login wrote)
  virt.bootstrap.container_rootfs:
    src: docker://registry.example.com:5000/team/app:1.2
    dest: /var/lib/libvirt/filesystems/app
    ca_path: /etc/pki/registry-ca.pem

- name: Pull a pinned image from Docker Hub with explicit credentials
  virt.bootstrap.container_rootfs:
    src: docker://debian@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    dest: /var/lib/libvirt/filesystems/web2
    username: "{{ hub_user }}"
    password: "{{ hub_token }}"

- name: Unpack an image saved with docker save, replacing what was there
  virt.bootstrap.container_rootfs:
    src: docker-archive:/srv/images/app.tar:app:1.2
    dest: /var/lib/libvirt/filesystems/app
    force: true

- name: Unpack an image for an unprivileged guest, with a root password
  virt.bootstrap.container_rootfs:
    src: oci-archive:/srv/images/debian.tar:bookworm
    dest: /var/lib/libvirt/filesystems/db1
    uid_map: [[0, 100000, 65536]]
    gid_map: [[0, 100000, 65536]]
    root_password: "{{ vault_db1_root_password }}"
    progress_log: /var/log/virt-bootstrap-db1.jsonl

- name: Build a rootfs from a virt-builder template of a local repository
  virt.bootstrap.container_rootfs:
    src: virt-builder://debian-12
    dest: /var/lib/libvirt/filesystems/deb1
    virt_builder_source: file:///srv/virt-builder/index
    root_password: "{{ vault_deb1_root_password }}"
  register: deb1

- name: Say what it cost
  ansible.builtin.debug:
    msg: "{{ deb1.appliance_launches }} appliance launches"

- name: Remove a rootfs and its state record
  virt.bootstrap.container_rootfs:
    dest: /var/lib/libvirt/filesystems/web1
    state: absent
"""

RETURN = r"""
dest:
  description: The rootfs directory.
  returned: always
  type: str
  sample: /var/lib/libvirt/filesystems/web1
format:
  description: How the rootfs is written.
  returned: always
  type: str
  sample: dir
digest:
  description:
    - The digest naming what was applied. For OCI sources the manifest digest, for docker-archive the image ID
      (config digest), for a tarball the SHA-256 of the file.
  returned: when O(state=present)
  type: str
  sample: sha256:3f1e0c9d2c6c4b0c3e1d3ef4a3b3c6a6e9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4
index_digest:
  description: The digest of the image index the manifest was picked from, for multi-platform images.
  returned: when O(state=present)
  type: str
  sample: sha256:9a1e0c9d2c6c4b0c3e1d3ef4a3b3c6a6e9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4
platform:
  description: The platform of the image applied, when the source says or O(platform) was given.
  returned: when O(state=present)
  type: str
  sample: linux/amd64
layers:
  description: The layers applied, bottom first.
  returned: when O(state=present)
  type: list
  elements: dict
  contains:
    digest:
      description: The layer digest (for docker-archive, the digest of the uncompressed tar).
      type: str
    size:
      description: The size of the stored layer in bytes, when known.
      type: int
    media_type:
      description: The layer media type.
      type: str
image_config:
  description:
    - What the image says its container runs, from the image config's C(config) object (OCI image spec),
      also on unchanged runs and in check mode (it is kept in the state record). The C(virt.bootstrap.libvirt_lxc)
      role takes the guest's init, environment and working directory from it.
    - Every key is present; an image that sets none of them (a rootfs tarball) gives empty values.
    - V(null) only when O(update=never) keeps a rootfs whose record was written by a release that did not
      keep it.
  returned: when O(state=present)
  type: dict
  contains:
    entrypoint:
      description: C(Entrypoint), the command the container starts with.
      type: list
      elements: str
      sample: [/docker-entrypoint.sh]
    cmd:
      description: C(Cmd), the arguments of the entrypoint or, without one, the command.
      type: list
      elements: str
      sample: [nginx, -g, daemon off;]
    env:
      description: C(Env), as a mapping of variable names to values.
      type: dict
      sample: {PATH: /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}
    working_dir:
      description: C(WorkingDir), the directory the command starts in (empty when the image sets none).
      type: str
      sample: /app
    user:
      description: C(User), the user (and group) the command runs as, as the image names them.
      type: str
      sample: '101:101'
    labels:
      description: C(Labels).
      type: dict
      sample: {org.opencontainers.image.title: nginx}
entries_written:
  description: How many entries (files, directories, links, ...) were written. 0 when nothing changed.
  returned: always
  type: int
  sample: 6768
entries_skipped:
  description: How many entries or attributes could not be written here (see RV(entries_skipped_by_reason)).
  returned: always
  type: int
  sample: 0
entries_skipped_by_reason:
  description:
    - What was skipped, by reason. V(device_node) (left out because O(device_nodes) is off),
      V(device_node_not_permitted) (the kernel refused to create it), V(xattr) (an extended attribute the
      system refused, such as a file capability for a non-root caller), V(xattr_not_allowed) (an attribute
      outside C(user.*), C(security.capability) and POSIX ACLs, which images may not set).
  returned: always
  type: dict
  sample: {device_node: 3}
uid:
  description: Owner id of O(dest), when it exists (added by Ansible for every module returning a path).
  returned: when O(dest) exists
  type: int
  sample: 0
gid:
  description: Group id of O(dest), when it exists.
  returned: when O(dest) exists
  type: int
  sample: 0
owner:
  description: Owner name of O(dest), when it exists.
  returned: when O(dest) exists
  type: str
  sample: root
group:
  description: Group name of O(dest), when it exists.
  returned: when O(dest) exists
  type: str
  sample: root
mode:
  description: Permissions of O(dest), when it exists.
  returned: when O(dest) exists
  type: str
  sample: '0755'
size:
  description: Size of the O(dest) directory inode, when it exists.
  returned: when O(dest) exists
  type: int
  sample: 4096
secontext:
  description: The SELinux context of O(dest) (added by Ansible on hosts with SELinux enabled).
  returned: when O(dest) exists and SELinux is enabled
  type: str
  sample: system_u:object_r:virt_var_lib_t:s0
state:
  description: The file type of O(dest) (V(directory)), or V(absent) when it does not exist.
  returned: always
  type: str
  sample: directory
appliance_launches:
  description:
    - How many times a libguestfs appliance was started for a C(virt-builder://) source (each launch is a small
      virtual machine, several seconds). A build takes two (virt-builder's, and one to copy every filesystem out);
      a run with nothing to do takes none.
    - With RV(qcow2_method=appliance), the writer's launch is counted too (one for a whole chain, one for a root
      password edit of the guest overlay or a look at it, none when nothing is done).
  returned: when the source is C(virt-builder://) or RV(qcow2_method=appliance), and O(state=present)
  type: int
  sample: 2
credentials_from:
  description: Where the registry credentials came from (an auth file path, or the options); never the secret.
  returned: when a registry source used credentials
  type: str
  sample: /root/.config/containers/auth.json
cache_pruned:
  description: What pruning the blob cache did at the end of the run (see O(cache_max_age)).
  returned: when O(cache_max_age) is set, the source is C(docker://), O(state=present) and not in check mode
  type: dict
  contains:
    blobs_removed:
      description: Blobs removed from the cache.
      type: int
      sample: 3
    bytes_freed:
      description: Their size in bytes.
      type: int
      sample: 31457280
    blobs_kept:
      description: Blobs left, held by a rootfs or used within O(cache_max_age).
      type: int
      sample: 12
    refs_removed:
      description: Notes of rootfs whose state record is gone, dropped.
      type: int
      sample: 1
    partials_removed:
      description: Partial downloads of killed runs, removed.
      type: int
      sample: 0
    in_use:
      description: Another run was using the cache; nothing was removed and a later run prunes it.
      type: bool
      sample: false
    error:
      description: Why the cache could not be pruned (also a warning).
      type: str
      returned: when it could not
qcow2_images:
  description: The qcow2 images of the guest, bottom first (absolute paths), those in O(qcow2_layer_store) included.
  returned: when O(format=qcow2) and O(state=present)
  type: list
  elements: str
  sample: [/var/lib/libvirt/images/web1/layer-0.qcow2, /var/lib/libvirt/images/web1/layer-1.qcow2]
qcow2_top:
  description: The image to give the guest (the top of the chain, the guest's own overlay).
  returned: when O(format=qcow2) and O(state=present)
  type: str
  sample: /var/lib/libvirt/images/web1/layer-1.qcow2
qcow2_method:
  description: How the images were written. V(host-mount) (each image mounted on the host and written by the layer
    applier; no appliance is launched), V(appliance) (one libguestfs appliance for the chain; see
    O(qcow2_method)) or V(flat).
  returned: when O(format=qcow2) and O(state=present)
  type: str
  sample: host-mount
msg:
  description: What the module decided, as a sentence.
  returned: always
  type: str
  sample: build sha256:3f1e... into /var/lib/libvirt/filesystems/web1
"""

import traceback
from dataclasses import asdict

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Result, build_request, run
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError
from ansible_collections.virt.bootstrap.plugins.module_utils._progress import JsonLinesLog


def _shorten(text: object, limit: int = 300) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + '...'


def _diff(result: Result) -> dict:
    def describe(record) -> str:
        if record is None:
            return ''
        lines = ['digest: %s' % record.digest, 'source: %s' % record.source, 'format: %s' % record.format,
                 'platform: %s' % (record.platform or '-')]
        if record.index_digest:
            lines.append('index_digest: %s' % record.index_digest)
        for key in sorted(record.options):
            if key != 'format':
                lines.append('%s: %s' % (key, record.options[key]))
        return '\n'.join(lines) + '\n'
    before, after = describe(result.before), describe(result.after)
    if result.changed and before == after:
        # An edit the records cannot show (a new root password is never recorded): say what changes.
        after += 'change: %s\n' % result.msg
    return {
        'before_header': '%s (recorded)' % result.dest,
        'after_header': '%s (%s)' % (result.dest, result.state),
        'before': before,
        'after': after,
    }


_ENGINE_OPTIONS = ('src', 'dest', 'format', 'state', 'platform', 'force', 'max_size', 'root_password',
                   'root_password_hash', 'uid_map', 'gid_map', 'device_nodes', 'update', 'username', 'password',
                   'auth_file', 'not_secure', 'ca_path', 'cache_dir', 'no_cache', 'cache_max_age', 'timeout',
                   'virt_builder_source', 'virt_builder_no_check_signature', 'qcow2_size', 'qcow2_layers',
                   'qcow2_filesystem', 'qcow2_layer_store', 'qcow2_method')


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type='str', aliases=['uri']),
            dest=dict(type='path', required=True),
            format=dict(type='str', default='dir', choices=['dir', 'qcow2']),
            qcow2_size=dict(type='str'),
            qcow2_layers=dict(type='str', default='chain', choices=['chain', 'flat']),
            qcow2_filesystem=dict(type='str', default='ext4', choices=['ext4', 'xfs']),
            qcow2_layer_store=dict(type='path'),
            qcow2_method=dict(type='str', default='auto', choices=['auto', 'host-mount', 'appliance']),
            state=dict(type='str', default='present', choices=['present', 'absent']),
            platform=dict(type='str'),
            force=dict(type='bool', default=False),
            max_size=dict(type='str', default='64G'),
            root_password=dict(type='str', no_log=True),
            root_password_hash=dict(type='str', no_log=True),
            uid_map=dict(type='list', elements='raw'),
            gid_map=dict(type='list', elements='raw'),
            progress_log=dict(type='path'),
            username=dict(type='str'),
            password=dict(type='str', no_log=True),
            auth_file=dict(type='path'),
            not_secure=dict(type='bool', default=False),
            ca_path=dict(type='path'),
            cache_dir=dict(type='path'),
            no_cache=dict(type='bool', default=False),
            cache_max_age=dict(type='str'),
            timeout=dict(type='float', default=60.0),
            device_nodes=dict(type='bool', default=False),
            virt_builder_source=dict(type='str'),
            virt_builder_no_check_signature=dict(type='bool', default=False),
            update=dict(type='str', default='always', choices=['always', 'never']),
        ),
        required_together=[('username', 'password'), ('uid_map', 'gid_map')],
        required_if=[('state', 'present', ['src'])],
        mutually_exclusive=[('root_password', 'root_password_hash')],
        supports_check_mode=True,
    )
    params = module.params
    progress_log = None
    try:
        request = build_request(**{name: params[name] for name in _ENGINE_OPTIONS})
        if params['progress_log'] and not module.check_mode:
            progress_log = JsonLinesLog(params['progress_log'])
            request.progress_cb = progress_log
        result = run(request, check_mode=module.check_mode)
    except BootstrapError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        # str(exc) would repeat file names, which a hostile image can make huge.
        where = ' (%s)' % _shorten(exc.filename) if exc.filename else ''
        module.fail_json(msg='%s%s' % (exc.strerror or exc, where), exception=traceback.format_exc())
    except Exception as exc:  # an error we did not foresee: report it rather than a bare module failure
        module.fail_json(msg='unexpected error: %s: %s' % (type(exc).__name__, _shorten(str(exc))),
                         exception=traceback.format_exc())
    finally:
        if progress_log is not None:
            progress_log.close()

    returned = asdict(result)
    for internal in ('before', 'after', 'warnings'):
        returned.pop(internal)
    # The file type of dest, as Ansible reports it for paths; Ansible replaces it when dest exists.
    returned['state'] = 'absent'
    for optional in ('credentials_from', 'cache_pruned', 'appliance_launches'):
        if returned[optional] is None:
            del returned[optional]
    if params['state'] == 'absent':
        for image_key in ('digest', 'index_digest', 'platform', 'layers', 'image_config'):
            del returned[image_key]
    if params['state'] == 'absent' or params['format'] != 'qcow2':
        for image_key in ('qcow2_images', 'qcow2_top', 'qcow2_method'):
            del returned[image_key]
    for warning in result.warnings:
        module.warn(warning)
    if module._diff:
        returned['diff'] = _diff(result)
    module.exit_json(**returned)


if __name__ == '__main__':
    main()
