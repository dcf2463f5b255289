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
    how: str  # 'root' or 'working directory'

    def __str__(self) -> str:
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
    """Processes whose root or working directory is `path` or below it (up to MAX_REPORTED)."""
    try:
        wanted = os.stat(path)
    except OSError:
        return []
    prefix = os.path.realpath(path).rstrip('/') + '/'
    found: t.List[Occupant] = []
    own_pid = os.getpid()
    for name in _pids():
        pid = int(name)
        if pid == own_pid:
            continue
        for link, how in (('root', 'root'), ('cwd', 'working directory')):
            if _points_at(os.path.join(_PROC, name, link), wanted, prefix):
                found.append(Occupant(pid, _command(name), how))
                break
        if len(found) >= MAX_REPORTED:
            break
    return found


def _pids() -> t.List[str]:
    try:
        return sorted((name for name in os.listdir(_PROC) if name.isdigit()), key=int)
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
