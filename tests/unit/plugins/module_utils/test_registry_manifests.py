# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a registry source makes of the manifests and indexes it is served, broken ones above all.

A real registry refuses to store most broken documents, so these tests serve them from a stand-in
for RegistryClient that answers the way it does: by tag or digest, verified, with the media type.
"""

from __future__ import annotations

import json
import re
import typing as t

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import _platforms as platforms
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import DigestMismatch, PlatformError, SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._image import Platform
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.client import RegistryClient, RegistryError
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.reference import parse_reference
from ansible_collections.virt.bootstrap.plugins.module_utils._sources import registry as registry_source
from ansible_collections.virt.bootstrap.plugins.module_utils._sources.registry import RegistryOptions, RegistrySource
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import (
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_MANIFEST,
    platform_fields,
)
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import sha256

REFERENCE = 'registry.example/app:1'
GZIP = MEDIA_OCI_LAYER['gzip']


class FakeRegistry:
    """Documents by digest, tags naming some; records every request. Layers are never downloaded here."""

    def __init__(self) -> None:
        self.documents: t.Dict[str, bytes] = {}
        self.tags: t.Dict[str, str] = {}
        self.requests: t.List[t.Tuple[str, str]] = []

    def add(self, value: t.Any, tag: t.Optional[str] = None) -> t.Dict[str, t.Any]:
        """Store `value` as JSON; returns a descriptor of it (OCI media type from its own mediaType)."""
        body = json.dumps(value, sort_keys=True).encode('utf-8')
        digest = sha256(body)
        self.documents[digest] = body
        if tag:
            self.tags[tag] = digest
        media_type = value.get('mediaType', MEDIA_OCI_CONFIG) if isinstance(value, dict) else MEDIA_OCI_CONFIG
        return {'mediaType': media_type, 'digest': digest, 'size': len(body)}

    def stop(self) -> None:
        """Nothing waits to retry here."""

    def get_manifest(self, reference: str) -> t.Tuple[bytes, str, str]:
        self.requests.append(('manifest', reference))
        digest = self.tags.get(reference, reference)
        if digest not in self.documents:
            raise RegistryError('registry.example has no image app:%s' % reference)
        body = self.documents[digest]
        return body, json.loads(body).get('mediaType', ''), digest

    def get_small_blob(self, digest: str) -> bytes:
        self.requests.append(('blob', digest))
        if digest not in self.documents:
            raise RegistryError('registry.example has no blob %s in app' % digest)
        return self.documents[digest]

    def download_blob(self, digest: str, *args: t.Any, **kwargs: t.Any) -> int:
        self.requests.append(('download', digest))
        raise AssertionError('no layer is downloaded in these tests')


@pytest.fixture
def served(monkeypatch, auth_home):
    """The FakeRegistry every RegistrySource made in the test talks to; no auth file of the machine is read."""
    fake = FakeRegistry()
    monkeypatch.setattr(registry_source, 'RegistryClient', lambda *args, **kwargs: fake)
    return fake


def resolve(platform: t.Optional[str] = None, **options: t.Any):
    source = RegistrySource(parse_reference(REFERENCE), RegistryOptions(**options))
    try:
        return source.resolve(platforms.parse_platform(platform) if platform else None)
    finally:
        source.close()


def layer(number: int, size: t.Any = 1000) -> t.Dict[str, t.Any]:
    return {'mediaType': GZIP, 'digest': 'sha256:%064x' % number, 'size': size}


def image(fake: FakeRegistry, platform: t.Optional[str] = 'linux/amd64', layers: t.Any = None,
          tag: t.Optional[str] = None, edit: t.Optional[t.Callable[[t.Dict[str, t.Any]], None]] = None):
    """An image manifest in `fake` (its config too); returns the manifest's descriptor."""
    config = fake.add(dict(platform_fields(platform), rootfs={'type': 'layers', 'diff_ids': []}))
    manifest = {'schemaVersion': 2, 'mediaType': MEDIA_OCI_MANIFEST, 'config': config,
                'layers': [layer(1), layer(2)] if layers is None else layers}
    if edit:
        edit(manifest)
    return fake.add(manifest, tag)


def index(fake: FakeRegistry, entries: t.Sequence[t.Dict[str, t.Any]], tag: t.Optional[str] = None):
    return fake.add({'schemaVersion': 2, 'mediaType': MEDIA_OCI_INDEX, 'manifests': list(entries)}, tag)


