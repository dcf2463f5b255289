# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""Local image archives: OCI layouts (a directory or an oci-archive tar) and docker-archive tars."""

from __future__ import annotations

import os
import tarfile
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils import _platforms as platforms
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._image import (
    LAYER_MEDIA_TYPES,
    MAX_METADATA_SIZE,
    MEDIA_TAR,
    Descriptor,
    Image,
    ImageManifest,
    Layer,
    Platform,
    SizedReader,
    check_blob,
    descriptor,
    image_manifest,
    is_digest,
    parse_digest,
    parse_json,
    parse_json_object,
    platform_from_json,
    sha256_digest,
    sized_opener,
)
from ansible_collections.virt.bootstrap.plugins.module_utils._index import (
    Candidate,
    IndexWalker,
    choose_candidate,
    manifest_entries,
)

REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name'
# Links followed to find a file in an archive before it counts as a loop (Linux's MAXSYMLINKS).
_MAX_LINK_HOPS = 40


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
    """Files of an image kept in a tar archive, read in place without unpacking it.

    A name may lead through links inside the archive: `docker save` before Docker 25 stores a layer
    that appears twice as a symbolic link (`<id>/layer.tar -> ../<other>/layer.tar`).
    """

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            raise SourceError('%s does not exist' % path if not os.path.exists(path) else
                              '%s is not a regular file' % path)
        self.path = path
        self._members: t.Dict[str, tarfile.TarInfo] = {}
        self._links: t.Dict[str, tarfile.TarInfo] = {}
        try:
            with tarfile.open(path, mode='r:*') as archive:
                for member in archive.getmembers():
                    self._index(member)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise SourceError('%s is not a readable tar archive: %s' % (path, exc))

    def _index(self, member: tarfile.TarInfo) -> None:
        # A later entry of the same name replaces an earlier one, as it would on extraction.
        name = '/'.join(_name_parts(member.name))
        self._members.pop(name, None)
        self._links.pop(name, None)
        if member.isfile():
            self._members[name] = member
        elif member.issym() or member.islnk():
            self._links[name] = member

    def _find(self, name: str) -> t.Tuple[t.Optional[tarfile.TarInfo], str]:
        """The regular member `name` leads to (None if there is none), and the name it resolved to.

        Links are followed inside the archive only: a symbolic link's target is taken from its own
        directory (from the archive's root when absolute), a hard link's from the archive's root, and
        nothing may climb above the root.
        """
        resolved: t.List[str] = []
        pending = _name_parts(name)
        hops = 0
        while pending:
            part = pending.pop(0)
            if part == '..':
                if not resolved:
                    raise SourceError('%s: %s leads outside the archive' % (self.path, name))
                resolved.pop()
                continue
            link = self._links.get('/'.join(resolved + [part]))
            if link is None:
                resolved.append(part)
                continue
            hops += 1
            if hops > _MAX_LINK_HOPS:
                raise SourceError('%s: %s leads through more than %d links: a loop of links'
                                  % (self.path, name, _MAX_LINK_HOPS))
            if link.islnk() or link.linkname.startswith('/'):
                resolved = []
            pending = _name_parts(link.linkname) + pending
        found = '/'.join(resolved)
        return self._members.get(found), found

    def _member(self, name: str) -> tarfile.TarInfo:
        member, found = self._find(name)
        if member is None:
            if found != '/'.join(_name_parts(name)):
                raise SourceError('%s: %s is a link to %s, which is not a file in the archive'
                                  % (self.path, name, found))
            raise SourceError('%s: %s is missing from the archive' % (self.path, name))
        return member

    def open_file(self, name: str) -> t.BinaryIO:
        member = self._member(name)
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

    def size_of(self, name: str) -> int:
        return self._member(name).size

    def close(self) -> None:
        pass


def _name_parts(name: str) -> t.List[str]:
    """The components of a name in an archive, as from its root ('./a//b' and '/a/b' are a/b)."""
    return [part for part in name.split('/') if part not in ('', '.')]


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


def _blob_name(digest: str) -> str:
    algorithm, hexdigest = parse_digest(digest)
    return 'blobs/%s/%s' % (algorithm, hexdigest)


