# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A hostile registry: every answer that must fail does so cleanly and quickly, reading a bounded amount,
naming the problem and no secret, leaving dest as it was and the cache with verified blobs only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, Result, run
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, DigestMismatch
from ansible_collections.virt.bootstrap.plugins.module_utils._image import MAX_METADATA_SIZE
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.auth import AuthError
from ansible_collections.virt.bootstrap.plugins.module_utils._sources.registry import RegistryOptions
from ansible_collections.virt.bootstrap.tests.registry import hostile
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import (
    OciLayoutBuilder,
    make_tar,
    snapshot_tree,
)
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.registry_support import unverified_cache_files

GOOD = {'etc': None, 'etc/os-release': b'ID=good\n'}
NEW = {'etc': None, 'etc/os-release': b'ID=new\n', 'big': os.urandom(300000)}
USER, SECRET = 'puller', 'hostile-test-password-do-not-leak'
MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
CONFIG = 'application/vnd.oci.image.config.v1+json'
ZEROS = 'sha256:' + '0' * 64
# Deadlines in these tests: short, so that a registry that holds a run is seen to be cut off by them (the
# socket timeout alone would let each of these run for minutes).
TIMEOUT = 0.5
WITHIN = 5.0


@pytest.fixture(scope='module')
def layout(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp('hostile-layout'))
    builder = OciLayoutBuilder(directory)
    builder.write_index([(builder.image([make_tar(GOOD)]), 'good'), (builder.image([make_tar(NEW)]), 'new'),
                         (builder.image([make_tar(NEW)], compression='none'), 'plain')])
    return directory


@pytest.fixture
def registry(layout):
    with hostile.HostileRegistry(layout) as server:
        yield server


def new_layer_digest(registry, tag: str = 'new') -> str:
    manifest = json.loads(registry.manifest(tag)[0])
    return manifest['layers'][0]['digest']


class Site:
    """A good rootfs at dest (from app:good) and a cache; `fails` pulls app:new over them."""

    def __init__(self, tmp_path, registry):
        self.registry = registry
        self.dest = str(tmp_path / 'rootfs')
        self.cache = str(tmp_path / 'cache')

    def pull(self, tag='new', **options) -> Result:
        options.setdefault('not_secure', True)
        options.setdefault('timeout', TIMEOUT)
        return run(Request(src=self.registry.ref('app:%s' % tag), dest=self.dest,
                           registry=RegistryOptions(cache_dir=self.cache, **options)))

    def fails(self, error=BootstrapError, tag='new', **options) -> str:
        """The error's text, once it is known to come quickly and leave dest and cache as they were."""
        before = snapshot_tree(self.dest)
        started = time.monotonic()
        with pytest.raises(error) as caught:
            self.pull(tag, username=USER, password=SECRET, **options)
        assert time.monotonic() - started < WITHIN
        assert snapshot_tree(self.dest) == before
        assert unverified_cache_files(self.cache) == []
        assert SECRET not in str(caught.value)
        return str(caught.value)


@pytest.fixture
def site(tmp_path, registry):
    built = Site(tmp_path, registry)
    built.pull('good')
    return built


# -- bodies without end ---------------------------------------------------------------------------------------


def test_a_manifest_of_hundreds_of_megabytes_is_refused_after_reading_past_the_limit(site):
    site.registry.on('/manifests/new', hostile.huge_body(300 << 20))
    assert site.fails().endswith('the manifest for new is larger than %d bytes' % MAX_METADATA_SIZE)
    assert site.registry.body_bytes_sent and max(site.registry.body_bytes_sent) < 4 * MAX_METADATA_SIZE


def test_an_endless_chunked_manifest_is_refused_after_reading_past_the_limit(site):
    site.registry.on('/manifests/new', hostile.endless_body)
    assert site.fails().endswith('the manifest for new is larger than %d bytes' % MAX_METADATA_SIZE)
    assert site.registry.body_bytes_sent and max(site.registry.body_bytes_sent) < 4 * MAX_METADATA_SIZE


def test_an_endless_config_blob_is_refused_after_reading_past_the_limit(site):
    site.registry.on('/blobs/', hostile.endless_body)
    assert 'is larger than %d bytes' % MAX_METADATA_SIZE in site.fails()


