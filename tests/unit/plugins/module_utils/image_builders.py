# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test fixtures built on the fly: rootfs tars, OCI layouts (directory or archive), docker-archives."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import typing as t
from dataclasses import dataclass

from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import compress, sha256

MTIME = 1700000000

MEDIA_OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
MEDIA_OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
MEDIA_OCI_CONFIG = 'application/vnd.oci.image.config.v1+json'
MEDIA_OCI_LAYER = {
    'none': 'application/vnd.oci.image.layer.v1.tar',
    'gzip': 'application/vnd.oci.image.layer.v1.tar+gzip',
    'zstd': 'application/vnd.oci.image.layer.v1.tar+zstd',
}
REF_NAME = 'org.opencontainers.image.ref.name'
# Changes a JSON object in place: how tests make broken manifests, configs and entries.
JsonEdit = t.Callable[[t.Dict[str, t.Any]], None]


@dataclass(frozen=True)
class Symlink:
    target: str


@dataclass(frozen=True)
class Hardlink:
    target: str


TarContent = t.Union[bytes, None, Symlink, Hardlink]


def make_tar(entries: t.Mapping[str, TarContent]) -> bytes:
    """An uncompressed tar: bytes make a file (0644), None a directory (0755), Symlink/Hardlink a link."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.PAX_FORMAT) as archive:
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                archive.addfile(info)
            elif isinstance(content, (Symlink, Hardlink)):
                info.type = tarfile.SYMTYPE if isinstance(content, Symlink) else tarfile.LNKTYPE
                info.linkname = content.target
                info.mode = 0o777 if isinstance(content, Symlink) else 0o644
                archive.addfile(info)
            else:
                info.size = len(content)
                info.mode = 0o644
                archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def write_file(path: str, data: bytes) -> str:
    with open(path, 'wb') as stream:
        stream.write(data)
    return path


def platform_fields(platform: t.Optional[str]) -> t.Dict[str, str]:
    if not platform:
        return {}
    parts = platform.split('/')
    fields = {'os': parts[0], 'architecture': parts[1]}
    if len(parts) > 2:
        fields['variant'] = parts[2]
    return fields


class OciLayoutBuilder:
    """Writes blobs into an OCI layout directory and describes them; `write_index` finishes it."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, 'blobs', 'sha256'), exist_ok=True)

    def blob_path(self, digest: str) -> str:
        algorithm, hexdigest = digest.split(':', 1)
        return os.path.join(self.root, 'blobs', algorithm, hexdigest)

    def blob(self, data: bytes, media_type: str) -> t.Dict[str, t.Any]:
        digest = sha256(data)
        write_file(self.blob_path(digest), data)
        return {'mediaType': media_type, 'digest': digest, 'size': len(data)}

    def json_blob(self, value: t.Any, media_type: str) -> t.Dict[str, t.Any]:
        return self.blob(json.dumps(value, sort_keys=True).encode('utf-8'), media_type)

    def tamper(self, descriptor: t.Mapping[str, t.Any], data: bytes) -> None:
        """Replace a blob's content without changing the digest that names it."""
        write_file(self.blob_path(descriptor['digest']), data)

    def image(self, layer_tars: t.Sequence[bytes], platform: t.Optional[str] = 'linux/amd64',
              compression: str = 'gzip', layer_media_type: t.Optional[str] = None,
              schema_version: int = 2, edit_manifest: t.Optional[JsonEdit] = None,
              edit_config: t.Optional[JsonEdit] = None) -> t.Dict[str, t.Any]:
        """An image manifest (with config and layers); returns its descriptor, platform-free.

        `edit_manifest` and `edit_config` change the manifest and the config in place before they are
        written, to make broken ones (or a config with a runtime part).
        """
        layers = [self.blob(compress(layer, compression), layer_media_type or MEDIA_OCI_LAYER[compression])
                  for layer in layer_tars]
        config = dict(platform_fields(platform), rootfs={'type': 'layers',
                                                         'diff_ids': [sha256(layer) for layer in layer_tars]})
        if edit_config:
            edit_config(config)
        config_descriptor = self.json_blob(config, MEDIA_OCI_CONFIG)
        manifest = {'schemaVersion': schema_version, 'mediaType': MEDIA_OCI_MANIFEST,
                    'config': config_descriptor, 'layers': layers}
        if edit_manifest:
            edit_manifest(manifest)
        descriptor = self.json_blob(manifest, MEDIA_OCI_MANIFEST)
        descriptor['layers'] = layers  # for the tests only; stripped when written to an index
        descriptor['config'] = config_descriptor
        return descriptor

    def index(self, manifests: t.Sequence[t.Tuple[t.Mapping[str, t.Any], str]]) -> t.Dict[str, t.Any]:
        """A nested image index (as `skopeo copy --all` writes) over (manifest, platform) pairs."""
        entries = [dict(_descriptor(manifest), platform=platform_fields(platform)) for manifest, platform in manifests]
        return self.json_blob({'schemaVersion': 2, 'mediaType': MEDIA_OCI_INDEX, 'manifests': entries},
                              MEDIA_OCI_INDEX)

    def write_index(self, entries: t.Sequence[t.Tuple[t.Mapping[str, t.Any], t.Optional[str]]]) -> None:
        """index.json over (descriptor, tag or None) pairs, and the oci-layout marker."""
        manifests = []
        for descriptor, tag in entries:
            entry = _descriptor(descriptor)
            if tag:
                entry['annotations'] = {REF_NAME: tag}
            manifests.append(entry)
        write_file(os.path.join(self.root, 'oci-layout'), b'{"imageLayoutVersion": "1.0.0"}')
        write_file(os.path.join(self.root, 'index.json'),
                   json.dumps({'schemaVersion': 2, 'mediaType': MEDIA_OCI_INDEX, 'manifests': manifests}).encode())


