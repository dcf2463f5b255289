# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""The Image every source produces and every writer consumes, digest helpers, and reading image metadata."""

from __future__ import annotations

import hashlib
import json
import re
import types
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
# Refused wherever they are met, with a hint to convert the image.
SCHEMA1_MEDIA_TYPES = frozenset((
    'application/vnd.docker.distribution.manifest.v1+json',
    'application/vnd.docker.distribution.manifest.v1+prettyjws',
))
# Manifests, indexes and configs are small; a bigger one is not an image we should parse (containerd's limit).
MAX_METADATA_SIZE = 4 << 20

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


def is_digest(value: t.Any) -> bool:
    """Whether `value` is a sha256 or sha512 digest, the only kinds we can verify."""
    return isinstance(value, str) and _DIGEST_RE.match(value) is not None


def parse_digest(digest: str) -> t.Tuple[str, str]:
    """Split 'algo:hex' after checking it is a digest we can verify."""
    if not is_digest(digest):
        raise SourceError('not a valid sha256/sha512 digest: %r' % (digest,))
    algorithm, hexdigest = digest.split(':', 1)
    return algorithm, hexdigest


def new_hasher(digest: str) -> 'hashlib._Hash':
    return hashlib.new(parse_digest(digest)[0])


def sha256_digest(data: bytes) -> str:
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def digest_of(hasher: 'hashlib._Hash') -> str:
    """The 'algo:hex' digest of what `hasher` has seen."""
    return '%s:%s' % (hasher.name, hasher.hexdigest())


def verify_digest(hasher: 'hashlib._Hash', expected: str, what: str) -> None:
    actual = digest_of(hasher)
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


class SizedReader:
    """Reads a blob that must hold exactly `size` bytes, as the OCI spec has descriptors say.

    Nothing past `size` is ever returned: one byte more is read only to tell that the blob goes on,
    which fails, as does a blob that ends early. The digest alone would not stop a descriptor that
    lies about the size from getting round a limit set by sizes.
    """

    def __init__(self, stream: t.BinaryIO, size: int, what: str) -> None:
        self._stream = stream
        self._size = size
        self._left = size
        self._what = what
        self._checked_end = False

    def read(self, amount: t.Optional[int] = -1) -> bytes:
        if amount is None or amount < 0:
            return b''.join(iter(lambda: self.read(1 << 20), b''))
        data = self._stream.read(min(amount, self._left)) if amount and self._left else b''
        if amount and self._left and not data:
            raise DigestMismatch('%s ends after %d bytes, but its descriptor says %d'
                                 % (self._what, self._size - self._left, self._size))
        self._left -= len(data)
        if not self._left and not self._checked_end:
            self._checked_end = True
            if self._stream.read(1):
                raise DigestMismatch('%s holds more than the %d bytes its descriptor says' % (self._what, self._size))
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> 'SizedReader':
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()


def sized_opener(open_blob: t.Callable[[], t.BinaryIO], size: int, what: str) -> t.Callable[[], t.BinaryIO]:
    """`open_blob`, its streams made to hold exactly `size` bytes (SizedReader): for Layer.open_blob."""
    return lambda: t.cast(t.BinaryIO, SizedReader(open_blob(), size, what))


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
    # (bytes, entries) the layer holds at most, when the source knows without reading it (virt-builder, from
    # its index): the qcow2 writer sizes its disk from this instead of a pass over the blob, which for such
    # a source would mean building it twice.
    size_hint: t.Optional[t.Tuple[int, int]] = None
    # The blob's reader checks `digest` and `size` itself, failing its read at the end on a mismatch (the
    # registry's, which must check before a blob enters its cache): the applier does not hash it again. A
    # download is checked as it arrives, not as the applier reads it back from the run's own partial file.
    reader_checks_digest: bool = False

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
    # What the user should hear about the choice made (an image for another platform than the host's).
    warnings: t.List[str] = field(default_factory=list)
    # An edit of the finished tree (given its root directory), made after the layers and before the root
    # password: in the tree for dir, in the guest overlay (or the flat tree) for qcow2, never in a layer
    # image. None for images used as they are.
    finish_tree: t.Optional[t.Callable[[str], None]] = field(default=None, repr=False, compare=False)


