# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fuzz our tar reader against Python's tarfile, the reader the applier used before it.

For any input, every entry our reader returns must be the entry tarfile returns at the same place,
as the applier used to see it (name, type, mode, owners, size, mtime to the nanosecond, link target,
device numbers, extended attributes, data with its holes). Where the two part, ours must have
stopped with a typed error (tarfile misreads damaged and contradictory archives); and when ours
reads an archive to its end, tarfile must have read the same entries and found the end clean.
"""

from __future__ import annotations

import base64
import io
import re
import tarfile
import typing as t
import urllib.parse

import atheris

from ansible_collections.virt.bootstrap.tests.fuzz._harness import fuzz

with atheris.instrument_imports(include=['ansible_collections.virt.bootstrap']):
    from ansible_collections.virt.bootstrap.plugins.module_utils._tar import TarReader
    from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError

# Data is compared for files up to this size (a sparse map can make a tiny input a huge file).
DATA_LIMIT = 1 << 22
_PAX_TIME = re.compile(r'(-?)([0-9]+)(?:\.([0-9]*))?', re.ASCII)
Seen = t.Tuple[t.Any, ...]


class _ShortReads(io.BytesIO):
    """Reads of every size from 1 byte up, in a cycle the input picks: the reader must join its buffer
    refills at any boundary (inputs are far smaller than its 1 MiB reads)."""

    _SIZES = (1, 7, 511, 512, 513, 4096, 100000)

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._turn = data[-1] if data else 0

    def read(self, size: t.Optional[int] = -1) -> bytes:
        self._turn += 1
        short = self._SIZES[self._turn % len(self._SIZES)]
        return super().read(short if size is None or size < 0 else min(size, short))


def ours(data: bytes) -> t.Tuple[t.List[Seen], t.Optional[BootstrapError]]:
    """What our reader returns, entry by entry, until the end or its typed error."""
    reader = TarReader(_ShortReads(data))
    entries: t.List[Seen] = []
    try:
        for entry in reader:
            content = None
            if entry.isreg() and entry.size <= DATA_LIMIT:
                content = b''.join(bytes(piece) for piece in reader.data(entry))
            entries.append((entry.name, entry.type, entry.mode, entry.uid, entry.gid,
                            entry.size if entry.isreg() else None, entry.mtime_ns, entry.linkname, entry.devmajor,
                            entry.devminor, entry.xattrs, content))
    except BootstrapError as exc:
        return entries, exc
    return entries, None


def reference(data: bytes, wanted: int) -> t.Tuple[t.List[Seen], t.Optional[str]]:
    """What tarfile returns for the first `wanted` entries, as the applier saw them, and whether it ended cleanly."""
    entries: t.List[Seen] = []
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode='r:', encoding='utf-8', errors='surrogateescape')
        while len(entries) <= wanted:
            member = archive.next()
            if member is None:
                # The applier's rule: tarfile takes a damaged header for the end, so the block it stopped at
                # must be zeros (or missing), and only zeros may follow.
                if data[archive.offset:].strip(b'\0'):
                    return entries, 'damaged header'
                return entries, None
            archive.members = []
            content = None
            if member.isreg() and member.size <= DATA_LIMIT and len(entries) < wanted:
                source = archive.extractfile(member)
                content = source.read() if source is not None else b''
            entries.append((member.name, member.type, member.mode, member.uid, member.gid,
                            member.size if member.isreg() else None, _mtime_ns(member), member.linkname,
                            member.devmajor, member.devminor, _xattrs(member), content))
    except Exception as exc:  # pylint: disable=broad-except
        return entries, '%s: %s' % (type(exc).__name__, exc)
    return entries, 'more entries'


def _mtime_ns(member: tarfile.TarInfo) -> t.Any:
    match = _PAX_TIME.fullmatch(member.pax_headers.get('mtime', '').strip())
    if match is None:
        if 'mtime' in member.pax_headers:
            return 'not a time'
        return member.mtime * 1_000_000_000
    sign, seconds, fraction = match.groups()
    ns = int(seconds) * 1_000_000_000 + int((fraction or '')[:9].ljust(9, '0'))
    return -ns if sign else ns


def _xattrs(member: tarfile.TarInfo) -> t.Any:
    found = []
    try:
        for key, value in member.pax_headers.items():
            if key.startswith('SCHILY.xattr.'):
                found.append((key[len('SCHILY.xattr.'):], value.encode('utf-8', 'surrogateescape')))
            elif key.startswith('LIBARCHIVE.xattr.'):
                name = urllib.parse.unquote(key[len('LIBARCHIVE.xattr.'):])
                found.append((name, base64.b64decode(value + '=' * (-len(value) % 4))))
    except ValueError:
        return 'not base64'
    return found


def test_one_input(data: bytes) -> None:
    our_entries, our_error = ours(data)
    wanted = len(our_entries)
    their_entries, their_error = reference(data, wanted)
    assert their_entries[:wanted] == our_entries, 'our reader and tarfile read entries differently: %r\nvs %r' % (
        our_entries, their_entries[:wanted])
    if our_error is None:
        assert their_error is None and len(their_entries) == wanted, \
            'our reader read the archive to its end, tarfile did not: %s' % their_error


if __name__ == '__main__':
    fuzz(test_one_input)