def entry(descriptor: t.Dict[str, t.Any], platform: t.Optional[str] = None,
          changes: t.Optional[t.Dict[str, t.Any]] = None) -> t.Dict[str, t.Any]:
    """An index entry for `descriptor`, with `changes` (None removes a field)."""
    listed = dict(descriptor, platform=platform_fields(platform)) if platform else dict(descriptor)
    listed.update(changes or {})
    return {key: value for key, value in listed.items() if value is not None}


# -- what is read, and in which order --------------------------------------------------------------------------------

def test_a_single_manifest_resolves_to_its_digest_and_layers(served):
    manifest = image(served, tag='1')
    resolved = resolve()
    assert resolved.digest == manifest['digest'] and resolved.index_digest is None
    assert [(item.digest, item.size) for item in resolved.layers] == [(layer(1)['digest'], 1000),
                                                                      (layer(2)['digest'], 1000)]
    assert resolved.platform == Platform('linux', 'amd64')


# -- broken documents -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('changes, message', [
    ({'platform': 'linux/amd64'}, r"manifests\[0\] \(sha256:[0-9a-f]+\) has platform 'linux/amd64', not an object"),
    ({'platform': {'architecture': ['arm64']}}, r"platform has architecture \['arm64'\], not a string"),
    ({'digest': None}, r'manifests\[0\] has no digest'),
    ({'digest': 'sha256:short'}, r"manifests\[0\] has digest 'sha256:short', not a valid"),
    ({'size': None}, r'manifests\[0\] \(sha256:[0-9a-f]+\) has no size'),
    ({'size': '1k'}, r"has size '1k', not a size in bytes"),
    ({'mediaType': 7}, 'has media type 7, not a string'),
])
def test_a_malformed_index_entry_is_a_source_error_naming_it(served, changes, message):
    top = index(served, [entry(image(served), 'linux/amd64', changes)], tag='1')
    with pytest.raises(SourceError, match=message) as caught:
        resolve()
    assert 'registry.example/app:1: index %s' % top['digest'] in str(caught.value)


def test_an_index_entry_that_is_not_an_object_is_a_source_error(served):
    index(served, ['sha256:' + '0' * 64], tag='1')
    with pytest.raises(SourceError, match=r'manifests\[0\] is not a descriptor'):
        resolve()


def test_an_index_without_a_list_of_manifests_is_a_source_error(served):
    served.add({'schemaVersion': 2, 'mediaType': MEDIA_OCI_INDEX, 'manifests': {}}, '1')
    with pytest.raises(SourceError, match='has no list of manifests'):
        resolve()


def first_layer(**changes: t.Any) -> t.Callable[[t.Dict[str, t.Any]], None]:
    def edit(manifest: t.Dict[str, t.Any]) -> None:
        manifest['layers'][0] = {key: value for key, value in dict(manifest['layers'][0], **changes).items()
                                 if value is not None}
    return edit


@pytest.mark.parametrize('edit, message', [
    (lambda manifest: manifest.update(layers=['sha256:' + '1' * 64]), r'layers\[0\] is not a descriptor'),
    (lambda manifest: manifest.update(layers=[[]]), r'layers\[0\] is not a descriptor'),
    (first_layer(digest=None), r'layers\[0\] has no digest'),
    (first_layer(size=None), r'layers\[0\] \(sha256:0+1\) has no size'),
    (first_layer(size='1000'), r"layers\[0\] \(sha256:0+1\) has size '1000', not a size in bytes"),
    (first_layer(size=-5), 'has size -5'),
    (first_layer(size=False), 'has size False'),
    (lambda manifest: manifest.pop('config'), 'has no config'),
    (lambda manifest: manifest.update(config='sha256:' + '2' * 64), 'config is not a descriptor'),
    (lambda manifest: manifest['config'].pop('digest'), 'config has no digest'),
    (lambda manifest: manifest['config'].update(digest=None), 'config has no digest'),
    (lambda manifest: manifest['config'].update(size=None), r'config \(sha256:[0-9a-f]+\) has no size'),
])
def test_a_malformed_manifest_is_a_source_error_naming_the_part(served, edit, message):
    manifest = image(served, tag='1', edit=edit)
    with pytest.raises(SourceError, match=message) as caught:
        resolve()
    assert 'registry.example/app:1: manifest %s' % manifest['digest'] in str(caught.value)
    assert ('blob', None) not in served.requests and ('blob', 'None') not in served.requests


