# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""Streaming readers: hash what passes, detect compression by magic bytes, cap the size."""

from __future__ import annotations

import bz2
import gzip
import lzma
import typing as t
import zlib

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import HostileLayer, LayerError, SizeLimitExceeded

_MAGIC = (
    (b'\x1f\x8b', 'gzip'),
    (b'\xfd7zXZ\x00', 'xz'),
    (b'BZh', 'bzip2'),
    (b'\x28\xb5\x2f\xfd', 'zstd'),
)
MAGIC_LENGTH = 6


def detect_compression(head: bytes) -> str:
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return 'none'


class HashingReader:
    """Passes reads through, feeding every byte to a hasher and counting them."""

    def __init__(self, stream: t.BinaryIO, hasher: t.Any = None) -> None:
        self._stream = stream
        self.hasher = hasher
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if self.hasher is not None:
            self.hasher.update(data)
        self.bytes_read += len(data)
        return data

    def readable(self) -> bool:
        return True

    def drain(self, chunk_size: int = 1 << 20) -> None:
        while self.read(chunk_size):
            pass


class _PrefixedReader:
    """A reader that first returns bytes already taken from the stream to sniff them."""

    def __init__(self, head: bytes, stream: t.Any) -> None:
        self._head = head
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size is None or size < 0:
                data, self._head = self._head + self._stream.read(), b''
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._stream.read(size)

    def readable(self) -> bool:
        return True


class LimitedReader(HashingReader):
    """Counts decompressed bytes against a shared budget; raises once it is spent."""

    def __init__(self, stream: t.Any, budget: 'SizeBudget', hasher: t.Any = None) -> None:
        super().__init__(stream, hasher)
        self._budget = budget

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self._budget.spend(len(data))
        return data


class ForwardSeeker:
    """Makes a stream look seekable to tarfile, which then reads headers without copying buffers.

    tarfile only ever seeks forward when members are read in order; a backward seek is a bug.
    """

    def __init__(self, stream: t.Any, buffer_size: int = 1 << 20, max_read: t.Optional[int] = None) -> None:
        self._stream = stream
        # tarfile reads a long name or a PAX header in one read; a hostile one could fill the memory.
        self._max_read = max_read
        self._buffer = b''
        self._buffer_offset = 0
        self._buffer_size = buffer_size
        self._position = 0
        # What the last read returned: after tarfile reports the end, the block it took for the end.
        self.last_read = b''

    def read(self, size: int = -1) -> bytes:
        if self._max_read is not None and (size is None or size < 0 or size > self._max_read):
            raise HostileLayer('a tar header asks for %s bytes at once (a long name or PAX record); more than %d '
                               'is no real archive' % ('all' if size is None or size < 0 else size, self._max_read))
        if size is None or size < 0:
            data = self._buffer[self._buffer_offset:] + self._stream.read()
            self._buffer, self._buffer_offset = b'', 0
        elif size > len(self._buffer) - self._buffer_offset:
            pieces = [self._buffer[self._buffer_offset:]]
            have = len(pieces[0])
            more = b''
            while have < size:
                more = self._stream.read(max(size - have, self._buffer_size))
                if not more:
                    break
                pieces.append(more)
                have += len(more)
            # Keep what was read past `size` as the new buffer.
            surplus = have - size
            if surplus > 0:
                pieces[-1] = more[:len(more) - surplus]
                self._buffer, self._buffer_offset = more, len(more) - surplus
            else:
                self._buffer, self._buffer_offset = b'', 0
            data = b''.join(pieces)
        else:
            start = self._buffer_offset
            self._buffer_offset += size
            data = self._buffer[start:self._buffer_offset]
        self._position += len(data)
        self.last_read = data
        return data

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self._position
        if whence == 2 or offset < self._position:
            raise OSError('stream can only move forward (at %d, asked for %d)' % (self._position, offset))
        while self._position < offset:
            if not self.read(min(offset - self._position, self._buffer_size)):
                break
        return self._position

    def rest_is_zeros(self) -> bool:
        """Read to the end; True when only end-of-archive padding (zero bytes) follows."""
        while True:
            chunk = self.read(self._buffer_size)
            if not chunk:
                return True
            if chunk.count(0) != len(chunk):
                return False


class SizeBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, amount: int) -> None:
        self.used += amount
        if self.used > self.limit:
            raise SizeLimitExceeded(
                'layers expand to more than max_size (%d bytes); raise max_size if this image is really that big'
                % self.limit)