class OciLayout:
    """An OCI image layout; `reference` picks an entry by its ref.name annotation."""

    def __init__(self, blobs: Blobs, location: str, reference: str) -> None:
        self._blobs = blobs
        self._location = location
        self._reference = reference

    def close(self) -> None:
        self._blobs.close()

    def resolve(self, wanted: t.Optional[Platform]) -> Image:
        layout = parse_json_object(self._blobs.read_file('oci-layout'), '%s: oci-layout' % self._location)
        if 'imageLayoutVersion' not in layout:
            raise SourceError('%s is not an OCI image layout (oci-layout has no imageLayoutVersion)' % self._location)
        what = '%s: index.json' % self._location
        index = parse_json_object(self._blobs.read_file('index.json'), what)
        selected = [descriptor(entry, '%s manifests[%d]' % (what, number))
                    for number, entry in self._select_entries(manifest_entries(index, what))]
        # index.json is the layout's list of tags: what a tag names is an index's top, as in a registry.
        candidates = IndexWalker(self._location, self._read_blob).images(selected, what, depth=0)
        chosen = choose_candidate(candidates, wanted, self._location, self._config_platform)
        return self._load_image(chosen, wanted)

    def _select_entries(self, entries: t.List[t.Dict[str, t.Any]]) -> t.List[t.Tuple[int, t.Dict[str, t.Any]]]:
        numbered = [(number, entry, _ref_name(entry)) for number, entry in enumerate(entries)]
        tags = sorted(set(name for _number, _entry, name in numbered if name))
        if self._reference:
            selected = [(number, entry) for number, entry, name in numbered if name == self._reference]
            if not selected:
                raise SourceError('%s has no image tagged %r; tags: %s'
                                  % (self._location, self._reference, ', '.join(tags) or 'none'))
            return selected
        if len(tags) > 1:
            raise SourceError('%s holds several images (%s); name one as %s:TAG'
                              % (self._location, ', '.join(tags), self._location))
        return [(number, entry) for number, entry, _name in numbered]

    def _config_platform(self, listed: Descriptor) -> t.Optional[Platform]:
        config = self._read_manifest(listed).config
        return platform_from_json(self._read_json_blob(config), '%s: config %s' % (self._location, config.digest))

    def _read_manifest(self, listed: Descriptor) -> ImageManifest:
        return image_manifest(self._read_json_blob(listed), '%s: manifest %s' % (self._location, listed.digest))

    def _load_image(self, chosen: Candidate, wanted: t.Optional[Platform]) -> Image:
        manifest = self._read_manifest(chosen.descriptor)
        config = self._read_json_blob(manifest.config)
        image_platform = platform_from_json(config, '%s: config %s' % (self._location, manifest.config.digest)) \
            or chosen.descriptor.platform
        warnings = platforms.check_image_platform(image_platform, wanted, self._location)
        layers = [self._layer(layer) for layer in manifest.layers]
        return Image(digest=chosen.descriptor.digest, layers=layers, config=config, platform=image_platform,
                     index_digest=chosen.index_digest, warnings=warnings)

    def _layer(self, found: Descriptor) -> Layer:
        if found.media_type not in LAYER_MEDIA_TYPES:
            raise SourceError('%s: layer %s has media type %r, which cannot be applied (foreign, '
                              'non-distributable or encrypted layers are not supported)'
                              % (self._location, found.digest, found.media_type))
        name = _blob_name(found.digest)
        return Layer(open_blob=sized_opener(lambda: self._blobs.open_file(name), found.size,
                                            '%s: blob %s' % (self._location, found.digest)),
                     digest=found.digest, size=found.size, media_type=found.media_type)

    def _read_blob(self, found: Descriptor) -> bytes:
        """A metadata blob (manifest, config, index), read no further than its descriptor's size.

        Whoever reads it checks it against `found` (check_blob).
        """
        what = '%s: blob %s' % (self._location, found.digest)
        if found.size > MAX_METADATA_SIZE:
            raise SourceError('%s is %d bytes by its descriptor, more than the %d of any image metadata'
                              % (what, found.size, MAX_METADATA_SIZE))
        with SizedReader(self._blobs.open_file(_blob_name(found.digest)), found.size, what) as stream:
            return stream.read()

    def _read_json_blob(self, found: Descriptor) -> t.Dict[str, t.Any]:
        what = '%s: blob %s' % (self._location, found.digest)
        return parse_json_object(check_blob(self._read_blob(found), found, what), what)


def _ref_name(entry: t.Dict[str, t.Any]) -> t.Optional[str]:
    annotations = entry.get('annotations')
    name = annotations.get(REF_NAME_ANNOTATION) if isinstance(annotations, dict) else None
    return name if isinstance(name, str) else None


