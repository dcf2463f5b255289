# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""The root password: hashing, and replacing exactly the root entry of a rootfs's /etc/shadow."""

from __future__ import annotations

import errno
import os
import re
import stat
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError
from ansible_collections.virt.bootstrap.plugins.module_utils._rootpath import open_dir_in_root, replace_file_at

SHADOW_PARTS = ('etc', 'shadow')
MAX_SHADOW_SIZE = 16 << 20
# crypt(5) hashes: $id$[params$]salt$hash, with the ids glibc and libxcrypt know. Nothing that could
# end the field or the line (':', newline) gets through.
_CRYPT_HASH_RE = re.compile(r'\$(1|5|6|y|gy|7|2[abxy]?|sha1|md5)\$(?:[./0-9A-Za-z=,]*\$)+[./0-9A-Za-z]+')


class ShadowError(BootstrapError):
    """The rootfs has no usable /etc/shadow root entry, or a hash is not a crypt hash."""


def validate_crypt_hash(value: str) -> str:
    if not _CRYPT_HASH_RE.fullmatch(value or ''):
        raise ShadowError('root_password_hash is not a crypt(5) hash such as $6$salt$hash')
    return value


def _sha512_crypt() -> t.Any:
    """passlib's SHA-512 crypt, imported only when a password is set."""
    try:
        from passlib.hash import sha512_crypt
    except ImportError:
        raise ShadowError('setting a root password needs the Python package "passlib" on the managed host')
    return sha512_crypt


def hash_password(password: str) -> str:
    """A new salted SHA-512 crypt hash of `password`."""
    return str(_sha512_crypt().hash(password))


def password_matches(password: str, crypt_hash: t.Optional[str]) -> bool:
    """Whether `crypt_hash` (from a shadow entry) is a hash of `password`."""
    if not crypt_hash or not crypt_hash.startswith('$6$'):
        return False
    try:
        return bool(_sha512_crypt().verify(password, crypt_hash))
    except ValueError:
        return False


def root_hash(content: bytes) -> t.Optional[str]:
    """The password field of the `root:` entry, or None when there is no such entry."""
    for line in content.split(b'\n'):
        fields = line.split(b':')
        if fields[0] == b'root' and len(fields) > 1:
            return fields[1].decode('utf-8', 'surrogateescape')
    return None


def with_root_hash(content: bytes, new_hash: str) -> bytes:
    """`content` with only the root entry's password field replaced; every other byte stays."""
    lines = content.split(b'\n')
    for number, line in enumerate(lines):
        fields = line.split(b':')
        if fields[0] == b'root' and len(fields) > 1:
            fields[1] = new_hash.encode('ascii')
            lines[number] = b':'.join(fields)
            return b'\n'.join(lines)
    raise ShadowError('/etc/shadow has no root entry')


def read_root_hash(root: str) -> t.Optional[str]:
    """The root hash in the rootfs at `root`, or None when it cannot be read safely."""
    try:
        content, etc_fd, _info = _read_shadow(root)
    except (ShadowError, OSError, BootstrapError):
        return None
    os.close(etc_fd)
    return root_hash(content)


def set_root_hash(root: str, new_hash: str) -> None:
    """Replace the root hash in `root`/etc/shadow atomically, keeping mode, owner and other lines.

    /etc resolves inside the rootfs (a link such as /etc -> private/etc is followed as if the rootfs
    were /), and /etc/shadow itself is never followed: no link can make us touch a file outside.
    """
    content, etc_fd, info = _read_shadow(root)
    try:
        replace_file_at(etc_fd, 'shadow', with_root_hash(content, new_hash), info)
    finally:
        os.close(etc_fd)


def _read_shadow(root: str) -> t.Tuple[bytes, int, os.stat_result]:
    """(content, fd of etc, stat of shadow); the caller closes the fd."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            etc_fd = open_dir_in_root(root_fd, SHADOW_PARTS[:1])
        except FileNotFoundError:
            raise ShadowError('the rootfs has no /etc, so no /etc/shadow to set the root password in')
        except BootstrapError as exc:
            raise ShadowError('cannot use /etc of the rootfs: %s' % exc)
    finally:
        os.close(root_fd)
    try:
        fd = _open_shadow(etc_fd)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ShadowError('/etc/shadow of the rootfs is not a regular file')
            if info.st_size > MAX_SHADOW_SIZE:
                raise ShadowError('/etc/shadow of the rootfs is %d bytes, more than any real one' % info.st_size)
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        content = b''.join(chunks)
        if root_hash(content) is None:
            raise ShadowError('/etc/shadow of the rootfs has no root entry')
        return content, etc_fd, info
    except BaseException:
        os.close(etc_fd)
        raise


def _open_shadow(etc_fd: int) -> int:
    """/etc/shadow opened for reading, never through a symlink and never blocking on a fifo."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        return os.open('shadow', flags, dir_fd=etc_fd)
    except FileNotFoundError:
        raise ShadowError('the rootfs has no /etc/shadow to set the root password in')
    except PermissionError:
        if os.geteuid() == 0:
            raise ShadowError('cannot open /etc/shadow of the rootfs: permission denied')
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ShadowError('/etc/shadow of the rootfs is a symlink; refusing to follow it')
        raise ShadowError('cannot open /etc/shadow of the rootfs: %s' % exc.strerror)
    # Unprivileged, the rootfs is ours but many images ship /etc/shadow as mode 0000: lend ourselves read
    # access for the time of the open. An O_PATH fd makes the chmod and the open reach the inode checked here.
    path_fd = os.open('shadow', os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=etc_fd)
    try:
        info = os.fstat(path_fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise ShadowError('cannot open /etc/shadow of the rootfs: permission denied')
        inode = '/proc/self/fd/%d' % path_fd
        os.chmod(inode, stat.S_IMODE(info.st_mode) | stat.S_IRUSR)
        try:
            return os.open(inode, flags & ~os.O_NOFOLLOW)
        finally:
            os.chmod(inode, stat.S_IMODE(info.st_mode))
    finally:
        os.close(path_fd)
