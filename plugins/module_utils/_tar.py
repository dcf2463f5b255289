# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""A streaming tar reader for the layer applier: uncompressed tar bytes in, entries and their data out.

It reads what Python's tarfile reads in a layer (ustar, v7, old GNU and GNU long names and links,
PAX extended and global headers, the four kinds of GNU sparse files) and reads it the same way, in
one pass, with memory bounded by its read size and MAX_HEADER_READ. Where tarfile would misread an
archive (a damaged header taken for the end, records that contradict each other, a sparse map that
overlaps itself) it refuses it with a typed error instead.

File data comes out as memoryview slices of the reader's own buffer, valid until the next read.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import typing as t
import urllib.parse
import zlib

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import HostileLayer, LayerError

BLOCK = 512
READ_SIZE = 1 << 20
# A long name, a PAX header or a sparse map is read whole; a hostile one could fill the memory.
MAX_HEADER_READ = 8 << 20

REGTYPE = b'0'
AREGTYPE = b'\0'
LNKTYPE = b'1'
SYMTYPE = b'2'
CHRTYPE = b'3'
BLKTYPE = b'4'
DIRTYPE = b'5'
FIFOTYPE = b'6'
CONTTYPE = b'7'
GNU_SPARSE = b'S'
REGULAR_TYPES = frozenset((REGTYPE, AREGTYPE, CONTTYPE, GNU_SPARSE))
# Kinds of entries tarfile reads no data for, whatever size their header gives.
_DATALESS_TYPES = frozenset((LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE))
_LONG_NAME = b'L'
_LONG_LINK = b'K'
_PAX_TYPES = (b'x', b'X')  # 'X': Solaris's name for the same header
_PAX_GLOBAL = b'g'
_NO_PREFIX_TYPES = (_LONG_NAME, _LONG_LINK, GNU_SPARSE)  # their prefix field holds other things

_HEADER = struct.Struct('100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x')
_CHECKSUM_SPACES = 8 * 0x20
_OLD_SPARSE = struct.Struct('12s12s')
_OLD_SPARSE_IN_HEADER = 4
_OLD_SPARSE_IN_EXTENSION = 21
# Global PAX records that would give every later entry the same name, link or size: no writer does that.
_GLOBAL_REFUSED = ('path', 'linkpath', 'size', 'GNU.sparse.')
# What a global record can change in the tree; the rest (comment, atime, uname...) is dropped, so that a
# hostile archive cannot grow what every later entry copies. No writer sets more than a few.
_GLOBAL_KEPT = ('uid', 'gid', 'mtime', 'hdrcharset', 'SCHILY.xattr.', 'LIBARCHIVE.xattr.')
MAX_GLOBAL_RECORDS = 64
_PAX_TIME = re.compile(r'(-?)([0-9]+)(?:\.([0-9]*))?', re.ASCII)
# tarfile before Python 3.12 reads a format 0.0 sparse map with these over the raw PAX header, where '.'
# matches any character and a match may lie inside another record's value.
_LOOSE_SPARSE_OFFSET = re.compile(br'\d+ GNU.sparse.offset=(\d+)\n')
_LOOSE_SPARSE_NUMBYTES = re.compile(br'\d+ GNU.sparse.numbytes=(\d+)\n')
_ZEROS = memoryview(bytes(READ_SIZE))
_TRUNCATED = 'corrupt or truncated data (tar): unexpected end of data'

Xattrs = t.List[t.Tuple[str, bytes]]
# name, mode, uid, gid, size, mtime, type, linkname, devmajor, devminor, prefix, the block, real size ('S')
_Header = t.Tuple[bytes, int, int, int, int, int, bytes, bytes, int, int, bytes, bytes, int]
SparseMap = t.List[t.Tuple[int, int]]


