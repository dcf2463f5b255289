# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retries, resume, the blob cache and idempotency, through a fault-injecting proxy in front of a real registry."""

from __future__ import annotations

import email.utils
import json
import multiprocessing
import os
import re
import tempfile
import time
import urllib.request

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, Result, run
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import (
    BootstrapError,
    DigestMismatch,
    LayerError,
    SourceError,
)
from ansible_collections.virt.bootstrap.plugins.module_utils._registry import cache as cache_module
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.client import (
    MANIFEST_ACCEPT,
    RegistryClient,
    RegistryError,
)
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.reference import parse_reference
from ansible_collections.virt.bootstrap.plugins.module_utils._platforms import host_platform, parse_platform
from ansible_collections.virt.bootstrap.plugins.module_utils._sources.registry import RegistryOptions, RegistrySource
from ansible_collections.virt.bootstrap.tests.registry import push as pusher
from ansible_collections.virt.bootstrap.tests.registry.fault_proxy import FaultProxy
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.registry_support import (
    BASE_TREE,
    files_below,
    layer_descriptors,
    layer_digests,
    rootfs_tree,
    unique_name,
    unverified_cache_files,
)

CUT_AT = 300 * 1024


@pytest.fixture
def proxy(http_registry):
    with FaultProxy('http://' + http_registry.registry.host) as running:
        yield running


@pytest.fixture
def big_layer(http_registry):
    """The digest of app:base's last layer, the only blob big enough to be cut at CUT_AT."""
    return layer_digests(http_registry.layout, 'base')[-1]


def pull(proxy, tmp_path, name, dest='rootfs', check_mode=False, platform=None, **registry_options) -> Result:
    registry_options.setdefault('cache_dir', str(tmp_path / 'cache'))
    registry_options.setdefault('not_secure', True)
    request = Request(src='docker://%s/%s' % (proxy.host, name), dest=str(tmp_path / dest), platform=platform,
                      registry=RegistryOptions(**registry_options))
    return run(request, check_mode=check_mode)


# -- retries --------------------------------------------------------------------------------------------------------

def test_5xx_answers_are_retried_with_backoff(tmp_path, proxy, sleeps):
    proxy.fail('/manifests/', 500, times=2)
    proxy.fail('/blobs/', 503, times=1)
    result = pull(proxy, tmp_path, 'app:base')
    assert result.changed
    assert [seen.status for seen in proxy.seen('GET', '/manifests/')] == [500, 500, 200]
    assert sorted(sleeps) == [0.5, 0.5, 1.0]  # 0.5 s doubling per failure of one request
    assert rootfs_tree(str(tmp_path / 'rootfs')) == BASE_TREE


HUB_RATE_LIMIT = ('You have reached your pull rate limit. You may increase the limit by authenticating and '
                  'upgrading: https://www.docker.com/increase-rate-limit')


def test_429_waits_as_long_as_retry_after_says_in_seconds(tmp_path, proxy, sleeps):
    proxy.fail('/blobs/', 429, times=1, retry_after=7)
    pull(proxy, tmp_path, 'app:base')
    assert sleeps == [7.0]
    assert [seen.status for seen in proxy.seen('GET', '/blobs/')].count(429) == 1


def test_429_waits_until_the_http_date_retry_after_gives(tmp_path, proxy, sleeps):
    proxy.fail('/manifests/', 429, times=1, retry_after=email.utils.formatdate(time.time() + 20, usegmt=True))
    pull(proxy, tmp_path, 'app:base')
    assert len(sleeps) == 1
    assert 17.0 <= sleeps[0] <= 20.0  # the date has whole seconds, and some time passed on the way
    assert [seen.status for seen in proxy.seen('GET', '/manifests/')] == [429, 200]


