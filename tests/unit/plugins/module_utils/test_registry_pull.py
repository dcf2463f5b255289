# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""docker:// sources against real registries: Debian's docker-registry over HTTP, TLS + basic auth, and tokens."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import _platforms as platforms
from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, Result, run
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import PlatformError, SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.auth import AuthError
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.client import RegistryError
from ansible_collections.virt.bootstrap.plugins.module_utils._sources.registry import RegistryOptions
from ansible_collections.virt.bootstrap.tests.registry.fault_proxy import FaultProxy
from ansible_collections.virt.bootstrap.tests.registry.registry import DENIED_REPOSITORY, free_port, write_auth_file
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.registry_support import (
    BASE_TREE,
    rootfs_tree,
)

OCI_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip'
OCI_ZSTD = 'application/vnd.oci.image.layer.v1.tar+zstd'
DOCKER_GZIP = 'application/vnd.docker.image.rootfs.diff.tar.gzip'


def pull(tmp_path, src: str, platform=None, **registry_options) -> Result:
    """Run the engine once for `src` into tmp_path/rootfs, with a cache in tmp_path/cache."""
    registry_options.setdefault('cache_dir', str(tmp_path / 'cache'))
    request = Request(src=src, dest=str(tmp_path / 'rootfs'), platform=platform,
                      registry=RegistryOptions(**registry_options))
    return run(request)


def write_identity_token_file(path: str, host: str, token: str) -> str:
    """A docker config.json whose entry for `host` holds only an identitytoken (an OAuth2 refresh token)."""
    with open(path, 'w', encoding='utf-8') as stream:
        json.dump({'auths': {host: {'identitytoken': token}}}, stream)
    return path


def fails(tmp_path, error, src, **registry_options) -> str:
    """The message of the error a pull fails with; dest must not have been made."""
    with pytest.raises(error) as caught:
        pull(tmp_path, src, **registry_options)
    assert not os.path.lexists(tmp_path / 'rootfs')
    return str(caught.value)


# -- plain HTTP -----------------------------------------------------------------------------------------------------

def test_anonymous_pull_over_plain_http_with_not_secure(tmp_path, http_registry):
    result = pull(tmp_path, http_registry.ref('app:base'), not_secure=True)
    assert result.changed
    assert result.digest == http_registry.digests['app:base']
    assert result.index_digest is None
    assert result.platform == 'linux/amd64'
    assert result.credentials_from is None
    assert [layer['media_type'] for layer in result.layers] == [OCI_GZIP] * 3
    assert rootfs_tree(str(tmp_path / 'rootfs')) == BASE_TREE


def test_plain_http_without_not_secure_fails_with_a_hint(tmp_path, http_registry):
    message = fails(tmp_path, RegistryError, http_registry.ref('app:base'))
    assert 'TLS with %s failed' % http_registry.registry.host in message
    assert 'not_secure' in message


def test_a_docker_schema2_manifest(tmp_path, http_registry):
    result = pull(tmp_path, http_registry.ref('app:v2s2'), not_secure=True)
    assert result.digest == http_registry.digests['app:v2s2'] != http_registry.digests['app:base']
    assert [layer['media_type'] for layer in result.layers] == [DOCKER_GZIP] * 3
    assert rootfs_tree(str(tmp_path / 'rootfs')) == BASE_TREE


def test_zstd_layers(tmp_path, http_registry):
    result = pull(tmp_path, http_registry.ref('app:zstd'), not_secure=True)
    assert result.digest == http_registry.digests['app:zstd']
    assert [layer['media_type'] for layer in result.layers] == [OCI_ZSTD] * 2
    assert rootfs_tree(str(tmp_path / 'rootfs')) == {key: value for key, value in BASE_TREE.items()
                                                     if not key.startswith('var')}


def test_a_tag_that_starts_with_sha_is_a_tag(tmp_path, http_registry):
    result = pull(tmp_path, http_registry.ref('app:shadow'), not_secure=True)
    assert result.digest == http_registry.digests['app:shadow'] == http_registry.digests['app:base']