class TarEntry:
    """One entry as the applier uses it. `size` is the file's full size (holes included)."""

    __slots__ = ('name', 'linkname', 'type', 'mode', 'uid', 'gid', 'size', 'mtime_ns', 'devmajor', 'devminor',
                 'xattrs', 'sparse', 'offset', 'stored')

    def __init__(self) -> None:
        self.name = ''
        self.linkname = ''
        self.type = REGTYPE
        self.mode = 0
        self.uid = 0
        self.gid = 0
        self.size = 0
        self.mtime_ns = 0
        self.devmajor = 0
        self.devminor = 0
        self.xattrs: Xattrs = []
        # (offset, length) of the data segments of a sparse file, in order; None for any other entry.
        self.sparse: t.Optional[SparseMap] = None
        # Where its first header starts in the stream, and how many data bytes it stores there.
        self.offset = 0
        self.stored = 0

    def isreg(self) -> bool:
        return self.type in REGULAR_TYPES


class _BadHeader(Exception):
    """A header block whose checksum or number fields are wrong (the text is tarfile's word for it)."""


class TarReader:
    """Reads a tar stream once, entry by entry: `for entry in reader`, and `reader.data(entry)` for its data.

    Data not read before the next entry is skipped. Reading ends at the end-of-archive block (or at
    the end of the stream on a header boundary); only zeros may follow it.
    """

    def __init__(self, stream: t.Any, max_header_read: int = MAX_HEADER_READ) -> None:
        self._stream = stream
        self._max_header_read = max_header_read
        self._buffer = b''
        self._view = memoryview(self._buffer)
        self._position = 0  # in _buffer
        self._read_total = 0  # bytes taken from the stream so far
        self._pending = 0  # data (and padding) of the current entry still to skip
        self._current: t.Optional[TarEntry] = None
        self._globals: t.Dict[str, str] = {}
        self._ended = False

    def __iter__(self) -> 'TarReader':
        return self

    def __next__(self) -> TarEntry:
        entry = self.next()
        if entry is None:
            raise StopIteration
        return entry

    @property
    def offset(self) -> int:
        """Where the reader is in the stream: after the end, where the end-of-archive block starts."""
        return self._read_total - (len(self._buffer) - self._position)

    # -- entries ---------------------------------------------------------------------------------

    def next(self) -> t.Optional[TarEntry]:
        """The next entry, or None at the end of the archive."""
        if self._pending:
            self._skip(self._pending)
            self._pending = 0
        self._current = None
        if self._ended:
            return None
        # A global header's records stay for all later entries; like tarfile, the header after it must be there.
        start = entry_start = self.offset
        long_name: t.Optional[str] = None
        long_link: t.Optional[str] = None
        pax: t.Optional[t.List[t.Tuple[str, str]]] = None
        pax_body = b''
        while True:
            header_offset = self.offset
            fields = self._header(header_offset, extended=header_offset != start)
            if fields is None:
                self._end(header_offset)
                return None
            kind = fields[6]
            if kind == _LONG_NAME or kind == _LONG_LINK:
                text = _text(self._extension_data(fields, header_offset).partition(b'\0')[0])
                if (long_name if kind == _LONG_NAME else long_link) is not None:
                    raise HostileLayer('the entry at byte %d has two GNU long %s headers'
                                       % (entry_start, 'name' if kind == _LONG_NAME else 'link'))
                if kind == _LONG_NAME:
                    long_name = text
                else:
                    long_link = text
            elif kind in _PAX_TYPES:
                if pax is not None:
                    raise HostileLayer('the entry at byte %d has two PAX headers' % entry_start)
                pax_body = self._extension_data(fields, header_offset)
                pax = _pax_records(pax_body, header_offset)
            elif kind == _PAX_GLOBAL:
                if long_name is not None or long_link is not None or pax is not None:
                    raise HostileLayer('a global PAX header at byte %d comes between an entry and its own '
                                       'extended headers' % header_offset)
                self._set_globals(_pax_records(self._extension_data(fields, header_offset), header_offset),
                                  header_offset)
                entry_start = self.offset
            else:
                entry = self._entry(fields, entry_start, long_name, long_link, pax, pax_body)
                self._current = entry
                return entry

    def data(self, entry: TarEntry) -> t.Iterator[memoryview]:
        """The data of `entry` (the entry last returned), holes of a sparse file as zeros, in pieces."""
        if entry is not self._current:
            raise ValueError('the data of an entry can only be read before the next entry')
        self._current = None
        if entry.sparse is None:
            yield from self._stored(entry.stored)
            return
        position = 0
        for offset, length in entry.sparse:
            yield from _zeros(offset - position)
            yield from self._stored(length)
            position = offset + length
        yield from _zeros(entry.size - position)

    def _entry(self, fields: _Header, start: int, long_name: t.Optional[str],
               long_link: t.Optional[str], pax: t.Optional[t.List[t.Tuple[str, str]]], pax_body: bytes) -> TarEntry:
        entry = TarEntry()
        raw_name, entry.mode, entry.uid, entry.gid, size, mtime, kind, linkname, entry.devmajor, entry.devminor, \
            prefix, block, real_size = fields
        entry.offset = start
        name = _text(raw_name.partition(b'\0')[0])
        # As tarfile: v7 writes a directory as a regular file whose name ends in '/'.
        if kind == AREGTYPE and name.endswith('/'):
            kind = DIRTYPE
        if kind == DIRTYPE:
            name = name.rstrip('/')
        prefix = prefix.partition(b'\0')[0]
        if prefix and kind not in _NO_PREFIX_TYPES:
            name = _text(prefix) + '/' + name
            if kind == DIRTYPE:
                name = name.rstrip('/')  # tarfile strips a directory's name again once it has its prefix
        entry.name = name
        entry.type = kind
        entry.linkname = _text(linkname.partition(b'\0')[0])
        entry.mtime_ns = mtime * 1_000_000_000
        if size < 0:
            raise HostileLayer('the entry at byte %d has a negative size' % start)
        entry.size = size
        entry.stored = 0 if kind in _DATALESS_TYPES else size
        if kind == GNU_SPARSE:
            entry.size = real_size
            self._old_sparse(entry, block, start)
        if long_name is not None:
            entry.name = long_name[:-1] if kind == DIRTYPE and long_name.endswith('/') else long_name
        if long_link is not None:
            entry.linkname = long_link
        if pax is not None or self._globals:
            records = dict(self._globals)
            records.update(pax or ())
            self._apply_pax(entry, records, pax or [], pax_body, long_name is not None, long_link is not None)
        self._pending = _blocks(entry.stored)
        return entry

    # -- PAX ------------------------------------------------------------------------------------

    def _set_globals(self, records: t.List[t.Tuple[str, str]], offset: int) -> None:
        for key, value in records:
            if key.startswith(_GLOBAL_REFUSED):
                raise HostileLayer('the global PAX header at byte %d sets %s for every entry after it'
                                   % (offset, _shown(key)))
            if key.startswith(_GLOBAL_KEPT):
                self._globals[key] = value
        if len(self._globals) > MAX_GLOBAL_RECORDS:
            raise HostileLayer('the global PAX headers up to byte %d set %d records for every entry after them; '
                               'no real archive sets more than %d' % (offset, len(self._globals), MAX_GLOBAL_RECORDS))

    def _apply_pax(self, entry: TarEntry, records: t.Dict[str, str], own: t.List[t.Tuple[str, str]], own_body: bytes,
                   has_long_name: bool, has_long_link: bool) -> None:
        """Fields from PAX records, in tarfile's order (a later record for the same field wins)."""
        if has_long_name and ('path' in records or 'GNU.sparse.name' in records):
            raise HostileLayer('the entry at byte %d has both a GNU long name and a PAX path' % entry.offset)
        if has_long_link and 'linkpath' in records:
            raise HostileLayer('the entry at byte %d has both a GNU long link and a PAX linkpath' % entry.offset)
        header_size = entry.size
        sparse_size = None
        for key, value in records.items():
            if key == 'path':
                entry.name = value.rstrip('/')
            elif key == 'GNU.sparse.name':
                entry.name = value
            elif key == 'linkpath':
                entry.linkname = value
            elif key == 'size':
                entry.size = entry.stored = _pax_size(value, key, entry)
                if entry.type in _DATALESS_TYPES:
                    entry.stored = 0
            elif key in ('GNU.sparse.size', 'GNU.sparse.realsize'):
                entry.size = sparse_size = _pax_size(value, key, entry)
            elif key == 'uid':
                entry.uid = _pax_int(value, key, entry)
            elif key == 'gid':
                entry.gid = _pax_int(value, key, entry)
            elif key == 'mtime':
                entry.mtime_ns = _pax_time(value, entry)
        entry.xattrs = _xattrs(records, entry)
        if 'GNU.sparse.map' in records or 'GNU.sparse.size' in records or \
                (records.get('GNU.sparse.major') == '1' and records.get('GNU.sparse.minor') == '0'):
            if entry.type == GNU_SPARSE or 'size' in records or entry.type not in REGULAR_TYPES:
                raise HostileLayer('entry %s mixes a PAX sparse map with %s'
                                   % (_shown(entry.name), 'a GNU sparse header' if entry.type == GNU_SPARSE
                                      else 'a PAX size' if 'size' in records else 'a type that holds no data'))
            if sparse_size is None:
                raise HostileLayer('entry %s has a PAX sparse map but no real size' % _shown(entry.name))
            entry.stored = header_size
            self._pax_sparse(entry, records, own, own_body)
        elif sparse_size is not None or (entry.type == GNU_SPARSE and 'size' in records):
            raise HostileLayer('entry %s has a PAX sparse size but no PAX sparse map' % _shown(entry.name))

    def _pax_sparse(self, entry: TarEntry, records: t.Dict[str, str], own: t.List[t.Tuple[str, str]],
                    own_body: bytes) -> None:
        if 'GNU.sparse.map' in records:  # format 0.1
            numbers = [_sparse_number(text, entry) for text in records['GNU.sparse.map'].split(',')]
        elif 'GNU.sparse.size' in records:  # format 0.0: one record for each number, in order
            offset_texts = [value for key, value in own if key == 'GNU.sparse.offset']
            length_texts = [value for key, value in own if key == 'GNU.sparse.numbytes']
            if [found.decode('ascii') for found in _LOOSE_SPARSE_OFFSET.findall(own_body)] != offset_texts or \
                    [found.decode('ascii') for found in _LOOSE_SPARSE_NUMBYTES.findall(own_body)] != length_texts:
                raise HostileLayer('the sparse records of entry %s read differently when looked for in the raw '
                                   'header, as tarfile before Python 3.12 does' % _shown(entry.name))
            offsets = [_sparse_number(value, entry) for value in offset_texts]
            lengths = [_sparse_number(value, entry) for value in length_texts]
            if len(offsets) != len(lengths):
                raise HostileLayer('entry %s has %d sparse offsets for %d lengths'
                                   % (_shown(entry.name), len(offsets), len(lengths)))
            numbers = [number for pair in zip(offsets, lengths) for number in pair]
        else:  # format 1.0: the map is in the data, before the file's own bytes
            numbers = self._sparse_map_in_data(entry)
        if len(numbers) % 2:
            raise HostileLayer('the sparse map of entry %s has an odd count of numbers' % _shown(entry.name))
        entry.sparse = _checked_map(list(zip(numbers[::2], numbers[1::2])), entry)

    def _sparse_map_in_data(self, entry: TarEntry) -> t.List[int]:
        text = b''
        used = 0
        count: t.Optional[int] = None
        numbers: t.List[int] = []
        while count is None or len(numbers) < 2 * count:
            if b'\n' not in text:
                if used + BLOCK > min(entry.stored, self._max_header_read):
                    if used + BLOCK > self._max_header_read:
                        _too_big(used + BLOCK, self._max_header_read)
                    raise HostileLayer('the sparse map of entry %s runs past its data' % _shown(entry.name))
                block = self._take(BLOCK)
                if len(block) < BLOCK:
                    raise LayerError(_TRUNCATED)
                used += BLOCK
                text += block
                continue
            line, text = text.split(b'\n', 1)
            number = _sparse_number(_text(line), entry)
            if count is None:
                count = number
            else:
                numbers.append(number)
        entry.stored -= used
        return numbers

    # -- old GNU sparse ----------------------------------------------------------------------------

    def _old_sparse(self, entry: TarEntry, block: bytes, start: int) -> None:
        """The map of a GNU 'S' entry: 4 pairs in the header, 21 more in each extension block after it."""
        pairs = _old_sparse_pairs(block, 386, _OLD_SPARSE_IN_HEADER, start)
        extended = block[482]
        read = 0
        while extended:
            read += BLOCK
            if read > self._max_header_read:
                _too_big(read, self._max_header_read)
            extension = self._take(BLOCK)
            if len(extension) < BLOCK:
                raise LayerError(_TRUNCATED)
            # As tarfile reads them: a pair of an extension block counts only when neither number is zero.
            pairs.extend(pair for pair in _old_sparse_pairs(extension, 0, _OLD_SPARSE_IN_EXTENSION, start)
                         if pair[0] and pair[1])
            extended = extension[504]
        # Unused slots are zeros; tarfile's map leaves them out too.
        entry.sparse = _checked_map([pair for pair in pairs if pair != (0, 0)], entry)

    # -- blocks ---------------------------------------------------------------------------------

    def _header(self, offset: int, extended: bool) -> t.Optional[_Header]:
        """The fields of the header block at `offset` (the block itself last), or None at the end of the archive."""
        block = self._take(BLOCK)
        if len(block) == BLOCK and block.count(0) != BLOCK:
            try:
                return _parse_header(block)
            except _BadHeader as exc:
                if offset == 0:
                    raise LayerError('corrupt or truncated data (tar): %s' % exc) from None
                raise LayerError('damaged tar header at byte %d of the uncompressed layer' % offset) from None
        if extended:
            if len(block) < BLOCK:
                raise LayerError(_TRUNCATED)
            raise LayerError('damaged tar header at byte %d of the uncompressed layer' % offset)
        if offset == 0 and len(block) < BLOCK:
            raise LayerError('corrupt or truncated data (tar): %s' % ('truncated header' if block else 'empty file'))
        if block.count(0) != len(block):
            raise LayerError('damaged tar header at byte %d of the uncompressed layer' % offset)
        return None

    def _end(self, offset: int) -> None:
        """After the end-of-archive block (or the end of the stream): only zero padding may follow."""
        self._ended = True
        while True:
            rest = self._view[self._position:]
            if rest and rest.tobytes().count(0) != len(rest):
                raise LayerError('damaged tar header at byte %d of the uncompressed layer' % offset)
            self._position = len(self._buffer)
            if not self._refill():
                return

    def _extension_data(self, fields: _Header, offset: int) -> bytes:
        """The body of a long-name or PAX header, whose padding must be zeros (tarfile reads into it)."""
        size = fields[4]
        if size < 0:
            raise HostileLayer('the extended header at byte %d has a negative size' % offset)
        padded = _blocks(size)
        if padded > self._max_header_read:
            _too_big(padded, self._max_header_read)
        body = self._take(padded)
        if len(body) < padded:
            raise LayerError(_TRUNCATED)
        if body.count(0, size) != padded - size:
            raise HostileLayer('the extended header at byte %d has data past its size' % offset)
        return body[:size]

    def _refill(self) -> bool:
        """A new buffer from the stream (the old one fully used); False at the end of the stream."""
        chunk = self._stream.read(READ_SIZE)
        self._read_total += len(chunk)
        self._buffer, self._view, self._position = chunk, memoryview(chunk), 0
        return bool(chunk)

    def _take(self, size: int) -> bytes:
        """`size` bytes as one bytes object, or fewer at the end of the stream."""
        end = self._position + size
        if end <= len(self._buffer):
            data = self._buffer[self._position:end]
            self._position = end
            return data
        pieces = [self._buffer[self._position:]]
        missing = size - len(pieces[0])
        self._position = len(self._buffer)
        while missing > 0 and self._refill():
            piece = self._buffer[:missing]
            pieces.append(piece)
            self._position = len(piece)
            missing -= len(piece)
        return b''.join(pieces)

    def _stored(self, size: int) -> t.Iterator[memoryview]:
        while size:
            if self._position == len(self._buffer) and not self._refill():
                raise LayerError(_TRUNCATED)
            end = min(len(self._buffer), self._position + size)
            piece = self._view[self._position:end]
            size -= end - self._position
            self._pending -= end - self._position
            self._position = end
            yield piece

    def _skip(self, size: int) -> None:
        while size:
            if self._position == len(self._buffer) and not self._refill():
                raise LayerError(_TRUNCATED)
            step = min(len(self._buffer) - self._position, size)
            self._position += step
            size -= step


