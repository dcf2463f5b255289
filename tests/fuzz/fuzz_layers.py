# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fuzz the layer applier: any bytes, applied as a layer over a base that has every kind of link.

Beyond the typed-errors rule, nothing may ever be written outside the scratch root: the base layer's
links all point at a sibling directory (by `..`, by absolute path, through a chain, as a hard link
target), and after each input that directory and the scratch parent must be exactly as they were.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile

import atheris

from ansible_collections.virt.bootstrap.tests.fuzz._harness import fuzz, scratch_parent, typed_errors_only

with atheris.instrument_imports(include=['ansible_collections.virt.bootstrap']):
    from ansible_collections.virt.bootstrap.plugins.module_utils._image import MEDIA_TAR, Layer
    from ansible_collections.virt.bootstrap.plugins.module_utils._layers import RootfsBuilder

SANDBOX = tempfile.mkdtemp(prefix='fuzz-layers-', dir=scratch_parent())
OUTSIDE = os.path.join(SANDBOX, 'outside')
ROOT = os.path.join(SANDBOX, 'root')
MAX_SIZE = 8 << 20


def _base_layer() -> bytes:
    """Directories, a file, a hard link, and links of every kind towards OUTSIDE."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes, **fields: object) -> None:
            member = tarfile.TarInfo(name)
            member.type = kind
            for key, value in fields.items():
                setattr(member, key, value)
            if kind == tarfile.REGTYPE:
                content = b'base\n'
                member.size = len(content)
                tar.addfile(member, io.BytesIO(content))
            else:
                tar.addfile(member)
        for directory in ('etc', 'usr', 'usr/lib', 'srv', 'srv/deep', 'srv/deep/er'):
            add(directory, tarfile.DIRTYPE, mode=0o755)
        add('etc/passwd', tarfile.REGTYPE, mode=0o644)
        add('etc/hard', tarfile.LNKTYPE, linkname='etc/passwd')
        add('lib', tarfile.SYMTYPE, linkname='usr/lib')
        add('up', tarfile.SYMTYPE, linkname='../outside')
        add('upup', tarfile.SYMTYPE, linkname='../../../../outside')
        add('absolute', tarfile.SYMTYPE, linkname=OUTSIDE)
        add('host-etc', tarfile.SYMTYPE, linkname='/etc')
        add('srv/deep/er/back', tarfile.SYMTYPE, linkname='../../../../outside')
        add('chain', tarfile.SYMTYPE, linkname='srv/deep/er/back')
        add('loop', tarfile.SYMTYPE, linkname='loop')
    return buffer.getvalue()


BASE = _base_layer()


def _outside_state() -> list:
    state = []
    for directory, dirnames, filenames in os.walk(SANDBOX):
        if directory == SANDBOX:
            dirnames[:] = [name for name in dirnames if name != os.path.basename(ROOT)]
            filenames = [name for name in filenames if name != os.path.basename(ROOT)]
        for name in sorted(dirnames + filenames):
            path = os.path.join(directory, name)
            info = os.lstat(path)
            state.append((os.path.relpath(path, SANDBOX), info.st_mode, info.st_size, info.st_mtime_ns))
    return sorted(state)


def _layer(data: bytes) -> Layer:
    return Layer(open_blob=lambda: io.BytesIO(data), digest=None, size=None, media_type=MEDIA_TAR)


def apply(data: bytes) -> None:
    os.mkdir(ROOT, 0o700)
    with RootfsBuilder(ROOT, max_size=MAX_SIZE) as builder:
        builder.apply_layer(_layer(BASE), label='base')
        builder.apply_layer(_layer(data), label='fuzzed')
        builder.finish()


os.mkdir(OUTSIDE)
with open(os.path.join(OUTSIDE, 'sentinel'), 'wb') as sentinel:
    sentinel.write(b'must stay\n')
with open('/etc/passwd', 'rb') as host_passwd:
    HOST_PASSWD = host_passwd.read()
OUTSIDE_STATE = _outside_state()


def test_one_input(data: bytes) -> None:
    try:
        typed_errors_only(apply, data)
    finally:
        assert _outside_state() == OUTSIDE_STATE, 'something was written outside the scratch root'
        with open('/etc/passwd', 'rb') as stream:
            assert stream.read() == HOST_PASSWD, 'the host /etc/passwd changed'
        _remove_root()


def _remove_root() -> None:
    if os.path.lexists(ROOT):
        os.chmod(ROOT, 0o700)
        for directory, dirnames, _filenames in os.walk(ROOT):
            for name in dirnames:  # a layer may leave directories without write or search permission
                path = os.path.join(directory, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o700)
        shutil.rmtree(ROOT)


if __name__ == '__main__':
    fuzz(test_one_input)
