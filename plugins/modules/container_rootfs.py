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
    type: str
    choices: [dir]
    default: dir
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
      - Defaults to the managed host's platform. A single-platform image is used whatever its platform unless
        this option is set, in which case the image must match it.
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
      - By default C(${XDG_RUNTIME_DIR}/containers/auth.json), C(~/.config/containers/auth.json) and
        C(~/.docker/config.json) are searched in that order. C(credHelpers) and C(credsStore) are honoured.
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
      - Defaults to C(/var/cache/virt-bootstrap) for root and C(~/.cache/virt-bootstrap) for other users.
    type: path
  no_cache:
    description:
      - Download into a temporary cache that is removed at the end of the run. It lives in the bookkeeping
        directory beside O(dest), on the same filesystem as the rootfs.
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
        V([[0, 100000, 65536]]) for a guest with a matching C(<idmap>).
      - Each id is mapped through the first range that holds it (no chaining); ids outside every range stay.
      - Needs root. The maps are part of what the state record compares, so changing a map rebuilds the rootfs.
    type: list
    elements: list
  gid_map:
    description:
      - Shift file groups while writing, like O(uid_map).
    type: list
    elements: list
  progress_log:
    description:
      - A file to append progress to, one JSON object per line with the keys C(status), C(value) (percent)
        and C(time), for watching a long run with C(tail -f).
    type: path
  device_nodes:
    description:
      - Create the device nodes an image carries (where the kernel allows it).
      - Off by default, and they are skipped and counted in RV(skipped). libvirt gives LXC guests a C(/dev) of
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
  - Run as root to keep the owners from the image. Run as another user, every file is owned by that user,
    file capabilities and device nodes are skipped, and the result carries a warning.
  - Device nodes are skipped unless O(device_nodes=true); libvirt LXC guests get their own C(/dev) anyway.
  - zstd-compressed layers need the Python package C(zstandard) on the managed host.
requirements:
  - python >= 3.9
seealso:
  - name: OCI image layer specification
    description: How layers, whiteouts and opaque directories apply.
    link: https://github.com/opencontainers/image-spec/blob/main/layer.md
"""

EXAMPLES = r"""
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
entries_written:
  description: How many entries (files, directories, links, ...) were written. 0 when nothing changed.
  returned: always
  type: int
  sample: 6768
entries_skipped:
  description: How many entries or attributes could not be written here (see RV(skipped)).
  returned: always
  type: int
  sample: 0
skipped:
  description:
    - What was skipped, by reason. V(device_node) (see O(device_nodes)), V(xattr) (an extended attribute the
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
state:
  description: The file type of O(dest) (V(directory)), or V(absent).
  returned: always
  type: str
  sample: directory
credentials_from:
  description: Where the registry credentials came from (an auth file path, or the options); never the secret.
  returned: when a registry source used credentials
  type: str
  sample: /root/.config/containers/auth.json
msg:
  description: What the module decided, as a sentence.
  returned: always
  type: str
  sample: build sha256:3f1e... into /var/lib/libvirt/filesystems/web1
"""

import traceback
from dataclasses import asdict

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.formatters import human_to_bytes

from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, Result, run
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError
from ansible_collections.virt.bootstrap.plugins.module_utils.idmap import parse_id_map
from ansible_collections.virt.bootstrap.plugins.module_utils.progress import JsonLinesLog
from ansible_collections.virt.bootstrap.plugins.module_utils.sources.registry import RegistryOptions


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
    return {
        'before_header': '%s (recorded)' % result.dest,
        'after_header': '%s (%s)' % (result.dest, result.state),
        'before': describe(result.before),
        'after': describe(result.after),
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type='str', aliases=['uri']),
            dest=dict(type='path', required=True),
            format=dict(type='str', default='dir', choices=['dir']),
            state=dict(type='str', default='present', choices=['present', 'absent']),
            platform=dict(type='str'),
            force=dict(type='bool', default=False),
            max_size=dict(type='str', default='64G'),
            root_password=dict(type='str', no_log=True),
            root_password_hash=dict(type='str', no_log=True),
            uid_map=dict(type='list', elements='list'),
            gid_map=dict(type='list', elements='list'),
            progress_log=dict(type='path'),
            username=dict(type='str'),
            password=dict(type='str', no_log=True),
            auth_file=dict(type='path'),
            not_secure=dict(type='bool', default=False),
            ca_path=dict(type='path'),
            cache_dir=dict(type='path'),
            no_cache=dict(type='bool', default=False),
            device_nodes=dict(type='bool', default=False),
        ),
        required_together=[('username', 'password')],
        required_if=[('state', 'present', ['src'])],
        mutually_exclusive=[('root_password', 'root_password_hash')],
        supports_check_mode=True,
    )
    params = module.params
    try:
        max_size = human_to_bytes(params['max_size'])
    except ValueError as exc:
        module.fail_json(msg='max_size: %s' % exc)
    progress_log = None
    try:
        request = Request(src=params['src'], dest=params['dest'], format=params['format'], state=params['state'],
                          platform=params['platform'], force=params['force'], max_size=max_size,
                          root_password=params['root_password'], root_password_hash=params['root_password_hash'],
                          uid_map=parse_id_map(params['uid_map'], 'uid_map'),
                          gid_map=parse_id_map(params['gid_map'], 'gid_map'), device_nodes=params['device_nodes'],
                          registry=RegistryOptions(
                              username=params['username'], password=params['password'],
                              auth_file=params['auth_file'], not_secure=params['not_secure'],
                              ca_path=params['ca_path'], cache_dir=params['cache_dir'], no_cache=params['no_cache']))
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
    for internal in ('before', 'after', 'warnings', 'state'):
        returned.pop(internal)
    if returned['credentials_from'] is None:
        del returned['credentials_from']
    for warning in result.warnings:
        module.warn(warning)
    if module._diff:
        returned['diff'] = _diff(result)
    module.exit_json(**returned)


if __name__ == '__main__':
    main()
