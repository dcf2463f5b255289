# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""A dest and its bookkeeping: the lock, the state record and the build area beside it.

Bookkeeping lives in a hidden sibling directory (`.NAME.virt-bootstrap`), on the same
filesystem as dest so a finished build can be swapped in with one rename, and out of reach
of the guest that later runs on the rootfs.

A new rootfs goes in as one recoverable step: its record is saved as `pending.json`, the tree
is swapped in, and the pending record becomes `state.json`. Whoever takes the lock next finds
out from the tree at dest which of the two records is true (see `_settle_pending`), so a run
killed at any point leaves a dest the module still knows.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import secrets
import stat
import tempfile
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils import _occupancy as occupancy
from ansible_collections.virt.bootstrap.plugins.module_utils import _qemu as qemu
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, DestinationError
from ansible_collections.virt.bootstrap.plugins.module_utils._rootpath import libc, remove_tree
from ansible_collections.virt.bootstrap.plugins.module_utils._state import (
    RECORD_TEMP_PREFIX,
    StateRecord,
    fsync_directory,
    load_record,
    save_record,
)

_RENAME_EXCHANGE = 2
_DEBRIS_PREFIXES = ('build-', 'old-')
_AT_FDCWD = -100
_PENDING = 'pending.json'
# A random id on the rootfs root directory: unlike st_dev it survives a reboot or a remount, and
# unlike a bare inode number it is not handed to the next directory made after a removal.
# trusted.* is out of reach of guests in a user namespace; an unprivileged caller can only use user.*.
_MARK_XATTR = 'trusted.virt-bootstrap.id' if os.geteuid() == 0 else 'user.virt-bootstrap.id'
_MARK_UNSUPPORTED = (errno.ENOTSUP, errno.EPERM, errno.EACCES)


