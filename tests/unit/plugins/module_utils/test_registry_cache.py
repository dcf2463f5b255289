# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The blob cache and the fetcher, with a stand-in for the registry's download."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, DigestMismatch
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.cache import (
    STALE_PARTIAL_SECONDS,
    BlobCache,
    BlobFetcher,
)

BLOB = os.urandom(200 * 1024)
DIGEST = 'sha256:' + hashlib.sha256(BLOB).hexdigest()


def serve(data, chunk=16 * 1024, gate=None):
    """A download function handing `data` out in chunks; `gate` (an Event) holds back all but the first."""
    calls = []

    def download(digest, write, offset, cancelled):
        calls.append(digest)
        for start in range(offset, len(data), chunk):
            if start and gate is not None:
                gate.wait(10)
            write(data[start:start + chunk])
        return len(data)
    download.calls = calls
    return download


def read_all(stream):
    with stream:
        return b''.join(iter(lambda: stream.read(7000), b''))


def test_a_downloaded_blob_is_read_while_it_arrives_and_then_cached(tmp_path):
    cache = BlobCache(str(tmp_path / 'cache'))
    gate = threading.Event()
    fetcher = BlobFetcher(cache, serve(BLOB, gate=gate))
    fetcher.prefetch([(DIGEST, len(BLOB))])
    stream = fetcher.open(DIGEST, len(BLOB))
    first = stream.read(16 * 1024)  # there before the rest is let through
    assert first == BLOB[:16 * 1024]
    assert not cache.has(DIGEST)
    gate.set()
    assert first + read_all(stream) == BLOB
    fetcher.close()
    assert cache.has(DIGEST, len(BLOB))
    assert os.listdir(tmp_path / 'cache' / 'partial') == []


def test_a_cached_blob_is_not_downloaded_again(tmp_path):
    cache = BlobCache(str(tmp_path / 'cache'))
    download = serve(BLOB)
    for _run in range(2):
        fetcher = BlobFetcher(cache, download)
        fetcher.prefetch([(DIGEST, len(BLOB))])
        assert read_all(fetcher.open(DIGEST, len(BLOB))) == BLOB
        fetcher.close()
    assert download.calls == [DIGEST]


def test_a_blob_that_does_not_hash_to_its_digest_never_enters_the_cache(tmp_path):
    cache = BlobCache(str(tmp_path / 'cache'))
    # The last byte changed, never to itself (os.urandom ends with b'!' once in 256 runs).
    fetcher = BlobFetcher(cache, serve(BLOB[:-1] + bytes([BLOB[-1] ^ 0xff])))
    fetcher.prefetch([(DIGEST, len(BLOB))])
    with pytest.raises(DigestMismatch, match='expected %s' % DIGEST):
        read_all(fetcher.open(DIGEST, len(BLOB)))
    fetcher.close()
    assert not cache.has(DIGEST)
    assert os.listdir(tmp_path / 'cache' / 'partial') == []


def test_a_blob_longer_than_its_manifest_says_is_stopped_early(tmp_path):
    cache = BlobCache(str(tmp_path / 'cache'))
    written = []
    download = serve(BLOB * 50)  # 10 MB where 200 KB were announced

    def counting(digest, write, offset, cancelled):
        return download(digest, lambda chunk: (written.append(len(chunk)), write(chunk)), offset, cancelled)
    fetcher = BlobFetcher(cache, counting)
    fetcher.prefetch([(DIGEST, len(BLOB))])
    with pytest.raises(DigestMismatch, match='more than the %d bytes the manifest gives it' % len(BLOB)):
        read_all(fetcher.open(DIGEST, len(BLOB)))
    fetcher.close()
    assert sum(written) <= len(BLOB) + 16 * 1024
    assert not cache.has(DIGEST) and os.listdir(tmp_path / 'cache' / 'partial') == []


def test_a_blob_shorter_than_its_manifest_says_is_refused_though_its_digest_matches(tmp_path):
    cache = BlobCache(str(tmp_path / 'cache'))
    fetcher = BlobFetcher(cache, serve(BLOB))
    fetcher.prefetch([(DIGEST, len(BLOB) + 1)])
    with pytest.raises(DigestMismatch) as caught:
        read_all(fetcher.open(DIGEST, len(BLOB) + 1))
    fetcher.close()
    assert str(caught.value) == 'downloaded blob %s: %d bytes, fewer than the %d bytes the manifest gives it' % (
        DIGEST, len(BLOB), len(BLOB) + 1)
    assert not cache.has(DIGEST) and os.listdir(tmp_path / 'cache' / 'partial') == []


