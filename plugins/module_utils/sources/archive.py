# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Local image archives: OCI layouts (a directory or an oci-archive tar) and docker-archive tars."""

from __future__ import annotations

import json
import os
import tarfile
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils import platforms
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import PlatformError, SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils.image import (
    INDEX_MEDIA_TYPES,
    LAYER_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TAR,
    Image,
    Layer,
    Platform,
    new_hasher,
    parse_digest,
    sha256_digest,
    verify_digest,
)

REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name'
# Manifests, indexes and configs are small; a bigger one is not an image we should parse.
MAX_METADATA_SIZE = 8 << 20


class Blobs(t.Protocol):
    def read_file(self, name: str) -> bytes:
        ...

    def open_file(self, name: str) -> t.BinaryIO:
        ...

    def close(self) -> None:
        ...


class DirectoryBlobs:
    """Files of an image kept in a directory (an OCI layout)."""

    def __init__(self, root: str) -> None:
        if not os.path.isdir(root):
            raise SourceError('%s is not a directory (an OCI layout is a directory; for a tar use oci-archive:)'
                              % root if os.path.exists(root) else '%s does not exist' % root)
        self.root = root

    def open_file(self, name: str) -> t.BinaryIO:
        try:
            return open(os.path.join(self.root, name), 'rb')
        except FileNotFoundError:
            raise SourceError('%s: %s is missing' % (self.root, name))

    def read_file(self, name: str) -> bytes:
        with self.open_file(name) as stream:
            return _read_limited(stream, '%s/%s' % (self.root, name))

    def close(self) -> None:
        pass


class TarBlobs:
    """Files of an image kept in a tar archive, read in place without unpacking it."""

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            raise SourceError('%s does not exist' % path if not os.path.exists(path) else
                              '%s is not a regular file' % path)
        self.path = path
        try:
            with tarfile.open(path, mode='r:*') as archive:
                self._members = {os.path.normpath(member.name).lstrip('/'): member
                                 for member in archive.getmembers() if member.isfile()}
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise SourceError('%s is not a readable tar archive: %s' % (path, exc))

    def open_file(self, name: str) -> t.BinaryIO:
        member = self._members.get(os.path.normpath(name))
        if member is None:
            raise SourceError('%s: %s is missing from the archive' % (self.path, name))
        # Each stream reads through its own handle on the archive: layers are read after the
        # source is closed, and one stream's position never moves another's.
        archive = tarfile.open(self.path, mode='r:*')
        stream = archive.extractfile(member)
        if stream is None:
            archive.close()
            raise SourceError('%s: %s is not a regular file in the archive' % (self.path, name))
        return t.cast(t.BinaryIO, _MemberStream(stream, archive))

    def read_file(self, name: str) -> bytes:
        with self.open_file(name) as stream:
            return _read_limited(stream, '%s:%s' % (self.path, name))

    def size_of(self, name: str) -> t.Optional[int]:
        member = self._members.get(os.path.normpath(name))
        return member.size if member is not None else None

    def close(self) -> None:
        pass


class _MemberStream:
    """One archive member, read-only; closing it closes the archive handle it came from."""

    def __init__(self, stream: t.BinaryIO, archive: tarfile.TarFile) -> None:
        self._stream = stream
        self._archive = archive

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._stream.close()
        self._archive.close()

    def __enter__(self) -> '_MemberStream':
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()


def _read_limited(stream: t.BinaryIO, what: str) -> bytes:
    data = stream.read(MAX_METADATA_SIZE + 1)
    if len(data) > MAX_METADATA_SIZE:
        raise SourceError('%s is larger than %d bytes: not image metadata' % (what, MAX_METADATA_SIZE))
    return data