@pytest.mark.parametrize('retry_after', ['Thu, 01 Jan 1970 00:00:00 GMT', 'soon', '-3'])
def test_a_retry_after_in_the_past_or_unreadable_leaves_the_backoff(tmp_path, proxy, sleeps, retry_after):
    proxy.fail('/manifests/', 503, times=1, retry_after=retry_after)
    pull(proxy, tmp_path, 'app:base')
    assert sleeps == [0.5]


def test_a_retry_after_of_up_to_a_minute_is_waited_for(tmp_path, proxy, sleeps):
    proxy.fail('/manifests/', 429, times=1, retry_after=60)
    pull(proxy, tmp_path, 'app:base')
    assert sleeps == [60.0]


def test_a_registry_asking_to_wait_longer_than_the_cap_is_given_up_on_with_its_reason(tmp_path, proxy, sleeps):
    proxy.fail('/manifests/', 429, times=-1, retry_after=6 * 3600, code='TOOMANYREQUESTS', message=HUB_RATE_LIMIT)
    with pytest.raises(RegistryError) as caught:
        pull(proxy, tmp_path, 'app:base')
    assert str(caught.value) == '%s answered HTTP 429 for manifests/base (TOOMANYREQUESTS: %s); it asks to wait ' \
        '21600 s before trying again' % (proxy.host, HUB_RATE_LIMIT)
    assert sleeps == []
    assert proxy.count('GET', '/manifests/') == 1


def test_when_429_retries_run_out_the_registry_explanation_is_in_the_error(tmp_path, proxy, sleeps):
    proxy.fail('/blobs/', 429, times=-1, retry_after=1, code='TOOMANYREQUESTS', message=HUB_RATE_LIMIT)
    with pytest.raises(RegistryError) as caught:
        pull(proxy, tmp_path, 'app:base')
    assert re.fullmatch(r'%s answered HTTP 429 for blobs/sha256:[0-9a-f]{64} \(TOOMANYREQUESTS: %s\)'
                        % (re.escape(proxy.host), re.escape(HUB_RATE_LIMIT)), str(caught.value))
    assert sleeps == [1.0, 1.0, 2.0, 4.0, 8.0]  # the back-off, never shorter than the registry asked


def test_the_registry_explanation_is_bounded_and_printable(tmp_path, proxy, sleeps):
    proxy.fail('/manifests/', 500, times=-1, code='INTERNAL', message='line one\nline two\x1b[31m ' + 'x' * 5000)
    with pytest.raises(RegistryError) as caught:
        pull(proxy, tmp_path, 'app:base')
    message = str(caught.value)
    assert message.startswith('%s answered HTTP 500 for manifests/base (INTERNAL: line one line two [31m xxx'
                              % proxy.host)
    assert message.endswith('xxx...)')
    assert len(message) < 400
    assert message.isprintable()


# 'INTERNAL: ' and 263 characters, 'bad login tester:': the password would straddle the cut at 300 characters.
@pytest.mark.parametrize('padding', [0, 263], ids=['whole', 'where the message is cut'])
def test_a_secret_the_registry_echoes_is_not_in_the_error(tmp_path, tls_registry, sleeps, padding):
    registry = tls_registry.registry
    with FaultProxy(registry.url) as proxy:
        proxy.fail('/manifests/', 500, times=-1, code='INTERNAL', message='%sbad login %s:%s'
                   % ('x' * padding, registry.username, registry.password))
        with pytest.raises(RegistryError) as caught:
            pull(proxy, tmp_path, 'app:base', username=registry.username, password=registry.password)
    assert registry.password[:6] not in str(caught.value)
    assert str(caught.value).endswith('bad login %s:***)' % registry.username)


def test_name_unknown_names_the_repository(tmp_path, proxy):
    proxy.fail('/manifests/', 404, times=1, code='NAME_UNKNOWN')
    with pytest.raises(RegistryError, match='^%s has no repository app$' % proxy.host):
        pull(proxy, tmp_path, 'app:base')


