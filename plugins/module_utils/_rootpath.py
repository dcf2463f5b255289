# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""Path-safety primitives for trees that may hold hostile content: resolving paths inside a root,
looking at entries without following links, and removing whole trees.

The layer applier, the destination and the shadow editor all reach into such trees through these.

Paths resolve *inside the root*, as openat2(RESOLVE_IN_ROOT) resolves them: every component but the
last may be a symlink, followed as if the root were `/` (absolute targets and `..` stop at the root),
at most MAX_LINK_HOPS of them; the last component is never followed, because callers replace, create
or remove it. Where the kernel has openat2 it does the resolution; otherwise (before Linux 5.6, or
under a seccomp filter that refuses it) our own walk does the same one component at a time from
directory fds with O_NOFOLLOW. Either way every fd handed out is a directory inside the root.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import errno
import os
import platform
import stat
import typing as t
from dataclasses import dataclass

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import HostileLayer, LayerError

Parts = t.Tuple[str, ...]
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
DISPLAY_LIMIT = 300
# Far deeper than any real tree. Entry names and what they resolve to stay within it, which bounds the
# work and memory per entry.
MAX_DEPTH = 256
# As the kernel: more symlinks than this on one path is ELOOP.
MAX_LINK_HOPS = 40
# Directory fds kept open between lookups; lookups close what is over it only when told (release()).
DIR_CACHE_LIMIT = 256
# How many directories a tree removal keeps open at most; deeper ones are moved up first.
REMOVAL_DEPTH = 32
# Entries of one directory listed at once while removing it: memory stays flat however wide it is.
REMOVAL_BATCH = 1024

# openat2(2): the same number on every architecture with the generic syscall table.
_OPENAT2_SYSCALLS = {'x86_64': 437, 'aarch64': 437}
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_OPENAT2_RESOLVE = _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_XDEV
_OPENAT2_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# Whether openat2 works here; None until first tried.
_openat2_works: t.Optional[bool] = None


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


class _OpenHow(ctypes.Structure):
    _fields_ = [('flags', ctypes.c_uint64), ('mode', ctypes.c_uint64), ('resolve', ctypes.c_uint64)]


@functools.lru_cache(maxsize=1)
def libc() -> ctypes.CDLL:
    """The C library Python itself runs on (ctypes.util.find_library would start /sbin/ldconfig to find it)."""
    return ctypes.CDLL(None, use_errno=True)


@functools.lru_cache(maxsize=1)
def _syscall() -> t.Any:
    function = libc().syscall
    function.restype = ctypes.c_long
    return function


def _openat2(dir_fd: int, path: str) -> int:
    """openat2(dir_fd, path, O_DIRECTORY, RESOLVE_IN_ROOT | ...): a directory fd, or OSError."""
    encoded = os.fsencode(path)
    if b'\0' in encoded:
        raise ValueError('embedded null byte')
    how = _OpenHow(flags=_OPENAT2_FLAGS, mode=0, resolve=_OPENAT2_RESOLVE)
    number = _OPENAT2_SYSCALLS[platform.machine()]
    result = int(_syscall()(ctypes.c_long(number), ctypes.c_int(dir_fd), ctypes.c_char_p(encoded), ctypes.byref(how),
                            ctypes.c_size_t(ctypes.sizeof(how))))
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), path)
    return result


def openat2_works(root_fd: int) -> bool:
    """Whether the kernel has openat2 and lets us call it (a seccomp filter may answer ENOSYS or EPERM)."""
    global _openat2_works  # pylint: disable=global-statement
    if _openat2_works is None:
        if platform.machine() not in _OPENAT2_SYSCALLS:
            _openat2_works = False
        else:
            try:
                os.close(_openat2(root_fd, '.'))
                _openat2_works = True
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EPERM):
                    raise
                _openat2_works = False
    return _openat2_works


class _Missing(Exception):
    """A component of the path does not exist."""


class _NotADirectory(Exception):
    """A component of the path is neither a directory nor a symlink (the message says which)."""


class _Walk:
    """The state of one resolution by our own walk: where it is, and the fd there if it owns it."""

    def __init__(self, root_fd: int) -> None:
        self.parts: Parts = ()
        self.fd = root_fd
        self.owned = False

    def move(self, parts: Parts, fd: int, owned: bool) -> None:
        if self.owned:
            os.close(self.fd)
        self.parts, self.fd, self.owned = parts, fd, owned

    def close(self) -> None:
        self.move((), -1, False)