# -- reading image metadata ----------------------------------------------------------------------------------------
# Manifests, indexes and configs come from archives and registries we do not control: every shape is
# checked here, so a malformed one is a SourceError that says what is wrong, never a traceback.


_NO_ANNOTATIONS: t.Mapping[str, str] = types.MappingProxyType({})


class Descriptor(t.NamedTuple):
    """What an OCI descriptor (or a Docker one) says of the content it points to."""
    digest: str
    size: int
    media_type: str
    platform: t.Optional[Platform]
    # Only the string-valued ones: annotations say what an entry is, never anything we must obey.
    annotations: t.Mapping[str, str] = _NO_ANNOTATIONS
    artifact_type: str = ''


# The longest integer a manifest may hold: sizes fit in 64 bits (19 digits); longer numbers cost quadratic
# time to convert on interpreters without Python 3.11's own limit.
_MAX_INTEGER_DIGITS = 20


class _StrictJsonError(ValueError):
    """A document JSON allows but no image tool should write, and parsers read differently."""


def _refuse_duplicate_keys(pairs: t.List[t.Tuple[str, t.Any]]) -> t.Dict[str, t.Any]:
    # Go's decoder keeps the last of duplicate keys, others the first: the same bytes could name two images.
    result: t.Dict[str, t.Any] = {}
    for key, value in pairs:
        if key in result:
            raise _StrictJsonError('the key %r appears twice in one object' % key[:80])
        result[key] = value
    return result


def _bounded_integer(text: str) -> int:
    if len(text.lstrip('-')) > _MAX_INTEGER_DIGITS:
        raise _StrictJsonError('a number of %d digits' % len(text))
    return int(text)


def _finite_number(text: str) -> float:
    value = float(text)
    if value in (float('inf'), float('-inf')):
        raise _StrictJsonError('the number %s is out of range' % text[:40])
    return value


def _refuse_constant(name: str) -> t.NoReturn:
    raise _StrictJsonError('%s is not JSON' % name)


def parse_json(data: bytes, what: str) -> t.Any:
    """A metadata document from a source we do not control, read strictly: no duplicate keys, NaN or huge numbers."""
    try:
        return json.loads(data, object_pairs_hook=_refuse_duplicate_keys, parse_int=_bounded_integer,
                          parse_float=_finite_number, parse_constant=_refuse_constant)
    except _StrictJsonError as exc:
        raise SourceError('%s is refused: %s' % (what, exc))
    except (ValueError, RecursionError) as exc:
        raise SourceError('%s is not valid JSON: %s' % (what, str(exc)[:200]))


def parse_json_object(data: bytes, what: str) -> t.Dict[str, t.Any]:
    value = parse_json(data, what)
    if not isinstance(value, dict):
        raise SourceError('%s is not a JSON object' % what)
    return value


def descriptor(value: t.Any, what: str) -> Descriptor:
    """Check a descriptor: a digest we can verify, a size (the OCI spec requires one), a media type."""
    if not isinstance(value, dict):
        raise SourceError('%s is not a descriptor (a JSON object)' % what)
    digest = value.get('digest')
    if digest is None:
        raise SourceError('%s has no digest' % what)
    if not is_digest(digest):
        raise SourceError('%s has digest %r, not a valid sha256/sha512 digest' % (what, digest))
    size = value.get('size')
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise SourceError('%s (%s) has %s, not a size in bytes' % (
            what, digest, 'no size' if size is None else 'size %r' % (size,)))
    media_type = value.get('mediaType', '')
    if not isinstance(media_type, str):
        raise SourceError('%s (%s) has media type %r, not a string' % (what, digest, media_type))
    platform = value.get('platform')
    if platform is not None and not isinstance(platform, dict):
        raise SourceError('%s (%s) has platform %r, not an object' % (what, digest, platform))
    artifact_type = value.get('artifactType', '')
    if not isinstance(artifact_type, str):
        raise SourceError('%s (%s) has artifact type %r, not a string' % (what, digest, artifact_type))
    annotations = value.get('annotations')
    return Descriptor(digest, size, media_type, platform_from_json(platform, '%s (%s) platform' % (what, digest)),
                      types.MappingProxyType({key: text for key, text in annotations.items()
                                              if isinstance(key, str) and isinstance(text, str)})
                      if isinstance(annotations, dict) else _NO_ANNOTATIONS,
                      artifact_type)