def check_header(block: bytes) -> None:
    """Raise LayerError unless `block` is a whole tar header with a right checksum: the first look at a file."""
    if len(block) != BLOCK or block.count(0) == BLOCK:
        raise LayerError('no tar header in the first %d bytes' % BLOCK)
    try:
        _parse_header(block)
    except _BadHeader as exc:
        raise LayerError(str(exc)) from None


# -- header fields ------------------------------------------------------------------------------------


def _parse_header(block: bytes) -> _Header:
    """The fields of a header block, its numbers read, as tarfile's frombuf reads them."""
    name, mode, uid, gid, size, mtime, checksum, kind, linkname, _magic, _version, _uname, _gname, devmajor, \
        devminor, prefix = _HEADER.unpack(block)
    numeric = (checksum, mode, uid, gid, size, mtime, devmajor, devminor)
    try:
        # Octal text, as nearly every writer writes it: one pass; anything else goes field by field.
        numbers = [int(field.partition(b'\0')[0] or b'0', 8) for field in numeric]
    except ValueError:
        numbers = [_number(field) for field in numeric]
    unsigned = _byte_sum(block) - sum(checksum) + _CHECKSUM_SPACES
    if numbers[0] != unsigned:
        # Some old tars summed signed chars.
        high = sum(1 for byte in block[:148] + block[156:] if byte >= 0x80)
        if numbers[0] != unsigned - 256 * high:
            raise _BadHeader('bad checksum')
    real_size = _number(block[483:495]) if kind == GNU_SPARSE else 0
    return (name, numbers[1], numbers[2], numbers[3], numbers[4], numbers[5], kind, linkname, numbers[6], numbers[7],
            prefix, block, real_size)