class Destination:
    def __init__(self, dest: str) -> None:
        if not os.path.isabs(dest):
            raise DestinationError('dest %r must be an absolute path' % dest)
        self.path = os.path.normpath(dest)
        parent, name = os.path.split(self.path)
        if not name or name in ('.', '..'):
            raise DestinationError('dest %r cannot be used: name a directory below /' % dest)
        self.parent = parent
        self.meta_dir = os.path.join(parent, '.%s.virt-bootstrap' % name)
        self.record_path = os.path.join(self.meta_dir, 'state.json')
        self.pending_path = os.path.join(self.meta_dir, _PENDING)
        # What went wrong while cleaning up, which does not make the run fail (shown as warnings).
        self.warnings: t.List[str] = []
        self._lock_fd = -1

    # -- inspection (safe in check mode) ---------------------------------------------------------

    def load_record(self) -> t.Optional[StateRecord]:
        """The record that describes dest, judging a pending one as the next lock holder will."""
        pending = load_record(self.pending_path)
        if pending is not None and self.holds(pending):
            return pending
        return load_record(self.record_path)

    def tree_path(self) -> str:
        """Where the tree of dest is: dest, or the rootfs a killed two-rename swap parked (the next lock puts it back)."""
        if not os.path.lexists(self.path):
            parked = self._parked_rootfs()
            if parked is not None:
                return parked
        return self.path

    def _parked_rootfs(self) -> t.Optional[str]:
        try:
            names = sorted(os.listdir(self.meta_dir))
        except FileNotFoundError:
            return None
        for name in names:
            parked = os.path.join(self.meta_dir, name, 'old')
            if name.startswith('old-') and os.path.isdir(parked) and not os.path.islink(parked):
                return parked
        return None

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def is_empty_dir(self) -> bool:
        return os.path.isdir(self.path) and not os.path.islink(self.path) and not os.listdir(self.path)

    def holds(self, record: t.Optional[StateRecord]) -> bool:
        """Whether dest is still the directory `record` was written for."""
        if record is None or not isinstance(record.dest_identity, dict):
            return False
        current = identity_of(self.tree_path())
        if current is None:
            return False
        recorded_mark = record.dest_identity.get('mark')
        # Without a mark (a filesystem with no xattrs) the inode alone has to do.
        return current['inode'] == record.dest_identity.get('inode') and \
            (recorded_mark is None or current['mark'] == recorded_mark)

    def refusal(self, record: t.Optional[StateRecord], force: bool, action: str = 'replace') -> t.Optional[str]:
        """Why dest must not be replaced (or removed: `action`), or None when we may.

        A record makes dest ours only while dest is still the directory we put there: one made
        again by someone else behind our back is theirs.
        """
        if not self.exists() or force:
            return None
        if self.holds(record):
            return None
        if os.path.islink(self.path) or not os.path.isdir(self.path):
            return '%s exists and is not a directory; set force: true to %s it' % (self.path, action)
        if not self.is_empty_dir():
            return ('%s is not empty and was not made by this module; set force: true to %s its contents'
                    % (self.path, action))
        return None

    def check_replaceable(self, action: str, in_use_warns: bool = False) -> None:
        """Refuse to `action` ('replace' or 'remove') a dest that is in use, whatever `force` says.

        A guest's files would vanish under it, and removing a tree with a mount in it would delete
        what the mount shows (host data bind-mounted into a guest). With `in_use_warns` (check mode),
        a process using dest is a warning: the caller can stop the guest before acting (the role does).
        """
        if not self.exists():
            return
        if occupancy.is_mount_point(self.path):
            raise DestinationError(
                '%s is a mount point: the rootfs is built beside dest and renamed into place, which cannot '
                'replace a mounted filesystem; use a directory inside it (such as %s) as dest'
                % (self.path, os.path.join(self.path, 'rootfs')))
        mounted = occupancy.mounts_below(self.path)
        if mounted:
            raise DestinationError('cannot %s %s: %s mounted inside it; unmount %s first'
                                   % (action, self.path, ', '.join(mounted[:occupancy.MAX_REPORTED]),
                                      'it' if len(mounted) == 1 else 'them'))
        users = occupancy.occupants(self.path)
        if users and not in_use_warns:
            raise DestinationError('cannot %s %s while it is in use (a running guest?): %s; stop it first'
                                   % (action, self.path, '; '.join(str(user) for user in users)))
        if users:
            self.warnings.append('%s is in use (a running guest?): %s; a run can %s it only once that has stopped'
                                 % (self.path, '; '.join(str(user) for user in users), action))

    # -- locking ---------------------------------------------------------------------------------

    def __enter__(self) -> 'Destination':
        self.lock()
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.unlock()

    def lock(self) -> None:
        """Serialise runs on this dest and settle what a killed run left; the lock is never kept on failure."""
        while True:
            os.makedirs(self.parent, mode=0o755, exist_ok=True)
            try:
                os.mkdir(self.meta_dir, 0o700)
            except FileExistsError:
                self._check_meta_dir()
            lock_path = os.path.join(self.meta_dir, 'lock')
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                continue  # meta dir removed between mkdir and open (state: absent)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock_path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            held = os.fstat(fd)
            if current is None or (current.st_dev, current.st_ino) != (held.st_dev, held.st_ino):
                os.close(fd)
                continue
            self._lock_fd = fd
            try:
                self._recover()
            except BaseException:
                self.unlock()
                raise
            return

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    @contextlib.contextmanager
    def looking(self) -> t.Iterator[None]:
        """Held while a run without the lock looks into dest (a read-only mount in the bookkeeping directory).

        A shared flock on the same lock file: a run that holds the lock, and so may settle what it takes for
        a killed run's debris, waits until the look is over, and a look waits for such a run. With the lock
        held by this Destination already, nothing more is needed.
        """
        if self._lock_fd >= 0:
            yield
            return
        while True:
            lock_path = os.path.join(self.meta_dir, 'lock')
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_SH)
            held = os.fstat(fd)
            try:
                current = os.stat(lock_path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                break
            os.close(fd)  # the bookkeeping was removed and made again meanwhile: lock the file there now
        try:
            yield
        finally:
            os.close(fd)

    def needs_recovery(self) -> bool:
        """Whether a killed run left something the next lock holder settles."""
        try:
            names = os.listdir(self.meta_dir)
        except FileNotFoundError:
            return False
        return any(name.startswith(_DEBRIS_PREFIXES + (RECORD_TEMP_PREFIX,)) or name == _PENDING for name in names)

    def _check_meta_dir(self) -> None:
        """Our bookkeeping must be a private directory of ours, not something planted beside dest."""
        info = os.lstat(self.meta_dir)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise DestinationError('%s is not a private directory of uid %d; remove it (it holds only the state '
                                   'of this module)' % (self.meta_dir, os.geteuid()))

    def _recover(self) -> None:
        """Put dest and its record back in step after a killed run; we hold the lock, nobody else is at work.

        First a rootfs parked by the two-rename swap goes back to a missing dest, then the tree at
        dest says which record is true, then builds left behind are removed.
        """
        # A killed qcow2 build may have left an image mounted in its build directory: taken down first.
        qemu.release_debris(self.meta_dir)
        parked = self._parked_rootfs()
        if parked is not None and not os.path.lexists(self.path):
            os.rename(parked, self.path)
            fsync_directory(self.parent)
            parked = None
        pending = load_record(self.pending_path)
        if parked is not None and not self.holds(pending):
            # Not the new tree at dest either: someone made dest again while a killed run had the old one
            # parked. That one is the only copy of the rootfs the record describes; it is never thrown away.
            raise DestinationError('%s was made again while the previous rootfs was set aside at %s by a run that '
                                   'was killed; move one of them away (mv %s %s puts the rootfs back)'
                                   % (self.path, parked, parked, self.path))
        self._settle_pending()
        for name in sorted(os.listdir(self.meta_dir)):
            if name.startswith(_DEBRIS_PREFIXES):
                self.discard(os.path.join(self.meta_dir, name))
            elif name.startswith(RECORD_TEMP_PREFIX):
                os.unlink(os.path.join(self.meta_dir, name))  # a record write that was killed before its rename

    def _settle_pending(self) -> None:
        pending = load_record(self.pending_path)
        if pending is not None and self.holds(pending):
            os.replace(self.pending_path, self.record_path)  # the swap happened: the new record is true
        elif os.path.lexists(self.pending_path):
            os.unlink(self.pending_path)  # killed before the swap: the old record still is
        else:
            return
        fsync_directory(self.meta_dir)

    def discard(self, path: str) -> None:
        """Remove a tree we no longer need; a failure is a warning, and the next run tries again.

        A tree with something mounted inside it is left alone: removing it would go through the mount.
        """
        mounted = occupancy.mounts_below(path)
        if mounted:
            self.warnings.append('%s was left in place: %s mounted inside it; unmount it and the next run removes '
                                 'it' % (path, ', '.join(mounted[:occupancy.MAX_REPORTED])))
            return
        users = occupancy.occupants(path)
        if users:
            self.warnings.append('%s was left in place while it is in use: %s; the next run removes it'
                                 % (path, '; '.join(str(user) for user in users)))
            return
        try:
            remove_tree(path)
        except (OSError, BootstrapError) as exc:
            self.warnings.append('%s could not be removed (%s); the next run tries again'
                                 % (path, getattr(exc, 'strerror', None) or type(exc).__name__))

    # -- changing dest (lock held) ---------------------------------------------------------------

    def new_build_dir(self) -> str:
        """A private directory beside dest, on its filesystem, to build the new rootfs in."""
        return tempfile.mkdtemp(prefix='build-', dir=self.meta_dir)

    def save_record(self, record: StateRecord) -> None:
        save_record(self.record_path, record)

    def save_pending(self, record: StateRecord) -> None:
        """The record of a tree about to be swapped in; `_settle_pending` decides its fate."""
        save_record(self.pending_path, record)

    def drop_pending(self) -> None:
        if os.path.lexists(self.pending_path):
            os.unlink(self.pending_path)

    def promote_pending(self) -> None:
        os.replace(self.pending_path, self.record_path)
        fsync_directory(self.meta_dir)

    def swap_in(self, new_path: str) -> None:
        """Put `new_path` at dest in one step; the old dest (if any) ends up at `new_path`."""
        if os.path.lexists(self.path):
            if not _rename_exchange(new_path, self.path):
                self._swap_by_two_renames(new_path)
        else:
            try:
                os.rename(new_path, self.path)
            except OSError as exc:
                raise DestinationError('cannot move the new rootfs to %s: %s' % (self.path, exc.strerror))

    def flush_parent(self) -> None:
        """Make the swap durable: a rename is on disk only once its directory is."""
        fsync_directory(self.parent)

    def _swap_by_two_renames(self, new_path: str) -> None:
        """Filesystems without RENAME_EXCHANGE: the old dest is parked until the new one is in place."""
        parked = tempfile.mkdtemp(prefix='old-', dir=self.meta_dir)
        os.rename(self.path, os.path.join(parked, 'old'))
        try:
            os.rename(new_path, self.path)
        except OSError:
            os.rename(os.path.join(parked, 'old'), self.path)
            raise
        os.rename(os.path.join(parked, 'old'), new_path)
        os.rmdir(parked)

    def remove_all(self) -> None:
        """Remove dest and our bookkeeping (state: absent)."""
        self.check_replaceable('remove')  # again, with the lock held: a guest may have started since the decision
        if os.path.lexists(self.path):
            if os.path.isdir(self.path) and not os.path.islink(self.path):
                parked = tempfile.mkdtemp(prefix='old-', dir=self.meta_dir)
                # Named 'rootfs', not 'old': a run killed from here on goes on removing it, never puts it back.
                os.rename(self.path, os.path.join(parked, 'rootfs'))
                fsync_directory(self.parent)
                remove_tree(parked)
            else:
                os.unlink(self.path)
        remove_tree(self.meta_dir)


def identity_of(path: str) -> t.Optional[t.Dict[str, t.Any]]:
    """{'inode', 'mark'} of directory `path`, or None when it is missing or no directory."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        return None
    try:
        mark: t.Optional[str] = os.getxattr(path, _MARK_XATTR, follow_symlinks=False).decode('ascii', 'replace')
    except OSError:
        mark = None
    return {'inode': info.st_ino, 'mark': mark}


def mark_rootfs(path: str) -> t.Dict[str, t.Any]:
    """Give the new rootfs at `path` a random mark and return its identity (a rename keeps both)."""
    mark: t.Optional[str] = secrets.token_hex(16)
    try:
        os.setxattr(path, _MARK_XATTR, t.cast(str, mark).encode('ascii'), follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _MARK_UNSUPPORTED:
            raise
        mark = None
    return {'inode': os.lstat(path).st_ino, 'mark': mark}


def flush_filesystem(path: str) -> None:
    """Write out everything cached for the filesystem holding `path` (syncfs(2)).

    Without it a power loss after the swap can leave zero-length files under a record that says the
    rootfs is complete. One syncfs is far cheaper than an fsync per file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs = getattr(libc(), 'syncfs', None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()  # no syncfs here: flush everything
    finally:
        os.close(fd)


def _rename_exchange(first: str, second: str) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where unsupported."""
    renameat2 = getattr(libc(), 'renameat2', None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise DestinationError('cannot swap the new rootfs into %s: %s' % (second, os.strerror(error)))
