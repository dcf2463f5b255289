# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The blob cache, and fetching layer blobs into it several at a time while they are applied in order.

A blob enters the cache only once it is complete and hashes to its digest: it is downloaded to a
private partial file and renamed into place. Two runs fetching one blob each write their own partial
file; whichever renames last replaces identical content, so no lock is needed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import typing as t
from concurrent.futures import Future, ThreadPoolExecutor

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, DigestMismatch
from ansible_collections.virt.bootstrap.plugins.module_utils.image import new_hasher, parse_digest, verify_digest

DOWNLOAD_WORKERS = 3
STALE_PARTIAL_SECONDS = 24 * 3600


def default_cache_dir() -> str:
    if os.geteuid() == 0:
        return '/var/cache/virt-bootstrap'
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'virt-bootstrap')


class BlobCache:
    """Content-addressed files under `root`/blobs/ALGO/HEX; `temporary` ones vanish on close()."""

    def __init__(self, root: t.Optional[str] = None, temporary: bool = False,
                 scratch_dir: t.Optional[str] = None) -> None:
        if temporary:
            # 'build-' marks it as debris for Destination if a killed run leaves it in its bookkeeping.
            self.root = tempfile.mkdtemp(prefix='build-cache-', dir=scratch_dir)
        else:
            self.root = root or default_cache_dir()
            os.makedirs(self.root, mode=0o700, exist_ok=True)
        self.temporary = temporary
        self._partial_dir = os.path.join(self.root, 'partial')
        os.makedirs(self._partial_dir, mode=0o700, exist_ok=True)
        self._remove_stale_partials()

    def _remove_stale_partials(self) -> None:
        """Partial files of runs that were killed; a day old is surely not a download in progress."""
        cutoff = time.time() - STALE_PARTIAL_SECONDS
        for name in os.listdir(self._partial_dir):
            path = os.path.join(self._partial_dir, name)
            try:
                if os.lstat(path).st_mtime < cutoff:
                    os.unlink(path)
            except FileNotFoundError:
                pass

    def path(self, digest: str) -> str:
        algorithm, hexdigest = parse_digest(digest)
        return os.path.join(self.root, 'blobs', algorithm, hexdigest)

    def has(self, digest: str, size: t.Optional[int] = None) -> bool:
        try:
            found = os.stat(self.path(digest)).st_size
        except FileNotFoundError:
            return False
        return size is None or found == size

    def new_partial(self, digest: str) -> t.Tuple[int, str]:
        return tempfile.mkstemp(prefix=parse_digest(digest)[1][:16] + '-', dir=self._partial_dir)

    def commit(self, partial: str, digest: str) -> str:
        final = self.path(digest)
        os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
        os.rename(partial, final)
        return final

    def forget(self, digest: str) -> None:
        """Drop an entry found to be corrupt, so the next run downloads it again."""
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass

    def close(self) -> None:
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)


