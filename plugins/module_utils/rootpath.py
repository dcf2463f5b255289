# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Path-safety primitives for trees that may hold hostile content: opening directories inside a
root, looking at entries without following links, and removing whole trees.

The layer applier, the destination and the shadow editor all reach into such trees through these.
"""

from __future__ import annotations

import errno
import os
import stat
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import HostileLayer, LayerError

Parts = t.Tuple[str, ...]
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
DISPLAY_LIMIT = 300


def display_path(parts: Parts) -> str:
    """A path for a message; hostile names can be huge, so long ones are cut."""
    text = '/' + '/'.join(parts)
    return text if len(text) <= DISPLAY_LIMIT else text[:DISPLAY_LIMIT] + '...'


def lstat_at(dir_fd: int, name: str) -> t.Optional[os.stat_result]:
    """The lstat of `name` below `dir_fd`, or None when there is nothing there."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_child_dir(parent_fd: int, parts: Parts) -> int:
    """Open directory `parts[-1]` below `parent_fd` (which holds `parts[:-1]`), never through a symlink."""
    name = parts[-1]
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        existing = lstat_at(parent_fd, name)
        if existing is not None and stat.S_ISLNK(existing.st_mode):
            raise HostileLayer('%s is a symlink; refusing to go through it' % display_path(parts))
        raise LayerError('%s is not a directory' % display_path(parts))


def open_dir_in_root(root_fd: int, parts: Parts) -> int:
    """A new fd for existing directory `parts` below `root_fd`; the caller closes it."""
    fd = os.dup(root_fd)
    for depth in range(1, len(parts) + 1):
        try:
            child = open_child_dir(fd, parts[:depth])
        finally:
            os.close(fd)
        fd = child
    return fd


def remove_tree_at(parent_fd: int, name: str) -> None:
    """Remove `name` below `parent_fd` and everything in it, never following symlinks.

    Directories an unprivileged caller cannot read or write are opened up first.
    """
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        _chmod_dir_at(parent_fd, name)
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    try:
        with os.scandir(fd) as entries:
            children = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
        for child, is_dir in children:
            try:
                if is_dir:
                    remove_tree_at(fd, child)
                else:
                    os.unlink(child, dir_fd=fd)
            except PermissionError:
                os.chmod(fd, 0o700)
                if is_dir:
                    remove_tree_at(fd, child)
                else:
                    os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _chmod_dir_at(parent_fd: int, name: str) -> None:
    existing = lstat_at(parent_fd, name)
    if existing is None or not stat.S_ISDIR(existing.st_mode):
        raise LayerError('cannot open %s for removal' % name)
    os.chmod(name, 0o700, dir_fd=parent_fd)


def remove_tree(path: str) -> None:
    """Remove a whole directory tree that may hold hostile content."""
    parent, name = os.path.split(os.path.abspath(path))
    parent_fd = os.open(parent, DIR_FLAGS)
    try:
        if lstat_at(parent_fd, name) is not None:
            remove_tree_at(parent_fd, name)
    finally:
        os.close(parent_fd)
