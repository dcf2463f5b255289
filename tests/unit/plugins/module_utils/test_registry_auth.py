# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Registry credentials from auth files and credential helpers, and WWW-Authenticate challenges."""

from __future__ import annotations

import base64
import io
import json
import os
import textwrap
import urllib.error

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils._registry.auth import (
    AuthError,
    Credentials,
    default_auth_files,
    find_credentials,
    parse_challenge,
)
from ansible_collections.virt.bootstrap.plugins.module_utils._registry import client as client_module
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.client import RegistryClient, RegistryError
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.reference import parse_reference

SECRET = 'pa55:w0rd-not-for-logs'


def auth_entry(username, password=SECRET):
    return {'auth': base64.b64encode(('%s:%s' % (username, password)).encode()).decode()}


def write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as stream:
        json.dump(value, stream)
    return str(path)


@pytest.fixture
def files(auth_home, tmp_path, monkeypatch):
    """The three default locations, with XDG_RUNTIME_DIR set (and existing)."""
    monkeypatch.setenv('XDG_RUNTIME_DIR', str(tmp_path / 'run'))
    (tmp_path / 'run').mkdir()
    return {
        'runtime': str(tmp_path / 'run' / 'containers' / 'auth.json'),
        'config': str(auth_home / '.config' / 'containers' / 'auth.json'),
        'docker': str(auth_home / '.docker' / 'config.json'),
    }


def test_default_files_are_searched_in_podman_order(files):
    assert default_auth_files() == [files['runtime'], files['config'], files['docker']]


def test_without_a_runtime_dir_the_per_uid_file_comes_first(auth_home, per_uid_auth_file):
    assert default_auth_files() == [per_uid_auth_file, str(auth_home / '.config' / 'containers' / 'auth.json'),
                                    str(auth_home / '.docker' / 'config.json')]


def test_the_per_uid_file_is_read_where_podman_login_writes_as_root(auth_home, per_uid_auth_file):
    write_json(per_uid_auth_file, {'auths': {'reg.example': auth_entry('root-login')}})
    assert find_credentials('reg.example', 'app') == Credentials('root-login', SECRET, per_uid_auth_file)


def test_a_runtime_dir_that_does_not_exist_is_passed_over(auth_home, tmp_path, monkeypatch, per_uid_auth_file):
    # As podman: a warning there, the other files still searched, and not the per-uid file instead.
    monkeypatch.setenv('XDG_RUNTIME_DIR', str(tmp_path / 'no-such-dir'))
    write_json(per_uid_auth_file, {'auths': {'reg.example': auth_entry('per-uid')}})
    assert default_auth_files() == [str(auth_home / '.config' / 'containers' / 'auth.json'),
                                    str(auth_home / '.docker' / 'config.json')]
    assert find_credentials('reg.example', 'app') is None


