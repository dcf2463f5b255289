# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""docker:// sources: an image in an OCI/Docker registry, pulled without skopeo or a daemon."""

from __future__ import annotations

import typing as t
from dataclasses import dataclass, field

from ansible_collections.virt.bootstrap.plugins.module_utils import _platforms as platforms
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._image import (
    INDEX_MEDIA_TYPES,
    LAYER_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    Descriptor,
    Image,
    Layer,
    Platform,
    check_blob,
    image_manifest,
    parse_json_object,
    platform_from_json,
)
from ansible_collections.virt.bootstrap.plugins.module_utils._index import (
    IndexWalker,
    choose_candidate,
    listed_descriptors,
)
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.auth import Credentials, find_credentials
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.cache import (
    BlobCache,
    BlobFetcher,
    default_cache_dir,
    nothing_pruned,
    parse_max_age,
    prune_cache,
)
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.client import RegistryClient
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.reference import ImageReference

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
    # Refuse, before downloading any layer, an image whose layers add up to more bytes than this (compressed).
    max_download_size: t.Optional[int] = None
    # Where a no_cache run keeps its temporary cache (default: the system's temporary directory, often a
    # small tmpfs); the engine points it at dest's bookkeeping directory, on dest's filesystem.
    scratch_dir: t.Optional[str] = None
    # Prune, at the end of a present run, cached blobs no dest holds that were not used for this long
    # (seconds, or '30d', '12h', ...; see cache.parse_max_age). None: never prune.
    cache_max_age: t.Union[str, int, float, None] = None
    # Seconds the registry may stay silent, take to send a manifest, config or token, or take to send the
    # next 64 KiB of a layer (client.STALL_BYTES).
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise BootstrapError('timeout must be a number of seconds above 0, not %r' % (self.timeout,))
        if parse_max_age(self.cache_max_age) is not None and self.no_cache:
            raise BootstrapError('cache_max_age prunes the blob cache, which no_cache does not use: set only one')


class _Choice(t.NamedTuple):
    manifest_digest: str
    index_digest: t.Optional[str]
    platform: t.Optional[Platform]
    # What the index says of the manifest (its size is binding too); None for a tag naming a manifest.
    listed: t.Optional[Descriptor] = None