@pytest.mark.parametrize('form', ['app@{digest}', 'app:base@{digest}', 'app:other@{digest}'])
def test_a_pinned_digest_is_pulled_whatever_the_tag_says(tmp_path, http_registry, form):
    digest = http_registry.digests['app:base']
    result = pull(tmp_path, http_registry.ref(form.format(digest=digest)), not_secure=True)
    assert result.digest == digest
    assert rootfs_tree(str(tmp_path / 'rootfs')) == BASE_TREE


@pytest.mark.parametrize('name, message', [
    ('nothere:latest', 'has no image nothere:latest'),  # distribution 2.8 says MANIFEST_UNKNOWN, not NAME_UNKNOWN
    ('app:nosuchtag', 'has no image app:nosuchtag'),
    ('app@sha256:' + 'f' * 64, 'has no image app@sha256:' + 'f' * 64),
])
def test_unknown_images_and_tags_are_named(tmp_path, http_registry, name, message):
    assert message in fails(tmp_path, RegistryError, http_registry.ref(name), not_secure=True)


def test_an_unreachable_registry_is_named(tmp_path):
    host = '127.0.0.1:%d' % free_port()  # nothing listens there
    message = fails(tmp_path, RegistryError, 'docker://%s/app:1' % host, not_secure=True)
    assert message == '%s is unreachable: Connection refused' % host


# -- platforms ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('platform, arch, expected_platform', [
    ('linux/arm64', 'arm64', 'linux/arm64/v8'),
    ('linux/arm64/v8', 'arm64', 'linux/arm64/v8'),
    ('linux/amd64', 'amd64', 'linux/amd64'),
])
def test_a_platform_is_picked_from_an_index(tmp_path, http_registry, platform, arch, expected_platform):
    result = pull(tmp_path, http_registry.ref('app:multi'), platform=platform, not_secure=True)
    assert result.index_digest == http_registry.digests['app:multi']
    assert result.digest != result.index_digest
    assert result.platform == expected_platform
    assert (tmp_path / 'rootfs' / 'etc' / 'arch').read_text() == arch + '\n'


@pytest.mark.parametrize('platform, arch', [('linux/arm64', 'arm64'), ('linux/amd64', 'amd64')])
def test_an_index_inside_an_index_is_resolved_recording_the_top_index(tmp_path, http_registry, platform, arch):
    result = pull(tmp_path, http_registry.ref('app:nested'), platform=platform, not_secure=True)
    assert result.index_digest == http_registry.digests['app:nested'] != http_registry.digests['app:multi']
    # The same image as through the inner index alone.
    assert result.digest == pull(tmp_path / 'inner', http_registry.ref('app:multi'), platform=platform,
                                 not_secure=True).digest
    assert (tmp_path / 'rootfs' / 'etc' / 'arch').read_text() == arch + '\n'


def test_the_host_platform_is_the_default(tmp_path, http_registry):
    host = platforms.host_platform()
    if host.architecture not in ('amd64', 'arm64'):
        assert 'available: linux/amd64, linux/arm64/v8' in fails(
            tmp_path, PlatformError, http_registry.ref('app:multi'), not_secure=True)
        return
    result = pull(tmp_path, http_registry.ref('app:multi'), not_secure=True)
    assert result.platform == ('linux/amd64' if host.architecture == 'amd64' else 'linux/arm64/v8')
    assert (tmp_path / 'rootfs' / 'etc' / 'arch').read_text() == host.architecture + '\n'


def test_a_missing_platform_lists_those_there_are(tmp_path, http_registry):
    with pytest.raises(PlatformError) as caught:
        pull(tmp_path, http_registry.ref('app:multi'), platform='linux/s390x', not_secure=True)
    assert str(caught.value).endswith('has no image for platform linux/s390x; available: linux/amd64, linux/arm64/v8')
    assert not os.path.lexists(tmp_path / 'rootfs')


def test_a_single_platform_image_must_match_a_requested_platform(tmp_path, http_registry):
    with pytest.raises(PlatformError, match='available: linux/amd64'):
        pull(tmp_path, http_registry.ref('app:base'), platform='linux/arm64', not_secure=True)


