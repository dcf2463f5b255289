# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Source URIs and the local sources: rootfs tarballs, OCI layouts and archives, docker-archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import _platforms as platforms
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import DigestMismatch, PlatformError, SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._image import Platform
from ansible_collections.virt.bootstrap.plugins.module_utils._sources import SourceRef, open_source, parse_source
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import (
    MEDIA_OCI_INDEX,
    REF_NAME,
    DockerImage,
    OciLayoutBuilder,
    compress,
    make_docker_archive,
    make_tar,
    platform_fields,
    sha256,
    source_uri,
    tar_directory,
    write_file,
)

ROOTFS = make_tar({'etc': None, 'etc/hostname': b'box\n', 'bin': None, 'bin/sh': b'#!shell\n'})
COMPRESSIONS = ['none', 'gzip', 'xz', 'bzip2', 'zstd']


def resolve(uri, platform=None):
    source = open_source(parse_source(uri))
    try:
        return source.resolve(platforms.parse_platform(platform) if platform else None)
    finally:
        source.close()


def read_blob(layer):
    with layer.open_blob() as stream:
        return stream.read()


def needs_compression(compression):
    if compression == 'zstd':
        pytest.importorskip('zstandard')


# -- parse_source ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('uri, expected', [
    ('/srv/rootfs.tar.xz', SourceRef('file', '/srv/rootfs.tar.xz')),
    ('/srv/./images/../rootfs.tar', SourceRef('file', '/srv/rootfs.tar')),
    ('/srv/my%20rootfs.tar', SourceRef('file', '/srv/my%20rootfs.tar')),  # a path is taken literally
    ('file:///srv/rootfs.tar.gz', SourceRef('file', '/srv/rootfs.tar.gz')),
    ('file://localhost/srv/rootfs.tar', SourceRef('file', '/srv/rootfs.tar')),
    ('file:///srv/my%20rootfs%3A1.tar', SourceRef('file', '/srv/my rootfs:1.tar')),
    ('oci:/srv/oci/debian', SourceRef('oci', '/srv/oci/debian')),
    ('oci:/srv/oci/debian:bookworm', SourceRef('oci', '/srv/oci/debian', 'bookworm')),
    ('oci-archive:/srv/debian.tar:bookworm', SourceRef('oci-archive', '/srv/debian.tar', 'bookworm')),
    ('oci-archive:/srv/debian.tar', SourceRef('oci-archive', '/srv/debian.tar')),
    ('docker-archive:/srv/app.tar', SourceRef('docker-archive', '/srv/app.tar')),
    ('docker-archive:/srv/app.tar:app:1.2', SourceRef('docker-archive', '/srv/app.tar', 'app:1.2')),
    ('docker-archive:/srv/app.tar:app', SourceRef('docker-archive', '/srv/app.tar', 'app')),
    ('docker-archive:/srv/app.tar:@1', SourceRef('docker-archive', '/srv/app.tar', '@1')),
])
def test_parse_source_accepts_supported_forms(uri, expected):
    assert parse_source(uri) == expected


@pytest.mark.parametrize('uri, message', [
    ('', 'empty'),
    ('rootfs.tar', 'neither an absolute path nor a URI'),
    ('./rootfs.tar.gz', 'neither an absolute path nor a URI'),
    ('file://otherhost/srv/rootfs.tar', "names host 'otherhost'"),
    ('file:rootfs.tar', 'absolute path'),
    ('oci:relative/layout', 'needs an absolute path'),
    ('oci-archive:debian.tar:latest', 'needs an absolute path'),
    ('docker-archive:app.tar', 'needs an absolute path'),
    ('file://[/srv/rootfs.tar', 'file URI .* is malformed: Invalid IPv6 URL'),  # found by tests/fuzz
])
def test_parse_source_refuses_relative_and_remote_paths(uri, message):
    with pytest.raises(SourceError, match=message):
        parse_source(uri)


@pytest.mark.parametrize('uri', ['ftp://mirror/rootfs.tar', 'rsync://mirror/rootfs.tar',
                                 'http://example.com/rootfs.tar'])
def test_parse_source_unknown_scheme_lists_supported_forms(uri):
    with pytest.raises(SourceError) as caught:
        parse_source(uri)
    message = str(caught.value)
    assert 'unsupported source' in message
    for form in ('file:///', 'oci:/', 'oci-archive:/', 'docker-archive:/', 'virt-builder://'):
        assert form in message


@pytest.mark.parametrize('ref, text', [
    (SourceRef('file', '/srv/rootfs.tar'), '/srv/rootfs.tar'),
    (SourceRef('oci', '/srv/layout', 'v1'), 'oci:/srv/layout:v1'),
    (SourceRef('docker-archive', '/srv/app.tar'), 'docker-archive:/srv/app.tar'),
])
def test_source_ref_prints_as_a_uri_that_parses_back(ref, text):
    assert str(ref) == text
    assert parse_source(text) == ref