# -- registries that stall ------------------------------------------------------------------------------------


def test_a_registry_that_never_answers_is_given_up_on_at_the_timeout(site):
    site.registry.on('/manifests/new', hostile.silence)
    assert site.fails().endswith('the manifest for new did not arrive within 0.5 s (timeout): the registry stalls '
                                 'or is too slow')


def test_headers_sent_one_byte_at_a_time_do_not_hold_the_run(site):
    site.registry.on('/manifests/new', hostile.slow_headers(0.1))
    assert 'the manifest for new did not arrive within 0.5 s (timeout)' in site.fails()


def test_a_manifest_sent_one_byte_at_a_time_does_not_hold_the_run(site):
    site.registry.on('/manifests/', hostile.trickle(0.05), method='GET')
    assert 'did not arrive within 0.5 s (timeout)' in site.fails()


def test_a_config_whose_body_never_comes_is_given_up_on_at_the_timeout(site):
    site.registry.on('/blobs/', hostile.headers_then_silence)
    assert 'did not arrive within 0.5 s (timeout)' in site.fails()


def test_a_layer_sent_one_byte_at_a_time_is_given_up_on_after_its_retries(site, sleeps):
    site.registry.on(new_layer_digest(site.registry), hostile.trickle(0.01))
    message = site.fails()
    assert 'failed 6 times in a row' in message
    assert message.endswith('last: less than 64 KiB in 0.5 s (timeout)')


def test_a_layer_whose_body_stops_is_resumed_and_finishes(site, sleeps):
    """A stall is a lost connection: the next try resumes, and a registry that recovers finishes the pull."""
    site.registry.on(new_layer_digest(site.registry), hostile.once(hostile.headers_then_silence))
    result = site.pull()
    assert result.changed and result.digest.startswith('sha256:')
    assert site.registry.count('GET', new_layer_digest(site.registry)) == 2
    assert unverified_cache_files(site.cache) == []


def test_a_layer_whose_bytes_are_not_those_of_its_digest_fails_and_never_enters_the_cache(site):
    """An uncompressed layer with one byte of a file changed: a valid tar of the right size, which only
    the digest tells apart (the download's own check, the one the applier relies on)."""
    digest = new_layer_digest(site.registry, 'plain')
    blob = bytearray(site.registry.blob(digest))
    blob[blob.index(b'ID=new') + 3] ^= 0x01
    site.registry.on(digest, hostile.json_body(bytes(blob), 'application/octet-stream'))
    message = site.fails(DigestMismatch, tag='plain')
    assert message.startswith('layer 1/1 %s: downloaded blob: content hashes to sha256:' % digest)
    assert not os.path.exists(os.path.join(site.cache, 'blobs', 'sha256', digest.split(':')[1]))


def entries_below(root: str):
    """snapshot_tree without the root itself (two dests' roots differ)."""
    return {name: value for name, value in snapshot_tree(root).items() if name not in ('.', '.inode')}


def test_a_cached_layer_whose_bytes_changed_fails_the_run_and_the_next_run_downloads_it(site, tmp_path):
    """The same change made to that layer's cache entry: the cache reader's own check catches it."""
    digest = new_layer_digest(site.registry, 'plain')
    assert site.pull('plain').changed
    entry = os.path.join(site.cache, 'blobs', 'sha256', digest.split(':')[1])
    with open(entry, 'rb') as stream:
        blob = bytearray(stream.read())
    blob[blob.index(b'ID=new') + 3] ^= 0x01
    with open(entry, 'wb') as stream:
        stream.write(bytes(blob))
    other = str(tmp_path / 'other')
    request = Request(src=site.registry.ref('app:plain'), dest=other,
                      registry=RegistryOptions(cache_dir=site.cache, not_secure=True, timeout=TIMEOUT))
    downloads = site.registry.count('GET', digest)
    with pytest.raises(DigestMismatch) as caught:
        run(request)
    assert str(caught.value).startswith('layer 1/1 %s: cached blob: content hashes to sha256:' % digest)
    assert 'dropped from the cache' in str(caught.value)
    assert not os.path.exists(entry) and not os.path.exists(other)
    assert site.registry.count('GET', digest) == downloads  # the cache was read, not the registry
    assert run(request).changed
    assert site.registry.count('GET', digest) == downloads + 1
    assert entries_below(other) == entries_below(site.dest)