def test_an_unchanged_rerun_asking_for_another_platform_is_checked_again(tmp_path, http_registry):
    # The one-request shortcut for unchanged reruns must not skip the platform check.
    first = pull(tmp_path, http_registry.ref('app:base'), not_secure=True)
    assert first.platform == 'linux/amd64'
    with pytest.raises(PlatformError, match='available: linux/amd64'):
        pull(tmp_path, http_registry.ref('app:base'), platform='linux/arm64', not_secure=True)
    assert pull(tmp_path, http_registry.ref('app:base'), platform='linux/amd64', not_secure=True).changed is False


# -- TLS and basic auth ---------------------------------------------------------------------------------------------

def test_tls_with_a_ca_path_and_basic_auth(tmp_path, tls_registry):
    registry = tls_registry.registry
    result = pull(tmp_path, tls_registry.ref('app:base'), ca_path=registry.ca_path, username=registry.username,
                  password=registry.password)
    assert result.digest == tls_registry.digests['app:base']
    assert result.credentials_from == 'the username/password options'
    assert rootfs_tree(str(tmp_path / 'rootfs')) == BASE_TREE


def test_tls_verification_failure_hints_at_ca_path_and_not_secure(tmp_path, tls_registry):
    registry = tls_registry.registry
    message = fails(tmp_path, RegistryError, tls_registry.ref('app:base'), username=registry.username,
                    password=registry.password)
    assert message.startswith('TLS verification of %s failed: ' % registry.host)
    assert 'ca_path' in message and 'not_secure' in message


def test_not_secure_skips_tls_verification(tmp_path, tls_registry):
    registry = tls_registry.registry
    result = pull(tmp_path, tls_registry.ref('app:base'), not_secure=True, username=registry.username,
                  password=registry.password)
    assert result.digest == tls_registry.digests['app:base']


def test_a_ca_path_that_holds_no_certificate_is_named(tmp_path, tls_registry):
    (tmp_path / 'empty.pem').write_text('not a certificate\n')
    message = fails(tmp_path, RegistryError, tls_registry.ref('app:base'), ca_path=str(tmp_path / 'empty.pem'))
    assert message.startswith('ca_path %s cannot be used' % (tmp_path / 'empty.pem'))


def test_basic_auth_without_credentials_asks_for_them(tmp_path, tls_registry, auth_home):
    message = fails(tmp_path, AuthError, tls_registry.ref('app:base'), ca_path=tls_registry.registry.ca_path)
    assert message == '%s requires a login for app: give username and password, or an auth file' % (
        tls_registry.registry.host)


def test_basic_auth_with_a_wrong_password_names_where_it_came_from(tmp_path, tls_registry):
    registry = tls_registry.registry
    wrong = 'Wrong-' + registry.password
    message = fails(tmp_path, AuthError, tls_registry.ref('app:base'), ca_path=registry.ca_path,
                    username=registry.username, password=wrong)
    assert message == '%s refused the credentials from the username/password options for app' % registry.host
    assert wrong not in message and registry.password not in message


def test_basic_auth_with_a_wrong_auth_file_entry_names_the_file(tmp_path, tls_registry):
    registry = tls_registry.registry
    wrong = 'Wrong-' + registry.password
    auth_file = write_auth_file(str(tmp_path / 'auth.json'), registry.host, registry.username, wrong)
    message = fails(tmp_path, AuthError, tls_registry.ref('app:base'), ca_path=registry.ca_path,
                    auth_file=auth_file)
    assert message == '%s refused the credentials from %s for app' % (registry.host, auth_file)
    assert wrong not in message


def test_credentials_from_an_auth_file_are_reported_by_path(tmp_path, tls_registry):
    registry = tls_registry.registry
    result = pull(tmp_path, tls_registry.ref('app:base'), ca_path=registry.ca_path, auth_file=registry.auth_file)
    assert result.credentials_from == registry.auth_file
    assert result.digest == tls_registry.digests['app:base']


@pytest.mark.parametrize('rule', ['XDG_RUNTIME_DIR', 'per-uid', 'XDG_CONFIG_HOME', 'DOCKER_CONFIG', 'HOME',
                                  'REGISTRY_AUTH_FILE'])