def _parse_json(data: bytes, what: str) -> t.Dict[str, t.Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise SourceError('%s is not valid JSON: %s' % (what, exc))
    if not isinstance(value, dict):
        raise SourceError('%s is not a JSON object' % what)
    return value


def _blob_name(digest: str) -> str:
    algorithm, hexdigest = parse_digest(digest)
    return 'blobs/%s/%s' % (algorithm, hexdigest)


class _Candidate(t.NamedTuple):
    descriptor: t.Dict[str, t.Any]
    platform: t.Optional[Platform]
    index_digest: t.Optional[str]


class OciLayout:
    """An OCI image layout; `reference` picks an entry by its ref.name annotation."""

    def __init__(self, blobs: Blobs, location: str, reference: str) -> None:
        self._blobs = blobs
        self._location = location
        self._reference = reference

    def close(self) -> None:
        self._blobs.close()

    def resolve(self, wanted: t.Optional[Platform]) -> Image:
        layout = _parse_json(self._blobs.read_file('oci-layout'), '%s: oci-layout' % self._location)
        if 'imageLayoutVersion' not in layout:
            raise SourceError('%s is not an OCI image layout (oci-layout has no imageLayoutVersion)' % self._location)
        index = _parse_json(self._blobs.read_file('index.json'), '%s: index.json' % self._location)
        entries = self._select_entries(_descriptors(index, '%s: index.json' % self._location))
        candidates: t.List[_Candidate] = []
        for entry in entries:
            candidates.extend(self._expand(entry, None))
        if not candidates:
            raise SourceError('%s holds no image manifest' % self._location)
        chosen = self._choose(candidates, wanted)
        return self._load_image(chosen, wanted)

    def _select_entries(self, entries: t.List[t.Dict[str, t.Any]]) -> t.List[t.Dict[str, t.Any]]:
        names = [_ref_name(entry) for entry in entries]
        tags = sorted(set(name for name in names if name))
        if self._reference:
            selected = [entry for entry, name in zip(entries, names) if name == self._reference]
            if not selected:
                raise SourceError('%s has no image tagged %r; tags: %s'
                                  % (self._location, self._reference, ', '.join(tags) or 'none'))
            return selected
        if len(tags) > 1:
            raise SourceError('%s holds several images (%s); name one as %s:TAG'
                              % (self._location, ', '.join(tags), self._location))
        return entries

    def _expand(self, descriptor: t.Dict[str, t.Any], index_digest: t.Optional[str]) -> t.List[_Candidate]:
        media_type = descriptor.get('mediaType')
        if media_type in INDEX_MEDIA_TYPES:
            nested = self._read_json_blob(descriptor)
            nested_digest = descriptor['digest']
            result: t.List[_Candidate] = []
            for child in _descriptors(nested, 'index %s' % nested_digest):
                result.extend(self._expand(child, index_digest or nested_digest))
            return result
        if media_type in MANIFEST_MEDIA_TYPES:
            return [_Candidate(descriptor, platforms.platform_from_json(descriptor.get('platform')), index_digest)]
        if media_type == 'application/vnd.docker.distribution.manifest.v1+json' or \
                media_type == 'application/vnd.docker.distribution.manifest.v1+prettyjws':
            raise SourceError('%s: Docker schema 1 manifests are not supported; convert the image with '
                              'skopeo copy --format v2s2' % self._location)
        return []  # artifacts, signatures, attestations: not images

    def _choose(self, candidates: t.List[_Candidate], wanted: t.Optional[Platform]) -> _Candidate:
        if len(candidates) == 1:
            return candidates[0]
        target = wanted or platforms.host_platform()
        pairs = [(candidate.platform or self._config_platform(candidate), candidate) for candidate in candidates]
        return platforms.choose(pairs, target, self._location)

    def _config_platform(self, candidate: _Candidate) -> t.Optional[Platform]:
        manifest = self._read_json_blob(candidate.descriptor)
        config = self._read_json_blob(manifest.get('config') or {})
        return platforms.platform_from_json(config)

    def _load_image(self, chosen: _Candidate, wanted: t.Optional[Platform]) -> Image:
        manifest_digest = chosen.descriptor['digest']
        manifest = self._read_json_blob(chosen.descriptor)
        if manifest.get('schemaVersion') != 2 or not isinstance(manifest.get('layers'), list):
            raise SourceError('%s: manifest %s is not a schema 2 image manifest' % (self._location, manifest_digest))
        config_descriptor = manifest.get('config')
        if not isinstance(config_descriptor, dict):
            raise SourceError('%s: manifest %s has no config' % (self._location, manifest_digest))
        config = self._read_json_blob(config_descriptor)
        image_platform = platforms.platform_from_json(config) or chosen.platform
        _check_wanted(wanted, image_platform, self._location)
        layers = [self._layer(descriptor) for descriptor in manifest['layers']]
        return Image(digest=manifest_digest, layers=layers, config=config, platform=image_platform,
                     index_digest=chosen.index_digest)

    def _layer(self, descriptor: t.Dict[str, t.Any]) -> Layer:
        media_type = descriptor.get('mediaType', '')
        if media_type not in LAYER_MEDIA_TYPES:
            raise SourceError('%s: layer %s has media type %r, which cannot be applied (foreign, '
                              'non-distributable or encrypted layers are not supported)'
                              % (self._location, descriptor.get('digest'), media_type))
        digest = descriptor.get('digest', '')
        name = _blob_name(digest)
        return Layer(open_blob=lambda: self._blobs.open_file(name), digest=digest,
                     size=descriptor.get('size'), media_type=media_type)

    def _read_json_blob(self, descriptor: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
        digest = descriptor.get('digest')
        if not isinstance(digest, str):
            raise SourceError('%s: a descriptor has no digest' % self._location)
        data = self._blobs.read_file(_blob_name(digest))
        hasher = new_hasher(digest)
        hasher.update(data)
        verify_digest(hasher, digest, '%s: blob' % self._location)
        return _parse_json(data, '%s: blob %s' % (self._location, digest))


def _ref_name(descriptor: t.Dict[str, t.Any]) -> t.Optional[str]:
    annotations = descriptor.get('annotations')
    name = annotations.get(REF_NAME_ANNOTATION) if isinstance(annotations, dict) else None
    return name if isinstance(name, str) else None


def _descriptors(index: t.Dict[str, t.Any], what: str) -> t.List[t.Dict[str, t.Any]]:
    manifests = index.get('manifests')
    if not isinstance(manifests, list) or not all(isinstance(entry, dict) for entry in manifests):
        raise SourceError('%s has no list of manifests' % what)
    return manifests


def _check_wanted(wanted: t.Optional[Platform], actual: t.Optional[Platform], location: str) -> None:
    if wanted is not None and actual is not None and not platforms.matches(actual, wanted):
        raise PlatformError('%s has no image for platform %s; available: %s' % (location, wanted, actual))


class DockerArchive:
    """The tar `docker save` and `skopeo copy … docker-archive:` write (manifest.json + configs + layers)."""

    def __init__(self, path: str, reference: str) -> None:
        self._blobs = TarBlobs(path)
        self._path = path
        self._reference = reference

    def close(self) -> None:
        self._blobs.close()

    def resolve(self, wanted: t.Optional[Platform]) -> Image:
        try:
            raw_manifest = self._blobs.read_file('manifest.json')
        except SourceError:
            raise SourceError('%s is not a docker-archive (it has no manifest.json)' % self._path)
        try:
            manifest = json.loads(raw_manifest)
        except ValueError as exc:
            raise SourceError('%s: manifest.json is not valid JSON: %s' % (self._path, exc))
        if not isinstance(manifest, list) or not manifest:
            raise SourceError('%s: manifest.json does not list any image' % self._path)
        entry = self._select(manifest)
        config_bytes = self._blobs.read_file(entry['Config'])
        config = _parse_json(config_bytes, '%s: %s' % (self._path, entry['Config']))
        diff_ids = (config.get('rootfs') or {}).get('diff_ids') or []
        layer_paths = entry.get('Layers') or []
        if len(diff_ids) != len(layer_paths):
            raise SourceError('%s: the image lists %d layers but its config names %d'
                              % (self._path, len(layer_paths), len(diff_ids)))
        image_platform = platforms.platform_from_json(config)
        _check_wanted(wanted, image_platform, self._path)
        layers = [self._layer(layer_path, diff_id) for layer_path, diff_id in zip(layer_paths, diff_ids)]
        # The config digest is the image ID: it names layers and config exactly.
        return Image(digest=sha256_digest(config_bytes), layers=layers, config=config, platform=image_platform)

    def _select(self, manifest: t.List[t.Any]) -> t.Dict[str, t.Any]:
        entries = [entry for entry in manifest if isinstance(entry, dict) and 'Config' in entry]
        if self._reference.startswith('@'):
            number = self._reference[1:]
            if not number.isdigit() or int(number) >= len(entries):
                raise SourceError('%s: no image number %s (it holds %d)' % (self._path, number, len(entries)))
            return entries[int(number)]
        if self._reference:
            wanted = {self._reference, self._reference + ':latest'}
            for entry in entries:
                if wanted.intersection(_short_names(entry.get('RepoTags') or [])):
                    return entry
            raise SourceError('%s has no image named %r; it holds: %s'
                              % (self._path, self._reference, _describe_entries(entries)))
        if len(entries) != 1:
            raise SourceError('%s holds %d images (%s); name one as docker-archive:%s:NAME:TAG or :@N'
                              % (self._path, len(entries), _describe_entries(entries), self._path))
        return entries[0]

    def _layer(self, layer_path: str, diff_id: str) -> Layer:
        parse_digest(diff_id)
        return Layer(open_blob=lambda: self._blobs.open_file(layer_path), digest=None,
                     size=self._blobs.size_of(layer_path), media_type=MEDIA_TAR, diff_id=diff_id)


def _short_names(repo_tags: t.Iterable[str]) -> t.Set[str]:
    names = set()
    for tag in repo_tags:
        names.add(tag)
        for prefix in ('docker.io/library/', 'docker.io/'):
            if tag.startswith(prefix):
                names.add(tag[len(prefix):])
    return names


def _describe_entries(entries: t.List[t.Dict[str, t.Any]]) -> str:
    return ', '.join('@%d (%s)' % (number, ', '.join(entry.get('RepoTags') or []) or 'untagged')
                     for number, entry in enumerate(entries))
