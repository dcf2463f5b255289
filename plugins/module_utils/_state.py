# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""The state record: what was applied to a dest, so a rerun can tell whether anything moved."""

from __future__ import annotations

import json
import os
import tempfile
import typing as t
from dataclasses import asdict, dataclass, field

from ansible_collections.virt.bootstrap.plugins.module_utils._image import sha256_digest

# 2: dest_identity is an inode and a mark kept on the rootfs (1 had st_dev, which a remount changes);
# the root password is an edit of the tree, outside options_hash.
RECORD_VERSION = 2
# Records are written to a temporary file with this prefix beside them, then renamed over.
RECORD_TEMP_PREFIX = '.state-'


@dataclass
class StateRecord:
    source: str
    digest: str
    format: str
    options_hash: str
    platform: t.Optional[str] = None
    index_digest: t.Optional[str] = None
    layers: t.List[t.Dict[str, t.Any]] = field(default_factory=list)
    # The options behind options_hash, for diffs: never secrets (only whether a root password is set).
    options: t.Dict[str, t.Any] = field(default_factory=dict)
    # What the rootfs root directory was when we made it ({'inode': N, 'mark': random id or None}):
    # a dest replaced behind our back is not intact. See Destination.holds().
    dest_identity: t.Optional[t.Dict[str, t.Any]] = None
    # Whether we set the root password, and the image's own root password field, put back when the
    # password option is dropped (the image's content, never the password given to us).
    root_password: bool = False
    image_root_field: t.Optional[str] = None
    # The image's runtime config (_image.runtime_config): an unchanged rerun reads only the manifest.
    # None in records written before it was kept; such a record is completed by the next run.
    image_config: t.Optional[t.Dict[str, t.Any]] = None
    version: int = RECORD_VERSION

    def same_result(self, other: 'StateRecord') -> bool:
        """Whether both records describe the same rootfs content."""
        return (self.digest, self.format, self.options_hash) == (other.digest, other.format, other.options_hash)


def options_hash(shaping_options: t.Mapping[str, t.Any]) -> str:
    """A stable hash of the options that change what is written (never their secret values)."""
    encoded = json.dumps(shaping_options, sort_keys=True, separators=(',', ':')).encode('utf-8')
    return sha256_digest(encoded)


def load_record(path: str) -> t.Optional[StateRecord]:
    """The record at `path`, or None when there is none or it is from an unknown version."""
    try:
        with open(path, 'rb') as stream:
            data = json.load(stream)
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # unreadable: treat as absent, the next run rewrites it
    if not isinstance(data, dict) or data.get('version') != RECORD_VERSION:
        return None
    known = set(StateRecord.__dataclass_fields__)
    try:
        return StateRecord(**{key: value for key, value in data.items() if key in known})
    except TypeError:
        return None


def save_record(path: str, record: StateRecord) -> None:
    """Write atomically: a crash leaves either the old record or the new one."""
    directory = os.path.dirname(path)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=RECORD_TEMP_PREFIX)
    try:
        with os.fdopen(fd, 'w') as stream:
            json.dump(asdict(record), stream, indent=2, sort_keys=True)
            stream.write('\n')
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    fsync_directory(directory)


def fsync_directory(path: str) -> None:
    """Make a rename or unlink in `path` durable (a rename is only on disk once its directory is)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