def read_up_to(stream: t.Any, size: int) -> bytes:
    """`size` bytes, or fewer only at the end: a reader may return less than asked for at any read."""
    data = b''
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def open_decompressed(stream: t.Any) -> t.Tuple[t.Any, str]:
    """Wrap a raw blob reader in the decompressor its first bytes call for."""
    head = read_up_to(stream, MAGIC_LENGTH)
    compression = detect_compression(head)
    raw = _PrefixedReader(head, stream)
    if compression == 'gzip':
        return gzip.GzipFile(fileobj=raw, mode='rb'), compression  # type: ignore[arg-type]
    if compression == 'xz':
        return lzma.LZMAFile(raw), compression  # type: ignore[arg-type]
    if compression == 'bzip2':
        return bz2.BZ2File(raw), compression  # type: ignore[arg-type]
    if compression == 'zstd':
        try:
            import zstandard
        except ImportError:
            raise LayerError('a zstd-compressed layer needs the Python package "zstandard" on the managed host '
                             '(Debian/Ubuntu: python3-zstandard; pip: zstandard)')
        return _ZstdReader(raw, zstandard.ZstdDecompressor()), compression
    return raw, compression


class _ZstdReader:
    """zstd frames one after another, decompressed in small steps; a frame cut short is an error.

    zstandard's stream_reader ends quietly at a truncated frame. A zstd block of a few bytes can
    expand to 128 KiB, so input goes in small pieces to keep each step's output bounded.
    """

    _STEP = 2048

    def __init__(self, raw: t.Any, context: t.Any) -> None:
        self._raw = raw
        self._context = context
        self._frame: t.Any = None
        self._input = b''
        self._output = b''
        self._output_offset = 0
        self._finished = False

    def read(self, size: int = -1) -> bytes:
        while self._output_offset >= len(self._output):
            if self._finished:
                return b''
            self._output, self._output_offset = self._step(), 0
        end = len(self._output) if size is None or size < 0 else self._output_offset + size
        data = self._output[self._output_offset:end]
        self._output_offset += len(data)
        return data

    def readable(self) -> bool:
        return True

    def _step(self) -> bytes:
        if not self._input:
            self._input = self._raw.read(1 << 16)
            if not self._input:
                if self._frame is not None:
                    raise EOFError('zstd data ends in the middle of a frame')
                self._finished = True
                return b''
        piece, self._input = self._input[:self._STEP], self._input[self._STEP:]
        if self._frame is None:
            self._frame = self._context.decompressobj()
        output = self._frame.decompress(piece)
        if self._frame.eof:
            # The next frame starts with what this one did not use.
            self._input = self._frame.unused_data + self._input
            self._frame = None
        return output


# zlib.error is what gzip raises for a damaged deflate stream; it is no OSError.
DECOMPRESSION_ERRORS: t.Tuple[t.Type[BaseException], ...] = (EOFError, OSError, lzma.LZMAError, ValueError, zlib.error)


def open_layer_data(stream: t.Any) -> t.Tuple[t.Any, str]:
    """Like open_decompressed, but damaged compressed data raises LayerError when it is read.

    Errors of `stream` itself pass through as they are: a failing disk or connection is not damaged data.
    """
    source = _WatchedReader(stream)
    decompressed, compression = open_decompressed(source)
    return _DamageReporter(decompressed, compression, source), compression


class _WatchedReader:
    """Remembers that reading the underlying stream failed, so that failure is not blamed on the data."""

    def __init__(self, stream: t.Any) -> None:
        self._stream = stream
        self.failed = False

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except BaseException:
            self.failed = True
            raise

    def readable(self) -> bool:
        return True


class _DamageReporter:
    """Reads decompressed data, reporting a decompressor's complaint about its input as LayerError."""

    def __init__(self, stream: t.Any, compression: str, source: _WatchedReader) -> None:
        self._stream = stream
        self._compression = compression
        self._source = source

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except LayerError:
            raise
        except Exception as exc:
            # zstandard.ZstdError has no base class we could name without importing zstandard.
            damaged = isinstance(exc, DECOMPRESSION_ERRORS) or type(exc).__name__ == 'ZstdError'
            if self._source.failed or not damaged:
                raise
            raise LayerError('corrupt or truncated data (%s): %s' % (self._compression, exc or type(exc).__name__)) \
                from exc

    def readable(self) -> bool:
        return True
