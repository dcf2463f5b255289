# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Builds layer tars in memory for the applier's tests, and looks at what the applier wrote."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import stat
import struct
import tarfile
import traceback
import typing as t

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import _rootpath as rootpath
from ansible_collections.virt.bootstrap.plugins.module_utils._image import Layer
from ansible_collections.virt.bootstrap.plugins.module_utils._layers import (
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    ApplyStats,
    IdMapper,
    RootfsBuilder,
)

MTIME = 1_500_000_000
COMPRESSIONS = ('none', 'gzip', 'xz', 'bzip2', 'zstd')
LAYER_TAR = 'application/vnd.oci.image.layer.v1.tar'
LAYER_TAR_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip'

# A v2 security.capability value: effective, permitted cap_net_bind_service (10) and cap_setfcap (31).
# Bit 31 puts a 0x80 byte in the blob, which is not valid UTF-8 on its own.
CAPABILITY_V2 = struct.pack('<IIIII', 0x02000000 | 0x1, (1 << 10) | (1 << 31), 0, 0, 0)


class TarBuilder:
    """A PAX tar with numeric owners, one entry per call, in the order of the calls."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buffer, mode='w', format=tarfile.PAX_FORMAT, encoding='utf-8')

    def add(self, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b'', mode: int = 0o644,
            uid: int = 0, gid: int = 0, mtime: float = MTIME, linkname: str = '',
            pax: t.Optional[t.Dict[str, str]] = None, uname: str = '', gname: str = '',
            devmajor: int = 0, devminor: int = 0) -> 'TarBuilder':
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname, info.gname = uname, gname
        info.mtime = mtime
        info.linkname = linkname
        info.devmajor, info.devminor = devmajor, devminor
        info.pax_headers = dict(pax or {})
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data) if info.size else None)
        return self

    def dir(self, name: str, mode: int = 0o755, **kwargs: t.Any) -> 'TarBuilder':
        return self.add(name, tarfile.DIRTYPE, mode=mode, **kwargs)

    def file(self, name: str, data: bytes = b'', mode: int = 0o644, **kwargs: t.Any) -> 'TarBuilder':
        return self.add(name, tarfile.REGTYPE, data=data, mode=mode, **kwargs)

    def symlink(self, name: str, target: str, **kwargs: t.Any) -> 'TarBuilder':
        return self.add(name, tarfile.SYMTYPE, mode=0o777, linkname=target, **kwargs)

    def hardlink(self, name: str, target: str, **kwargs: t.Any) -> 'TarBuilder':
        return self.add(name, tarfile.LNKTYPE, linkname=target, **kwargs)

    def fifo(self, name: str, mode: int = 0o644, **kwargs: t.Any) -> 'TarBuilder':
        return self.add(name, tarfile.FIFOTYPE, mode=mode, **kwargs)

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o666, **kwargs: t.Any) -> 'TarBuilder':
        return self.add(name, tarfile.CHRTYPE, mode=mode, devmajor=major, devminor=minor, **kwargs)

    def blockdev(self, name: str, major: int, minor: int, mode: int = 0o660, **kwargs: t.Any) -> 'TarBuilder':
        return self.add(name, tarfile.BLKTYPE, mode=mode, devmajor=major, devminor=minor, **kwargs)

    def whiteout(self, path: str) -> 'TarBuilder':
        """The marker that hides `path` of lower layers."""
        parent, separator, name = path.rpartition('/')
        return self.file(parent + separator + WHITEOUT_PREFIX + name)

    def opaque(self, directory: str) -> 'TarBuilder':
        """The marker that hides what lower layers put in `directory` ('' for the root)."""
        return self.file((directory + '/' if directory else '') + OPAQUE_MARKER)

    def tar(self) -> bytes:
        self._tar.close()
        return self._buffer.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == 'none':
        return data
    if compression == 'gzip':
        return gzip.compress(data, mtime=0)
    if compression == 'xz':
        return lzma.compress(data)
    if compression == 'bzip2':
        return bz2.compress(data)
    if compression == 'zstd':
        import zstandard
        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(compression)


def sha256(data: bytes) -> str:
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def blob_layer(blob: bytes, digest: t.Optional[str] = None, diff_id: t.Optional[str] = None,
               media_type: str = LAYER_TAR_GZIP) -> Layer:
    """A layer whose blob is `blob` as stored; digest and diff_id are only checked when given."""
    return Layer(open_blob=lambda: io.BytesIO(blob), digest=digest, size=len(blob), media_type=media_type,
                 diff_id=diff_id)


def apply_layers(root: str, *blobs: bytes, max_size: t.Optional[int] = None,
                 id_mapper: t.Optional[IdMapper] = None, device_nodes: bool = False) -> ApplyStats:
    """Apply each blob (its digest checked) as one layer, bottom first, then finish the tree."""
    options: t.Dict[str, t.Any] = {'id_mapper': id_mapper, 'device_nodes': device_nodes}
    if max_size is not None:
        options['max_size'] = max_size
    with RootfsBuilder(root, **options) as builder:
        for index, blob in enumerate(blobs, 1):
            builder.apply_layer(blob_layer(blob, digest=sha256(blob)), label='layer %d/%d' % (index, len(blobs)))
        builder.finish()
        return builder.stats


Snapshot = t.Dict[str, t.Tuple[t.Any, ...]]


def snapshot(top: str, skip: t.Sequence[str] = ()) -> Snapshot:
    """Every path below `top` (itself included) with type, mode, owner, mtime and content or target."""
    found: Snapshot = {}
    skipped = {os.path.join(top, name) for name in skip}

    def visit(path: str) -> None:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            content: t.Any = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            with open(path, 'rb') as stream:
                content = stream.read()
        else:
            content = None
        found[os.path.relpath(path, top)] = (info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns,
                                             info.st_nlink, content)
        if stat.S_ISDIR(info.st_mode):
            for name in sorted(os.listdir(path)):
                child = os.path.join(path, name)
                if child not in skipped:
                    visit(child)

    visit(top)
    return found


def read(path: str) -> bytes:
    with open(path, 'rb') as stream:
        return stream.read()


def listing(root: str) -> t.List[str]:
    """Relative paths of everything below `root`, sorted; real directories (not links to them) end with '/'."""
    paths = []
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False):
            paths.append(entry.name + '/')
            paths.extend(entry.name + '/' + below for below in listing(entry.path))
        else:
            paths.append(entry.name)
    return sorted(paths)


# The two ways paths resolve inside the root: the kernel's openat2, and our own walk where it is missing.
RESOLUTIONS = ('openat2', 'fd-walk')


def use_resolution(kind: str, monkeypatch: pytest.MonkeyPatch) -> t.List[str]:
    """Make every lookup below a root go through `kind`; returns the paths given to openat2 from now on."""
    calls: t.List[str] = []
    real_openat2 = rootpath._openat2  # pylint: disable=protected-access

    if kind == 'openat2':
        probe = os.open('/', os.O_RDONLY | os.O_DIRECTORY)
        try:
            works = rootpath.openat2_works(probe)
        finally:
            os.close(probe)
        if not works:
            pytest.skip('this kernel has no openat2, or a seccomp filter refuses it')

        def counted(dir_fd: int, path: str) -> int:
            calls.append(path)
            return real_openat2(dir_fd, path)

        monkeypatch.setattr(rootpath, '_openat2', counted)
    else:
        def refused(dir_fd: int, path: str) -> int:
            raise AssertionError('openat2 called although the fd walk was asked for')

        monkeypatch.setattr(rootpath, '_openat2_works', False)
        monkeypatch.setattr(rootpath, '_openat2', refused)
    return calls


NOBODY = 65534


def as_nobody(action: t.Callable[[], t.Any]) -> t.Dict[str, t.Any]:
    """Run `action` in a forked child that became uid/gid 65534.

    Returns {'value': what it returned} or {'error': exception type, 'message': ..., 'traceback': ...}.
    """
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        status = 1
        try:
            os.close(reader)
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                outcome: t.Dict[str, t.Any] = {'value': action()}
            except BaseException as exc:  # pylint: disable=broad-except
                outcome = {'error': type(exc).__name__, 'message': str(exc), 'traceback': traceback.format_exc()}
            with os.fdopen(writer, 'w') as stream:
                json.dump(outcome, stream)
            status = 0
        finally:
            os._exit(status)  # pylint: disable=protected-access
    os.close(writer)
    with os.fdopen(reader) as stream:
        text = stream.read()
    wait_status = os.waitpid(pid, 0)[1]
    assert os.waitstatus_to_exitcode(wait_status) == 0, text
    return json.loads(text)
