# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""Who uses a directory: processes that have it as their root or working directory, and mounts in it.

A running LXC guest has its rootfs as its root (in a mount namespace of its own, where the host's
paths mean nothing): it is recognised by the directory's inode, which a bind mount keeps.
"""

from __future__ import annotations

import os
import re
import typing as t

_PROC = '/proc'
_MOUNTINFO = '/proc/self/mountinfo'
_OCTAL_ESCAPE = re.compile(r'\\([0-7]{3})')
# Enough to say who it is; a guest runs many more.
MAX_REPORTED = 5


class Occupant(t.NamedTuple):
    pid: int
    command: str
    how: str  # 'root', 'working directory' or 'open file NAME'

    def __str__(self) -> str:
        if self.how.startswith('open file '):
            return 'process %d (%s) has %s open' % (self.pid, self.command, self.how[len('open file '):])
        return 'process %d (%s) has it as its %s' % (self.pid, self.command, self.how)


def mount_points() -> t.List[str]:
    """Every mount point of this mount namespace, as paths."""
    try:
        with open(_MOUNTINFO, encoding='utf-8', errors='surrogateescape') as stream:
            lines = stream.read().splitlines()
    except OSError:
        return []
    points = []
    for line in lines:
        fields = line.split(' ')
        if len(fields) > 4:
            points.append(_OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), fields[4]))
    return points


def is_mount_point(path: str) -> bool:
    # os.path.ismount misses a bind mount of a directory of the same filesystem; mountinfo does not.
    # mountinfo names resolved paths: a symlink among the parents of `path` must be resolved first.
    return os.path.ismount(path) or os.path.realpath(path) in mount_points()


def mounts_below(path: str) -> t.List[str]:
    """Mount points strictly below `path` (as mountinfo names them: resolved paths)."""
    prefix = os.path.realpath(path).rstrip('/') + '/'
    return sorted(point for point in mount_points() if point.startswith(prefix))


def occupants(path: str) -> t.List[Occupant]:
    """Processes whose root or working directory is `path` or below it, or that hold one of the files
    right inside `path` open (a guest's disk image); up to MAX_REPORTED."""
    try:
        wanted = os.stat(path)
    except OSError:
        return []
    prefix = os.path.realpath(path).rstrip('/') + '/'
    files = _files_in(path)
    found: t.List[Occupant] = []
    own_pid = os.getpid()
    for name in _pids():
        pid = int(name)
        if pid == own_pid:
            continue
        how = _use_of(name, wanted, prefix, files)
        if how is not None:
            found.append(Occupant(pid, _command(name), how))
        if len(found) >= MAX_REPORTED:
            break
    return found


def _use_of(pid: str, wanted: os.stat_result, prefix: str, files: t.Set[str]) -> t.Optional[str]:
    for link, how in (('root', 'root'), ('cwd', 'working directory')):
        if _points_at(os.path.join(_PROC, pid, link), wanted, prefix):
            return how
    if files:
        held = _open_file(pid, files)
        if held is not None:
            return 'open file ' + held
    return None


def _files_in(path: str) -> t.Set[str]:
    """The paths (as /proc names them: resolved) of the regular files right inside directory `path`."""
    directory = os.path.realpath(path)
    try:
        with os.scandir(path) as entries:
            return {os.path.join(directory, entry.name) for entry in entries if entry.is_file(follow_symlinks=False)}
    except OSError:
        return set()


def _open_file(pid: str, files: t.Set[str]) -> t.Optional[str]:
    """The name of one of `files` that process `pid` holds open, if any."""
    fd_dir = os.path.join(_PROC, pid, 'fd')
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return None  # gone, or not ours to look at
    for fd in fds:
        try:
            # readlink, never stat: a stat through a hung FUSE or NFS mount would hang the run.
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target in files:
            return os.path.basename(target)
    return None


def _pids() -> t.List[str]:
    try:
        return sorted((name for name in os.listdir(_PROC) if name.isdigit()), key=int)
    except OSError:
        return []


def running(pid: int) -> bool:
    """Whether process `pid` runs: a zombie does not (this PID 1 reaps orphans late, so `kill -0` is no test)."""
    fields = _stat_fields(str(pid))
    return bool(fields) and fields[0] not in (b'Z', b'X')


def group_running(group: int) -> bool:
    """Whether a process of process group `group` runs (zombies do not count)."""
    for pid in _pids():
        fields = _stat_fields(pid)
        if len(fields) > 2 and fields[0] not in (b'Z', b'X') and fields[2] == b'%d' % group:
            return True
    return False


def _stat_fields(pid: str) -> t.List[bytes]:
    """/proc/PID/stat after the command name (state, ppid, pgrp, ...); empty when there is no such process."""
    try:
        with open(os.path.join(_PROC, pid, 'stat'), 'rb') as stream:
            return stream.read().rsplit(b')', 1)[-1].split()
    except OSError:
        return []


def _points_at(link: str, wanted: os.stat_result, prefix: str) -> bool:
    try:
        info = os.stat(link)
        if (info.st_dev, info.st_ino) == (wanted.st_dev, wanted.st_ino):
            return True
        # In the host's namespace the link names the path; a guest's own paths never start with ours.
        return (os.readlink(link).rstrip('/') + '/').startswith(prefix)
    except OSError:
        return False  # gone, or not ours to look at


def _command(pid: str) -> str:
    try:
        with open(os.path.join(_PROC, pid, 'comm'), encoding='utf-8', errors='replace') as stream:
            return stream.read().strip() or '?'
    except OSError:
        return '?'