def _descriptor(descriptor: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    return {key: descriptor[key] for key in ('mediaType', 'digest', 'size')}


def tar_directory(directory: str, path: str) -> str:
    """Tar the contents of `directory` with relative names, as skopeo writes an oci-archive."""
    with tarfile.open(path, 'w') as archive:
        for name in sorted(os.listdir(directory)):
            archive.add(os.path.join(directory, name), arcname=name)
    return path


def source_uri(kind: str, layout_dir: str, reference: str = '') -> str:
    """The URI of an OCI layout as `oci:` or, tarred next to it, as `oci-archive:`."""
    suffix = ':' + reference if reference else ''
    if kind == 'oci':
        return 'oci:%s%s' % (layout_dir, suffix)
    archive = layout_dir.rstrip('/') + '.tar'
    tar_directory(layout_dir, archive)
    return 'oci-archive:%s%s' % (archive, suffix)


@dataclass
class DockerImage:
    repo_tags: t.List[str]
    layer_tars: t.List[bytes]
    platform: t.Optional[str] = 'linux/amd64'
    diff_ids: t.Optional[t.List[str]] = None


def make_docker_archive(path: str, images: t.Sequence[DockerImage], with_manifest: bool = True,
                        edit_entry: t.Optional[JsonEdit] = None, edit_config: t.Optional[JsonEdit] = None) -> str:
    """What `docker save` writes: manifest.json, one config per image, layers as uncompressed tars.

    `edit_entry` and `edit_config` change each manifest.json entry and config in place, to make broken ones.
    """
    members: t.Dict[str, bytes] = {}
    manifest = []
    for image in images:
        layer_paths = []
        for layer in image.layer_tars:
            layer_path = '%s/layer.tar' % hashlib.sha256(layer).hexdigest()
            members[layer_path] = layer
            layer_paths.append(layer_path)
        diff_ids = image.diff_ids if image.diff_ids is not None else [sha256(layer) for layer in image.layer_tars]
        config = dict(platform_fields(image.platform), rootfs={'type': 'layers', 'diff_ids': diff_ids},
                      tags=image.repo_tags)  # 'tags' only makes configs of identical images differ
        if edit_config:
            edit_config(config)
        config_bytes = json.dumps(config, sort_keys=True).encode('utf-8')
        config_path = '%s.json' % hashlib.sha256(config_bytes).hexdigest()
        members[config_path] = config_bytes
        entry = {'Config': config_path, 'RepoTags': image.repo_tags, 'Layers': layer_paths}
        if edit_entry:
            edit_entry(entry)
        manifest.append(entry)
    if with_manifest:
        members['manifest.json'] = json.dumps(manifest).encode('utf-8')
    with tarfile.open(path, 'w') as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = MTIME
            archive.addfile(info, io.BytesIO(data))
    return path


def as_saved_before_docker_25(archive: str, path: str) -> str:
    """Rewrite a single-image docker-archive as `docker save` wrote it before Docker 25.

    Each layer sits at `<id>/layer.tar`, the id naming its position in the chain; a layer met again
    is a symbolic link to the first one (`../<id>/layer.tar`), and manifest.json names every layer
    by its `<id>/layer.tar` path, link or not.
    """
    with tarfile.open(archive) as source:
        members = {member.name: source.extractfile(member).read() for member in source.getmembers() if member.isfile()}
    manifest = json.loads(members.pop('manifest.json'))
    assert len(manifest) == 1, 'one image only'
    entries: t.Dict[str, TarContent] = {}
    first_path: t.Dict[str, str] = {}
    layer_paths = []
    chain = ''
    for layer in manifest[0]['Layers']:
        chain = hashlib.sha256((chain + layer).encode()).hexdigest()
        layer_path = '%s/layer.tar' % chain
        entries[chain] = None
        if layer in first_path:
            entries[layer_path] = Symlink('../%s' % first_path[layer])
        else:
            entries[layer_path] = members[layer]
            first_path[layer] = layer_path
        layer_paths.append(layer_path)
    for name, data in members.items():
        if name.endswith('.json') and '/' not in name:  # the config, named by its digest
            entries[name] = data
    entries['manifest.json'] = json.dumps([dict(manifest[0], Layers=layer_paths)]).encode()
    return write_file(path, make_tar(entries))


def snapshot_tree(root: str) -> t.Dict[str, t.Any]:
    """Everything a rebuild could change: each path's type, mode, owner, mtime and content or target."""
    tree: t.Dict[str, t.Any] = {'.inode': os.lstat(root).st_ino}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                with open(path, 'rb') as stream:
                    content: t.Any = stream.read()
            elif stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            else:
                content = None
            tree[os.path.relpath(path, root)] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode),
                                                 info.st_uid, info.st_gid, info.st_mtime_ns, content)
    tree['.'] = (stat.S_IMODE(os.lstat(root).st_mode), os.lstat(root).st_mtime_ns)
    return tree
