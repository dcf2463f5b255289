# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The layer decoders and LayerData: the same bytes and hashes on this thread and in a second one,
with zlib and with python-isal, bounded pieces, and damage reported where it is read."""

from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import threading
import time
import typing as t
import zlib

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import _compression
from ansible_collections.virt.bootstrap.plugins.module_utils._compression import OUTPUT_CHUNK, LayerData
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import LayerError
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import compress

COMPRESSIONS = ('none', 'gzip', 'xz', 'bzip2', 'zstd')
# Data that compresses well and is not trivially periodic: 3 MiB, so it spans several pieces.
DATA = b''.join(hashlib.sha256(b'%d' % number).hexdigest().encode() + b'\n' for number in range(48000))


@functools.lru_cache(maxsize=None)
def packed(compression: str) -> bytes:
    return compress(DATA, compression)


@pytest.fixture(params=['program', 'zstandard'])
def zstd_decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each zstd test once with the zstd program (preferred when on PATH) and once with python-zstandard."""
    if request.param == 'program':
        if shutil.which('zstd') is None:
            pytest.skip('the zstd program is not installed (apt-get install zstd)')
    else:
        pytest.importorskip('zstandard', reason='python-zstandard is not installed')
        monkeypatch.setattr(_compression.shutil, 'which', lambda name: None)
    return t.cast(str, request.param)


@pytest.fixture(params=['zlib', 'isal'])
def inflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> t.Any:
    """Each gzip test once with zlib and once with python-isal (which the engine prefers when installed)."""
    if request.param == 'zlib':
        module: t.Any = zlib
    else:
        isal_zlib = pytest.importorskip('isal.isal_zlib', reason='python-isal is not installed (pip install isal)')
        module = isal_zlib
    monkeypatch.setattr(_compression, 'inflate_module', lambda: module)
    return module


def read_all(blob: bytes, threaded: bool, piece: int = -1) -> t.Tuple[bytes, str, str, t.List[int]]:
    """What LayerData gives for `blob`: the data, the blob's and the data's sha256, and the size of each read."""
    blob_hasher, data_hasher = hashlib.sha256(), hashlib.sha256()
    sizes = []
    pieces = []
    with LayerData(io.BytesIO(blob), blob_hasher, data_hasher, threaded=threaded) as data:
        while True:
            chunk = data.read(piece)
            if not chunk:
                break
            sizes.append(len(chunk))
            pieces.append(chunk)
        data.drain()
    return b''.join(pieces), blob_hasher.hexdigest(), data_hasher.hexdigest(), sizes


def total_and_largest_read(blob: bytes, threaded: bool) -> t.Tuple[int, int]:
    """How many bytes LayerData gives for `blob` when asked for all it has at each read, and the largest read."""
    total = largest = 0
    with LayerData(io.BytesIO(blob), threaded=threaded) as data:
        while True:
            chunk = data.read(-1)
            if not chunk:
                return total, largest
            total += len(chunk)
            largest = max(largest, len(chunk))


def decode_error(blob: bytes, threaded: bool) -> str:
    with pytest.raises(LayerError) as caught:
        read_all(blob, threaded)
    return str(caught.value)


@pytest.mark.parametrize('threaded', [False, True], ids=['same-thread', 'threaded'])
@pytest.mark.parametrize('compression', COMPRESSIONS)
def test_every_compression_gives_the_data_and_both_hashes(compression: str, threaded: bool) -> None:
    blob = packed(compression)
    data, blob_sum, data_sum, sizes = read_all(blob, threaded)
    assert data == DATA
    assert blob_sum == hashlib.sha256(blob).hexdigest()
    assert data_sum == hashlib.sha256(DATA).hexdigest()
    assert max(sizes) <= OUTPUT_CHUNK


@pytest.mark.parametrize('threaded', [False, True], ids=['same-thread', 'threaded'])
def test_gzip_members_and_zero_padding_read_as_gzipfile_reads_them(inflater: t.Any, threaded: bool) -> None:
    blob = gzip.compress(DATA[:1000], mtime=0) + bytes(7) + gzip.compress(DATA, mtime=0) + bytes(5000)
    assert read_all(blob, threaded)[0] == gzip.decompress(blob) == DATA[:1000] + DATA


