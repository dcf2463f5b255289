# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""docker:// sources: an image in an OCI/Docker registry, pulled without skopeo or a daemon."""

from __future__ import annotations

import json
import typing as t
from dataclasses import dataclass, field

from ansible_collections.virt.bootstrap.plugins.module_utils import platforms
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import PlatformError, SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils.image import (
    INDEX_MEDIA_TYPES,
    LAYER_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    Image,
    Layer,
    Platform,
)
from ansible_collections.virt.bootstrap.plugins.module_utils.registry.auth import Credentials, find_credentials
from ansible_collections.virt.bootstrap.plugins.module_utils.registry.cache import BlobCache, BlobFetcher
from ansible_collections.virt.bootstrap.plugins.module_utils.registry.client import RegistryClient
from ansible_collections.virt.bootstrap.plugins.module_utils.registry.reference import ImageReference

_FOREIGN_HINT = ('foreign and non-distributable layers (Windows base layers) must come from elsewhere; '
                 'they cannot be part of a Linux rootfs')


@dataclass
class RegistryOptions:
    username: t.Optional[str] = None
    password: t.Optional[str] = field(default=None, repr=False)
    auth_file: t.Optional[str] = None
    not_secure: bool = False
    ca_path: t.Optional[str] = None
    cache_dir: t.Optional[str] = None
    no_cache: bool = False


class _Choice(t.NamedTuple):
    manifest_digest: str
    index_digest: t.Optional[str]
    platform: t.Optional[Platform]


class RegistrySource:
    def __init__(self, reference: ImageReference, options: RegistryOptions) -> None:
        self.reference = reference
        self._options = options
        self.credentials = _credentials(reference, options)
        self._client = RegistryClient(reference, self.credentials, not_secure=options.not_secure,
                                      ca_path=options.ca_path)
        self._top: t.Optional[t.Tuple[bytes, str, str]] = None
        self._cache: t.Optional[BlobCache] = None
        self._fetcher: t.Optional[BlobFetcher] = None
        self._layer_blobs: t.List[t.Tuple[str, t.Optional[int]]] = []

    @property
    def credentials_origin(self) -> t.Optional[str]:
        return self.credentials.origin if self.credentials is not None else None

    def probe(self, wanted: t.Optional[Platform]) -> t.Tuple[str, t.Optional[str]]:
        """(manifest digest, index digest) with a single manifest request."""
        choice = self._choose(wanted)
        return choice.manifest_digest, choice.index_digest

    def resolve(self, wanted: t.Optional[Platform]) -> Image:
        choice = self._choose(wanted)
        if choice.index_digest is None:
            body = self._top_manifest()[0]
        else:
            body, media_type, _digest = self._client.get_manifest(choice.manifest_digest)
            if media_type not in MANIFEST_MEDIA_TYPES:
                raise SourceError('%s: %s is a %s, not an image manifest' % (self.reference, choice.manifest_digest,
                                                                             media_type))
        manifest = _json_object(body, '%s: manifest %s' % (self.reference, choice.manifest_digest))
        if manifest.get('schemaVersion') != 2 or not isinstance(manifest.get('layers'), list) or \
                not isinstance(manifest.get('config'), dict):
            raise SourceError('%s: manifest %s is not a schema 2 image manifest' % (self.reference,
                                                                                    choice.manifest_digest))
        config_digest = str(manifest['config'].get('digest'))
        config = _json_object(self._client.get_small_blob(config_digest), '%s: config' % self.reference)
        image_platform = platforms.platform_from_json(config) or choice.platform
        if wanted is not None and image_platform is not None and not platforms.matches(image_platform, wanted):
            raise PlatformError('%s has no image for platform %s; available: %s' % (self.reference, wanted,
                                                                                    image_platform))
        layers = [self._layer(descriptor) for descriptor in manifest['layers']]
        self._layer_blobs = [(layer.digest or '', layer.size) for layer in layers]
        return Image(digest=choice.manifest_digest, layers=layers, config=config, platform=image_platform,
                     index_digest=choice.index_digest)

    def close(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()
            self._fetcher = None
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    # -- internals -------------------------------------------------------------------------------

    def _top_manifest(self) -> t.Tuple[bytes, str, str]:
        """What the tag (or digest) names, fetched once: every later request uses digests."""
        if self._top is None:
            self._top = self._client.get_manifest(self.reference.manifest_reference)
        return self._top

    def _choose(self, wanted: t.Optional[Platform]) -> _Choice:
        body, media_type, digest = self._top_manifest()
        if media_type in MANIFEST_MEDIA_TYPES:
            return _Choice(digest, None, None)
        if media_type not in INDEX_MEDIA_TYPES:
            raise SourceError('%s is a %s, not an image' % (self.reference, media_type or 'document of unknown type'))
        index = _json_object(body, '%s: index' % self.reference)
        entries = [entry for entry in index.get('manifests') or [] if isinstance(entry, dict)
                   and entry.get('mediaType', '') in MANIFEST_MEDIA_TYPES and isinstance(entry.get('digest'), str)]
        # Attestation manifests carry the platform unknown/unknown.
        candidates = [(platforms.platform_from_json(entry.get('platform')), entry) for entry in entries
                      if (entry.get('platform') or {}).get('os') != 'unknown']
        if not candidates:
            raise SourceError('%s: index %s lists no image manifest' % (self.reference, digest))
        if len(candidates) == 1 and wanted is None:
            chosen_platform, chosen = candidates[0]
        else:
            chosen = platforms.choose(candidates, wanted or platforms.host_platform(), str(self.reference))
            chosen_platform = platforms.platform_from_json(chosen.get('platform'))
        return _Choice(chosen['digest'], digest, chosen_platform)

    def _layer(self, descriptor: t.Dict[str, t.Any]) -> Layer:
        media_type = str(descriptor.get('mediaType', ''))
        if media_type not in LAYER_MEDIA_TYPES:
            hint = _FOREIGN_HINT if 'foreign' in media_type or 'nondistributable' in media_type else \
                'only tar layers (uncompressed, gzip or zstd) can be applied'
            raise SourceError('%s: layer %s has media type %r: %s' % (self.reference, descriptor.get('digest'),
                                                                      media_type, hint))
        digest = str(descriptor.get('digest', ''))
        size = descriptor.get('size') if isinstance(descriptor.get('size'), int) else None
        return Layer(open_blob=lambda: self._open_blob(digest, size), digest=digest, size=size,
                     media_type=media_type)

    def _open_blob(self, digest: str, size: t.Optional[int]) -> t.Any:
        if self._fetcher is None:
            self._cache = BlobCache(self._options.cache_dir, temporary=self._options.no_cache)
            self._fetcher = BlobFetcher(self._cache, self._client.download_blob)
            # Every layer starts downloading now; they are applied one by one, bottom first.
            self._fetcher.prefetch(self._layer_blobs)
        return self._fetcher.open(digest, size)


def _credentials(reference: ImageReference, options: RegistryOptions) -> t.Optional[Credentials]:
    if options.username:
        if options.password is None:
            raise SourceError('username is set but password is not')
        return Credentials(options.username, options.password)
    if options.password is not None:
        raise SourceError('password is set but username is not')
    return find_credentials(reference.registry, reference.repository, options.auth_file)


def _json_object(body: bytes, what: str) -> t.Dict[str, t.Any]:
    try:
        value = json.loads(body)
    except ValueError:
        raise SourceError('%s is not valid JSON' % what)
    if not isinstance(value, dict):
        raise SourceError('%s is not a JSON object' % what)
    return value