class RegistrySource:
    def __init__(self, reference: ImageReference, options: RegistryOptions) -> None:
        self.reference = reference
        self._options = options
        self.credentials = _credentials(reference, options)
        self._client = RegistryClient(reference, self.credentials, not_secure=options.not_secure,
                                      ca_path=options.ca_path, timeout=float(options.timeout))
        self._top: t.Optional[t.Tuple[bytes, str, str]] = None
        # (digest, media type) from a HEAD of the tag, when the registry said.
        self._served: t.Optional[t.Tuple[str, str]] = None
        self._asked_head = False
        self._cache: t.Optional[BlobCache] = None
        self._fetcher: t.Optional[BlobFetcher] = None
        self._layer_blobs: t.List[t.Tuple[str, t.Optional[int]]] = []

    @property
    def credentials_origin(self) -> t.Optional[str]:
        return self.credentials.origin if self.credentials is not None else None

    def probe(self, wanted: t.Optional[Platform],
              recorded: t.Optional[t.Tuple[str, t.Optional[str]]] = None) -> t.Tuple[str, t.Optional[str]]:
        """(manifest digest, index digest) that src names now, asking the registry as little as it can.

        `recorded` is what dest holds, (manifest digest, index digest). A pinned digest dest already holds
        needs no request at all; a tag one HEAD when it still names the recorded index or manifest (a HEAD
        is not a pull, a GET is). Otherwise the top-level document is fetched and chosen from.
        """
        if recorded is not None and self.reference.digest is not None and self.reference.digest in recorded:
            return recorded
        served = self._served_manifest()
        if served is not None:
            digest, media_type = served
            if recorded is not None and digest == (recorded[1] or recorded[0]):
                return recorded
            if media_type in MANIFEST_MEDIA_TYPES:
                return digest, None
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
            if choice.listed is not None:
                check_blob(body, choice.listed, '%s: manifest' % self.reference)
        what = '%s: manifest %s' % (self.reference, choice.manifest_digest)
        manifest = image_manifest(parse_json_object(body, what), what)
        layers = [self._layer(listed) for listed in manifest.layers]
        self._check_download_size(layers, what)
        config_what = '%s: config %s' % (self.reference, manifest.config.digest)
        config = parse_json_object(check_blob(self._client.get_small_blob(manifest.config.digest), manifest.config,
                                              config_what), config_what)
        image_platform = platform_from_json(config, config_what) or choice.platform
        warnings = platforms.check_image_platform(image_platform, wanted, str(self.reference))
        self._layer_blobs = [(layer.digest or '', layer.size) for layer in layers]
        return Image(digest=choice.manifest_digest, layers=layers, config=config, platform=image_platform,
                     index_digest=choice.index_digest, warnings=warnings)

    def tidy_cache(self, dest_path: str, record_path: str, blob_digests: t.Iterable[str]) -> t.Optional[
            t.Dict[str, t.Any]]:
        """At the end of a present run: name the blobs dest holds in the cache, then prune it if cache_max_age
        is set. Returns what pruning did (see cache.prune_cache), else None.

        Never fails the run, whose rootfs is in place by now: a cache that cannot be written is reported in
        the result's `error` (and with no pruning asked for, not at all: an unnamed dest only loses the
        protection of its blobs from pruning).
        """
        if self._options.no_cache:
            self._close_cache()
            return None
        max_age = parse_max_age(self._options.cache_max_age)
        try:
            # Named while the run still holds the cache, so no prune can take the blobs it has just used.
            cache = self._cache = self._cache or BlobCache(self._options.cache_dir)
            try:
                cache.name_dest_blobs(dest_path, record_path, blob_digests)
            finally:
                self._close_cache()  # our own shared lock would keep pruning out
            return None if max_age is None else prune_cache(cache.root, max_age)
        except OSError as exc:
            if max_age is None:
                return None
            return dict(nothing_pruned(), error='the blob cache %s could not be pruned: %s' % (
                self._options.cache_dir or default_cache_dir(), exc.strerror or exc))

    def close(self) -> None:
        self._client.stop()
        self._close_cache()

    def _close_cache(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()
            self._fetcher = None
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    # -- internals -------------------------------------------------------------------------------

    def _served_manifest(self) -> t.Optional[t.Tuple[str, str]]:
        """(digest, media type) the tag names, from one HEAD; None for a pinned digest or when HEAD cannot tell."""
        if not self._asked_head and self.reference.digest is None:
            self._asked_head = True
            self._served = self._client.head_manifest(self.reference.manifest_reference)
        return self._served

    def _top_manifest(self) -> t.Tuple[bytes, str, str]:
        """What the tag (or digest) names, fetched once: every later request uses digests.

        After a HEAD it is fetched by the digest the HEAD gave, so a tag moving in between cannot mix two images.
        """
        if self._top is None:
            wanted = self._served[0] if self._served else self.reference.manifest_reference
            self._top = self._client.get_manifest(wanted)
        return self._top

    def _choose(self, wanted: t.Optional[Platform]) -> _Choice:
        body, media_type, digest = self._top_manifest()
        if media_type in MANIFEST_MEDIA_TYPES:
            return _Choice(digest, None, None)
        if media_type not in INDEX_MEDIA_TYPES:
            raise SourceError('%s is a %s, not an image' % (self.reference, media_type or 'document of unknown type'))
        what = '%s: index %s' % (self.reference, digest)
        walker = IndexWalker(str(self.reference), lambda listed: self._client.get_manifest(listed.digest)[0])
        candidates = walker.images(listed_descriptors(parse_json_object(body, what), what), what, depth=1,
                                   index_digest=digest)
        chosen = choose_candidate(candidates, wanted, str(self.reference), self._config_platform).descriptor
        return _Choice(chosen.digest, digest, chosen.platform, chosen)

    def _config_platform(self, listed: Descriptor) -> t.Optional[Platform]:
        """The platform in the config of an index entry that names none (one more manifest and blob request)."""
        what = '%s: manifest %s' % (self.reference, listed.digest)
        body = self._client.get_manifest(listed.digest)[0]
        config_digest = image_manifest(parse_json_object(body, what), what).config.digest
        config_what = '%s: config %s' % (self.reference, config_digest)
        return platform_from_json(parse_json_object(self._client.get_small_blob(config_digest), config_what),
                                  config_what)

    def _layer(self, listed: Descriptor) -> Layer:
        if listed.media_type not in LAYER_MEDIA_TYPES:
            hint = _FOREIGN_HINT if 'foreign' in listed.media_type or 'nondistributable' in listed.media_type else \
                'only tar layers (uncompressed, gzip or zstd) can be applied'
            raise SourceError('%s: layer %s has media type %r: %s' % (self.reference, listed.digest,
                                                                      listed.media_type, hint))
        digest, size = listed.digest, listed.size
        return Layer(open_blob=lambda: self._open_blob(digest, size), digest=digest, size=size,
                     media_type=listed.media_type, reader_checks_digest=True)

    def _check_download_size(self, layers: t.List[Layer], what: str) -> None:
        limit = self._options.max_download_size
        total = sum(layer.size or 0 for layer in layers)
        if limit is not None and total > limit:
            raise SourceError('%s: its layers add up to %d bytes (compressed), more than the limit of %d bytes'
                              % (what, total, limit))

    def _open_blob(self, digest: str, size: t.Optional[int]) -> t.Any:
        if self._fetcher is None:
            self._cache = BlobCache(self._options.cache_dir, temporary=self._options.no_cache,
                                    scratch_dir=self._options.scratch_dir)
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