class _Transfer:
    """A blob being written by a download thread and read by the applier at the same time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = 0
        self.done = False
        self.error: t.Optional[BaseException] = None
        self.condition = threading.Condition()

    def advance(self, count: int) -> None:
        with self.condition:
            self.written += count
            self.condition.notify_all()

    def finish(self, error: t.Optional[BaseException] = None) -> None:
        with self.condition:
            self.done = True
            self.error = error
            self.condition.notify_all()


class _FollowingReader:
    """Reads a partial file as it grows, until its download is done (or failed)."""

    def __init__(self, transfer: _Transfer) -> None:
        self._transfer = transfer
        with transfer.condition:  # the path moves into the cache under this condition
            # A download that already failed has removed its partial file: report why it failed.
            if transfer.error is not None:
                raise transfer.error
            self._stream = open(transfer.path, 'rb')
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        transfer = self._transfer
        with transfer.condition:
            while self._position >= transfer.written and not transfer.done:
                transfer.condition.wait()
            if transfer.error is not None:
                raise transfer.error
            available = transfer.written - self._position
        if size is None or size < 0 or size > available:
            size = available
        data = self._stream.read(size)
        self._position += len(data)
        return data

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> '_FollowingReader':
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()


class _CachedReader:
    """Reads a cache entry; one that turns out not to hash to its digest is dropped from the cache.

    The reader of the blob verifies the digest and fails the run; dropping the entry lets the next
    run download it again instead of failing the same way until someone clears the cache.
    """

    def __init__(self, cache: BlobCache, digest: str) -> None:
        self._cache = cache
        self._digest = digest
        self._hasher = new_hasher(digest)
        self._checked = False
        self._stream = open(cache.path(digest), 'rb')

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            self._hasher.update(data)
        elif size != 0:
            self._check()
        return data

    def close(self) -> None:
        """A reader that stopped early (corrupt data stops decompression) still gets the entry checked."""
        try:
            if not self._checked:
                for chunk in iter(lambda: self._stream.read(1 << 20), b''):
                    self._hasher.update(chunk)
                self._check()
        finally:
            self._stream.close()

    def _check(self) -> None:
        if not self._checked:
            self._checked = True
            if '%s:%s' % (self._hasher.name, self._hasher.hexdigest()) != self._digest:
                self._cache.forget(self._digest)

    def __enter__(self) -> '_CachedReader':
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()


class BlobFetcher:
    """Downloads an image's layers a few at a time into the cache; opening one waits only for its bytes."""

    def __init__(self, cache: BlobCache, download: t.Callable[..., int], workers: int = DOWNLOAD_WORKERS) -> None:
        self._cache = cache
        self._download = download
        self._workers = workers
        self._executor: t.Optional[ThreadPoolExecutor] = None
        self._transfers: t.Dict[str, t.Tuple[_Transfer, Future]] = {}
        self._cancelled = threading.Event()

    def prefetch(self, blobs: t.Sequence[t.Tuple[str, t.Optional[int]]]) -> None:
        """Start downloading what the cache lacks, in this order."""
        for digest, size in blobs:
            if digest in self._transfers or self._cache.has(digest, size):
                continue
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix='blob')
            fd, partial = self._cache.new_partial(digest)
            os.close(fd)
            transfer = _Transfer(partial)
            self._transfers[digest] = (transfer, self._executor.submit(self._fetch, digest, size, transfer))

    def open(self, digest: str, size: t.Optional[int]) -> t.Any:
        if digest not in self._transfers and self._cache.has(digest, size):
            return _CachedReader(self._cache, digest)
        self.prefetch([(digest, size)])
        if digest not in self._transfers:
            return _CachedReader(self._cache, digest)
        return _FollowingReader(self._transfers[digest][0])

    def _fetch(self, digest: str, size: t.Optional[int], transfer: _Transfer) -> None:
        hasher = new_hasher(digest)
        try:
            with open(transfer.path, 'r+b') as stream:
                def write(chunk: bytes) -> None:
                    # More than the manifest says cannot hash right: stop before it fills the disk.
                    if size is not None and transfer.written + len(chunk) > size:
                        raise DigestMismatch('downloaded blob %s: more than the %d bytes the manifest gives it'
                                             % (digest, size))
                    stream.write(chunk)
                    stream.flush()
                    hasher.update(chunk)
                    transfer.advance(len(chunk))

                self._download(digest, write, 0, self._cancelled.is_set)
                verify_digest(hasher, digest, 'downloaded blob')
            # Readers keep their open handle on the renamed file.
            with transfer.condition:
                transfer.path = self._cache.commit(transfer.path, digest)
        except BaseException as exc:  # the reader must see every failure, then the file goes
            transfer.finish(exc if isinstance(exc, BootstrapError) else
                            BootstrapError('downloading %s failed: %s' % (digest, exc)))
            _unlink_quietly(transfer.path)
            return
        transfer.finish()

    def close(self) -> None:
        """Stop downloads nobody needs any more and remove their partial files."""
        self._cancelled.set()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for transfer, _future in self._transfers.values():
            if not transfer.done or transfer.error is not None:
                _unlink_quietly(transfer.path)
        self._transfers.clear()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