@pytest.mark.parametrize('threaded', [False, True], ids=['same-thread', 'threaded'])
def test_gzip_damage_is_named_the_same_by_zlib_and_isal(inflater: t.Any, threaded: bool) -> None:
    good = gzip.compress(DATA, mtime=0)
    bad_crc = good[:-8] + bytes(byte ^ 0xff for byte in good[-8:-4]) + good[-4:]
    bad_length = good[:-4] + (len(DATA) + 1).to_bytes(4, 'little')
    assert decode_error(bad_crc, threaded) == 'corrupt or truncated data (gzip): CRC check failed'
    assert decode_error(bad_length, threaded).startswith('corrupt or truncated data (gzip): ')
    assert decode_error(good[:-100], threaded) == ('corrupt or truncated data (gzip): Compressed file ended before '
                                                   'the end-of-stream marker was reached')
    assert decode_error(good + b'garbage after the member', threaded).startswith('corrupt or truncated data (gzip): ')


@pytest.mark.parametrize('threaded', [False, True], ids=['same-thread', 'threaded'])
def test_a_gzip_bomb_comes_out_in_bounded_pieces(inflater: t.Any, threaded: bool) -> None:
    blob = gzip.compress(bytes(64 << 20), compresslevel=9, mtime=0)  # 64 MiB of zeros in ~64 KiB
    assert len(blob) < 1 << 20
    total, largest = total_and_largest_read(blob, threaded)
    assert total == 64 << 20
    assert largest <= OUTPUT_CHUNK


@pytest.mark.parametrize('threaded', [False, True], ids=['same-thread', 'threaded'])
@pytest.mark.parametrize('compression, module', [('xz', lzma), ('bzip2', bz2)])
def test_xz_and_bzip2_read_stream_after_stream_and_ignore_what_is_no_stream(compression: str, module: t.Any,
                                                                            threaded: bool) -> None:
    second = packed(compression)
    blob = module.compress(DATA[:5000]) + second + b'trailing bytes that are no stream'
    assert read_all(blob, threaded)[0] == module.decompress(blob[:-33]) == DATA[:5000] + DATA
    assert decode_error(second[:-20], threaded) == (
        'corrupt or truncated data (%s): Compressed file ended before the end-of-stream marker was reached'
        % compression)


# What each zstd decoder says of a frame cut short.
# (zstd 1.5.4 says "Read error (39) : premature end"; the wording is the program's, and may change.)
ZSTD_TRUNCATED = {'program': r'^corrupt or truncated data \(zstd\): zstd: \w.*end',
                  'zstandard': r'^corrupt or truncated data \(zstd\): zstd data ends in the middle of a frame$'}


@pytest.mark.parametrize('threaded', [False, True], ids=['same-thread', 'threaded'])
def test_zstd_frames_one_after_another_and_a_cut_frame_is_an_error(zstd_decoder: str, threaded: bool) -> None:
    zstandard = pytest.importorskip('zstandard')
    blob = zstandard.ZstdCompressor().compress(DATA[:3000]) + zstandard.ZstdCompressor().compress(DATA)
    assert read_all(blob, threaded)[0] == DATA[:3000] + DATA
    assert re.search(ZSTD_TRUNCATED[zstd_decoder], decode_error(blob[:-10], threaded))
    assert re.search(r'^corrupt or truncated data \(zstd\): \w', decode_error(blob + b'no frame', threaded))


@pytest.mark.parametrize('threaded', [False, True], ids=['same-thread', 'threaded'])
def test_a_zstd_bomb_comes_out_in_bounded_pieces(zstd_decoder: str, threaded: bool) -> None:
    zstandard = pytest.importorskip('zstandard')
    blob = zstandard.ZstdCompressor(level=19).compress(bytes(256 << 20))  # 256 MiB of zeros in ~8 KiB
    assert len(blob) < 1 << 16
    total, largest = total_and_largest_read(blob, threaded)
    assert (total, largest <= OUTPUT_CHUNK) == (256 << 20, True)


def children_of_this_process() -> t.List[t.Tuple[int, str]]:
    """(pid, command name) of this process's children, from /proc."""
    children = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/stat' % entry, 'rb') as stream:
                    fields = stream.read().decode('utf-8', 'replace')
            except OSError:
                continue
            name = fields[fields.index('(') + 1:fields.rindex(')')]
            parent = int(fields[fields.rindex(')') + 2:].split()[1])
            if parent == os.getpid():
                children.append((int(entry), name))
    return children