def _byte_sum(block: bytes) -> int:
    """The sum of the bytes of a 512-byte block, five times faster than sum(): the low half of Adler-32 is
    1 + the sum of the bytes modulo 65521, and the sum of 256 bytes (at most 65280) never reaches that."""
    return (zlib.adler32(block[:256]) & 0xffff) + (zlib.adler32(block[256:]) & 0xffff) - 2


def _number(field: bytes) -> int:
    """A numeric header field as tarfile reads it: octal text up to a NUL, or GNU base-256."""
    lead = field[0]
    if lead == 0x80 or lead == 0xff:
        value = int.from_bytes(field[1:], 'big')
        return value - (1 << (8 * (len(field) - 1))) if lead == 0xff else value
    digits = field.partition(b'\0')[0]
    try:
        return int(digits, 8)
    except ValueError:
        if digits.strip():
            raise _BadHeader('invalid header') from None
        return 0


def _text(raw: bytes) -> str:
    return raw.decode('utf-8', 'surrogateescape')


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _shown(text: str) -> str:
    return repr(text if len(text) <= 300 else text[:300] + '...')


def _too_big(size: int, limit: int) -> t.NoReturn:
    raise HostileLayer('a tar header asks for %d bytes at once (a long name or PAX record); more than %d '
                       'is no real archive' % (size, limit))


