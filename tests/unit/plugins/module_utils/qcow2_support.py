# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""For the qcow2 tests: a multi-layer image with every kind of entry, and ways to look into images."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import typing as t

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import _occupancy as occupancy
from ansible_collections.virt.bootstrap.plugins.module_utils import _qemu as qemu
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import ToolError
from ansible_collections.virt.bootstrap.plugins.module_utils._image import Image
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import (
    CAPABILITY_V2,
    TarBuilder,
    blob_layer,
    compress,
    sha256,
    snapshot,
)

CAPABILITY_PAX = {'SCHILY.xattr.security.capability': CAPABILITY_V2.decode('utf-8', 'surrogateescape')}
SHADOW = b'root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n'
# Random, so that no layer compresses it away and its clusters are easy to tell from metadata.
BIG = hashlib.sha512(b'seed').digest() * (4 << 20 >> 6)  # 4 MiB

NEEDED = ('qemu-img', 'qemu-storage-daemon', 'losetup', 'mkfs.ext4')


def needs_qemu() -> None:
    for name in NEEDED:
        try:
            qemu.tool(name)
        except ToolError as exc:
            pytest.skip(str(exc))
    if os.geteuid() != 0:
        pytest.skip('qcow2 images are written through loop devices: root only')


def layer_tars() -> t.List[bytes]:
    """Whiteouts, an opaque directory, hard links (one to a lower layer's file), a capability, setuid,
    a uid 1000 file, a fifo and a file big enough to see where its clusters went."""
    base = TarBuilder() \
        .dir('./', mode=0o755) \
        .dir('etc', mode=0o755) \
        .file('etc/shadow', SHADOW, mode=0o640, gid=42) \
        .file('etc/passwd', b'root:x:0:0::/root:/bin/sh\n') \
        .dir('bin', mode=0o755) \
        .file('bin/sh', b'#!sh', mode=0o4755) \
        .hardlink('bin/sh-again', 'bin/sh') \
        .file('bin/ping', b'ping', mode=0o755, pax=CAPABILITY_PAX) \
        .dir('home', mode=0o755) \
        .dir('home/user', mode=0o700, uid=1000, gid=1000) \
        .file('home/user/notes', b'mine', uid=1000, gid=1000) \
        .dir('data', mode=0o755) \
        .file('data/keep', b'keep') \
        .file('data/gone', b'gone') \
        .file('data/big', BIG) \
        .dir('opaque', mode=0o750) \
        .file('opaque/old-a', b'a') \
        .dir('opaque/old-dir') \
        .file('opaque/old-dir/b', b'b') \
        .fifo('run-fifo') \
        .symlink('lib', 'usr/lib') \
        .dir('usr', mode=0o755) \
        .dir('usr/lib', mode=0o755) \
        .tar()
    second = TarBuilder() \
        .whiteout('data/gone') \
        .opaque('opaque') \
        .file('opaque/new', b'new') \
        .file('etc/passwd', b'root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n') \
        .hardlink('data/sh-link', 'bin/sh') \
        .file('lib/libc.so', b'\x7fELF') \
        .tar()
    third = TarBuilder() \
        .file('etc/hostname', b'guest\n') \
        .whiteout('bin/sh-again') \
        .tar()
    return [base, second, third]


def layered_image(tars: t.Optional[t.Sequence[bytes]] = None) -> Image:
    blobs = [compress(data, 'gzip') for data in (tars or layer_tars())]
    return Image(digest=sha256(b''.join(blobs)), layers=[blob_layer(blob, digest=sha256(blob)) for blob in blobs])


@contextlib.contextmanager
def looking_at(image_path: str, work_dir: str, filesystem: str = 'ext4') -> t.Iterator[str]:
    """A read-only mount of the filesystem in `image_path`."""
    with qemu.mounted_image(image_path, work_dir, filesystem, read_only=True) as root:
        yield root


def tree_of(root: str, filesystem: str = 'ext4') -> t.Dict[str, t.Any]:
    """snapshot() of a tree plus every xattr; an image's own lost+found (which ext4 needs) left out."""
    found = snapshot(root, skip=['lost+found'] if filesystem == 'ext4' else [])
    if filesystem == 'ext4' and os.path.isdir(os.path.join(root, 'lost+found')):
        mode, uid, gid, mtime, nlink, content = found['.']
        found['.'] = (mode, uid, gid, mtime, nlink - 1, content)
    xattrs = {}
    for relative in found:
        path = os.path.join(root, relative)
        names = sorted(os.listxattr(path, follow_symlinks=False))
        if names:
            xattrs[relative] = {name: os.getxattr(path, name, follow_symlinks=False) for name in names}
    return {'entries': found, 'xattrs': xattrs}


def image_info(path: str) -> t.List[t.Dict[str, t.Any]]:
    completed = subprocess.run(['qemu-img', 'info', '--backing-chain', '--output=json', path], check=True,
                               capture_output=True)
    return json.loads(completed.stdout)


def allocated_bytes(path: str) -> int:
    """Data clusters stored in `path` itself (not in its backing files)."""
    completed = subprocess.run(['qemu-img', 'map', '--output=json', path], check=True, capture_output=True)
    return sum(extent['length'] for extent in json.loads(completed.stdout)
               if extent['depth'] == 0 and extent['data'])


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def leftovers(directory: str) -> t.Dict[str, t.List[str]]:
    """Mounts, loop devices and qemu-storage-daemons below `directory`: none may outlive a run."""
    prefix = os.path.realpath(directory).rstrip('/') + '/'
    loops = [device for device, backing in qemu._loop_devices() if backing.startswith(prefix)]
    daemons = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % name, 'rb') as stream:
                argv = stream.read().decode('utf-8', 'replace')
        except OSError:
            continue
        if 'qemu-storage-daemon' in argv and prefix in argv.replace('\0', ' ') and not qemu.wait_gone(int(name), 0):
            daemons.append(name)
    return {'mounts': occupancy.mounts_below(directory), 'loops': loops, 'daemons': daemons}


NOTHING_LEFT = {'mounts': [], 'loops': [], 'daemons': []}


def acl_pax(tmp_path):
    """PAX records of a POSIX access and default ACL, as GNU tar stores them (made by setfacl on a probe)."""
    probe = tmp_path / 'acl-probe'
    probe.mkdir()
    subprocess.run(['setfacl', '-m', 'u:1000:rwx', str(probe)], check=True)
    subprocess.run(['setfacl', '-d', '-m', 'g:1000:rx', str(probe)], check=True)
    return {'SCHILY.xattr.' + name: os.getxattr(str(probe), name).decode('utf-8', 'surrogateescape')
            for name in ('system.posix_acl_access', 'system.posix_acl_default')}