def platform_from_json(data: t.Optional[t.Mapping[str, t.Any]], what: str) -> t.Optional[Platform]:
    """The platform an image config (or a descriptor's platform object) names, if it names one."""
    if not data:
        return None
    fields = {}
    for key in ('os', 'architecture', 'variant'):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise SourceError('%s has %s %r, not a string' % (what, key, value))
        fields[key] = value or ''
    if not fields['architecture']:
        return None
    return Platform(fields['os'] or 'linux', fields['architecture'], fields['variant'])


def runtime_config(config: t.Mapping[str, t.Any], what: str) -> t.Dict[str, t.Any]:
    """What the image says its container runs (the config's `config` object), with every key present.

    Types are read as Docker reads them: `Entrypoint` and `Cmd` may be a string (one argument), a null
    in a list or an object is an empty string; what Docker would refuse (a number for a string, say) is
    refused. An `Env` entry without `=` names a variable with an empty value.
    """
    section = config.get('config')
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise SourceError('%s: config is %s, not an object' % (what, _short(section)))
    labels = section.get('Labels')
    if labels is None:
        labels = {}
    if not isinstance(labels, dict) or not all(value is None or isinstance(value, str) for value in labels.values()):
        raise SourceError('%s: Labels is %s, not an object of strings' % (what, _short(labels)))
    labels = {key: value or '' for key, value in labels.items()}
    environment: t.Dict[str, str] = {}
    for entry in _string_list(section, 'Env', what):
        name, _equals, value = entry.partition('=')
        if name:
            environment[name] = value
    return {
        'entrypoint': _string_list(section, 'Entrypoint', what),
        'cmd': _string_list(section, 'Cmd', what),
        'env': environment,
        'working_dir': _string(section, 'WorkingDir', what),
        'user': _string(section, 'User', what),
        'labels': dict(labels),
    }


def _string_list(section: t.Mapping[str, t.Any], key: str, what: str) -> t.List[str]:
    value = section.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]  # Docker's strslice: "Cmd": "sh" is ["sh"]
    if not isinstance(value, list) or not all(item is None or isinstance(item, str) for item in value):
        raise SourceError('%s: %s is %s, not a list of strings' % (what, key, _short(value)))
    return [item or '' for item in value]


def _string(section: t.Mapping[str, t.Any], key: str, what: str) -> str:
    value = section.get(key)
    if value is None:
        return ''
    if not isinstance(value, str):
        raise SourceError('%s: %s is %s, not a string' % (what, key, _short(value)))
    return value


def _short(value: t.Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + '...'


def check_blob(data: bytes, listed: Descriptor, what: str) -> bytes:
    """`data`, once it is known to be what `listed` describes: its size and its digest."""
    if len(data) != listed.size:
        raise DigestMismatch('%s: content is %d bytes, its descriptor says %d' % (what, len(data), listed.size))
    hasher = new_hasher(listed.digest)
    hasher.update(data)
    verify_digest(hasher, listed.digest, what)
    return data


class ImageManifest(t.NamedTuple):
    config: Descriptor
    layers: t.List[Descriptor]


def image_manifest(document: t.Mapping[str, t.Any], what: str) -> ImageManifest:
    """The config and layers of a schema 2 image manifest (OCI or Docker)."""
    if document.get('schemaVersion') != 2 or not isinstance(document.get('layers'), list):
        raise SourceError('%s is not a schema 2 image manifest' % what)
    if 'config' not in document:
        raise SourceError('%s has no config' % what)
    return ImageManifest(descriptor(document['config'], '%s config' % what),
                         [descriptor(layer, '%s layers[%d]' % (what, number))
                          for number, layer in enumerate(document['layers'])])
