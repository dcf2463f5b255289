# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""docker:// references, read the way docker and skopeo read them."""

from __future__ import annotations

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.reference import ImageReference, parse_reference
from ansible_collections.virt.bootstrap.plugins.module_utils._sources import SourceRef, parse_source

DIGEST = 'sha256:' + '0123456789abcdef' * 4


@pytest.mark.parametrize('text, registry, repository, tag, digest', [
    ('ubuntu', 'docker.io', 'library/ubuntu', 'latest', None),
    ('//ubuntu', 'docker.io', 'library/ubuntu', 'latest', None),
    ('ubuntu:24.04', 'docker.io', 'library/ubuntu', '24.04', None),
    ('library/ubuntu', 'docker.io', 'library/ubuntu', 'latest', None),
    ('docker.io/fedora', 'docker.io', 'library/fedora', 'latest', None),
    ('index.docker.io/library/debian:12', 'docker.io', 'library/debian', '12', None),
    ('registry-1.docker.io/user/app', 'docker.io', 'user/app', 'latest', None),
    ('someuser/app:v1', 'docker.io', 'someuser/app', 'v1', None),
    ('registry.example:5000/team/app:1.2', 'registry.example:5000', 'team/app', '1.2', None),
    ('127.0.0.1:5000/app', '127.0.0.1:5000', 'app', 'latest', None),
    ('localhost/app', 'localhost', 'app', 'latest', None),
    ('localhost:5000/app:dev', 'localhost:5000', 'app', 'dev', None),
    ('[::1]:5000/app:1', '[::1]:5000', 'app', '1', None),
    ('ghcr.io/org/group/sub/app:x', 'ghcr.io', 'org/group/sub/app', 'x', None),
    ('quay.io/org/app@' + DIGEST, 'quay.io', 'org/app', None, DIGEST),
    ('quay.io/org/app:v1@' + DIGEST, 'quay.io', 'org/app', 'v1', DIGEST),
    ('ubuntu@' + DIGEST, 'docker.io', 'library/ubuntu', None, DIGEST),
    ('app:sha-1234abc', 'docker.io', 'library/app', 'sha-1234abc', None),
    ('my_app.v2-x:Tag_1.0-rc', 'docker.io', 'library/my_app.v2-x', 'Tag_1.0-rc', None),
])
def test_references_parse_as_docker_reads_them(text, registry, repository, tag, digest):
    assert parse_reference(text) == ImageReference(registry, repository, tag, digest)


@pytest.mark.parametrize('text, message', [
    ('', 'needs an image name'),
    ('//', 'needs an image name'),
    ('Ubuntu', 'malformed repository'),
    ('team//app', 'malformed repository'),
    ('app-', 'malformed repository'),
    ('registry.example:5000/', 'malformed repository'),
    ('app:', 'malformed tag'),
    ('app:-leading-dash', 'malformed tag'),
    ('app:' + 'x' * 129, 'malformed tag'),
    ('app@sha256:abc', "malformed digest 'sha256:abc'"),
    ('app@md5:' + '0' * 32, 'malformed digest'),
    ('app@' + DIGEST.upper(), 'malformed digest'),
    ('registry.example:port/app', 'malformed registry'),
    ('bad_host.example/app', 'malformed registry'),
])
def test_malformed_references_are_refused_by_what_is_wrong(text, message):
    with pytest.raises(SourceError, match=message):
        parse_reference(text)


@pytest.mark.parametrize('text', [
    '//deploy:Hunter2x@registry.example/team/app:1',
    '//deploy:Hunter2x@registry.example:5000',
    '//deploy:Hunter2x@registry.example:5000/app',
    '//deploy:Hunter2x@10.0.0.1:5000/app',
    '//deploy:Hun/ter2x@registry.example/app',
    '//deploy:Hun@ter2x@registry.example:5000',
    '//Hunter2x@registry.example/app',
    'deploy:Hunter2x@registry.example/app',
])
def test_credentials_written_into_a_reference_are_refused_without_repeating_them(text):
    with pytest.raises(SourceError) as caught:
        parse_reference(text)
    assert 'Hun' not in str(caught.value) and 'ter2x' not in str(caught.value)
    assert 'username and password' in str(caught.value)


@pytest.mark.parametrize('uri', ['docker://alice:s3cret@registry.example:5000',
                                 'docker://alice:s3cret@registry.example:5000/app',
                                 'docker://alice:s3cret@localhost:5000'])
def test_a_docker_source_with_credentials_fails_without_repeating_them(uri):
    with pytest.raises(SourceError) as caught:
        parse_source(uri)
    assert 's3cret' not in str(caught.value)


@pytest.mark.parametrize('text, expected', [
    ('ubuntu', 'docker.io/library/ubuntu:latest'),
    ('registry.example:5000/team/app:1.2', 'registry.example:5000/team/app:1.2'),
    ('quay.io/org/app:v1@' + DIGEST, 'quay.io/org/app:v1@' + DIGEST),
    ('quay.io/org/app@' + DIGEST, 'quay.io/org/app@' + DIGEST),
])
def test_a_reference_prints_in_full_and_parses_back_to_itself(text, expected):
    reference = parse_reference(text)
    assert str(reference) == expected
    assert parse_reference(str(reference)) == reference


@pytest.mark.parametrize('text, api_host, manifest_reference', [
    ('ubuntu', 'registry-1.docker.io', 'latest'),
    ('docker.io/library/ubuntu:22.04', 'registry-1.docker.io', '22.04'),
    ('registry.example:5000/app:1', 'registry.example:5000', '1'),
    # A digest wins over a tag: the tag is only a label once the content is pinned.
    ('registry.example/app:1@' + DIGEST, 'registry.example', DIGEST),
])
def test_requests_go_to_the_api_host_for_the_tag_or_the_pinned_digest(text, api_host, manifest_reference):
    reference = parse_reference(text)
    assert reference.api_host == api_host
    assert reference.manifest_reference == manifest_reference


@pytest.mark.parametrize('uri, reference', [
    ('docker://ubuntu', 'docker.io/library/ubuntu:latest'),
    ('docker://docker.io/fedora', 'docker.io/library/fedora:latest'),
    ('docker://registry.example:5000/team/app:1.2', 'registry.example:5000/team/app:1.2'),
    ('docker:alpine:3', 'docker.io/library/alpine:3'),
])
def test_docker_sources_carry_the_normalised_reference(uri, reference):
    assert parse_source(uri) == SourceRef('docker', '', reference)
    assert str(parse_source(uri)) == 'docker://' + reference


def test_a_bad_docker_source_fails_while_parsing():
    with pytest.raises(SourceError, match='malformed tag'):
        parse_source('docker://app:bad tag')