# -- rootfs tarballs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('compression', COMPRESSIONS)
@pytest.mark.parametrize('file_name', ['rootfs.tar.xz', 'rootfs'])
def test_tarball_compression_is_detected_from_content_not_name(tmp_path, compression, file_name):
    needs_compression(compression)
    data = compress(ROOTFS, compression)
    path = write_file(str(tmp_path / file_name), data)
    image = resolve(path)
    assert len(image.layers) == 1
    layer = image.layers[0]
    expected_media = 'application/x-tar' if compression == 'none' else 'application/x-tar+%s' % compression
    assert layer.media_type == expected_media
    assert read_blob(layer) == data


def test_tarball_digest_is_the_files_sha256(tmp_path):
    data = compress(ROOTFS, 'gzip')
    path = write_file(str(tmp_path / 'rootfs.tar.gz'), data)
    image = resolve('file://' + path)
    assert image.digest == 'sha256:' + hashlib.sha256(data).hexdigest()
    assert image.layers[0].digest == image.digest
    assert image.layers[0].size == len(data)
    assert image.index_digest is None


def test_tarball_records_an_explicit_platform_as_asked(tmp_path):
    path = write_file(str(tmp_path / 'rootfs.tar'), ROOTFS)
    assert resolve(path).platform is None
    assert resolve(path, 'linux/arm64').platform == Platform('linux', 'arm64')