def _old_sparse_pairs(block: bytes, start: int, count: int, offset: int) -> SparseMap:
    pairs = []
    for index in range(count):
        try:
            pair = _OLD_SPARSE.unpack_from(block, start + 24 * index)
            pairs.append((_number(pair[0]), _number(pair[1])))
        except _BadHeader:
            raise HostileLayer('the GNU sparse map of the entry at byte %d is damaged' % offset) from None
    return pairs


def _checked_map(pairs: SparseMap, entry: TarEntry) -> SparseMap:
    """Segments in order, apart, inside the file and inside the data stored for it."""
    end = stored = 0
    for offset, length in pairs:
        if offset < end or length < 0:
            raise HostileLayer('the sparse map of entry %s has segments out of order or overlapping'
                               % _shown(entry.name))
        end = offset + length
        stored += length
    if end > entry.size or stored > entry.stored:
        raise HostileLayer('the sparse map of entry %s reaches past %s' % (
            _shown(entry.name), 'the file\'s size' if end > entry.size else 'the data stored for it'))
    return pairs


# -- PAX records -------------------------------------------------------------------------------------


def _pax_records(body: bytes, offset: int) -> t.List[t.Tuple[str, str]]:
    """'LENGTH KEY=VALUE\\n' records, in order; anything else in the body is damage."""
    records = []
    position = 0
    while position < len(body):
        space = body.find(b' ', position, position + 20)
        length_text = body[position:space]
        if space < 0 or not length_text.isdigit():
            raise _damaged_pax(offset, position)
        end = position + int(length_text)
        equals = body.find(b'=', space + 1, end)
        if end > len(body) or equals <= space + 1 or body[end - 1:end] != b'\n':
            raise _damaged_pax(offset, position)
        records.append((_text(body[space + 1:equals]), _text(body[equals + 1:end - 1])))
        position = end
    return records