def test_a_config_naming_its_architecture_with_a_number_is_a_source_error(served):
    config = served.add({'architecture': 64, 'os': 'linux', 'rootfs': {}})
    image(served, tag='1', edit=lambda manifest: manifest.update(config=config))
    with pytest.raises(SourceError, match='config %s has architecture 64, not a string' % config['digest']):
        resolve()


def test_a_manifest_whose_media_type_is_not_a_string_is_a_source_error(monkeypatch):
    client = RegistryClient(parse_reference(REFERENCE))
    body = json.dumps({'schemaVersion': 2, 'mediaType': {'oci': 'manifest'}}).encode()
    monkeypatch.setattr(client, '_get_whole', lambda *args: (body, {'Content-Type': MEDIA_OCI_MANIFEST}))
    with pytest.raises(SourceError, match=r"registry.example: the manifest for 1 has media type \{'oci': "):
        client.get_manifest('1')


@pytest.mark.parametrize('body, message', [(b'[1, 2]', 'is not a JSON object'), (b'{nope', 'is not valid JSON')])
def test_a_manifest_that_is_not_a_json_object_is_a_source_error(monkeypatch, body, message):
    client = RegistryClient(parse_reference(REFERENCE))
    monkeypatch.setattr(client, '_get_whole', lambda *args: (body, {}))
    with pytest.raises(SourceError, match='registry.example: the manifest for 1 ' + message):
        client.get_manifest('1')


# -- the download limit ------------------------------------------------------------------------------------------

def test_an_image_bigger_than_max_download_size_is_refused_before_any_blob_is_fetched(served):
    manifest = image(served, tag='1', layers=[layer(1, 600), layer(2, 500)])
    with pytest.raises(SourceError) as caught:
        resolve(max_download_size=1099)
    assert str(caught.value) == ('registry.example/app:1: manifest %s: its layers add up to 1100 bytes (compressed), '
                                 'more than the limit of 1099 bytes' % manifest['digest'])
    assert [kind for kind, _what in served.requests] == ['manifest']


def test_an_image_exactly_max_download_size_is_resolved(served):
    image(served, tag='1', layers=[layer(1, 600), layer(2, 500)])
    assert len(resolve(max_download_size=1100).layers) == 2


# -- indexes --------------------------------------------------------------------------------------------------------

ATTESTATION = {'vnd.docker.reference.type': 'attestation-manifest'}


def test_an_unknown_platform_attestation_beside_the_only_image_leaves_it_the_only_one(served, monkeypatch):
    # As BuildKit pushes a single-platform image: were the attestation a candidate, no image would suit the host.
    monkeypatch.setattr(platforms._host, 'machine', lambda: 'x86_64')
    arm64 = image(served, 'linux/arm64')
    attestation = image(served, None)
    index(served, [entry(arm64, 'linux/arm64'), entry(attestation, 'unknown/unknown')], tag='1')
    resolved = resolve()
    assert resolved.digest == arm64['digest']
    assert len(resolved.warnings) == 1 and 'linux/arm64' in resolved.warnings[0]


def test_an_attestation_annotated_for_the_platform_asked_for_is_not_chosen(served):
    # Listed first and for the very platform asked for: only its annotation says it is no image.
    arm64, amd64 = image(served, 'linux/arm64'), image(served, 'linux/amd64')
    attestation = image(served, 'linux/arm64', layers=[layer(9)])
    assert attestation['digest'] != arm64['digest']
    index(served, [entry(attestation, 'linux/arm64', {'annotations': ATTESTATION}), entry(amd64, 'linux/amd64'),
                   entry(arm64, 'linux/arm64')], tag='1')
    assert resolve('linux/arm64').digest == arm64['digest']


def test_a_nested_index_is_resolved_and_the_top_index_recorded(served):
    amd64, arm64 = image(served, 'linux/amd64'), image(served, 'linux/arm64/v8')
    inner = index(served, [entry(amd64, 'linux/amd64'), entry(arm64, 'linux/arm64/v8')])
    top = index(served, [entry(inner)], tag='1')
    resolved = resolve('linux/arm64')
    assert (resolved.digest, resolved.index_digest) == (arm64['digest'], top['digest'])
    assert resolved.platform == Platform('linux', 'arm64', 'v8')
    with pytest.raises(PlatformError, match='available: linux/amd64, linux/arm64/v8'):
        resolve('linux/s390x')