@pytest.mark.parametrize('part', ['/manifests/new', '/blobs/'], ids=['manifest', 'blobs'])
def test_waiting_as_retry_after_asks_does_not_count_against_the_timeout(site, part):
    """A 503 asking to wait longer than the timeout is waited for (real sleeps), then the pull goes on."""
    site.registry.on(part, hostile.once(hostile.status(503, {'Retry-After': '1'})))
    assert site.pull().changed


@pytest.mark.parametrize('value', [0, -1, float('nan'), True, '60'])
def test_a_timeout_that_is_not_a_positive_number_is_refused(value):
    with pytest.raises(BootstrapError, match='timeout must be a number of seconds above 0'):
        RegistryOptions(timeout=value)


# -- redirects ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('location, message', [
    (lambda handler: handler.path, 'redirected manifests/new in a loop or too many times (HTTP 307)'),
    (lambda handler: 'file:///etc/passwd', 'redirected a request to a file URL, which is not followed'),
    (lambda handler: 'ftp://127.0.0.1:21/blob', 'redirected a request to a ftp URL, which is not followed'),
    (lambda handler: 'gopher://127.0.0.1/x', 'redirected a request to a gopher URL, which is not followed'),
], ids=['loop', 'file', 'ftp', 'gopher'])
def test_a_redirect_that_is_not_followed_is_named(site, location, message):
    site.registry.on('/manifests/new', hostile.redirect(location))
    assert site.fails().endswith(message)


# -- authentication challenges -------------------------------------------------------------------------------


@pytest.mark.parametrize('header, message', [
    ('Bearer realm=', 'asks for a bearer token but names no token service (realm) in its challenge'),
    ('Bearer service="x",scope="y"', 'asks for a bearer token but names no token service (realm) in its challenge'),
    ('\x01\x02 ,,,= "', 'asks for an authentication scheme this client does not speak (\x01\x02)'),
    ('Negotiate abc', 'asks for an authentication scheme this client does not speak (negotiate)'),
    ('Bearer ' + ','.join('k%d="v"' % number for number in range(5000)),
     'asks for a bearer token but names no token service (realm) in its challenge'),
    ('Bearer realm="ftp://127.0.0.1/token"', 'names a token service that is not http(s)'),
    ('Bearer realm="http://127.0.0.1/' + 'a' * 70000 + '"',
     'answered with a malformed HTTP response (got more than 65536 bytes when reading header line)'),
], ids=['empty-realm', 'no-realm', 'garbage', 'unknown-scheme', 'many-params', 'ftp-realm', 'huge'])
def test_a_challenge_that_cannot_be_answered_is_named(site, header, message):
    site.registry.on('/manifests/new', hostile.challenge(header))
    assert site.fails().endswith(message)


@pytest.fixture
def elsewhere(layout):
    """A token service on another host (127.0.0.2, loopback too) that gives anyone a token."""
    with hostile.HostileRegistry(layout, address='127.0.0.2') as server:
        server.on('/token', hostile.token())
        yield server


def test_a_token_service_on_another_site_never_sees_the_credentials(site, elsewhere):
    site.registry.on('/v2/app/', hostile.challenge_unless_authorized(
        'Bearer realm="http://%s/token",service="registry"' % elsewhere.host))
    result = site.pull(username=USER, password=SECRET)
    assert result.changed
    assert elsewhere.count('GET', '/token') == 1
    assert [seen.authorization for seen in elsewhere.seen] == [None]


def test_a_token_service_on_another_site_that_wants_a_login_is_named_in_the_refusal(site, elsewhere):
    elsewhere.behaviours.clear()
    elsewhere.on('/token', hostile.challenge('Basic realm="login"'))
    site.registry.on('/v2/app/', hostile.challenge_unless_authorized(
        'Bearer realm="http://%s/token"' % elsewhere.host))
    message = site.fails(AuthError)
    assert message.endswith('its token service %s is on another site, so the credentials from the username/password '
                            'options were not sent there' % elsewhere.host)
    assert [seen.authorization for seen in elsewhere.seen] == [None]