def test_credentials_from_each_auth_file_podman_reads_are_reported_by_path(
        tmp_path, tls_registry, monkeypatch, auth_home, per_uid_auth_file, rule):
    registry = tls_registry.registry
    places = {
        'XDG_RUNTIME_DIR': ('XDG_RUNTIME_DIR', tmp_path / 'run', tmp_path / 'run' / 'containers' / 'auth.json'),
        'per-uid': (None, None, per_uid_auth_file),
        'XDG_CONFIG_HOME': ('XDG_CONFIG_HOME', tmp_path / 'xdg', tmp_path / 'xdg' / 'containers' / 'auth.json'),
        'DOCKER_CONFIG': ('DOCKER_CONFIG', tmp_path / 'docker', tmp_path / 'docker' / 'config.json'),
        'HOME': (None, None, auth_home / '.docker' / 'config.json'),
        'REGISTRY_AUTH_FILE': ('REGISTRY_AUTH_FILE', tmp_path / 'named.json', tmp_path / 'named.json'),
    }
    variable, value, path = places[rule]
    if variable:
        monkeypatch.setenv(variable, str(value))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_auth_file(str(path), registry.host, registry.username, registry.password)
    result = pull(tmp_path, tls_registry.ref('app:base'), ca_path=registry.ca_path)
    assert result.credentials_from == str(path)
    assert result.digest == tls_registry.digests['app:base']


def test_same_origin_redirects_keep_the_credentials(tmp_path, tls_registry):
    """A registry that moves a path on its own host (same scheme, host and port) still gets the login."""
    registry = tls_registry.registry
    with FaultProxy(registry.url) as proxy:
        proxy.redirect('/blobs/', proxy.moved_prefix)
        result = pull(tmp_path, 'docker://%s/app:base' % proxy.host, not_secure=True, username=registry.username,
                      password=registry.password)
        moved = proxy.seen(None, '/moved/')
    assert result.digest == tls_registry.digests['app:base']
    assert rootfs_tree(str(tmp_path / 'rootfs')) == BASE_TREE
    assert len(moved) == 4  # the config and three layers
    assert [(seen.status, seen.authorization) for seen in moved] == [(200, True)] * 4


def test_redirects_to_another_origin_get_no_credentials(tmp_path, tls_registry, http_registry):
    """Blobs sent to storage elsewhere (here: the same blobs in another, anonymous registry) go without the login."""
    registry = tls_registry.registry
    with FaultProxy(registry.url) as front, FaultProxy(http_registry.registry.url) as storage:
        # localhost is another host name than 127.0.0.1, so another origin, though the same machine.
        front.redirect('/blobs/', 'http://localhost:%d' % storage.port)
        result = pull(tmp_path, 'docker://%s/app:base' % front.host, not_secure=True, username=registry.username,
                      password=registry.password)
        redirected, stored = front.seen(None, '/blobs/'), storage.seen(None, '/blobs/')
    assert result.digest == tls_registry.digests['app:base']
    assert [(seen.status, seen.authorization) for seen in redirected] == [(307, True)] * 4
    assert [(seen.status, seen.authorization) for seen in stored] == [(200, False)] * 4


# -- bearer tokens --------------------------------------------------------------------------------------------------

def test_the_bearer_token_flow(tmp_path, token_registry):
    registry = token_registry.registry
    before = len(registry.token_requests())
    result = pull(tmp_path, token_registry.ref('app:base'), ca_path=registry.ca_path, username=registry.username,
                  password=registry.password)
    assert result.digest == token_registry.digests['app:base']
    assert rootfs_tree(str(tmp_path / 'rootfs')) == BASE_TREE
    # One token, for pulling this repository, serves the manifest, the config and every layer.
    assert registry.token_requests()[before:] == [
        {'method': 'GET', 'path': '/token', 'scope': ['repository:app:pull'], 'user': registry.username,
         'status': 200}]