def test_a_nested_index_entry_takes_the_platform_of_the_index_entry_when_it_has_none(served):
    arm64 = image(served, 'linux/arm64')
    inner = index(served, [entry(arm64)])
    top = index(served, [entry(inner, 'linux/arm64'), entry(image(served, 'linux/amd64'), 'linux/amd64')], tag='1')
    resolved = resolve('linux/arm64')
    assert (resolved.digest, resolved.index_digest) == (arm64['digest'], top['digest'])


def test_indexes_nested_without_end_are_refused(served):
    innermost = index(served, [entry(image(served), 'linux/amd64')])
    for _level in range(5):
        innermost = index(served, [entry(innermost)])
    served.tags['1'] = innermost['digest']
    with pytest.raises(SourceError, match='nests indexes more than 3 deep'):
        resolve()


def test_a_nested_index_that_turns_out_to_be_a_manifest_is_refused(served):
    manifest = image(served)
    index(served, [entry(manifest, changes={'mediaType': MEDIA_OCI_INDEX})], tag='1')
    expected = 'lists %s as an index, but it is a %s' % (manifest['digest'], MEDIA_OCI_MANIFEST)
    with pytest.raises(SourceError, match=re.escape(expected)):
        resolve()


FOREIGN_WARNING = ("registry.example/app:1: the image is for platform linux/arm64, not this host's (linux/amd64); it "
                   "is used as no platform was asked for (set platform: linux/arm64 to say this is intended)")


@pytest.fixture
def amd64_host(monkeypatch):
    monkeypatch.setattr(platforms._host, 'machine', lambda: 'x86_64')


def test_the_only_image_of_an_index_for_another_platform_is_used_with_a_warning(served, amd64_host):
    arm64 = image(served, 'linux/arm64')
    index(served, [entry(arm64, 'linux/arm64')], tag='1')
    resolved = resolve()
    assert (resolved.digest, resolved.warnings) == (arm64['digest'], [FOREIGN_WARNING])
    assert resolve('linux/arm64').warnings == []


def test_a_single_manifest_for_another_platform_is_used_with_a_warning(served, amd64_host):
    image(served, 'linux/arm64', tag='1')
    assert resolve().warnings == [FOREIGN_WARNING]
    with pytest.raises(PlatformError, match='no image for platform linux/s390x; available: linux/arm64$'):
        resolve('linux/s390x')


def test_an_image_for_the_host_has_no_warning(served, amd64_host):
    image(served, 'linux/amd64', tag='1')
    assert resolve().warnings == []


def test_entries_without_a_platform_are_chosen_by_the_platform_of_their_config(served, amd64_host):
    amd64, arm64 = image(served, 'linux/amd64'), image(served, 'linux/arm64')
    index(served, [entry(arm64), entry(amd64)], tag='1')
    assert resolve().digest == amd64['digest']
    assert resolve('linux/arm64').digest == arm64['digest']


def test_artifacts_in_an_index_are_not_images(served, amd64_host):
    arm64 = image(served, 'linux/arm64')
    signature = image(served, None)
    index(served, [entry(signature, changes={'artifactType': 'application/vnd.dev.cosign.artifact.sig.v1+json'}),
                   entry(arm64, 'linux/arm64')], tag='1')
    resolved = resolve()
    assert (resolved.digest, resolved.warnings) == (arm64['digest'], [FOREIGN_WARNING])


def test_a_schema1_manifest_in_an_index_is_refused_with_the_hint(served):
    schema1 = served.add({'schemaVersion': 1, 'name': 'app', 'fsLayers': []})
    listed = dict(schema1, mediaType='application/vnd.docker.distribution.manifest.v1+prettyjws')
    index(served, [entry(image(served), 'linux/amd64'), entry(listed, 'linux/arm64')], tag='1')
    with pytest.raises(SourceError, match='schema 1 manifests are not supported; convert the image with skopeo copy'):
        resolve()


def test_a_nested_index_whose_size_is_not_its_descriptors_is_refused(served):
    inner = index(served, [entry(image(served), 'linux/amd64')])
    index(served, [entry(inner, changes={'size': inner['size'] - 1})], tag='1')
    with pytest.raises(DigestMismatch, match=inner['digest']):
        resolve()
