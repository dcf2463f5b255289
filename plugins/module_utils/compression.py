# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streaming readers: hash what passes, detect compression by magic bytes, cap the size."""

from __future__ import annotations

import bz2
import gzip
import lzma
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import LayerError, SizeLimitExceeded

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


def open_decompressed(stream: t.Any) -> t.Tuple[t.Any, str]:
    """Wrap a raw blob reader in the decompressor its first bytes call for."""
    head = b''
    while len(head) < MAGIC_LENGTH:
        chunk = stream.read(MAGIC_LENGTH - len(head))
        if not chunk:
            break
        head += chunk
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
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True), compression
    return raw, compression


DECOMPRESSION_ERRORS: t.Tuple[t.Type[BaseException], ...] = (EOFError, OSError, lzma.LZMAError, ValueError)