class InRootDirs:
    """Directory fds below one root, each reached by resolving its path inside the root.

    An fd handed out stays open until release() or until forget() is told that something at or above
    it was removed or replaced. Fds are cached by *resolved* path (a path of real directories, no
    symlink on it); a path that went through symlinks is remembered as an alias of its resolved path
    until any symlink or directory is removed or replaced.
    """

    def __init__(self, root_fd: int, on_create: t.Optional[t.Callable[[int, str, Parts], None]] = None) -> None:
        self.root_fd = root_fd
        # Called for each directory a lookup with create=True made (mode 0700), with the fd of its parent.
        self._on_create = on_create
        self._fds: t.Dict[Parts, int] = {}
        self._aliases: t.Dict[Parts, Parts] = {}
        self._root_dev = os.fstat(root_fd).st_dev
        self._root_prefix = self._kernel_path_prefix() if openat2_works(root_fd) else None

    def __len__(self) -> int:
        return len(self._fds)

    def _kernel_path_prefix(self) -> t.Optional[str]:
        """How the kernel names paths below the root (for the resolved path of an openat2 fd)."""
        try:
            root_path = os.readlink('/proc/self/fd/%d' % self.root_fd)
        except OSError:
            return None
        if not root_path.startswith('/') or root_path.endswith(' (deleted)'):
            return None
        return root_path.rstrip('/') + '/'

    # -- lookups ---------------------------------------------------------------------------------

    def resolve(self, parts: Parts, create: bool = False) -> t.Tuple[Parts, int]:
        """(resolved path, fd) of directory `parts`, every component followed inside the root.

        With `create`, missing directories are made on the way (also where a dangling symlink points),
        as umoci and containerd do. Raises FileNotFoundError when something is missing without it,
        LayerError when a component is not a directory or the symlinks loop, HostileLayer when the
        path resolves deeper than MAX_DEPTH or crosses a mount point.
        """
        try:
            return self._resolve(parts, create)
        except _Missing:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), display_path(parts))
        except _NotADirectory as exc:
            raise LayerError(str(exc))

    def lookup(self, parts: Parts) -> t.Optional[t.Tuple[Parts, int]]:
        """Like resolve(), but None when a component is missing or is not a directory."""
        try:
            return self._resolve(parts, False)
        except (_Missing, _NotADirectory):
            return None

    def real(self, parts: Parts) -> int:
        """The fd of directory `parts`, a resolved path: no component may be a symlink."""
        if not parts:
            return self.root_fd
        cached = self._fds.get(parts)
        if cached is not None:
            return cached
        walk = _Walk(self.root_fd)
        try:
            self._walk_real(walk, parts)
            return self._keep(walk)
        except _Missing:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), display_path(parts))
        except _NotADirectory as exc:
            raise LayerError(str(exc))
        finally:
            walk.close()

    def _resolve(self, parts: Parts, create: bool) -> t.Tuple[Parts, int]:
        if not parts:
            return parts, self.root_fd
        cached = self._fds.get(parts)
        if cached is not None:
            return parts, cached
        resolved = self._aliases.get(parts)
        if resolved is None and self._root_prefix is not None:
            resolved = self._resolve_by_kernel(parts, create)
        if resolved is None:
            resolved = self._resolve_by_walk(parts, create)
        if resolved != parts:
            if len(self._aliases) >= 4 * DIR_CACHE_LIMIT:
                self._aliases.clear()
            self._aliases[parts] = resolved
        return resolved, self.real(resolved)

    def _resolve_by_kernel(self, parts: Parts, create: bool) -> t.Optional[Parts]:
        """The resolved path by openat2, or None when our walk has to do it (or to say what is wrong)."""
        try:
            fd = _openat2(self.root_fd, '/'.join(parts) or '.')
        except OSError as exc:
            if exc.errno == errno.ENOENT and not create:
                raise _Missing()
            if exc.errno == errno.EXDEV:
                raise HostileLayer('%s crosses a mount point' % display_path(parts))
            # Creating, or ENOTDIR/ELOOP/EAGAIN/ENAMETOOLONG: the walk makes what is missing or names
            # the component at fault.
            return None
        try:
            resolved = self._resolved_path_of(fd)
            if resolved is None:
                return None
            _check_depth(parts, resolved)
            if resolved not in self._fds:
                self._fds[resolved] = fd
                fd = -1
            return resolved
        finally:
            if fd >= 0:
                os.close(fd)

    def _resolved_path_of(self, fd: int) -> t.Optional[Parts]:
        """The path of `fd` below the root, as the kernel names it; None when it cannot tell."""
        prefix = t.cast(str, self._root_prefix)
        try:
            path = os.readlink('/proc/self/fd/%d' % fd)
        except OSError:
            return None
        if path + '/' == prefix:
            return ()
        if not path.startswith(prefix):
            return None
        resolved = tuple(path[len(prefix):].split('/'))
        if any(part in ('', '.', '..') for part in resolved):
            return None
        return resolved

    def _resolve_by_walk(self, parts: Parts, create: bool) -> Parts:
        walk = _Walk(self.root_fd)
        try:
            self._walk_in_root(walk, parts, create)
            _check_depth(parts, walk.parts)
            self._keep(walk)
            return walk.parts
        finally:
            walk.close()

    def _walk_in_root(self, walk: _Walk, parts: Parts, create: bool) -> None:
        pending = list(reversed(parts))
        hops = 0
        while pending:
            name = pending.pop()
            if name in ('', '.'):
                continue
            if name == '..':
                # Lexical on a path of real directories: the parent, and never above the root.
                parent = walk.parts[:-1]
                walk.move((), self.root_fd, False)
                self._walk_real(walk, parent)
                continue
            child = walk.parts + (name,)
            if len(child) > MAX_DEPTH:
                _check_depth(parts, child)
            target = self._step(walk, name, child, create)
            if target is None:
                continue
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise LayerError('%s: more than %d symlinks to follow (a symlink loop?)'
                                 % (display_path(parts), MAX_LINK_HOPS))
            if target.startswith('/'):
                walk.move((), self.root_fd, False)
            pending.extend(reversed(target.split('/')))

    def _walk_real(self, walk: _Walk, parts: Parts) -> None:
        """Walk down `parts` from where `walk` is; each component must be a real directory."""
        start = len(walk.parts)
        for depth in range(start + 1, len(parts) + 1):
            if self._step(walk, parts[depth - 1], parts[:depth], create=False) is not None:
                raise LayerError('%s is a symlink' % display_path(parts[:depth]))

    def _step(self, walk: _Walk, name: str, child: Parts, create: bool) -> t.Optional[str]:
        """Move `walk` into directory `name`; a symlink's target instead when `name` is one."""
        cached = self._fds.get(child)
        if cached is not None:
            walk.move(child, cached, False)
            return None
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=walk.fd)
        except FileNotFoundError:
            if not create:
                raise _Missing()
            os.mkdir(name, 0o700, dir_fd=walk.fd)
            if self._on_create is not None:
                self._on_create(walk.fd, name, child)
            fd = os.open(name, DIR_FLAGS, dir_fd=walk.fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            existing = lstat_at(walk.fd, name)
            if existing is None:
                raise _Missing()
            if not stat.S_ISLNK(existing.st_mode):
                raise _NotADirectory('%s is not a directory' % display_path(child))
            return os.readlink(name, dir_fd=walk.fd)
        if os.fstat(fd).st_dev != self._root_dev:
            os.close(fd)
            raise HostileLayer('%s crosses a mount point' % display_path(child))
        if len(self._fds) < DIR_CACHE_LIMIT:
            self._fds[child] = fd
            walk.move(child, fd, False)
        else:
            walk.move(child, fd, True)
        return None

    def _keep(self, walk: _Walk) -> int:
        """The fd where `walk` ended, now cached (whatever the limit: it is handed out)."""
        if walk.owned:
            self._fds[walk.parts] = walk.fd
            walk.owned = False
        return walk.fd

    # -- invalidation ----------------------------------------------------------------------------

    def forget(self, below: Parts) -> None:
        """Something at resolved path `below` is about to be removed or replaced: drop what it invalidates."""
        for key in [key for key in self._fds if key[:len(below)] == below]:
            os.close(self._fds.pop(key))
        self._aliases.clear()

    def release(self) -> None:
        """Close every cached fd (what was handed out is no longer valid)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _check_depth(parts: Parts, resolved: Parts) -> None:
    if len(resolved) > MAX_DEPTH:
        raise HostileLayer('path %s resolves to more than %d directories deep' % (display_path(parts), MAX_DEPTH))


def open_dir_in_root(root_fd: int, parts: Parts) -> int:
    """A new fd for existing directory `parts`, resolved inside the root `root_fd`; the caller closes it."""
    dirs = InRootDirs(root_fd)
    try:
        return os.dup(dirs.resolve(parts)[1])
    finally:
        dirs.release()


def replace_file_at(dir_fd: int, name: str, content: bytes, like: os.stat_result, mode: t.Optional[int] = None) -> None:
    """Replace entry `name` of directory `dir_fd` by a file holding `content`, atomically and durably.

    The new file gets the owner, times and (unless `mode` is given) the mode of `like`, the entry it
    replaces; the directory keeps its mtime, as the applier set it. It is written under a temporary
    name and renamed over `name`, so a crash leaves the old entry or the new file, and `name` is never
    followed (a symlink there is replaced, not written through).
    """
    dir_info = os.fstat(dir_fd)
    temporary = '.%s.virt-bootstrap' % name
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary, dir_fd=dir_fd)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o000, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            if os.geteuid() == 0:
                os.chown(fd, like.st_uid, like.st_gid)
            os.chmod(fd, stat.S_IMODE(like.st_mode) if mode is None else mode)
            os.utime(fd, ns=(like.st_atime_ns, like.st_mtime_ns))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.utime(dir_fd, ns=(dir_info.st_atime_ns, dir_info.st_mtime_ns))
        os.fsync(dir_fd)  # the rename is on disk before any record says the file changed
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


@dataclass
class _Removal:
    """One directory of a tree being removed: its fd, its name in its parent, the entries left in it."""

    fd: int
    name: str
    pending: t.List[t.Tuple[str, bool]]


def remove_tree_at(parent_fd: int, name: str) -> None:
    """Remove directory `name` below `parent_fd` and everything in it, never following symlinks.

    The walk is iterative and keeps at most REMOVAL_DEPTH directories open whatever the depth and
    width: a directory deeper than that is moved up to the top of the tree being removed (a rename
    within the tree, which is ours to remove) and removed from there. Directories an unprivileged
    caller cannot read or write are opened up first.
    """
    top_fd = _open_for_removal(parent_fd, name)
    top_device = os.fstat(top_fd).st_dev
    levels = [_Removal(top_fd, name, _entries(top_fd))]
    moved = 0
    try:
        while levels:
            level = levels[-1]
            if not level.pending:
                # Listed a batch at a time, so a directory of millions of entries costs no more memory than
                # a small one; what was moved up into the top directory shows up in its next batch.
                level.pending = _entries(level.fd)
            if not level.pending:
                levels.pop()
                os.close(level.fd)
                if levels:
                    _with_write_access(os.rmdir, levels[-1].fd, level.name)
                continue
            child, is_dir = level.pending.pop()
            if not is_dir:
                _with_write_access(os.unlink, level.fd, child)
            elif len(levels) < REMOVAL_DEPTH:
                child_fd = _open_for_removal(level.fd, child)
                if os.fstat(child_fd).st_dev != top_device:
                    # Another filesystem mounted in the tree: what it shows is not ours to delete.
                    os.close(child_fd)
                    raise OSError(errno.EXDEV, 'another filesystem is mounted there; not removing through it', child)
                levels.append(_Removal(child_fd, child, []))
                levels[-1].pending = _entries(child_fd)
            else:
                moved = _move_to_top(level.fd, child, levels[0], moved)
    finally:
        for level in levels:
            os.close(level.fd)
    os.rmdir(name, dir_fd=parent_fd)


def _entries(dir_fd: int) -> t.List[t.Tuple[str, bool]]:
    """(name, is a directory) for up to REMOVAL_BATCH entries of `dir_fd`; symlinks are not directories."""
    batch = []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            batch.append((entry.name, entry.is_dir(follow_symlinks=False)))
            if len(batch) >= REMOVAL_BATCH:
                break
    return batch


def _open_for_removal(parent_fd: int, name: str) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        _chmod_dir_at(parent_fd, name)
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)


def _with_write_access(remove: t.Callable[..., None], dir_fd: int, name: str) -> None:
    """remove(name, dir_fd=dir_fd) (os.unlink or os.rmdir), giving ourselves write access to `dir_fd` when needed."""
    try:
        remove(name, dir_fd=dir_fd)
    except PermissionError:
        os.chmod(dir_fd, 0o700)
        remove(name, dir_fd=dir_fd)


def _move_to_top(dir_fd: int, name: str, top: _Removal, moved: int) -> int:
    """Move directory `name` of `dir_fd` up into the top of the tree being removed; the new count of moves."""
    while True:
        moved += 1
        new_name = '.virt-bootstrap-deep-%d' % moved
        if lstat_at(top.fd, new_name) is None:
            break
    try:
        os.rename(name, new_name, src_dir_fd=dir_fd, dst_dir_fd=top.fd)
    except PermissionError:
        # Moving a directory to another parent also rewrites its '..' entry.
        os.chmod(dir_fd, 0o700)
        os.chmod(top.fd, 0o700)
        _chmod_dir_at(dir_fd, name)
        os.rename(name, new_name, src_dir_fd=dir_fd, dst_dir_fd=top.fd)
    return moved


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