class _ArchiveEntry(t.NamedTuple):
    """One image of a docker-archive's manifest.json."""
    config: str
    repo_tags: t.List[str]
    layers: t.List[str]


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
        manifest = parse_json(raw_manifest, '%s: manifest.json' % self._path)
        if not isinstance(manifest, list) or not manifest:
            raise SourceError('%s: manifest.json does not list any image' % self._path)
        entry = self._select([self._entry(value, number) for number, value in enumerate(manifest)])
        config_bytes = self._blobs.read_file(entry.config)
        what = '%s: config %s' % (self._path, entry.config)
        config = parse_json_object(config_bytes, what)
        diff_ids = _diff_ids(config, what)
        if len(diff_ids) != len(entry.layers):
            raise SourceError('%s: the image lists %d layers but its config names %d'
                              % (self._path, len(entry.layers), len(diff_ids)))
        image_platform = platform_from_json(config, what)
        warnings = platforms.check_image_platform(image_platform, wanted, self._path)
        layers = [self._layer(layer_path, diff_id) for layer_path, diff_id in zip(entry.layers, diff_ids)]
        # The config digest is the image ID: it names layers and config exactly.
        return Image(digest=sha256_digest(config_bytes), layers=layers, config=config, platform=image_platform,
                     warnings=warnings)

    def _entry(self, value: t.Any, number: int) -> _ArchiveEntry:
        what = '%s: manifest.json image @%d' % (self._path, number)
        if not isinstance(value, dict):
            raise SourceError('%s is not a JSON object' % what)
        config, repo_tags, layers = value.get('Config'), value.get('RepoTags') or [], value.get('Layers') or []
        if not isinstance(config, str) or not config:
            raise SourceError('%s has Config %r, not the path of its config' % (what, config))
        for key, names in (('RepoTags', repo_tags), ('Layers', layers)):
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                raise SourceError('%s has %s %r, not a list of strings' % (what, key, names))
        return _ArchiveEntry(config, repo_tags, layers)

    def _select(self, entries: t.List[_ArchiveEntry]) -> _ArchiveEntry:
        if self._reference.startswith('@'):
            number = self._reference[1:]
            if not number.isdigit() or int(number) >= len(entries):
                raise SourceError('%s: no image number %s (it holds %d)' % (self._path, number, len(entries)))
            return entries[int(number)]
        if self._reference:
            wanted = {self._reference, self._reference + ':latest'}
            for entry in entries:
                if wanted.intersection(_short_names(entry.repo_tags)):
                    return entry
            raise SourceError('%s has no image named %r; it holds: %s'
                              % (self._path, self._reference, _describe_entries(entries)))
        if len(entries) != 1:
            raise SourceError('%s holds %d images (%s); name one as docker-archive:%s:NAME:TAG or :@N'
                              % (self._path, len(entries), _describe_entries(entries), self._path))
        return entries[0]

    def _layer(self, layer_path: str, diff_id: str) -> Layer:
        # The size is the one the archive's tar header gives: the only one there is.
        size = self._blobs.size_of(layer_path)
        return Layer(open_blob=sized_opener(lambda: self._blobs.open_file(layer_path), size,
                                            '%s: %s' % (self._path, layer_path)),
                     digest=None, size=size, media_type=MEDIA_TAR, diff_id=diff_id)


def _diff_ids(config: t.Dict[str, t.Any], what: str) -> t.List[str]:
    """The uncompressed digests of the layers, bottom first, that a docker-archive's config names."""
    rootfs = config.get('rootfs')
    diff_ids = rootfs.get('diff_ids') if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise SourceError('%s has no rootfs.diff_ids list' % what)
    for diff_id in diff_ids:
        if not is_digest(diff_id):
            raise SourceError('%s has diff_id %r, not a valid sha256/sha512 digest' % (what, diff_id))
    return diff_ids


def _short_names(repo_tags: t.Iterable[str]) -> t.Set[str]:
    names = set()
    for tag in repo_tags:
        names.add(tag)
        for prefix in ('docker.io/library/', 'docker.io/'):
            if tag.startswith(prefix):
                names.add(tag[len(prefix):])
    return names


def _describe_entries(entries: t.List[_ArchiveEntry]) -> str:
    return ', '.join('@%d (%s)' % (number, ', '.join(entry.repo_tags) or 'untagged')
                     for number, entry in enumerate(entries))