def test_a_failed_download_is_reported_to_a_reader_that_comes_late(tmp_path):
    cache = BlobCache(str(tmp_path / 'cache'))

    def failing(digest, write, offset, cancelled):
        raise BootstrapError('registry.example has no blob %s in app' % digest)
    fetcher = BlobFetcher(cache, failing)
    fetcher.prefetch([(DIGEST, len(BLOB))])
    deadline = time.monotonic() + 10
    while os.listdir(tmp_path / 'cache' / 'partial') and time.monotonic() < deadline:
        time.sleep(0.01)  # until the download has failed and removed its partial file, before anyone reads
    with pytest.raises(BootstrapError, match='has no blob'):
        fetcher.open(DIGEST, len(BLOB))
    fetcher.close()


def test_a_cache_entry_of_the_wrong_size_is_not_a_hit(tmp_path):
    cache = BlobCache(str(tmp_path / 'cache'))
    os.makedirs(os.path.dirname(cache.path(DIGEST)))
    with open(cache.path(DIGEST), 'wb') as stream:
        stream.write(BLOB[:100])
    assert cache.has(DIGEST) and not cache.has(DIGEST, len(BLOB))
    fetcher = BlobFetcher(cache, serve(BLOB))
    assert read_all(fetcher.open(DIGEST, len(BLOB))) == BLOB
    fetcher.close()
    assert cache.has(DIGEST, len(BLOB))


def test_a_corrupt_entry_read_to_its_end_is_dropped(tmp_path):
    cache = BlobCache(str(tmp_path / 'cache'))
    os.makedirs(os.path.dirname(cache.path(DIGEST)))
    with open(cache.path(DIGEST), 'wb') as stream:
        stream.write(b'x' * len(BLOB))
    fetcher = BlobFetcher(cache, serve(BLOB))
    with pytest.raises(DigestMismatch, match='cached blob: content hashes to .*dropped from the cache'):
        read_all(fetcher.open(DIGEST, len(BLOB)))
    assert not cache.has(DIGEST)


def test_a_corrupt_entry_whose_reader_stops_early_is_dropped_too(tmp_path):
    cache = BlobCache(str(tmp_path / 'cache'))
    os.makedirs(os.path.dirname(cache.path(DIGEST)))
    with open(cache.path(DIGEST), 'wb') as stream:
        stream.write(b'x' * len(BLOB))
    fetcher = BlobFetcher(cache, serve(BLOB))
    with fetcher.open(DIGEST, len(BLOB)) as stream:
        stream.read(10)
    assert not cache.has(DIGEST)


def test_a_good_entry_whose_reader_stops_early_stays(tmp_path):
    cache = BlobCache(str(tmp_path / 'cache'))
    fetcher = BlobFetcher(cache, serve(BLOB))
    read_all(fetcher.open(DIGEST, len(BLOB)))
    fetcher.close()
    with BlobFetcher(cache, serve(b'')).open(DIGEST, len(BLOB)) as stream:
        stream.read(10)
    assert cache.has(DIGEST, len(BLOB))


def _partials(tmp_path):
    partial = tmp_path / 'cache' / 'partial'
    partial.mkdir(parents=True, exist_ok=True)
    (partial / 'old').write_bytes(b'x')
    (partial / 'recent').write_bytes(b'x')
    old = time.time() - STALE_PARTIAL_SECONDS - 60
    os.utime(partial / 'old', (old, old))
    return partial


def test_while_another_run_uses_the_cache_partial_files_are_removed_after_a_day(tmp_path):
    other_run = BlobCache(str(tmp_path / 'cache'))
    partial = _partials(tmp_path)
    BlobCache(str(tmp_path / 'cache'))
    assert os.listdir(partial) == ['recent']  # it may be the other run's download in progress
    other_run.close()


def test_alone_with_the_cache_a_run_removes_every_partial_file_at_once(tmp_path):
    partial = _partials(tmp_path)
    BlobCache(str(tmp_path / 'cache'))
    assert os.listdir(partial) == []  # nobody holds the cache: each is a killed run's


def test_a_temporary_cache_is_removed_on_close(tmp_path, monkeypatch):
    monkeypatch.setattr('tempfile.tempdir', str(tmp_path))
    cache = BlobCache('/nonexistent/not/used', temporary=True)
    assert os.path.dirname(cache.root) == str(tmp_path)
    cache.close()
    assert os.listdir(tmp_path) == []
    assert not os.path.exists('/nonexistent/not/used')