def test_a_token_service_on_the_registrys_own_host_gets_the_credentials(site, registry):
    registry.on('/token', hostile.token())
    registry.on('/v2/app/', hostile.challenge_unless_authorized('Bearer realm="http://%s/token"' % registry.host))
    assert site.pull(username=USER, password=SECRET).changed
    asked = [seen for seen in registry.seen if seen.path.startswith('/token')]
    assert len(asked) == 1 and asked[0].authorization.startswith('Basic ')


# -- documents that lie or that parsers read differently ------------------------------------------------------


def manifest_with(config_digest=ZEROS, config_size=2, **fields):
    document = {'schemaVersion': 2, 'mediaType': MANIFEST, 'layers': [],
                'config': {'mediaType': CONFIG, 'digest': config_digest, 'size': config_size}}
    document.update(fields)
    return json.dumps(document).encode()


@pytest.mark.parametrize('body, message', [
    (b'{"schemaVersion": 2, "schemaVersion": 1, "mediaType": "%s"}' % MANIFEST.encode(),
     "the manifest for new is refused: the key 'schemaVersion' appears twice in one object"),
    (manifest_with().replace(b'"layers": []', b'"layers": [], "layers": [{}]'),
     "the manifest for new is refused: the key 'layers' appears twice in one object"),
    (b'{"schemaVersion": ' + b'9' * 5000 + b'}', 'the manifest for new is refused: a number of 5000 digits'),
    (manifest_with(config_size=1e400).replace(b'Infinity', b'1e400'),
     'the manifest for new is refused: the number 1e400 is out of range'),
    (manifest_with().replace(b'"size": 2', b'"size": NaN'), 'the manifest for new is refused: NaN is not JSON'),
    (b'[' * 100000 + b']' * 100000, 'the manifest for new is not valid JSON'),
    (manifest_with(config_digest='md5:d41d8cd98f00b204e9800998ecf8427e'),
     "has digest 'md5:d41d8cd98f00b204e9800998ecf8427e', not a valid sha256/sha512 digest"),
    (manifest_with(config_digest='sha384:' + 'a' * 96),
     "not a valid sha256/sha512 digest"),
    (manifest_with(mediaType='application/vnd.oci.image.index.v1+json'), 'has no list of manifests'),
    (manifest_with(mediaType='application/vnd.example.unknown+json'), 'application/vnd.example.unknown+json'),
], ids=['duplicate-key', 'duplicate-layers', 'huge-integer', 'huge-float', 'nan', 'deep', 'md5', 'sha384',
        'says-index', 'unknown-type'])
def test_a_manifest_that_parsers_could_read_differently_is_refused(site, body, message):
    site.registry.on('/manifests/new', hostile.json_body(body))
    assert message in site.fails()


# -- signals -----------------------------------------------------------------------------------------------------


CLI = os.path.join(os.path.dirname(__file__), '..', '..', '..', '..', 'scripts', 'virt-bootstrap')


@pytest.mark.parametrize('signal_number, status', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize('stalled', ['manifest', 'layer'])
def test_the_cli_stops_promptly_on_a_signal_while_the_registry_stalls(site, tmp_path, signal_number, status, stalled):
    part = '/manifests/new' if stalled == 'manifest' else new_layer_digest(site.registry)
    site.registry.on(part, hostile.silence if stalled == 'manifest' else hostile.headers_then_silence)
    before = snapshot_tree(site.dest)
    environment = dict(os.environ, VIRT_BOOTSTRAP_PYTHON=sys.executable)
    process = subprocess.Popen([CLI, '-q', '--not-secure', '--cache-dir', site.cache,
                                site.registry.ref('app:new'), site.dest], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while site.registry.count('GET', part) + site.registry.count('HEAD', part) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal_number)
    try:
        _output, errors = process.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail('the CLI did not stop within 5 s of the signal')
    assert process.returncode == status, errors
    assert errors.decode().strip().endswith('interrupted' if signal_number == signal.SIGINT else 'terminated')
    assert snapshot_tree(site.dest) == before
    assert unverified_cache_files(site.cache) == []
    assert sorted(os.listdir(os.path.join(os.path.dirname(site.dest), '.rootfs.virt-bootstrap'))) == ['lock', 'state.json']
