# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""Walking an image index down to the image manifests it lists, and choosing one: the rules every source shares.

Pure logic over descriptors: a source hands over the entries it starts from and a way to fetch a
nested index's bytes; what comes back says which manifest to load, whatever the source.
"""

from __future__ import annotations

import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils import _platforms as platforms
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._image import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    SCHEMA1_MEDIA_TYPES,
    Descriptor,
    Platform,
    check_blob,
    descriptor,
    parse_json_object,
)

# Indexes inside indexes, counted from the one a tag names; deeper than this is not a real image.
MAX_INDEX_DEPTH = 3
SCHEMA1_HINT = 'Docker schema 1 manifests are not supported; convert the image with skopeo copy --format v2s2'
# BuildKit lists its provenance and SBOM manifests in the index, as image manifests for unknown/unknown.
_REFERENCE_TYPE_ANNOTATION = 'vnd.docker.reference.type'
_ATTESTATION = 'attestation-manifest'

FetchIndex = t.Callable[[Descriptor], bytes]
PlatformOf = t.Callable[[Descriptor], t.Optional[Platform]]


class Candidate(t.NamedTuple):
    """An image manifest an index lists."""
    # Its platform is its own, or else that of the index entry that led to it.
    descriptor: Descriptor
    # The outermost index fetched on the way to it (None when it was listed where the walk started).
    index_digest: t.Optional[str]


def manifest_entries(document: t.Mapping[str, t.Any], what: str) -> t.List[t.Dict[str, t.Any]]:
    """The entries of an index; each must be an object (descriptor() checks the rest)."""
    manifests = document.get('manifests')
    if not isinstance(manifests, list):
        raise SourceError('%s has no list of manifests' % what)
    for number, entry in enumerate(manifests):
        if not isinstance(entry, dict):
            raise SourceError('%s manifests[%d] is not a descriptor (a JSON object)' % (what, number))
    return manifests


def listed_descriptors(document: t.Mapping[str, t.Any], what: str) -> t.List[Descriptor]:
    return [descriptor(entry, '%s manifests[%d]' % (what, number))
            for number, entry in enumerate(manifest_entries(document, what))]


class IndexWalker:
    """Finds the image manifests below a list of index entries, through nested indexes.

    `where` names the source in messages; `fetch_index` gives the bytes of a nested index, which are
    checked here against the entry that names them.
    """

    def __init__(self, where: str, fetch_index: FetchIndex) -> None:
        self._where = where
        self._fetch_index = fetch_index

    def images(self, listed: t.Sequence[Descriptor], what: str, depth: int,
               index_digest: t.Optional[str] = None, inherited: t.Optional[Platform] = None) -> t.List[Candidate]:
        """The image manifests of `listed` (the entries of `what`, `depth` indexes deep), in their order."""
        found: t.List[Candidate] = []
        for entry in listed:
            platform = entry.platform or inherited
            if entry.artifact_type or is_attestation(entry, platform):
                continue
            if entry.media_type in MANIFEST_MEDIA_TYPES:
                found.append(Candidate(entry._replace(platform=platform), index_digest))
            elif entry.media_type in INDEX_MEDIA_TYPES:
                found.extend(self._nested(entry, what, depth, index_digest, platform))
            elif entry.media_type in SCHEMA1_MEDIA_TYPES:
                raise SourceError('%s: %s' % (self._where, SCHEMA1_HINT))
            # anything else (signatures, SBOMs, other artifacts) is not an image
        return found

    def _nested(self, entry: Descriptor, what: str, depth: int, index_digest: t.Optional[str],
                platform: t.Optional[Platform]) -> t.List[Candidate]:
        if depth >= MAX_INDEX_DEPTH:
            raise SourceError('%s nests indexes more than %d deep' % (what, MAX_INDEX_DEPTH))
        nested_what = '%s: index %s' % (self._where, entry.digest)
        document = parse_json_object(check_blob(self._fetch_index(entry), entry, nested_what), nested_what)
        kind = document.get('mediaType')
        if isinstance(kind, str) and kind and kind not in INDEX_MEDIA_TYPES:
            raise SourceError('%s lists %s as an index, but it is a %s' % (what, entry.digest, kind))
        return self.images(listed_descriptors(document, nested_what), nested_what, depth + 1,
                           index_digest or entry.digest, platform)


def is_attestation(entry: Descriptor, platform: t.Optional[Platform]) -> bool:
    if entry.annotations.get(_REFERENCE_TYPE_ANNOTATION) == _ATTESTATION:
        return True
    return platform is not None and 'unknown' in (platform.os, platform.architecture)


def choose_candidate(candidates: t.Sequence[Candidate], wanted: t.Optional[Platform], where: str,
                     platform_of: PlatformOf) -> Candidate:
    """The candidate for `wanted` (the host's platform when None); `platform_of` reads a platform an entry lacks.

    The only image is taken whatever its platform when none was asked for (or it does not say its own):
    the source checks and warns once it has read the image's config (platforms.check_image_platform).
    """
    if not candidates:
        raise SourceError('%s holds no image manifest' % where)
    if len(candidates) == 1 and (wanted is None or candidates[0].descriptor.platform is None):
        return candidates[0]
    pairs = [(candidate.descriptor.platform or platform_of(candidate.descriptor), candidate)
             for candidate in candidates]
    return platforms.choose(pairs, wanted or platforms.host_platform(), where)