def test_an_identity_token_is_exchanged_at_the_realm_for_a_bearer_token(tmp_path, token_registry):
    registry = token_registry.registry
    auth_file = write_identity_token_file(str(tmp_path / 'config.json'), registry.host, registry.refresh_token)
    before = len(registry.token_requests())
    result = pull(tmp_path, token_registry.ref('app:base'), ca_path=registry.ca_path, auth_file=auth_file)
    assert result.digest == token_registry.digests['app:base']
    assert result.credentials_from == auth_file
    assert rootfs_tree(str(tmp_path / 'rootfs')) == BASE_TREE
    # An OAuth2 refresh_token grant, POSTed as a form, as docker and containers/image do.
    assert registry.token_requests()[before:] == [
        {'method': 'POST', 'path': '/token', 'grant_type': 'refresh_token', 'scope': ['repository:app:pull'],
         'user': registry.username, 'status': 200}]


def test_a_refused_identity_token_names_the_file_not_the_token(tmp_path, token_registry):
    registry = token_registry.registry
    wrong = 'Wrong-' + registry.refresh_token
    auth_file = write_identity_token_file(str(tmp_path / 'config.json'), registry.host, wrong)
    message = fails(tmp_path, AuthError, token_registry.ref('app:base'), ca_path=registry.ca_path,
                    auth_file=auth_file)
    assert message == '%s refused the credentials from %s for app' % (registry.host, auth_file)
    assert registry.token_requests()[-1]['status'] == 400


def test_an_identity_token_is_no_use_to_a_registry_asking_for_basic_auth(tmp_path, tls_registry):
    registry = tls_registry.registry
    auth_file = write_identity_token_file(str(tmp_path / 'config.json'), registry.host, 'some-refresh-token')
    message = fails(tmp_path, AuthError, tls_registry.ref('app:base'), ca_path=registry.ca_path, auth_file=auth_file)
    assert message == ('%s asks for a user name and password, but %s holds only an identity token for it, which '
                       'only a token service takes' % (registry.host, auth_file))


def test_the_token_service_refusing_the_credentials(tmp_path, token_registry):
    registry = token_registry.registry
    wrong = 'Wrong-' + registry.password
    message = fails(tmp_path, AuthError, token_registry.ref('app:base'), ca_path=registry.ca_path,
                    username=registry.username, password=wrong)
    assert message == '%s refused the credentials from the username/password options for app' % registry.host
    assert registry.token_requests()[-1]['status'] == 401


def test_an_anonymous_token_without_access(tmp_path, token_registry, auth_home):
    message = fails(tmp_path, AuthError, token_registry.ref('app:base'), ca_path=token_registry.registry.ca_path)
    assert message.startswith('%s refused anonymous access to app: it needs a login' % token_registry.registry.host)


def test_a_token_that_does_not_grant_the_repository(tmp_path, token_registry):
    registry = token_registry.registry
    message = fails(tmp_path, AuthError, token_registry.ref(DENIED_REPOSITORY + ':1'), ca_path=registry.ca_path,
                    username=registry.username, password=registry.password)
    assert message.startswith('%s denied the credentials from the username/password options access to %s'
                              % (registry.host, DENIED_REPOSITORY))


def test_the_token_service_is_verified_with_the_ca_path_too(tmp_path, token_registry):
    """Without ca_path the registry fails first; with not_secure both the registry and the token service pass."""
    registry = token_registry.registry
    result = pull(tmp_path, token_registry.ref('app:base'), not_secure=True, username=registry.username,
                  password=registry.password)
    assert result.digest == token_registry.digests['app:base']


def test_the_password_needs_a_username_and_the_reverse(tmp_path, http_registry):
    with pytest.raises(SourceError, match='username is set but password is not'):
        pull(tmp_path, http_registry.ref('app:base'), username='someone', not_secure=True)
    with pytest.raises(SourceError, match='password is set but username is not'):
        pull(tmp_path, http_registry.ref('app:base'), password='secret', not_secure=True)


def test_the_state_record_names_the_image_not_the_login(tmp_path, tls_registry):
    registry = tls_registry.registry
    pull(tmp_path, tls_registry.ref('app:base'), ca_path=registry.ca_path, username=registry.username,
         password=registry.password)
    with open(tmp_path / '.rootfs.virt-bootstrap' / 'state.json', encoding='utf-8') as stream:
        record = json.load(stream)
    assert record['source'] == tls_registry.ref('app:base')
    assert record['digest'] == tls_registry.digests['app:base']
