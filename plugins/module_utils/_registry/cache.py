# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""The blob cache, and fetching layer blobs into it several at a time while they are applied in order.

A blob enters the cache only once it is complete and hashes to its digest: it is downloaded to a
private partial file and renamed into place. A run downloading a blob holds a flock on locks/HEX, so
that another run wanting the same blob waits and then copies it from the cache: however many runs
share a cache, each blob is downloaded once.

Pruning (prune_cache) removes blobs no dest holds that were not used for a while. What dests hold is
kept in the cache itself, one file per dest under refs/ (the cache cannot find every state record on
the host); a ref whose state record is gone protects nothing and is dropped.

Why a lock, and not only ages: every run holds a shared flock on `lock` for as long as it uses the
cache, and pruning takes it exclusively, without waiting; a cache in use is left for a later run to
prune. Refreshing a blob's mtime when it is used and never deleting anything younger than the limit
would leave a window: a run finds an old blob, a prune deletes it, the run then fails to open it. The
lock closes every such window, costs one flock per run, and no run waits on a prune for longer than
the prune's own short walk. The mtime is still refreshed on use, as the blob's age of last use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import typing as t
from concurrent.futures import Future, ThreadPoolExecutor

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, DigestMismatch
from ansible_collections.virt.bootstrap.plugins.module_utils._image import (
    is_digest,
    new_hasher,
    parse_digest,
    verify_digest,
)

DOWNLOAD_WORKERS = 3
STALE_PARTIAL_SECONDS = 24 * 3600
# How often a run waiting for another run's download of the same blob looks again (and at cancellation).
LOCK_POLL_SECONDS = 0.05
LOCK_NAME = 'lock'
REFS_DIR = 'refs'
_AGE_UNITS = {'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 7 * 86400}
_AGE_RE = re.compile(r'^(?:\d+[smhdw])+$')


def default_cache_dir() -> str:
    if os.geteuid() == 0:
        return '/var/cache/virt-bootstrap'
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'virt-bootstrap')