@pytest.mark.parametrize('what', ['/manifests/', '/blobs/'])
def test_a_manifest_or_config_cut_short_is_read_again(tmp_path, proxy, sleeps, what):
    proxy.cut(what, after=100, times=1)
    result = pull(proxy, tmp_path, 'app:base')
    assert result.changed
    assert [seen.cut for seen in proxy.seen('GET', what)][:2] == [True, False]


# -- resume and the cache -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('reset', [False, True], ids=['closed', 'reset'])
def test_a_blob_cut_mid_body_resumes_with_range(tmp_path, proxy, sleeps, big_layer, reset):
    proxy.cut(big_layer, after=CUT_AT, times=2, reset=reset)
    pull(proxy, tmp_path, 'app:base')
    requests = proxy.seen('GET', big_layer)
    assert [seen.cut for seen in requests] == [True, True, False]
    assert requests[0].range is None
    # Each retry asks for what is missing, and the registry answers with just that.
    assert [seen.range for seen in requests[1:]] == ['bytes=%d-' % requests[0].sent,
                                                     'bytes=%d-' % (requests[0].sent + requests[1].sent)]
    assert [seen.status for seen in requests] == [200, 206, 206]
    assert rootfs_tree(str(tmp_path / 'rootfs')) == BASE_TREE
    assert unverified_cache_files(str(tmp_path / 'cache')) == []
    assert os.path.exists(tmp_path / 'cache' / 'blobs' / 'sha256' / big_layer.split(':')[1])


def test_a_registry_that_ignores_range_sends_the_whole_blob_again(tmp_path, proxy, sleeps, big_layer):
    proxy.ignore_range = True
    proxy.cut(big_layer, after=CUT_AT, times=1)
    pull(proxy, tmp_path, 'app:base')
    requests = proxy.seen('GET', big_layer)
    assert [(seen.range, seen.status) for seen in requests] == [(None, 200), ('bytes=%d-' % CUT_AT, 200)]
    # What was already written is skipped, not written twice: the tree and the cache are exact.
    assert rootfs_tree(str(tmp_path / 'rootfs')) == BASE_TREE
    assert unverified_cache_files(str(tmp_path / 'cache')) == []


def test_a_blob_that_keeps_failing_leaves_no_cache_entry_and_no_partial_file(tmp_path, proxy, sleeps, big_layer):
    proxy.cut(big_layer, after=CUT_AT, times=1)
    proxy.cut(big_layer, after=0, times=-1)  # then no progress at all
    with pytest.raises(RegistryError) as caught:
        pull(proxy, tmp_path, 'app:base')
    assert big_layer in str(caught.value)
    assert 'failed 6 times in a row at byte %d' % CUT_AT in str(caught.value)
    assert not os.path.lexists(tmp_path / 'rootfs')
    assert not os.path.exists(tmp_path / 'cache' / 'blobs' / 'sha256' / big_layer.split(':')[1])
    assert files_below(str(tmp_path / 'cache' / 'partial')) == []
    assert unverified_cache_files(str(tmp_path / 'cache')) == []


def test_only_failures_in_a_row_count_against_the_retries(tmp_path, proxy, sleeps, big_layer):
    # Seven cuts, more than the five retries, but each after some progress: the download goes through.
    proxy.cut(big_layer, after=32 * 1024, times=7)
    pull(proxy, tmp_path, 'app:base')
    requests = proxy.seen('GET', big_layer)
    assert [seen.cut for seen in requests] == [True] * 7 + [False]
    assert rootfs_tree(str(tmp_path / 'rootfs')) == BASE_TREE


def test_a_layer_that_fails_before_its_turn_is_reported_by_name(tmp_path, proxy, big_layer):
    """The last layer fails at once while the first ones still download (slowly): the error names it."""
    proxy.chunk_delay = 0.1
    proxy.fail(big_layer, 404, times=-1, code='BLOB_UNKNOWN')
    with pytest.raises(RegistryError, match='has no blob %s in app' % big_layer):
        pull(proxy, tmp_path, 'app:base')
    assert files_below(str(tmp_path / 'cache' / 'partial')) == []


