# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the benchmarks share: the Debian test image, the engine under test, and timing a child with wait4.

Imported by bench/extract.py and bench/pull.py (run as scripts, so this directory is on sys.path).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import types
import typing as t
from dataclasses import dataclass, field

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
CACHE_DIR = os.path.join(BENCH_DIR, '.cache')
IMAGES_DIR = os.path.join(CACHE_DIR, 'images')
LAYOUT_DIR = os.path.join(IMAGES_DIR, 'oci', 'debian')
ROOTFS_DIR = os.path.join(IMAGES_DIR, 'rootfs', 'debian')
TAG = 'multi'
# Holds ansible_collections/virt/bootstrap -> the repo, so the engine imports under its real name.
COLLECTIONS_DIR = os.path.join(CACHE_DIR, 'collections')
BUILD_SCRIPT = os.path.join(REPO_ROOT, 'tests', 'images', 'build-images.sh')

MIB = 1 << 20


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class LayerBlob:
    digest: str
    media_type: str
    size: int
    path: str


@dataclass(frozen=True)
class Command:
    argv: t.List[str]
    # Exit codes that still mean the job was done (tar's 2 after errors it skipped past, for the floor).
    ok_exit_codes: t.Tuple[int, ...] = (0,)


@dataclass
class Usage:
    """What running some commands one after the other cost: spawn of the first to exit of the last, then sync."""
    wall_s: float
    sync_s: float
    user_s: float
    sys_s: float
    max_rss_kib: int
    # Spawn to exit of each command, in order (without the sync).
    step_wall_s: t.List[float] = field(default_factory=list)


# -- the image ---------------------------------------------------------------------------------------


def build_image() -> None:
    """Make the Debian image once; the builder keeps what it already made and returns at once."""
    if os.geteuid() != 0:
        raise BenchError('run as root: the image build and the extractions keep owners, setuid bits and xattrs')
    # The builder's summary goes to stderr with its log, so stdout holds only our report.
    subprocess.run(['bash', BUILD_SCRIPT, IMAGES_DIR, 'debian'], check=True, stdout=sys.stderr)


def layer_blobs(layout: str, tag: str) -> t.Tuple[str, t.List[LayerBlob]]:
    """The manifest digest of `tag` and its layers, bottom first."""
    with open(os.path.join(layout, 'index.json'), 'rb') as stream:
        index = json.load(stream)
    for descriptor in index.get('manifests', []):
        if descriptor.get('annotations', {}).get('org.opencontainers.image.ref.name') == tag:
            manifest_digest = descriptor['digest']
            break
    else:
        raise BenchError('no tag %r in %s' % (tag, layout))
    with open(blob_path(layout, manifest_digest), 'rb') as stream:
        manifest = json.load(stream)
    blobs = [LayerBlob(layer['digest'], layer['mediaType'], layer['size'], blob_path(layout, layer['digest']))
             for layer in manifest['layers']]
    return manifest_digest, blobs


def blob_path(layout: str, digest: str) -> str:
    algorithm, hexdigest = digest.split(':', 1)
    return os.path.join(layout, 'blobs', algorithm, hexdigest)


# -- the engine --------------------------------------------------------------------------------------


def link_collection(collection_root: str) -> None:
    """Make the engine children import virt.bootstrap from `collection_root`."""
    link = os.path.join(COLLECTIONS_DIR, 'ansible_collections', 'virt', 'bootstrap')
    if not os.path.isfile(os.path.join(collection_root, 'plugins', 'module_utils', 'bootstrap.py')):
        raise BenchError('%s does not hold the virt.bootstrap collection' % collection_root)
    if os.path.islink(link) and os.path.realpath(link) == os.path.realpath(collection_root):
        return
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(os.path.abspath(collection_root), link)


def import_engine() -> types.ModuleType:
    """The engine module (bootstrap.py) of the checkout link_collection() pointed at."""
    sys.path.insert(0, COLLECTIONS_DIR)
    # pylint: disable=import-outside-toplevel  # callers time the import on its own
    from ansible_collections.virt.bootstrap.plugins.module_utils import bootstrap
    return bootstrap


def time_write_dir(bootstrap: types.ModuleType) -> t.List[float]:
    """Time every write_dir call of the engine from now on; the list returned fills as they finish.

    bootstrap.run calls write_dir by its module-level name, so wrapping that name times the extraction
    alone (registry downloads that feed it included).
    """
    write_dir = getattr(bootstrap, 'write_dir')
    durations: t.List[float] = []

    def timed_write_dir(*args: t.Any, **kwargs: t.Any) -> t.Any:
        begin = time.perf_counter()
        try:
            return write_dir(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - begin)

    setattr(bootstrap, 'write_dir', timed_write_dir)
    return durations


# -- measuring ---------------------------------------------------------------------------------------


def run_timed(commands: t.Sequence[Command], stdout_path: str, log_path: str) -> Usage:
    """Run `commands` one after the other, then sync; CPU time summed and peak RSS over all of them."""
    # Dirty pages left by the previous run are written back now, not inside this run's timing.
    os.sync()
    user_s = sys_s = 0.0
    max_rss_kib = 0
    steps: t.List[float] = []
    start = time.perf_counter()
    for command in commands:
        began = time.perf_counter()
        usage = run_child(command, stdout_path, log_path)
        steps.append(time.perf_counter() - began)
        user_s += usage.ru_utime
        sys_s += usage.ru_stime
        # wait4 reports the largest RSS of the child and of the children it waited for (gzip under tar).
        max_rss_kib = max(max_rss_kib, usage.ru_maxrss)
    exited = time.perf_counter()
    os.sync()
    end = time.perf_counter()
    return Usage(end - start, end - exited, user_s, sys_s, max_rss_kib, steps)


