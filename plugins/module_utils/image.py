# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Image every source produces and every writer consumes, and digest helpers."""

from __future__ import annotations

import hashlib
import re
import typing as t
from dataclasses import dataclass, field

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import DigestMismatch, SourceError

MEDIA_OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
MEDIA_OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
MEDIA_OCI_CONFIG = 'application/vnd.oci.image.config.v1+json'
MEDIA_DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json'
MEDIA_DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json'
MEDIA_DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json'
MEDIA_TAR = 'application/x-tar'

INDEX_MEDIA_TYPES = frozenset((MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST))
MANIFEST_MEDIA_TYPES = frozenset((MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST))

# Layer media types we can apply; anything else (foreign, encrypted) is refused by name.
LAYER_MEDIA_TYPES = frozenset((
    'application/vnd.oci.image.layer.v1.tar',
    'application/vnd.oci.image.layer.v1.tar+gzip',
    'application/vnd.oci.image.layer.v1.tar+zstd',
    'application/vnd.docker.image.rootfs.diff.tar.gzip',
    'application/vnd.docker.image.rootfs.diff.tar.zstd',
    'application/vnd.docker.image.rootfs.diff.tar',
    MEDIA_TAR,
))

_DIGEST_RE = re.compile(r'^sha256:[0-9a-f]{64}$|^sha512:[0-9a-f]{128}$')


def parse_digest(digest: str) -> t.Tuple[str, str]:
    """Split 'algo:hex' after checking it is a digest we can verify."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise SourceError('not a valid sha256/sha512 digest: %r' % (digest,))
    algorithm, hexdigest = digest.split(':', 1)
    return algorithm, hexdigest


def new_hasher(digest: str) -> 'hashlib._Hash':
    return hashlib.new(parse_digest(digest)[0])


def sha256_digest(data: bytes) -> str:
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def verify_digest(hasher: 'hashlib._Hash', expected: str, what: str) -> None:
    actual = '%s:%s' % (hasher.name, hasher.hexdigest())
    if actual != expected:
        raise DigestMismatch('%s: content hashes to %s, expected %s' % (what, actual, expected))


def file_digest(path: str, chunk_size: int = 1 << 20) -> str:
    hasher = hashlib.sha256()
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(chunk_size), b''):
            hasher.update(chunk)
    return 'sha256:' + hasher.hexdigest()


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ''

    def __str__(self) -> str:
        return '/'.join(part for part in (self.os, self.architecture, self.variant) if part)


@dataclass
class Layer:
    """One layer: how to open its blob and what it must hash to.

    `digest` is checked against the bytes as stored (compressed); `diff_id` against the
    uncompressed tar, for sources (docker-archive) that only name that one.
    """
    open_blob: t.Callable[[], t.BinaryIO]
    digest: t.Optional[str]
    size: t.Optional[int]
    media_type: str
    diff_id: t.Optional[str] = None

    def describe(self) -> t.Dict[str, t.Any]:
        return {'digest': self.digest or self.diff_id, 'size': self.size, 'media_type': self.media_type}


@dataclass
class Image:
    """What a source resolved to: a digest naming exactly what will be written."""
    digest: str
    layers: t.List[Layer]
    config: t.Dict[str, t.Any] = field(default_factory=dict)
    platform: t.Optional[Platform] = None
    index_digest: t.Optional[str] = None