def _damaged_pax(offset: int, position: int) -> LayerError:
    return LayerError('damaged PAX header at byte %d of the uncompressed layer (record at byte %d of it)'
                      % (offset, position))


def _unwritable(entry: TarEntry, why: str) -> LayerError:
    return LayerError('entry %s cannot be written: %s' % (_shown(entry.name), why))


def _pax_int(value: str, key: str, entry: TarEntry) -> int:
    if len(value) > _MAX_DIGITS:
        raise _unwritable(entry, 'PAX %s %s is out of range' % (key, _shown(value)))
    try:
        return int(value)
    except ValueError:
        raise _unwritable(entry, 'PAX %s %s is not a number' % (key, _shown(value))) from None


def _pax_size(value: str, key: str, entry: TarEntry) -> int:
    size = _pax_int(value, key, entry)
    if size < 0:
        raise HostileLayer('entry %s has a negative PAX %s' % (_shown(entry.name), key))
    return size


# No size, offset or time a tar holds needs more digits (2**64 has 20); int() refuses over 4,300 with ValueError.
_MAX_DIGITS = 24


def _sparse_number(text: str, entry: TarEntry) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > _MAX_DIGITS:
        raise HostileLayer('the sparse map of entry %s holds %s, which is no size' % (_shown(entry.name), _shown(text)))
    return int(text)