def test_the_zstd_program_is_gone_when_the_reader_stops_early(zstd_decoder: str) -> None:
    if zstd_decoder != 'program':
        pytest.skip('only the program leaves a process behind')
    zstandard = pytest.importorskip('zstandard')
    blob = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    with LayerData(io.BytesIO(blob), threaded=True) as data:
        assert data.read(10) == bytes(10)
        assert [name for _pid, name in children_of_this_process()] == ['zstd']
    assert children_of_this_process() == []


def test_reads_of_any_size_give_the_same_bytes() -> None:
    blob = packed('gzip')
    for piece in (1, 511, 512, 65536, OUTPUT_CHUNK + 1):
        assert read_all(blob, threaded=True, piece=piece)[0][:200000] == DATA[:200000]


class _FailingBlob(io.BytesIO):
    """A blob whose read fails after `good` bytes, as a disk or a connection fails: not damaged data."""

    def __init__(self, data: bytes, good: int) -> None:
        super().__init__(data)
        self._good = good

    def read(self, size: t.Optional[int] = -1) -> bytes:
        if self.tell() >= self._good:
            raise ConnectionResetError(104, 'Connection reset by peer')
        return super().read(min(size if size is not None and size >= 0 else 1 << 30, self._good - self.tell()))


@pytest.mark.parametrize('threaded', [False, True], ids=['same-thread', 'threaded'])
def test_a_failing_blob_passes_its_own_error_through(threaded: bool) -> None:
    blob = compress(os.urandom(1 << 20) + DATA, 'gzip')
    with pytest.raises(ConnectionResetError):
        with LayerData(_FailingBlob(blob, 600_000), threaded=threaded) as data:
            while data.read(65536):
                pass


def _decode_threads() -> t.List[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == 'layer-decode']


def test_closing_early_stops_the_decoding_thread_at_once() -> None:
    # 64 MiB of output waiting to be read: the thread is blocked on a full queue when the reader gives up.
    blob = gzip.compress(bytes(64 << 20), mtime=0)
    before = len(_decode_threads())
    with LayerData(io.BytesIO(blob), threaded=True) as data:
        assert data.read(10) == bytes(10)
        time.sleep(0.2)
        assert len(_decode_threads()) == before + 1
        started = time.monotonic()
    assert time.monotonic() - started < 2
    assert len(_decode_threads()) == before


def test_damage_is_raised_only_when_the_reader_gets_that_far() -> None:
    # The pieces before the damage come out whole; the error comes with the read that reaches it.
    good = gzip.compress(DATA, mtime=0)
    with LayerData(io.BytesIO(good[:len(good) // 2]), threaded=True) as data:
        start = data.read(100000)
        assert start == DATA[:len(start)]
        with pytest.raises(LayerError, match='Compressed file ended'):
            while data.read(65536):
                pass
    assert not _decode_threads()


def test_a_missing_zstandard_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    real_import = builtins.__import__

    def no_zstandard(name: str, *args: t.Any, **kwargs: t.Any) -> t.Any:
        if name == 'zstandard':
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_zstandard)
    monkeypatch.setattr(_compression.shutil, 'which', lambda name: None)
    with pytest.raises(LayerError, match='Debian/Ubuntu: zstd or python3-zstandard'):
        LayerData(io.BytesIO(b'\x28\xb5\x2f\xfd' + bytes(20)), threaded=True)


@pytest.mark.parametrize('threaded', [False, True], ids=['same-thread', 'threaded'])
def test_empty_and_tiny_blobs_end_at_once(threaded: bool) -> None:
    # The fuzzer's first input (an empty blob) once left the decoding thread waiting for an end never sent.
    assert read_all(b'', threaded)[:3] == (b'', hashlib.sha256(b'').hexdigest(), hashlib.sha256(b'').hexdigest())
    assert read_all(b'\x1f', threaded)[0] == b'\x1f'
    assert decode_error(b'\x1f\x8b', threaded) == ('corrupt or truncated data (gzip): Compressed file ended before '
                                                   'the end-of-stream marker was reached')