def test_a_corrupt_cache_entry_is_dropped_and_downloaded_again(tmp_path, proxy, big_layer):
    pull(proxy, tmp_path, 'app:base', dest='first')
    entry = tmp_path / 'cache' / 'blobs' / 'sha256' / big_layer.split(':')[1]
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xff  # same size: only its content can tell
    entry.write_bytes(bytes(data))
    with pytest.raises(LayerError, match=big_layer):  # the gzip CRC or the digest: whichever notices first
        pull(proxy, tmp_path, 'app:base', dest='second')
    assert not entry.exists()
    proxy.clear()
    pull(proxy, tmp_path, 'app:base', dest='second')
    assert proxy.count('GET', big_layer) == 1
    assert rootfs_tree(str(tmp_path / 'second')) == BASE_TREE


def test_no_cache_leaves_no_cache_dir(tmp_path, proxy, monkeypatch):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path / 'tmp'))
    monkeypatch.setattr(cache_module, 'default_cache_dir', lambda: str(tmp_path / 'default-cache'))
    (tmp_path / 'tmp').mkdir()
    made = []
    real_mkdtemp = tempfile.mkdtemp

    def spy_mkdtemp(*args, **kwargs):
        made.append(real_mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(cache_module.tempfile, 'mkdtemp', spy_mkdtemp)
    result = pull(proxy, tmp_path, 'app:base', no_cache=True, cache_dir=None)
    assert result.changed
    assert os.listdir(tmp_path / 'tmp') == []
    assert not os.path.exists(tmp_path / 'default-cache')
    # The temporary cache lived beside dest, on its filesystem, not in a (possibly small) tmpfs.
    caches = [path for path in made if os.path.basename(path).startswith('build-cache-')]
    assert len(caches) == 1 and os.path.dirname(caches[0]) == str(tmp_path / '.rootfs.virt-bootstrap')
    assert not os.path.exists(caches[0])
    # Every blob was downloaded: nothing could have come from a cache.
    assert proxy.count('GET', '/blobs/') == 4


def _pull_in_a_process(proxy_host: str, dest: str, cache_dir: str) -> None:
    run(Request(src='docker://%s/app:base' % proxy_host, dest=dest,
                registry=RegistryOptions(not_secure=True, cache_dir=cache_dir)))


def test_concurrent_runs_share_one_cache_dir_and_download_each_blob_once(tmp_path, proxy, http_registry):
    proxy.chunk_delay = 0.01  # about 1 s for the big layer: both runs want it at the same time
    context = multiprocessing.get_context('fork')
    runs = [context.Process(target=_pull_in_a_process, args=(proxy.host, str(tmp_path / name), str(tmp_path / 'cache')))
            for name in ('one', 'two')]
    for process in runs:
        process.start()
    for process in runs:
        process.join(60)
    assert [process.exitcode for process in runs] == [0, 0]
    assert rootfs_tree(str(tmp_path / 'one')) == rootfs_tree(str(tmp_path / 'two')) == BASE_TREE
    assert unverified_cache_files(str(tmp_path / 'cache')) == []
    assert len(files_below(str(tmp_path / 'cache' / 'blobs'))) == 3
    for digest in layer_digests(http_registry.layout, 'base'):
        assert proxy.count('GET', digest) == 1, digest


def test_max_download_size_refuses_a_bigger_image_before_any_blob_request(tmp_path, proxy, http_registry):
    total = sum(layer['size'] for layer in layer_descriptors(http_registry.layout, 'base'))
    with pytest.raises(SourceError) as caught:
        pull(proxy, tmp_path, 'app:base', max_download_size=total - 1)
    assert str(caught.value).endswith('its layers add up to %d bytes (compressed), more than the limit of %d bytes'
                                      % (total, total - 1))
    assert proxy.count('GET', '/blobs/') == 0
    assert not os.path.lexists(tmp_path / 'rootfs')
    assert pull(proxy, tmp_path, 'app:base', max_download_size=total).changed


# -- idempotency ----------------------------------------------------------------------------------------------------

def test_an_unchanged_rerun_makes_one_head_request_and_no_get(tmp_path, proxy):
    first = pull(proxy, tmp_path, 'app:base')
    proxy.clear()
    rerun = pull(proxy, tmp_path, 'app:base')
    assert not rerun.changed
    assert rerun.msg == '%s already holds %s' % (tmp_path / 'rootfs', first.digest)
    assert rerun.entries_written == 0
    # A HEAD is not a pull: Docker Hub counts manifest GETs against its rate limit, HEADs not.
    assert [(seen.method, seen.path) for seen in proxy.requests] == [('HEAD', '/v2/app/manifests/base')]
    proxy.clear()
    check = pull(proxy, tmp_path, 'app:base', check_mode=True)
    assert not check.changed and check.digest == first.digest
    assert [seen.method for seen in proxy.requests] == ['HEAD']


@pytest.mark.parametrize('refusal', ['no digest', 'HEAD refused'])
def test_a_registry_that_will_not_tell_the_digest_on_head_is_asked_with_one_get(tmp_path, proxy, refusal):
    first = pull(proxy, tmp_path, 'app:base')
    proxy.clear()
    if refusal == 'no digest':
        proxy.drop_header('Docker-Content-Digest', method='HEAD')
    else:
        proxy.fail('/manifests/', 405, times=-1, method='HEAD', code='UNSUPPORTED')
    rerun = pull(proxy, tmp_path, 'app:base')
    assert not rerun.changed and rerun.digest == first.digest
    assert [(seen.method, seen.path) for seen in proxy.requests] == [('HEAD', '/v2/app/manifests/base'),
                                                                     ('GET', '/v2/app/manifests/base')]


def probe(proxy, name, platform=None, recorded=None):
    """What RegistrySource.probe says for docker://PROXY/NAME, given what dest holds (`recorded`)."""
    source = RegistrySource(parse_reference('%s/%s' % (proxy.host, name)), RegistryOptions(not_secure=True))
    try:
        return source.probe(parse_platform(platform) if platform else None, recorded)
    finally:
        source.close()


def requests_made(proxy):
    return [(seen.method, seen.path) for seen in proxy.requests]


def test_an_unchanged_index_is_told_by_one_head_without_any_get(tmp_path, proxy, http_registry):
    first = pull(proxy, tmp_path, 'app:multi', platform='linux/arm64')
    assert first.index_digest == http_registry.digests['app:multi']
    recorded = (first.digest, first.index_digest)
    proxy.clear()
    # The index digest the HEAD gives is the one recorded: the platform's manifest in it is the recorded one.
    assert probe(proxy, 'app:multi', 'linux/arm64', recorded) == recorded
    assert requests_made(proxy) == [('HEAD', '/v2/app/manifests/multi')]


def test_without_a_record_an_index_is_fetched_once_by_the_digest_its_head_gave(tmp_path, proxy, http_registry):
    first = pull(proxy, tmp_path, 'app:multi', platform='linux/arm64')
    proxy.clear()
    assert probe(proxy, 'app:multi', 'linux/arm64') == (first.digest, first.index_digest)
    assert requests_made(proxy) == [('HEAD', '/v2/app/manifests/multi'),
                                    ('GET', '/v2/app/manifests/%s' % first.index_digest)]


@pytest.mark.parametrize('held_as', ['manifest', 'index'])
def test_a_pinned_digest_dest_already_holds_needs_no_request(tmp_path, proxy, http_registry, held_as):
    first = pull(proxy, tmp_path, 'app:multi', platform='linux/arm64')
    recorded = (first.digest, first.index_digest)
    pinned = first.digest if held_as == 'manifest' else first.index_digest
    proxy.clear()
    assert probe(proxy, 'app@' + pinned, 'linux/arm64', recorded) == recorded
    assert proxy.requests == []


def test_an_unchanged_index_rerun_through_the_engine_is_one_head(tmp_path, proxy, http_registry):
    first = pull(proxy, tmp_path, 'app:multi', platform='linux/arm64')
    proxy.clear()
    rerun = pull(proxy, tmp_path, 'app:multi', platform='linux/arm64')
    assert not rerun.changed and rerun.digest == first.digest
    assert requests_made(proxy) == [('HEAD', '/v2/app/manifests/multi')]


def test_a_rerun_pinned_to_the_index_dest_holds_makes_no_request(tmp_path, proxy, http_registry):
    first = pull(proxy, tmp_path, 'app:multi', platform='linux/arm64')
    proxy.clear()
    rerun = pull(proxy, tmp_path, 'app@' + first.index_digest, platform='linux/arm64')
    assert not rerun.changed
    assert proxy.requests == []


def test_dropping_the_platform_option_gives_the_host_its_own_image(tmp_path, proxy, http_registry):
    first = pull(proxy, tmp_path, 'app:multi', platform='linux/arm64')
    again = pull(proxy, tmp_path, 'app:multi')
    assert again.changed and again.digest != first.digest
    assert again.platform == str(host_platform())
    assert not pull(proxy, tmp_path, 'app:multi').changed


def test_the_same_content_from_another_index_updates_the_record_so_the_next_probe_is_one_head(
        tmp_path, proxy, http_registry):
    first = pull(proxy, tmp_path, 'app:multi', platform='linux/arm64')
    moved = pull(proxy, tmp_path, 'app:nested', platform='linux/arm64')
    assert not moved.changed and moved.digest == first.digest
    assert moved.after.index_digest == http_registry.digests['app:nested'] != first.index_digest
    proxy.clear()
    assert not pull(proxy, tmp_path, 'app:nested', platform='linux/arm64').changed
    assert requests_made(proxy) == [('HEAD', '/v2/app/manifests/nested')]


def test_a_pinned_digest_dest_does_not_hold_is_fetched(tmp_path, proxy, http_registry):
    recorded = (http_registry.digests['app:other'], None)
    pinned = http_registry.digests['app:base']
    assert probe(proxy, 'app@' + pinned, recorded=recorded) == (pinned, None)
    assert requests_made(proxy) == [('GET', '/v2/app/manifests/%s' % pinned)]


def test_a_moved_tag_is_fetched_by_the_digest_its_head_gave(proxy, http_registry):
    recorded = (http_registry.digests['app:other'], None)
    assert probe(proxy, 'app:base', recorded=recorded) == (http_registry.digests['app:base'], None)
    assert requests_made(proxy) == [('HEAD', '/v2/app/manifests/base')]


def test_another_platform_of_the_same_index_rebuilds(tmp_path, proxy):
    first = pull(proxy, tmp_path, 'app:multi', platform='linux/arm64')
    other = pull(proxy, tmp_path, 'app:multi', platform='linux/amd64')
    assert other.changed and other.index_digest == first.index_digest and other.digest != first.digest
    assert (tmp_path / 'rootfs' / 'etc' / 'arch').read_text() == 'amd64\n'


def test_a_moved_tag_rebuilds_and_shows_both_digests(tmp_path, proxy, http_registry):
    registry = http_registry.registry
    name = unique_name('moving') + ':stable'
    old = pusher.push('oci:%s:base' % http_registry.layout, registry.host, name)['digest']
    first = pull(proxy, tmp_path, name)
    assert first.digest == old
    new = pusher.push('oci:%s:other' % http_registry.layout, registry.host, name)['digest']
    proxy.clear()
    check = pull(proxy, tmp_path, name, check_mode=True)
    assert check.changed and check.entries_written == 0
    assert (check.before.digest, check.after.digest) == (old, new)
    assert proxy.count('GET', '/blobs/') == 1  # the config only: check mode downloads no layer
    assert (tmp_path / 'rootfs' / 'etc' / 'os-release').read_bytes() == b'ID=registry-test\n'
    proxy.clear()
    moved = pull(proxy, tmp_path, name)
    assert moved.changed
    assert moved.msg == 'replace %s with %s in %s' % (old, new, tmp_path / 'rootfs')
    assert (moved.before.digest, moved.after.digest, moved.digest) == (old, new, new)
    assert (tmp_path / 'rootfs' / 'etc' / 'os-release').read_bytes() == b'ID=registry-test-moved\n'
    assert not (tmp_path / 'rootfs' / 'srv').exists()
    # The tag was resolved once, by a HEAD, and its manifest fetched by that digest; the shared bottom layer
    # came from the cache.
    repository, tag = name.split(':')
    assert [(seen.method, seen.path) for seen in proxy.seen(None, '/manifests/')] == [
        ('HEAD', '/v2/%s/manifests/%s' % (repository, tag)), ('GET', '/v2/%s/manifests/%s' % (repository, new))]
    shared_layer, new_layer = layer_digests(http_registry.layout, 'other')
    fetched = [seen.path.rsplit('/', 1)[1] for seen in proxy.seen('GET', '/blobs/')]
    assert len(fetched) == 2 and new_layer in fetched and shared_layer not in fetched  # the config and new_layer


def test_a_stopped_client_gives_up_waiting_to_retry_at_once():
    # Ctrl-C or a failed layer ends the run: downloads waiting to retry must not hold it up.
    client = RegistryClient(parse_reference('127.0.0.1:9/app'), backoff=20.0)
    client.stop()
    started = time.monotonic()
    with pytest.raises(BootstrapError, match='stopped while waiting to retry'):
        client._sleep(3, None)  # pylint: disable=protected-access
    assert time.monotonic() - started < 5


def _put_manifest(registry, name, manifest):
    repository, tag = name.split(':')
    body = json.dumps(manifest).encode('utf-8')
    request = urllib.request.Request('%s/v2/%s/manifests/%s' % (registry.url, repository, tag), data=body,
                                     method='PUT', headers={'Content-Type': manifest['mediaType']})
    with urllib.request.urlopen(request) as response:
        assert response.status == 201, response.status


def _get_manifest(registry, name):
    repository, tag = name.split(':')
    request = urllib.request.Request('%s/v2/%s/manifests/%s' % (registry.url, repository, tag),
                                     headers={'Accept': MANIFEST_ACCEPT})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


@pytest.mark.parametrize('change', [-1, 1])
def test_a_config_whose_descriptor_lies_about_its_size_is_refused(tmp_path, proxy, http_registry, change):
    # The OCI spec makes the size binding: a size that lies could get content past a limit set by it.
    manifest = _get_manifest(http_registry.registry, 'app:base')
    manifest['config']['size'] += change
    _put_manifest(http_registry.registry, 'app:lying-config%d' % change, manifest)
    with pytest.raises(DigestMismatch, match='its descriptor says'):
        pull(proxy, tmp_path, 'app:lying-config%d' % change)
    assert not os.path.lexists(str(tmp_path / 'rootfs'))


def test_a_manifest_whose_index_entry_lies_about_its_size_is_refused(tmp_path, proxy, http_registry):
    index = _get_manifest(http_registry.registry, 'app:multi')
    for entry in index['manifests']:
        entry['size'] += 1
    _put_manifest(http_registry.registry, 'app:lying-index', index)
    with pytest.raises(DigestMismatch, match='its descriptor says'):
        pull(proxy, tmp_path, 'app:lying-index')
    assert not os.path.lexists(str(tmp_path / 'rootfs'))