def parse_max_age(value: t.Union[str, int, float, None]) -> t.Optional[float]:
    """Seconds from a cache_max_age: a number of seconds, or units such as '30d', '12h', '1d12h', '90m', '2w'."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        if text.isdigit():
            seconds = float(text)
        elif _AGE_RE.match(text):
            seconds = float(sum(int(number) * _AGE_UNITS[unit] for number, unit in re.findall(r'(\d+)([a-z])', text)))
        else:
            raise BootstrapError('cache_max_age %r is not an age: give seconds, or a number with a unit s, m, h, d '
                                 'or w (for example 30d or 1d12h)' % (value,))
    if seconds < 0:
        raise BootstrapError('cache_max_age %r is negative' % (value,))
    return seconds


class _CacheLock:
    """The flock on `root`/lock: shared while a run uses the cache, exclusive while it is pruned."""

    def __init__(self, root: str) -> None:
        path = os.path.join(root, LOCK_NAME)
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not os.path.exists(path):
                raise
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # a cache we may only read: flock works all the same

    def share(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def try_exclusive(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return False
            raise
        return True

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


class BlobCache:
    """Content-addressed files under `root`/blobs/ALGO/HEX; `temporary` ones vanish on close().

    A shared cache is held under a shared lock from construction to close() (see the module docstring).
    """

    def __init__(self, root: t.Optional[str] = None, temporary: bool = False,
                 scratch_dir: t.Optional[str] = None) -> None:
        self._lock: t.Optional[_CacheLock] = None
        if temporary:
            # 'build-' marks it as debris for Destination if a killed run leaves it in its bookkeeping.
            self.root = tempfile.mkdtemp(prefix='build-cache-', dir=scratch_dir)
        else:
            self.root = root or default_cache_dir()
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            self._lock = _CacheLock(self.root)
        self.temporary = temporary
        self._partial_dir = os.path.join(self.root, 'partial')
        self._locks_dir = os.path.join(self.root, 'locks')
        for directory in (self._partial_dir, self._locks_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        # Alone with the cache, every partial file is a killed run's: none can be a download in progress.
        alone = self._lock is None or self._lock.try_exclusive()
        _remove_stale_partials(self._partial_dir, float('inf') if alone else time.time() - STALE_PARTIAL_SECONDS)
        if alone:
            _remove_stale_partials(self._locks_dir, float('inf'))
        if self._lock is not None:
            self._lock.share()

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

    @contextlib.contextmanager
    def downloading(self, digest: str, cancelled: t.Callable[[], bool]) -> t.Iterator[None]:
        """Held while this run downloads `digest` into the cache: a run that wants the same blob meanwhile
        waits, then finds it in the cache, so a blob is downloaded once however many runs share the cache."""
        if self.temporary:
            yield
            return
        path = os.path.join(self._locks_dir, parse_digest(digest)[1])
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                while not _try_flock(fd):
                    if cancelled():
                        raise BootstrapError('download of %s cancelled' % digest)
                    time.sleep(LOCK_POLL_SECONDS)
                if _is_same_file(fd, path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the run before removed the file once done with it: lock the one there now
        try:
            yield
        finally:
            _unlink_quietly(path)  # before the flock goes: whoever waits on this file then takes a new one
            os.close(fd)

    def copy_into(self, digest: str, write: t.Callable[[bytes], None]) -> None:
        """Pass a cached blob to `write` (one another run downloaded while this one waited)."""
        with open(self.path(digest), 'rb') as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b''):
                write(chunk)

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

    def name_dest_blobs(self, dest_path: str, record_path: str, digests: t.Iterable[str]) -> None:
        """Say which blobs dest now holds (a ref protecting them from pruning while `record_path` exists).

        Written to a partial file and renamed into refs/, like a blob: a reader sees the old ref or the new one.
        """
        dest_path = os.path.abspath(dest_path)
        refs_dir = os.path.join(self.root, REFS_DIR)
        os.makedirs(refs_dir, mode=0o700, exist_ok=True)
        ref = {'dest': dest_path, 'record': os.path.abspath(record_path), 'blobs': sorted(set(digests))}
        fd, partial = tempfile.mkstemp(prefix='ref-', dir=self._partial_dir)
        try:
            with os.fdopen(fd, 'w', encoding='utf-8') as stream:
                json.dump(ref, stream, indent=1)
            os.replace(partial, os.path.join(refs_dir, _ref_name(dest_path)))
        except BaseException:
            _unlink_quietly(partial)
            raise

    def close(self) -> None:
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def nothing_pruned() -> t.Dict[str, t.Any]:
    """What prune_cache returns when it removed nothing."""
    return {'blobs_removed': 0, 'bytes_freed': 0, 'blobs_kept': 0, 'refs_removed': 0, 'partials_removed': 0,
            'in_use': False}


def prune_cache(cache_dir: str, max_age_seconds: float, now: t.Optional[float] = None) -> t.Dict[str, t.Any]:
    """Remove the blobs no dest holds (per refs/) that were last used more than `max_age_seconds` ago.

    Returns what it did: blobs_removed, bytes_freed, blobs_kept, refs_removed (of dests whose state record
    is gone), partials_removed (of killed runs), and in_use: True, with nothing removed, when some run was
    using the cache (pruning never waits; a later run prunes).
    """
    pruned = nothing_pruned()
    if not os.path.isdir(cache_dir):
        return pruned
    lock = _CacheLock(cache_dir)
    try:
        if not lock.try_exclusive():
            pruned['in_use'] = True
            return pruned
        now = time.time() if now is None else now
        held = _blobs_held(os.path.join(cache_dir, REFS_DIR), pruned)
        for digest, path in _cached_blobs(os.path.join(cache_dir, 'blobs')):
            try:
                info = os.lstat(path)
                if digest in held or info.st_mtime > now - max_age_seconds:
                    pruned['blobs_kept'] += 1
                    continue
                os.unlink(path)
            except OSError:  # gone already, or not ours to remove
                continue
            pruned['blobs_removed'] += 1
            pruned['bytes_freed'] += info.st_size
        partial_dir = os.path.join(cache_dir, 'partial')
        if os.path.isdir(partial_dir):
            pruned['partials_removed'] = _remove_stale_partials(partial_dir, now - STALE_PARTIAL_SECONDS)
    finally:
        lock.release()
    return pruned


def _blobs_held(refs_dir: str, pruned: t.Dict[str, t.Any]) -> t.Set[str]:
    """The digests the refs name whose state record still exists; refs of gone (or unreadable) ones are dropped."""
    held: t.Set[str] = set()
    names = os.listdir(refs_dir) if os.path.isdir(refs_dir) else []
    for name in names:
        path = os.path.join(refs_dir, name)
        try:
            with open(path, encoding='utf-8') as stream:
                ref = json.load(stream)
            record = ref['record'] if isinstance(ref, dict) else None
            blobs = ref.get('blobs') if isinstance(ref, dict) else None
        except (OSError, ValueError, KeyError):
            record = blobs = None
        if isinstance(record, str) and os.path.exists(record) and isinstance(blobs, list):
            held.update(blob for blob in blobs if isinstance(blob, str))
            continue
        _unlink_quietly(path)
        pruned['refs_removed'] += 1
    return held


def _cached_blobs(blobs_dir: str) -> t.Iterator[t.Tuple[str, str]]:
    """(digest, path) of every entry under blobs/ALGO/HEX."""
    if not os.path.isdir(blobs_dir):
        return
    for algorithm in sorted(os.listdir(blobs_dir)):
        directory = os.path.join(blobs_dir, algorithm)
        if not os.path.isdir(directory):
            continue
        for hexdigest in sorted(os.listdir(directory)):
            digest = '%s:%s' % (algorithm, hexdigest)
            yield (digest if is_digest(digest) else ''), os.path.join(directory, hexdigest)


def _is_same_file(fd: int, path: str) -> bool:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (found.st_dev, found.st_ino)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return False
        raise
    return True


def _remove_stale_partials(partial_dir: str, cutoff: float) -> int:
    """Partial files of runs that were killed; a day old is surely not a download in progress. How many went."""
    removed = 0
    for name in os.listdir(partial_dir):
        path = os.path.join(partial_dir, name)
        try:
            if os.lstat(path).st_mtime < cutoff:
                os.unlink(path)
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def _ref_name(dest_path: str) -> str:
    return hashlib.sha256(dest_path.encode('utf-8', 'surrogateescape')).hexdigest() + '.json'


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
    """Reads a cache entry, checking its digest: a mismatch fails the read at the end, and drops the entry.

    Dropping it lets the next run download it again instead of failing the same way until someone
    clears the cache.
    """

    def __init__(self, cache: BlobCache, digest: str, size: t.Optional[int]) -> None:
        self._cache = cache
        self._digest = digest
        self._size = size
        self._hasher = new_hasher(digest)
        self._length = 0
        self._mismatch: t.Optional[DigestMismatch] = None
        self._checked = False
        self._stream = open(cache.path(digest), 'rb')
        try:
            os.utime(self._stream.fileno())  # its age of last use, for pruning
        except OSError:
            pass  # a cache of another user's, read only: the age is only a hint

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            self._hasher.update(data)
            self._length += len(data)
        elif size != 0:
            self._check()
            if self._mismatch is not None:
                raise self._mismatch
        return data

    def close(self) -> None:
        """A reader that stopped early (corrupt data stops decompression) still gets the entry checked."""
        try:
            if not self._checked:
                for chunk in iter(lambda: self._stream.read(1 << 20), b''):
                    self._hasher.update(chunk)
                    self._length += len(chunk)
                self._check()
        finally:
            self._stream.close()

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        try:
            if self._size is not None and self._length != self._size:
                raise DigestMismatch('cached blob: %d bytes, not the %d bytes the manifest gives it'
                                     % (self._length, self._size))
            verify_digest(self._hasher, self._digest, 'cached blob')
        except DigestMismatch as exc:
            self._mismatch = DigestMismatch('%s (dropped from the cache: the next run downloads it again)' % exc)
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
            return _CachedReader(self._cache, digest, size)
        self.prefetch([(digest, size)])
        if digest not in self._transfers:
            return _CachedReader(self._cache, digest, size)
        return _FollowingReader(self._transfers[digest][0])

    def _fetch(self, digest: str, size: t.Optional[int], transfer: _Transfer) -> None:
        hasher = new_hasher(digest)
        try:
            with self._cache.downloading(digest, self._cancelled.is_set), open(transfer.path, 'r+b') as stream:
                def write(chunk: bytes) -> None:
                    # More than the manifest says cannot hash right: stop before it fills the disk.
                    if size is not None and transfer.written + len(chunk) > size:
                        raise DigestMismatch('downloaded blob %s: more than the %d bytes the manifest gives it'
                                             % (digest, size))
                    stream.write(chunk)
                    stream.flush()
                    hasher.update(chunk)
                    transfer.advance(len(chunk))

                if self._cache.has(digest, size):
                    self._cache.copy_into(digest, write)  # another run fetched it while this one waited
                else:
                    self._download(digest, write, 0, self._cancelled.is_set)
                # The digest may match all the same: the descriptor lied about the size, which must match too.
                if size is not None and transfer.written != size:
                    raise DigestMismatch('downloaded blob %s: %d bytes, fewer than the %d bytes the manifest gives it'
                                         % (digest, transfer.written, size))
                verify_digest(hasher, digest, 'downloaded blob')
                # Readers keep their open handle on the renamed file; a run waiting for the blob sees it complete.
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