def _pax_time(value: str, entry: TarEntry) -> int:
    # Integer nanoseconds: a float cannot hold the nanoseconds of today's dates.
    match = _PAX_TIME.fullmatch(value.strip())
    if match is None:
        raise _unwritable(entry, 'PAX mtime %s is not a time' % _shown(value))
    sign, seconds, fraction = match.groups()
    if len(seconds) > _MAX_DIGITS:
        raise _unwritable(entry, 'PAX mtime %s is out of range' % _shown(value))
    ns = int(seconds) * 1_000_000_000 + int((fraction or '')[:9].ljust(9, '0'))
    return -ns if sign else ns


def _xattrs(records: t.Dict[str, str], entry: TarEntry) -> Xattrs:
    """Extended attributes in GNU tar's form (SCHILY.xattr.NAME=raw value) and libarchive's (base64)."""
    found = []
    for key, value in records.items():
        if key.startswith('SCHILY.xattr.'):
            found.append((key[len('SCHILY.xattr.'):], value.encode('utf-8', 'surrogateescape')))
        elif key.startswith('LIBARCHIVE.xattr.'):
            # libarchive percent-encodes the name and leaves the padding out of the base64 value.
            name = urllib.parse.unquote(key[len('LIBARCHIVE.xattr.'):])
            try:
                found.append((name, base64.b64decode(value + '=' * (-len(value) % 4))))
            except (binascii.Error, ValueError) as exc:
                raise _unwritable(entry, 'extended attribute %s: %s' % (_shown(name), exc)) from None
    return found


def _zeros(size: int) -> t.Iterator[memoryview]:
    while size > 0:
        piece = _ZEROS[:min(size, len(_ZEROS))]
        size -= len(piece)
        yield piece