@pytest.mark.parametrize('make, message', [
    (lambda tmp: str(tmp / 'missing.tar'), 'does not exist'),
    (str, 'is not a regular file'),
    (lambda tmp: write_file(str(tmp / 'notes.tar'), b'just some text, not a tar archive\n' * 20), 'not a tar archive'),
    (lambda tmp: write_file(str(tmp / 'empty.tar'), b''), 'not a tar archive'),
    (lambda tmp: write_file(str(tmp / 'data.tar.gz'), gzip.compress(b'not a tar at all' * 100)),
     r'not a tar archive \(compression: gzip\)'),
    (lambda tmp: write_file(str(tmp / 'cut.tar.gz'), compress(ROOTFS, 'gzip')[:20]), 'not a readable archive'),
    (lambda tmp: write_file(str(tmp / 'bad.tar.xz'), b'\xfd7zXZ\x00' + b'garbage' * 10), 'not a readable archive'),
])
def test_tarball_that_is_not_a_rootfs_is_refused_clearly(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(SourceError, match=message) as caught:
        resolve(path)
    assert path in str(caught.value)


def test_tarball_of_zstd_garbage_is_refused_clearly(tmp_path):
    pytest.importorskip('zstandard')
    path = write_file(str(tmp_path / 'bad.tar.zst'), b'\x28\xb5\x2f\xfd' + b'garbage' * 10)
    with pytest.raises(SourceError, match='zstd'):
        resolve(path)


# -- OCI layouts and oci-archives --------------------------------------------------------------------------------

LAYER_A = make_tar({'etc': None, 'etc/release': b'A\n'})
LAYER_B = make_tar({'etc': None, 'etc/release': b'B\n'})
LAYER_ARM = make_tar({'etc': None, 'etc/release': b'arm64\n'})


@pytest.fixture(params=['oci', 'oci-archive'])
def kind(request):
    return request.param


@pytest.fixture
def layout(tmp_path):
    return OciLayoutBuilder(str(tmp_path / 'layout'))


def test_oci_single_untagged_image_resolves_to_its_manifest(layout, kind):
    manifest = layout.image([LAYER_A, LAYER_B])
    layout.write_index([(manifest, None)])
    image = resolve(source_uri(kind, layout.root))
    assert image.digest == manifest['digest']
    assert [layer.digest for layer in image.layers] == [layer['digest'] for layer in manifest['layers']]
    assert image.layers[0].media_type == 'application/vnd.oci.image.layer.v1.tar+gzip'
    assert image.platform == Platform('linux', 'amd64')
    assert image.index_digest is None
    assert image.config['rootfs']['diff_ids'] == [sha256(LAYER_A), sha256(LAYER_B)]


def test_oci_layers_stay_readable_after_the_source_is_closed(layout, kind):
    # The engine resolves (and closes the source) before it builds.
    manifest = layout.image([LAYER_A, LAYER_B])
    layout.write_index([(manifest, 'latest')])
    image = resolve(source_uri(kind, layout.root))
    assert [read_blob(layer) for layer in image.layers] == [compress(LAYER_A, 'gzip'), compress(LAYER_B, 'gzip')]


def test_oci_single_tag_needs_no_reference(layout, kind):
    manifest = layout.image([LAYER_A])
    layout.write_index([(manifest, 'latest')])
    assert resolve(source_uri(kind, layout.root)).digest == manifest['digest']


@pytest.mark.parametrize('tag', ['v1', 'v2'])
def test_oci_picks_the_image_by_tag(layout, kind, tag):
    manifests = {'v1': layout.image([LAYER_A]), 'v2': layout.image([LAYER_B])}
    layout.write_index([(manifests['v1'], 'v1'), (manifests['v2'], 'v2')])
    assert resolve(source_uri(kind, layout.root, tag)).digest == manifests[tag]['digest']


def test_oci_several_tags_without_reference_lists_the_tags(layout, kind):
    layout.write_index([(layout.image([LAYER_A]), 'v1'), (layout.image([LAYER_B]), 'v2')])
    with pytest.raises(SourceError, match=r'several images \(v1, v2\); name one as .*:TAG'):
        resolve(source_uri(kind, layout.root))


def test_oci_unknown_tag_lists_the_tags(layout, kind):
    layout.write_index([(layout.image([LAYER_A]), 'v1'), (layout.image([LAYER_B]), 'v2')])
    with pytest.raises(SourceError, match=r"no image tagged 'v3'; tags: v1, v2"):
        resolve(source_uri(kind, layout.root, 'v3'))


@pytest.fixture
def multi_platform(layout):
    """amd64 and arm64 behind one nested index, as `skopeo copy --all` writes."""
    amd64 = layout.image([LAYER_A], platform='linux/amd64')
    arm64 = layout.image([LAYER_ARM], platform='linux/arm64/v8')
    index = layout.index([(amd64, 'linux/amd64'), (arm64, 'linux/arm64/v8')])
    layout.write_index([(index, 'latest')])
    return {'amd64': amd64, 'arm64': arm64, 'index': index}


@pytest.mark.parametrize('machine, arch', [('x86_64', 'amd64'), ('aarch64', 'arm64')])
def test_oci_index_picks_the_host_platform_by_default(layout, kind, multi_platform, monkeypatch, machine, arch):
    monkeypatch.setattr(platforms._host, 'machine', lambda: machine)
    image = resolve(source_uri(kind, layout.root))
    assert image.digest == multi_platform[arch]['digest']
    assert image.index_digest == multi_platform['index']['digest']


@pytest.mark.parametrize('wanted', ['linux/arm64', 'arm64', 'linux/arm64/v8', 'aarch64'])
def test_oci_index_picks_the_platform_asked_for(layout, kind, multi_platform, monkeypatch, wanted):
    monkeypatch.setattr(platforms._host, 'machine', lambda: 'x86_64')
    image = resolve(source_uri(kind, layout.root), wanted)
    assert image.digest == multi_platform['arm64']['digest']
    assert image.platform == Platform('linux', 'arm64', 'v8')
    assert image.index_digest == multi_platform['index']['digest']
    assert read_blob(image.layers[0]) == compress(LAYER_ARM, 'gzip')


def test_oci_index_without_the_platform_lists_what_exists(layout, kind, multi_platform):
    with pytest.raises(PlatformError, match=r'no image for platform linux/s390x; available: linux/amd64, '
                                            r'linux/arm64/v8'):
        resolve(source_uri(kind, layout.root), 'linux/s390x')


def test_oci_host_platform_missing_from_index_is_a_platform_error(layout, kind, multi_platform, monkeypatch):
    monkeypatch.setattr(platforms._host, 'machine', lambda: 'ppc64le')
    with pytest.raises(PlatformError, match='linux/ppc64le'):
        resolve(source_uri(kind, layout.root))


def test_oci_single_platform_image_must_match_an_explicit_platform(layout, kind):
    layout.write_index([(layout.image([LAYER_A], platform='linux/amd64'), 'latest')])
    uri = source_uri(kind, layout.root)
    with pytest.raises(PlatformError, match='no image for platform linux/arm64; available: linux/amd64'):
        resolve(uri, 'linux/arm64')
    assert resolve(uri, 'linux/amd64').platform == Platform('linux', 'amd64')


def test_oci_single_platform_image_is_used_whatever_the_host(layout, kind, monkeypatch):
    monkeypatch.setattr(platforms._host, 'machine', lambda: 'x86_64')
    manifest = layout.image([LAYER_ARM], platform='linux/arm64')
    layout.write_index([(manifest, 'latest')])
    assert resolve(source_uri(kind, layout.root)).digest == manifest['digest']


@pytest.mark.parametrize('part', ['manifest', 'config', 'index'])
def test_oci_metadata_blob_not_matching_its_digest_is_refused(layout, kind, multi_platform, part):
    descriptor = {'manifest': multi_platform['arm64'], 'config': multi_platform['arm64']['config'],
                  'index': multi_platform['index']}[part]
    layout.tamper(descriptor, json.dumps({'schemaVersion': 2, 'manifests': [], 'tampered': True}).encode())
    with pytest.raises(DigestMismatch, match=descriptor['digest']):
        resolve(source_uri(kind, layout.root), 'linux/arm64')


def test_oci_schema1_manifest_is_refused(layout, kind):
    manifest = layout.json_blob({'schemaVersion': 1, 'name': 'old', 'fsLayers': []},
                                'application/vnd.docker.distribution.manifest.v1+prettyjws')
    layout.write_index([(manifest, 'latest')])
    with pytest.raises(SourceError, match='schema 1'):
        resolve(source_uri(kind, layout.root))


def test_oci_manifest_claiming_schema_1_is_refused(layout, kind):
    layout.write_index([(layout.image([LAYER_A], schema_version=1), 'latest')])
    with pytest.raises(SourceError, match='not a schema 2 image manifest'):
        resolve(source_uri(kind, layout.root))


@pytest.mark.parametrize('media_type', [
    'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
    'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
    'application/vnd.oci.image.layer.v1.tar+gzip+encrypted',
])
def test_oci_layer_media_type_we_cannot_apply_is_refused_by_name(layout, kind, media_type):
    layout.write_index([(layout.image([LAYER_A], layer_media_type=media_type), 'latest')])
    with pytest.raises(SourceError) as caught:
        resolve(source_uri(kind, layout.root))
    assert media_type in str(caught.value)


@pytest.mark.parametrize('missing', ['oci-layout', 'index.json'])
def test_oci_layout_missing_its_marker_files_is_refused_clearly(layout, kind, missing):
    layout.write_index([(layout.image([LAYER_A]), 'latest')])
    os.unlink(os.path.join(layout.root, missing))
    with pytest.raises(SourceError, match='%s is missing' % missing):
        resolve(source_uri(kind, layout.root))


def test_oci_layout_without_layout_version_is_refused(layout, kind):
    layout.write_index([(layout.image([LAYER_A]), 'latest')])
    write_file(os.path.join(layout.root, 'oci-layout'), b'{}')
    with pytest.raises(SourceError, match='not an OCI image layout'):
        resolve(source_uri(kind, layout.root))


def test_oci_index_holding_only_artifacts_has_no_image(layout, kind):
    artifact = layout.json_blob({'schemaVersion': 2}, 'application/vnd.example.sbom.v1+json')
    layout.write_index([(artifact, 'latest')])
    with pytest.raises(SourceError, match='holds no image manifest'):
        resolve(source_uri(kind, layout.root))


@pytest.mark.parametrize('annotations', [None, [], {REF_NAME: None}, {'other': 'x'}])
def test_oci_entry_with_odd_annotations_counts_as_untagged(layout, kind, annotations):
    manifest = layout.image([LAYER_A])
    layout.write_index([(manifest, None)])
    index_path = os.path.join(layout.root, 'index.json')
    index = json.loads(open(index_path, 'rb').read())
    index['manifests'][0]['annotations'] = annotations
    write_file(index_path, json.dumps(index).encode())
    assert resolve(source_uri(kind, layout.root)).digest == manifest['digest']


def test_oci_nested_index_without_digest_is_a_source_error(layout, kind):
    layout.write_index([])
    write_file(os.path.join(layout.root, 'index.json'), json.dumps(
        {'schemaVersion': 2, 'manifests': [{'mediaType': MEDIA_OCI_INDEX, 'size': 10}]}).encode())
    with pytest.raises(SourceError, match='has no digest'):
        resolve(source_uri(kind, layout.root))


def write_raw_index(layout, entries):
    """index.json listing `entries` exactly as given, however broken."""
    layout.write_index([])
    write_file(os.path.join(layout.root, 'index.json'), json.dumps({'schemaVersion': 2, 'manifests': entries}).encode())


def listed(descriptor, **changes):
    """An index entry for `descriptor`, with `changes` (None removes a field)."""
    entry = {key: descriptor[key] for key in ('mediaType', 'digest', 'size')}
    entry.update(changes)
    return {key: value for key, value in entry.items() if value is not None}


@pytest.mark.parametrize('changes, message', [
    ({'digest': None}, r'index.json manifests\[0\] has no digest'),
    ({'digest': 'sha256:abc'}, r"manifests\[0\] has digest 'sha256:abc', not a valid sha256/sha512 digest"),
    ({'digest': 42}, r'manifests\[0\] has digest 42'),
    ({'size': None}, r'manifests\[0\] \(sha256:[0-9a-f]+\) has no size'),
    ({'size': '512'}, r"manifests\[0\] \(sha256:[0-9a-f]+\) has size '512', not a size in bytes"),
    ({'size': -1}, 'has size -1'),
    ({'size': True}, 'has size True'),
    ({'mediaType': ['x']}, r"has media type \['x'\], not a string"),
    ({'platform': 'linux/amd64'}, r"has platform 'linux/amd64', not an object"),
    ({'platform': {'architecture': 64}}, 'platform has architecture 64, not a string'),
])
def test_oci_malformed_index_entry_is_a_source_error_naming_it(layout, kind, changes, message):
    write_raw_index(layout, [listed(layout.image([LAYER_A]), **changes)])
    with pytest.raises(SourceError, match=message):
        resolve(source_uri(kind, layout.root))


def test_oci_index_entry_that_is_not_an_object_is_a_source_error(layout, kind):
    write_raw_index(layout, ['sha256:' + '0' * 64])
    with pytest.raises(SourceError, match=r'manifests\[0\] is not a descriptor'):
        resolve(source_uri(kind, layout.root))


def test_oci_malformed_entry_of_a_nested_index_is_a_source_error(layout, kind):
    manifest = layout.image([LAYER_A])
    nested = layout.json_blob({'schemaVersion': 2, 'mediaType': MEDIA_OCI_INDEX,
                               'manifests': [listed(manifest, platform='linux/amd64')]}, MEDIA_OCI_INDEX)
    layout.write_index([(nested, 'latest')])
    with pytest.raises(SourceError, match=r'index %s manifests\[0\] .* has platform' % nested['digest']):
        resolve(source_uri(kind, layout.root))


def test_oci_single_platform_image_for_another_platform_is_used_with_a_warning(layout, kind, monkeypatch):
    monkeypatch.setattr(platforms._host, 'machine', lambda: 'x86_64')
    layout.write_index([(layout.image([LAYER_ARM], platform='linux/arm64'), 'latest')])
    uri = source_uri(kind, layout.root)
    assert resolve(uri).warnings == [
        "%s: the image is for platform linux/arm64, not this host's (linux/amd64); it is used as no platform was "
        "asked for (set platform: linux/arm64 to say this is intended)" % uri.split(':', 1)[1]]
    assert resolve(uri, 'linux/arm64').warnings == []


def test_oci_image_for_the_host_platform_has_no_warning(layout, kind, multi_platform, monkeypatch):
    monkeypatch.setattr(platforms._host, 'machine', lambda: 'aarch64')
    assert resolve(source_uri(kind, layout.root)).warnings == []


def nested_index(layout, entries):
    """An index blob listing `entries` (index entries, as listed() makes them) exactly as given."""
    return layout.json_blob({'schemaVersion': 2, 'mediaType': MEDIA_OCI_INDEX, 'manifests': entries}, MEDIA_OCI_INDEX)


def test_oci_only_image_beside_an_artifact_is_taken_with_a_warning(layout, kind, monkeypatch):
    # A signature stored as an OCI 1.1 artifact (an image manifest with an artifactType) is not an image.
    monkeypatch.setattr(platforms._host, 'machine', lambda: 'x86_64')
    arm64 = layout.image([LAYER_ARM], platform='linux/arm64')
    signature = layout.image([LAYER_A], platform=None)
    index = nested_index(layout, [listed(arm64, platform=platform_fields('linux/arm64')),
                                  listed(signature, artifactType='application/vnd.dev.cosign.artifact.sig.v1+json')])
    layout.write_index([(index, 'latest')])
    image = resolve(source_uri(kind, layout.root))
    assert (image.digest, image.index_digest) == (arm64['digest'], index['digest'])
    assert len(image.warnings) == 1 and 'linux/arm64' in image.warnings[0]


def test_oci_nested_entries_take_the_platform_of_the_index_entry_above(layout, kind, monkeypatch):
    monkeypatch.setattr(platforms._host, 'machine', lambda: 'x86_64')
    amd64, arm64 = layout.image([LAYER_A], platform=None), layout.image([LAYER_ARM], platform=None)
    inner = {arch: nested_index(layout, [listed(manifest)])
             for arch, manifest in (('amd64', amd64), ('arm64', arm64))}
    write_raw_index(layout, [listed(inner['amd64'], platform=platform_fields('linux/amd64')),
                             listed(inner['arm64'], platform=platform_fields('linux/arm64'))])
    uri = source_uri(kind, layout.root)
    image = resolve(uri, 'linux/arm64')
    assert (image.digest, image.index_digest, image.platform) == (arm64['digest'], inner['arm64']['digest'],
                                                                  Platform('linux', 'arm64'))
    assert resolve(uri).digest == amd64['digest']


ATTESTATION = {'vnd.docker.reference.type': 'attestation-manifest'}


def test_oci_unknown_platform_attestation_beside_the_only_image_leaves_it_the_only_one(layout, kind, monkeypatch):
    # As `docker buildx build --output type=oci` writes a single-platform image with its provenance.
    monkeypatch.setattr(platforms._host, 'machine', lambda: 'x86_64')
    arm64, attestation = layout.image([LAYER_ARM], platform='linux/arm64'), layout.image([LAYER_A], platform=None)
    layout.write_index([(nested_index(layout, [listed(arm64, platform=platform_fields('linux/arm64')),
                                               listed(attestation, platform=platform_fields('unknown/unknown'))]),
                         'latest')])
    image = resolve(source_uri(kind, layout.root))
    assert image.digest == arm64['digest']
    assert len(image.warnings) == 1 and 'linux/arm64' in image.warnings[0]


def test_oci_attestation_annotated_for_the_platform_asked_for_is_not_chosen(layout, kind):
    # Listed first and for the very platform asked for: only its annotation says it is no image.
    arm64, amd64 = layout.image([LAYER_ARM], platform='linux/arm64'), layout.image([LAYER_A], platform='linux/amd64')
    attestation = layout.image([LAYER_B], platform='linux/arm64')
    layout.write_index([(nested_index(layout, [
        listed(attestation, platform=platform_fields('linux/arm64'), annotations=ATTESTATION),
        listed(amd64, platform=platform_fields('linux/amd64')),
        listed(arm64, platform=platform_fields('linux/arm64'))]), 'latest')])
    assert resolve(source_uri(kind, layout.root), 'linux/arm64').digest == arm64['digest']


@pytest.mark.parametrize('levels, message', [(3, None), (4, 'nests indexes more than 3 deep'),
                                             (2000, 'nests indexes more than 3 deep')])
def test_oci_indexes_nest_at_most_three_deep(layout, kind, levels, message):
    manifest = layout.image([LAYER_A])
    top = manifest
    for _level in range(levels):
        top = nested_index(layout, [listed(top)])
    layout.write_index([(top, 'latest')])
    if message is None:
        assert resolve(source_uri(kind, layout.root)).digest == manifest['digest']
    else:
        with pytest.raises(SourceError, match=message):
            resolve(source_uri(kind, layout.root))


def test_oci_schema1_manifest_in_a_nested_index_is_refused_with_the_hint(layout, kind):
    schema1 = layout.json_blob({'schemaVersion': 1, 'name': 'old', 'fsLayers': []},
                               'application/vnd.docker.distribution.manifest.v1+prettyjws')
    layout.write_index([(nested_index(layout, [listed(layout.image([LAYER_A]), platform=platform_fields(
        'linux/amd64')), listed(schema1, platform=platform_fields('linux/arm64'))]), 'latest')])
    with pytest.raises(SourceError, match='schema 1 manifests are not supported; convert the image with skopeo'):
        resolve(source_uri(kind, layout.root))


def set_config(value):
    return lambda manifest: manifest.update(config=value)


def first_layer(**changes):
    def edit(manifest):
        manifest['layers'][0] = {key: value for key, value in dict(manifest['layers'][0], **changes).items()
                                 if value is not None}
    return edit


@pytest.mark.parametrize('edit, message', [
    (lambda manifest: manifest.update(layers=['sha256:' + '0' * 64]), r'layers\[0\] is not a descriptor'),
    (lambda manifest: manifest.update(layers=[None]), r'layers\[0\] is not a descriptor'),
    (first_layer(digest=None), r'layers\[0\] has no digest'),
    (first_layer(size=None), r'layers\[0\] \(sha256:[0-9a-f]+\) has no size'),
    (first_layer(size=1.5), r'layers\[0\] \(sha256:[0-9a-f]+\) has size 1.5, not a size in bytes'),
    (lambda manifest: manifest.pop('config'), 'has no config'),
    (set_config('sha256:' + '0' * 64), 'config is not a descriptor'),
    (lambda manifest: manifest['config'].pop('digest'), 'config has no digest'),
    (lambda manifest: manifest['config'].update(size='1k'), "config .* has size '1k'"),
])
def test_oci_malformed_manifest_is_a_source_error_naming_the_part(layout, kind, edit, message):
    manifest = layout.image([LAYER_A], edit_manifest=edit)
    layout.write_index([(manifest, 'latest')])
    with pytest.raises(SourceError, match=message) as caught:
        resolve(source_uri(kind, layout.root))
    assert manifest['digest'] in str(caught.value)


def test_oci_config_naming_its_architecture_with_a_number_is_a_source_error(layout, kind):
    layout.write_index([(layout.image([LAYER_A], platform=None, edit_manifest=lambda manifest: manifest.update(
        config=layout.json_blob({'architecture': 64, 'rootfs': {}}, 'application/vnd.oci.image.config.v1+json'))),
        'latest')])
    with pytest.raises(SourceError, match='config .* has architecture 64, not a string'):
        resolve(source_uri(kind, layout.root))


def test_oci_directory_source_that_is_a_file_suggests_oci_archive(layout, tmp_path):
    layout.write_index([(layout.image([LAYER_A]), 'latest')])
    archive = tar_directory(layout.root, str(tmp_path / 'layout.tar'))
    with pytest.raises(SourceError, match='oci-archive'):
        resolve('oci:' + archive)


@pytest.mark.parametrize('scheme', ['oci', 'oci-archive', 'docker-archive'])
def test_archive_source_that_does_not_exist_is_refused(tmp_path, scheme):
    with pytest.raises(SourceError, match='does not exist'):
        resolve('%s:%s' % (scheme, tmp_path / 'missing'))


@pytest.mark.parametrize('scheme', ['oci-archive', 'docker-archive'])
def test_archive_that_is_not_a_tar_is_refused(tmp_path, scheme):
    path = write_file(str(tmp_path / 'junk.tar'), b'not a tar archive\n' * 100)
    with pytest.raises(SourceError, match='not a readable tar archive'):
        resolve('%s:%s' % (scheme, path))


# -- docker-archive ----------------------------------------------------------------------------------------------


@pytest.fixture
def two_images(tmp_path):
    path = make_docker_archive(str(tmp_path / 'images.tar'), [
        DockerImage(['app:1.0', 'app:latest'], [LAYER_A]),
        DockerImage(['docker.io/library/tool:2'], [LAYER_A, LAYER_B], platform='linux/arm64'),
    ])
    return path


def test_docker_archive_single_image_needs_no_reference(tmp_path):
    path = make_docker_archive(str(tmp_path / 'app.tar'), [DockerImage(['app:1.0'], [LAYER_A, LAYER_B])])
    image = resolve('docker-archive:' + path)
    assert [layer.diff_id for layer in image.layers] == [sha256(LAYER_A), sha256(LAYER_B)]
    assert [read_blob(layer) for layer in image.layers] == [LAYER_A, LAYER_B]
    assert image.layers[0].describe()['digest'] == sha256(LAYER_A)
    assert image.layers[0].size == len(LAYER_A)
    assert image.platform == Platform('linux', 'amd64')
    assert image.config['rootfs']['diff_ids'] == [sha256(LAYER_A), sha256(LAYER_B)]


def test_docker_archive_digest_is_the_config_digest(tmp_path):
    path = make_docker_archive(str(tmp_path / 'app.tar'), [DockerImage(['app:1.0'], [LAYER_A])])
    image = resolve('docker-archive:' + path)
    assert image.digest == sha256(json.dumps(image.config, sort_keys=True).encode('utf-8'))


def test_docker_archive_several_images_need_a_reference(two_images):
    with pytest.raises(SourceError, match=r'holds 2 images \(@0 \(app:1.0, app:latest\), '
                                          r'@1 \(docker.io/library/tool:2\)\); name one as .*:NAME:TAG or :@N'):
        resolve('docker-archive:' + two_images)


@pytest.mark.parametrize('reference, layer_count', [
    ('app:1.0', 1),
    ('app', 1),          # name alone means :latest
    ('tool:2', 2),       # docker.io/library/ is implied
    ('docker.io/library/tool:2', 2),
    ('@0', 1),
    ('@1', 2),
])
def test_docker_archive_picks_the_image_by_reference(two_images, reference, layer_count):
    image = resolve('docker-archive:%s:%s' % (two_images, reference))
    assert len(image.layers) == layer_count


@pytest.mark.parametrize('reference, message', [
    ('app:2.0', r"no image named 'app:2.0'; it holds: @0 \(app:1.0, app:latest\)"),
    ('tool', "no image named 'tool'"),  # only tool:2 exists, not tool:latest
    ('@2', 'no image number 2 \\(it holds 2\\)'),
    ('@x', 'no image number x'),
    ('@-1', 'no image number -1'),
])
def test_docker_archive_unknown_reference_lists_the_images(two_images, reference, message):
    with pytest.raises(SourceError, match=message):
        resolve('docker-archive:%s:%s' % (two_images, reference))


def test_docker_archive_platform_must_match_when_asked(two_images):
    assert resolve('docker-archive:%s:tool:2' % two_images, 'linux/arm64').platform == Platform('linux', 'arm64')
    with pytest.raises(PlatformError, match='available: linux/arm64'):
        resolve('docker-archive:%s:tool:2' % two_images, 'linux/amd64')


def test_docker_archive_image_for_another_platform_is_used_with_a_warning(two_images, monkeypatch):
    monkeypatch.setattr(platforms._host, 'machine', lambda: 'x86_64')
    assert resolve('docker-archive:%s:tool:2' % two_images).warnings == [
        "%s: the image is for platform linux/arm64, not this host's (linux/amd64); it is used as no platform was "
        "asked for (set platform: linux/arm64 to say this is intended)" % two_images]
    assert resolve('docker-archive:%s:app:1.0' % two_images).warnings == []


def test_docker_archive_without_manifest_is_not_a_docker_archive(tmp_path):
    path = make_docker_archive(str(tmp_path / 'app.tar'), [DockerImage(['app:1.0'], [LAYER_A])], with_manifest=False)
    with pytest.raises(SourceError, match='not a docker-archive'):
        resolve('docker-archive:' + path)


def test_docker_archive_layer_count_must_match_the_config(tmp_path):
    path = make_docker_archive(str(tmp_path / 'app.tar'),
                               [DockerImage(['app:1.0'], [LAYER_A, LAYER_B], diff_ids=[sha256(LAYER_A)])])
    with pytest.raises(SourceError, match='lists 2 layers but its config names 1'):
        resolve('docker-archive:' + path)


def test_docker_archive_layers_stay_readable_after_the_source_is_closed(tmp_path):
    path = make_docker_archive(str(tmp_path / 'app.tar'), [DockerImage(['app:1.0'], [LAYER_A, LAYER_B])])
    image = resolve('docker-archive:' + path)
    assert [read_blob(layer) for layer in image.layers] == [LAYER_A, LAYER_B]


def test_docker_archive_compressed_with_gzip_is_read(tmp_path):
    # `docker save | gzip` output, which `docker load` accepts too.
    plain = make_docker_archive(str(tmp_path / 'app.tar'), [DockerImage(['app:1.0'], [LAYER_A, LAYER_B])])
    path = write_file(str(tmp_path / 'app.tar.gz'), compress(open(plain, 'rb').read(), 'gzip'))
    image = resolve('docker-archive:%s:app:1.0' % path)
    assert [read_blob(layer) for layer in image.layers] == [LAYER_A, LAYER_B]


@pytest.mark.parametrize('edit_entry, edit_config, message', [
    (None, lambda config: config.update(rootfs='x'), 'has no rootfs.diff_ids list'),
    (None, lambda config: config.update(rootfs={'diff_ids': 'x'}), 'has no rootfs.diff_ids list'),
    (None, lambda config: config.pop('rootfs'), 'has no rootfs.diff_ids list'),
    (None, lambda config: config.update(rootfs={'diff_ids': [7]}), 'has diff_id 7, not a valid'),
    (None, lambda config: config.update(architecture=['amd64']), r"has architecture \['amd64'\], not a string"),
    (lambda entry: entry.update(Config=5), None, r'image @0 has Config 5, not the path of its config'),
    (lambda entry: entry.update(Layers='layer.tar'), None, r"image @0 has Layers 'layer.tar', not a list"),
    (lambda entry: entry.update(Layers=[{}]), None, r'image @0 has Layers \[\{\}\], not a list of strings'),
    (lambda entry: entry.update(RepoTags=[1]), None, r'image @0 has RepoTags \[1\], not a list of strings'),
    (lambda entry: entry.update(Layers=['nowhere/layer.tar']), None, 'nowhere/layer.tar is missing from the archive'),
])
def test_docker_archive_malformed_metadata_is_a_source_error(tmp_path, edit_entry, edit_config, message):
    path = make_docker_archive(str(tmp_path / 'app.tar'), [DockerImage(['app:1.0'], [LAYER_A])],
                               edit_entry=edit_entry, edit_config=edit_config)
    with pytest.raises(SourceError, match=message) as caught:
        resolve('docker-archive:' + path)
    assert path in str(caught.value)


def test_docker_archive_entry_that_is_not_an_object_is_a_source_error(tmp_path):
    path = str(tmp_path / 'app.tar')
    with tarfile.open(path, 'w') as archive:
        info = tarfile.TarInfo('manifest.json')
        info.size = len(b'["app.tar"]')
        archive.addfile(info, io.BytesIO(b'["app.tar"]'))
    with pytest.raises(SourceError, match=r'manifest.json image @0 is not a JSON object'):
        resolve('docker-archive:' + path)


# -- secrets in source URIs --------------------------------------------------------------------------------------


@pytest.mark.parametrize('uri, message', [
    ('https://alice:s3cret@host/x', "unsupported source 'https://host/x'"),
    ('https://alice:s3/cr@et@host/x', "unsupported source 'https://host/x'"),
    ('alice:s3cret@registry.example/app', "unsupported source 'alice:registry.example/app'"),
    ('file://alice:s3cret@otherhost/srv/rootfs.tar', "names host 'otherhost'"),
    ('oci-archive://alice:s3cret@host/images/app.tar', 'names a host; only local paths'),
    ('oci://alice:s3cret@host/layout:latest', 'names a host; only local paths'),
])
def test_source_errors_never_repeat_the_password_of_a_url(uri, message):
    with pytest.raises(SourceError, match=message) as caught:
        parse_source(uri)
    assert 's3cret' not in str(caught.value) and 'et@host' not in str(caught.value)
