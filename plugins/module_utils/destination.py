# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A dest and its bookkeeping: the lock, the state record and the build area beside it.

Bookkeeping lives in a hidden sibling directory (`.NAME.virt-bootstrap`), on the same
filesystem as dest so a finished build can be swapped in with one rename, and out of reach
of the guest that later runs on the rootfs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import tempfile
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import DestinationError
from ansible_collections.virt.bootstrap.plugins.module_utils.rootpath import remove_tree
from ansible_collections.virt.bootstrap.plugins.module_utils.state import (
    StateRecord,
    load_record,
    path_identity,
    save_record,
)

_RENAME_EXCHANGE = 2
_DEBRIS_PREFIXES = ('build-', 'old-')
_AT_FDCWD = -100


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
        self._lock_fd = -1

    # -- inspection (safe in check mode) ---------------------------------------------------------

    def load_record(self) -> t.Optional[StateRecord]:
        return load_record(self.record_path)

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def is_empty_dir(self) -> bool:
        return os.path.isdir(self.path) and not os.path.islink(self.path) and not os.listdir(self.path)

    def refusal(self, record: t.Optional[StateRecord], force: bool) -> t.Optional[str]:
        """Why dest must not be replaced, or None when we may.

        A record makes dest ours only while dest is still the directory we put there: one made
        again by someone else behind our back is theirs.
        """
        if not self.exists() or force:
            return None
        if record is not None and record.dest_identity == path_identity(self.path):
            return None
        if os.path.islink(self.path) or not os.path.isdir(self.path):
            return '%s exists and is not a directory; set force: true to replace it' % self.path
        if not self.is_empty_dir():
            return ('%s is not empty and was not made by this module; set force: true to replace its contents'
                    % self.path)
        return None

    # -- locking ---------------------------------------------------------------------------------

    def __enter__(self) -> 'Destination':
        self.lock()
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.unlock()

    def lock(self) -> None:
        """Serialise runs on this dest; a lock file removed by `state: absent` is taken again."""
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
                continue  # meta dir removed between mkdir and open
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock_path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            held = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                self._lock_fd = fd
                self._remove_debris()
                return
            os.close(fd)

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def has_debris(self) -> bool:
        try:
            return any(name.startswith(_DEBRIS_PREFIXES) for name in os.listdir(self.meta_dir))
        except FileNotFoundError:
            return False

    def _check_meta_dir(self) -> None:
        """Our bookkeeping must be a private directory of ours, not something planted beside dest."""
        info = os.lstat(self.meta_dir)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise DestinationError('%s is not a private directory of uid %d; remove it (it holds only the state '
                                   'of this module)' % (self.meta_dir, os.geteuid()))

    def _remove_debris(self) -> None:
        """Builds left by a run that was killed: we hold the lock, so nobody is using them.

        A run killed between the two renames of the fallback swap left the old rootfs parked and
        dest missing: that one is put back, not removed.
        """
        for name in sorted(os.listdir(self.meta_dir)):
            parked = os.path.join(self.meta_dir, name, 'old')
            if name.startswith('old-') and os.path.isdir(parked) and not os.path.lexists(self.path):
                os.rename(parked, self.path)
            if name.startswith(_DEBRIS_PREFIXES):
                remove_tree(os.path.join(self.meta_dir, name))

    # -- changing dest (lock held) ---------------------------------------------------------------

    def new_build_dir(self) -> str:
        """A private directory beside dest, on its filesystem, to build the new rootfs in."""
        return tempfile.mkdtemp(prefix='build-', dir=self.meta_dir)

    def save_record(self, record: StateRecord) -> None:
        save_record(self.record_path, record)

    def swap_in(self, new_path: str) -> None:
        """Put `new_path` at dest in one step; the old dest (if any) ends up at `new_path`."""
        if os.path.lexists(self.path):
            if _rename_exchange(new_path, self.path):
                return
            # Filesystems without RENAME_EXCHANGE: two renames, old kept until the new is in place.
            parked = tempfile.mkdtemp(prefix='old-', dir=self.meta_dir)
            os.rename(self.path, os.path.join(parked, 'old'))
            try:
                os.rename(new_path, self.path)
            except OSError:
                os.rename(os.path.join(parked, 'old'), self.path)
                raise
            os.rename(os.path.join(parked, 'old'), new_path)
            os.rmdir(parked)
            return
        try:
            os.rename(new_path, self.path)
        except OSError as exc:
            raise DestinationError('cannot move the new rootfs to %s: %s' % (self.path, exc))

    def remove_all(self) -> None:
        """Remove dest and our bookkeeping (state: absent)."""
        if os.path.lexists(self.path):
            if os.path.isdir(self.path) and not os.path.islink(self.path):
                parked = tempfile.mkdtemp(prefix='old-', dir=self.meta_dir)
                os.rename(self.path, os.path.join(parked, 'rootfs'))
                remove_tree(parked)
            else:
                os.unlink(self.path)
        remove_tree(self.meta_dir)


def _rename_exchange(first: str, second: str) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where unsupported."""
    libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    renameat2 = getattr(libc, 'renameat2', None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise DestinationError('cannot swap the new rootfs into %s: %s' % (second, os.strerror(error)))
