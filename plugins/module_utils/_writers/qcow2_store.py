# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""A store of qcow2 layer images that guests made from the same image share.

Each image is named by its chain key, a digest of every layer from the bottom up to it and of what
else shapes its filesystem, and is backed by the image of the key below it (a relative name: the
store is one directory). An image enters the store only once complete, by a link() that the first
of concurrent builders wins, and is never changed after; beside it, `KEY.json` holds what a
builder needs to go on from it (the directories' metadata, the root entry of /etc/shadow).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import stat
import time
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import DestinationError
from ansible_collections.virt.bootstrap.plugins.module_utils._image import sha256_digest

# Part of every key: a change in how layer images are made (sizing, mkfs) must not reuse old ones.
STORE_VERSION = 1
_BUILDING = '.build-'
_NEW = '.new-'
# A .new- file lives for microseconds (renamed at once) or the time to write a small JSON file: one older
# than this is a killed run's.
STALE_NEW_SECONDS = 600
_IMAGE_SUFFIX = '.qcow2'


def chain_keys(layer_digests: t.Sequence[str], filesystem: str, size: t.Optional[int],
               device_nodes: bool) -> t.List[str]:
    """The key of each layer's image, bottom first. `size` is qcow2_size (None: sized from the image,
    which the layers decide)."""
    keys = []
    below = ''
    for digest in layer_digests:
        shaped = {'version': STORE_VERSION, 'below': below, 'layer': digest, 'filesystem': filesystem,
                  'size': size, 'device_nodes': device_nodes}
        below = sha256_digest(json.dumps(shaped, sort_keys=True).encode('utf-8')).split(':', 1)[1]
        keys.append(below)
    return keys


class LayerStore:
    def __init__(self, path: str) -> None:
        if not os.path.isabs(path):
            raise DestinationError('qcow2_layer_store %r must be an absolute path' % path)
        self.path = os.path.normpath(path)

    def image_path(self, key: str) -> str:
        return os.path.join(self.path, key + _IMAGE_SUFFIX)

    def has(self, key: str) -> bool:
        return os.path.isfile(self.image_path(key)) and os.path.isfile(self._state_path(key))

    def state(self, key: str) -> t.Dict[str, t.Any]:
        with open(self._state_path(key), encoding='utf-8') as stream:
            return t.cast(t.Dict[str, t.Any], json.load(stream))

    def complete_prefix(self, keys: t.Sequence[str]) -> int:
        """How many of `keys`, from the bottom, the store already holds."""
        count = 0
        while count < len(keys) and self.has(keys[count]):
            count += 1
        return count

    def open(self) -> None:
        """Make the store if missing, check it is a private directory of ours, and drop abandoned builds."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        info = os.lstat(self.path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise DestinationError('qcow2_layer_store %s is not a directory of uid %d that only it can write'
                                   % (self.path, os.geteuid()))
        for name in os.listdir(self.path):
            if name.startswith(_BUILDING):
                self._drop_if_abandoned(os.path.join(self.path, name))
            elif name.startswith(_NEW):
                _drop_if_stale(os.path.join(self.path, name))

    @contextlib.contextmanager
    def building(self, key: str) -> t.Iterator[str]:
        """A path in the store to write the image of `key` at, locked while it is written; see commit()."""
        name = '%s-%s%s' % (secrets.token_hex(4), key, _IMAGE_SUFFIX)
        fresh = os.path.join(self.path, _NEW + name)
        path = os.path.join(self.path, _BUILDING + name)
        fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            # Locked before it gets the name that open() looks at: a build is never taken for abandoned.
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(fresh, path)
            yield path
        finally:
            os.close(fd)
            for leftover in (fresh, path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)

    def commit(self, key: str, built: str, state: t.Mapping[str, t.Any]) -> None:
        """Put the image at `built` into the store as `key`, unless another run already did."""
        if self.has(key):
            return
        temporary = os.path.join(self.path, _NEW + secrets.token_hex(8) + '.json')
        with open(temporary, 'w', encoding='utf-8') as stream:
            json.dump(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, self._state_path(key))  # no image under this key yet: nothing relies on it
        os.chmod(built, 0o444)
        _fsync(built)
        with contextlib.suppress(FileExistsError):
            os.link(built, self.image_path(key))  # the commit: from here on the image is complete
        _fsync(self.path)

    def _state_path(self, key: str) -> str:
        return os.path.join(self.path, key + '.json')

    @staticmethod
    def _drop_if_abandoned(path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a live run is writing it
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _drop_if_stale(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(path).st_mtime < time.time() - STALE_NEW_SECONDS:
            os.unlink(path)