def run_child(command: Command, stdout_path: str, log_path: str,
              env: t.Optional[t.Mapping[str, str]] = None) -> resource.struct_rusage:
    """Spawn `command` with stdout and stderr appended to files; its rusage (children included) from wait4."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND  # no O_CLOEXEC: these become the child's fds 1 and 2
    pid = os.posix_spawnp(command.argv[0], command.argv, os.environ if env is None else env, file_actions=[
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, stdout_path, flags, 0o600),
        (os.POSIX_SPAWN_OPEN, 2, log_path, flags, 0o600),
    ])
    try:
        _pid, status, usage = os.wait4(pid, 0)
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM): the child must not go on writing into what the caller now removes.
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    code = os.waitstatus_to_exitcode(status)
    if code not in command.ok_exit_codes:
        with open(log_path, 'rb') as stream:
            tail = stream.read()[-2000:].decode('utf-8', 'replace')
        raise BenchError('%s exited with %d:\n%s' % (' '.join(command.argv), code, tail))
    return usage


def rotated(items: t.Sequence[str], round_number: int) -> t.Tuple[str, ...]:
    """`items` starting at a different one each round, so no tool always runs right after the same other one."""
    shift = round_number % len(items)
    return tuple(items[shift:]) + tuple(items[:shift])


# -- trees and space ---------------------------------------------------------------------------------


def count_entries(root: str) -> int:
    """Entries below `root` (not counting it), symlinks not followed."""
    total = 0
    for _dirpath, dirnames, filenames in os.walk(root):
        total += len(dirnames) + len(filenames)
    return total


def tree_bytes(root: str) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


# ext4 without a journal (this machine's root filesystem) does not hand out an inode freed less than 60 s
# ago, or 360 s while its inode table block is dirty (which creating files nearby keeps it), and it looks at
# every such inode of the group before each new one (fs/ext4/ialloc.c: find_inode_bit, recently_deleted).
# After a bench removed its trees, perf puts 80 % of a file creation's system time in that scan: 200-600 us
# a file against 20 us six minutes later, for every tool alike. Timed runs wait until the freed inodes are
# old again.
RECENTLY_FREED_SECONDS = 361
REMOVAL_MARK = os.path.join(CACHE_DIR, 'last-removal')


def remove_tree(path: str, ignore_errors: bool = True) -> None:
    """Remove a bench tree, noting when (see settle_removals); one left by an earlier run must go."""
    if not os.path.lexists(path):
        return
    shutil.rmtree(path, ignore_errors=ignore_errors)
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(REMOVAL_MARK, 'w', encoding='utf-8'):
        pass  # its mtime is the time of the removal


def settle_removals(directory: str, who: str) -> None:
    """On ext4 without a journal, wait until the inodes the last removal freed may be reused at no cost."""
    try:
        removed = os.stat(REMOVAL_MARK).st_mtime
    except FileNotFoundError:
        return
    if not _ext4_without_journal(directory):
        return
    os.sync()
    left = removed + RECENTLY_FREED_SECONDS - time.time()
    if left > 0:
        print('%s: waiting %.0f s for the inodes freed %.0f s ago to age (ext4 without a journal, see README)'
              % (who, left, time.time() - removed), file=sys.stderr)
        time.sleep(left)


def _ext4_without_journal(directory: str) -> bool:
    """Whether `directory` is on an ext4 filesystem that has no journal (its journal_task says <none>)."""
    path = os.path.realpath(directory)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    best: t.Tuple[int, str, str] = (-1, '', '')
    with open('/proc/self/mountinfo', encoding='utf-8') as stream:
        for line in stream:
            fields = line.split()
            mount_point, after = fields[4], fields[fields.index('-') + 1:]
            if (path == mount_point or path.startswith(mount_point.rstrip('/') + '/')) and len(mount_point) > best[0]:
                best = (len(mount_point), after[0], after[1])
    _length, fstype, source = best
    if fstype != 'ext4':
        return False
    journal_task = '/sys/fs/ext4/%s/journal_task' % os.path.basename(os.path.realpath(source))
    try:
        with open(journal_task, encoding='utf-8') as stream:
            return stream.read().strip() == '<none>'
    except OSError as exc:
        print('bench: %s is on ext4, but whether it has a journal is unknown (%s): not waiting for freed inodes'
              % (directory, exc), file=sys.stderr)
        return False


def check_space(directory: str, needed: int, runs: int) -> None:
    """Fail early when `directory` cannot hold what `runs` runs write (nothing is deleted until the end)."""
    os.makedirs(directory, exist_ok=True)
    vfs = os.statvfs(directory)
    free = vfs.f_bavail * vfs.f_frsize
    if free < needed:
        raise BenchError('%s has %d MiB free; %d runs need about %d MiB: use fewer --rounds'
                         % (directory, free // MIB, runs, needed // MIB))