def test_xdg_config_home_moves_the_containers_file(files, tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CONFIG_HOME', str(tmp_path / 'xdg'))
    assert default_auth_files()[1] == str(tmp_path / 'xdg' / 'containers' / 'auth.json')


def test_docker_config_replaces_dot_docker(files, auth_home, tmp_path, monkeypatch):
    monkeypatch.setenv('DOCKER_CONFIG', str(tmp_path / 'docker-config'))
    write_json(files['docker'], {'auths': {'reg.example': auth_entry('dot-docker')}})
    moved = write_json(str(tmp_path / 'docker-config' / 'config.json'), {'auths': {'reg.example': auth_entry('moved')}})
    assert default_auth_files() == [files['runtime'], files['config'], moved]
    assert find_credentials('reg.example', 'app') == Credentials('moved', SECRET, moved)


def test_registry_auth_file_is_the_only_file_read_when_set(files, tmp_path, monkeypatch):
    write_json(files['runtime'], {'auths': {'reg.example': auth_entry('default-user')}})
    named = write_json(str(tmp_path / 'named.json'), {'auths': {'other.example': auth_entry('x')}})
    monkeypatch.setenv('REGISTRY_AUTH_FILE', named)
    assert find_credentials('reg.example', 'app') is None
    write_json(named, {'auths': {'reg.example': auth_entry('named-user')}})
    assert find_credentials('reg.example', 'app') == Credentials('named-user', SECRET, named)


def test_an_explicit_auth_file_wins_over_registry_auth_file(auth_home, tmp_path, monkeypatch):
    monkeypatch.setenv('REGISTRY_AUTH_FILE', write_json(str(tmp_path / 'named.json'),
                                                        {'auths': {'reg.example': auth_entry('named')}}))
    explicit = write_json(str(tmp_path / 'explicit.json'), {'auths': {'reg.example': auth_entry('explicit')}})
    assert find_credentials('reg.example', 'app', explicit).origin == explicit


def test_a_registry_auth_file_that_does_not_exist_is_an_error(auth_home, tmp_path, monkeypatch):
    monkeypatch.setenv('REGISTRY_AUTH_FILE', str(tmp_path / 'nope.json'))
    with pytest.raises(AuthError) as caught:
        find_credentials('reg.example', 'app')
    assert str(caught.value) == 'REGISTRY_AUTH_FILE names %s, which does not exist' % (tmp_path / 'nope.json')


@pytest.mark.parametrize('entry, username', [
    ({'identitytoken': SECRET}, ''),
    ({'auth': base64.b64encode(b'<token>:').decode(), 'identitytoken': SECRET}, '<token>'),
])
def test_an_identity_token_entry_gives_the_refresh_token(tmp_path, entry, username):
    path = write_json(str(tmp_path / 'config.json'), {'auths': {'reg.example': entry}})
    found = find_credentials('reg.example', 'app', path)
    assert found == Credentials(username, '', path, identity_token=SECRET)
    assert SECRET not in repr(found)


def test_an_identity_token_that_is_not_a_string_is_an_error(tmp_path):
    path = write_json(str(tmp_path / 'config.json'), {'auths': {'reg.example': {'identitytoken': 42}}})
    with pytest.raises(AuthError, match='identitytoken that is not a string'):
        find_credentials('reg.example', 'app', path)


@pytest.mark.parametrize('present, expected', [
    (('runtime', 'config', 'docker'), 'runtime'),
    (('config', 'docker'), 'config'),
    (('docker',), 'docker'),
])
def test_the_first_default_file_with_an_entry_wins(files, present, expected):
    for name in present:
        write_json(files[name], {'auths': {'reg.example': auth_entry('user-' + name)}})
    found = find_credentials('reg.example', 'team/app')
    assert found == Credentials('user-' + expected, SECRET, files[expected])


def test_a_default_file_without_an_entry_for_the_registry_is_passed_over(files):
    write_json(files['runtime'], {'auths': {'other.example': auth_entry('other')}})
    write_json(files['docker'], {'auths': {'reg.example': auth_entry('docker-user')}})
    assert find_credentials('reg.example', 'app').origin == files['docker']


def test_no_file_and_no_entry_means_anonymous(files):
    assert find_credentials('reg.example', 'app') is None
    write_json(files['config'], {'auths': {}})
    assert find_credentials('reg.example', 'app') is None


def test_an_explicit_auth_file_is_the_only_one_read(files, tmp_path):
    write_json(files['runtime'], {'auths': {'reg.example': auth_entry('default-user')}})
    explicit = write_json(str(tmp_path / 'explicit.json'), {'auths': {'other.example': auth_entry('x')}})
    assert find_credentials('reg.example', 'app', explicit) is None
    explicit = write_json(str(tmp_path / 'explicit.json'), {'auths': {'reg.example': auth_entry('explicit-user')}})
    assert find_credentials('reg.example', 'app', explicit) == Credentials('explicit-user', SECRET, explicit)


def test_a_missing_explicit_auth_file_is_an_error(auth_home, tmp_path):
    with pytest.raises(AuthError, match='auth_file .*nope.json does not exist'):
        find_credentials('reg.example', 'app', str(tmp_path / 'nope.json'))


@pytest.mark.parametrize('keys, expected', [
    (['reg.example', 'reg.example/team', 'reg.example/team/app'], 'reg.example/team/app'),
    (['reg.example', 'reg.example/team'], 'reg.example/team'),
    (['reg.example', 'reg.example/team/other'], 'reg.example'),
    (['https://reg.example'], 'https://reg.example'),
    (['https://reg.example/v2/'], 'https://reg.example/v2/'),
    (['http://reg.example/'], 'http://reg.example/'),
])
def test_the_most_specific_key_wins(tmp_path, keys, expected):
    path = write_json(str(tmp_path / 'auth.json'), {'auths': {key: auth_entry('user%d' % number)
                                                              for number, key in enumerate(keys)}})
    assert find_credentials('reg.example', 'team/app', path).username == 'user%d' % keys.index(expected)


@pytest.mark.parametrize('key', ['https://index.docker.io/v1/', 'docker.io', 'index.docker.io',
                                 'registry-1.docker.io', 'docker.io/library/ubuntu'])
def test_docker_hub_entries_are_found_under_every_name_they_go_by(tmp_path, key):
    path = write_json(str(tmp_path / 'config.json'), {'auths': {key: auth_entry('hub')}})
    assert find_credentials('docker.io', 'library/ubuntu', path).username == 'hub'


def test_a_key_for_another_port_does_not_match(tmp_path):
    path = write_json(str(tmp_path / 'auth.json'), {'auths': {'reg.example:5000': auth_entry('five')}})
    assert find_credentials('reg.example', 'app', path) is None
    assert find_credentials('reg.example:5000', 'app', path).username == 'five'


@pytest.mark.parametrize('content, message', [
    ('{not json', 'not valid JSON'),
    ('["a list"]', 'is not a JSON object'),
    (json.dumps({'auths': {'reg.example': {'auth': '!!!not base64!!!'}}}), 'not base64 of user:password'),
])
def test_unreadable_auth_files_say_which_file(tmp_path, content, message):
    path = tmp_path / 'auth.json'
    path.write_text(content)
    with pytest.raises(AuthError, match=message) as caught:
        find_credentials('reg.example', 'app', str(path))
    assert str(path) in str(caught.value)


def test_credentials_never_show_the_password_in_their_repr():
    assert SECRET not in repr(Credentials('user', SECRET, '/root/auth.json'))


# -- credential helpers -------------------------------------------------------------------------------------------

@pytest.fixture
def helper(tmp_path, monkeypatch):
    """docker-credential-test on PATH: answers from a JSON table, logs its argv and stdin (never a secret)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    log = tmp_path / 'helper.log'
    table = tmp_path / 'helper-table.json'
    table.write_text(json.dumps({'reg.example': {'Username': 'helped', 'Secret': SECRET},
                                 'https://index.docker.io/v1/': {'Username': 'hub-helped', 'Secret': SECRET}}))
    script = bin_dir / 'docker-credential-test'
    script.write_text(textwrap.dedent('''\
        #!/bin/sh
        server=$(cat)
        printf '%s %s\\n' "$*" "$server" >> {log}
        python3 - "$server" <<'EOF'
        import json, sys
        entry = json.load(open('{table}')).get(sys.argv[1])
        if entry is None:
            print('credentials not found in native keychain')
            sys.exit(1)
        print(json.dumps(entry))
        EOF
        ''').format(log=log, table=table))
    script.chmod(0o755)
    broken = bin_dir / 'docker-credential-broken'
    broken.write_text('#!/bin/sh\necho "garbage"\n')
    broken.chmod(0o755)
    failing = bin_dir / 'docker-credential-failing'
    failing.write_text('#!/bin/sh\nexit 3\n')
    failing.chmod(0o755)
    monkeypatch.setenv('PATH', '%s%s%s' % (bin_dir, os.pathsep, os.environ['PATH']))
    return log


def test_cred_helpers_are_asked_for_their_registry(tmp_path, helper):
    path = write_json(str(tmp_path / 'config.json'), {'credHelpers': {'reg.example': 'test'},
                                                      'auths': {'reg.example': auth_entry('not-this-one')}})
    found = find_credentials('reg.example', 'team/app', path)
    assert (found.username, found.password) == ('helped', SECRET)
    assert found.origin == '%s (docker-credential-test)' % path
    assert helper.read_text() == 'get reg.example\n'  # the secret never goes on a command line


def test_creds_store_is_the_fallback_for_registries_without_an_entry(tmp_path, helper):
    path = write_json(str(tmp_path / 'config.json'), {'credsStore': 'test'})
    assert find_credentials('docker.io', 'library/ubuntu', path).username == 'hub-helped'
    # docker login stores Docker Hub's credentials under its v1 URL.
    assert helper.read_text() == 'get https://index.docker.io/v1/\n'


def test_an_auth_entry_wins_over_creds_store(tmp_path, helper):
    path = write_json(str(tmp_path / 'config.json'), {'credsStore': 'test',
                                                      'auths': {'reg.example': auth_entry('from-auths')}})
    assert find_credentials('reg.example', 'app', path).username == 'from-auths'
    assert not helper.exists()


@pytest.mark.parametrize('helpers, message', [
    ({'other.example': 'test'}, 'has no credentials for other.example'),
    ({'other.example': 'missing'}, 'docker-credential-missing, which is not installed'),
    ({'other.example': 'broken'}, 'gave an answer that is not'),
    ({'other.example': 'failing'}, 'failed \\(exit 3\\)'),
    ({'other.example': '../../bin/sh'}, 'names an invalid credential helper'),
])
def test_credential_helper_failures_are_clear(tmp_path, helper, helpers, message):
    path = write_json(str(tmp_path / 'config.json'), {'credHelpers': helpers})
    with pytest.raises(AuthError, match=message):
        find_credentials('other.example', 'app', path)


# -- challenges -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('header, scheme, params', [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/ubuntu:pull"',
     'bearer', {'realm': 'https://auth.docker.io/token', 'service': 'registry.docker.io',
                'scope': 'repository:library/ubuntu:pull'}),
    ('Basic realm="Registry Realm"', 'basic', {'realm': 'Registry Realm'}),
    ('BEARER Realm="https://x/token", Service="x"', 'bearer', {'realm': 'https://x/token', 'service': 'x'}),
    ('Bearer realm=https://x/token,service=x', 'bearer', {'realm': 'https://x/token', 'service': 'x'}),
    ('Bearer realm="https://x/token",scope="repository:a/b:pull,push repository:c:pull"',
     'bearer', {'realm': 'https://x/token', 'scope': 'repository:a/b:pull,push repository:c:pull'}),
    ('Bearer realm="https://x/token",error="invalid_token"', 'bearer',
     {'realm': 'https://x/token', 'error': 'invalid_token'}),
    ('Basic realm="say \\"hi\\""', 'basic', {'realm': 'say "hi"'}),
    ('  Basic  ', 'basic', {}),
    ('', '', {}),
])
def test_challenges_parse_into_scheme_and_parameters(header, scheme, params):
    assert parse_challenge(header) == (scheme, params)


# -- where credentials are sent -------------------------------------------------------------------------------------

MANIFEST = json.dumps({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json'}).encode()


class _Answer:
    """A 200 answer, as the client reads one."""

    def __init__(self, body, content_type='application/json'):
        self._body = body
        self.status = 200
        self.headers = {'Content-Type': content_type, 'Content-Length': str(len(body))}

    def read(self, *_size):
        return self._body

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass


def token_client(monkeypatch, realm, credentials=None, not_secure=False):
    """A client whose registry asks for a bearer token from `realm`; returns it and what it sent: [(url, authorization)]."""
    client = RegistryClient(parse_reference('registry.example.com/app:1'), credentials, not_secure=not_secure)
    sent = []

    def send(_method, url, _headers, authorization):
        sent.append((url.split('?')[0], authorization))
        if url.startswith(realm):
            return _Answer(b'{"token": "t0k3n"}')
        if authorization != 'Bearer t0k3n':
            challenge = 'Bearer realm="%s",service="registry.example.com"' % realm
            raise urllib.error.HTTPError(url, 401, 'Unauthorized', {'WWW-Authenticate': challenge}, io.BytesIO(b''))
        return _Answer(MANIFEST, 'application/vnd.oci.image.manifest.v1+json')
    monkeypatch.setattr(client, '_send', send)
    return client, sent


def basic(username, password=SECRET):
    return 'Basic ' + base64.b64encode(('%s:%s' % (username, password)).encode()).decode()


def test_a_plain_http_token_service_gets_no_credentials_from_a_https_registry(monkeypatch):
    client, sent = token_client(monkeypatch, 'http://auth.example.com/token', Credentials('alice', SECRET))
    with pytest.raises(RegistryError) as caught:
        client.get_manifest('1')
    assert str(caught.value) == ('registry.example.com names a token service over plain HTTP '
                                 '(http://auth.example.com): the credentials from the username/password options are '
                                 'not sent unencrypted; set not_secure: true to allow it')
    assert sent == [('https://registry.example.com/v2/app/manifests/1', None)]


def test_a_plain_http_token_service_gets_credentials_with_not_secure(monkeypatch):
    client, sent = token_client(monkeypatch, 'http://auth.example.com/token', Credentials('alice', SECRET),
                                not_secure=True)
    assert client.get_manifest('1')[0] == MANIFEST
    assert sent[1] == ('http://auth.example.com/token', basic('alice'))


def test_a_plain_http_token_service_may_give_an_anonymous_token(monkeypatch):
    client, sent = token_client(monkeypatch, 'http://auth.example.com/token')
    assert client.get_manifest('1')[0] == MANIFEST
    assert sent == [('https://registry.example.com/v2/app/manifests/1', None), ('http://auth.example.com/token', None),
                    ('https://registry.example.com/v2/app/manifests/1', 'Bearer t0k3n')]


def test_a_https_token_service_gets_the_credentials(monkeypatch):
    client, sent = token_client(monkeypatch, 'https://auth.example.com/token', Credentials('alice', SECRET))
    assert client.get_manifest('1')[0] == MANIFEST
    assert sent[1] == ('https://auth.example.com/token', basic('alice'))


def test_a_token_service_on_another_site_gets_no_credentials(monkeypatch):
    client, sent = token_client(monkeypatch, 'https://tokens.elsewhere.net/token', Credentials('alice', SECRET))
    assert client.get_manifest('1')[0] == MANIFEST
    assert sent[1] == ('https://tokens.elsewhere.net/token', None)


@pytest.mark.parametrize('registry, realm, same', [
    ('registry-1.docker.io', 'auth.docker.io', True),
    ('registry.gitlab.com', 'gitlab.com', True),
    ('ghcr.io', 'ghcr.io', True),
    ('myregistry.azurecr.io', 'myregistry.azurecr.io', True),
    ('registry.example.com:5000', 'registry.example.com', True),
    ('127.0.0.1:5000', '127.0.0.1', True),
    ('[::1]:5000', '::1', True),
    ('localhost:5000', 'localhost', True),
    ('registry.example.com', 'example.com.evil.net', False),
    ('registry.example.com', 'evilexample.com', False),
    ('127.0.0.1:5000', '127.0.0.2', False),
    ('10.0.0.1', '1.0.0.1', False),
    ('localhost', 'evil.localhost', False),
])
def test_which_token_services_count_as_the_registrys_own_site(registry, realm, same):
    assert client_module._same_site(registry, realm) is same
