# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pruning the blob cache: what dests hold stays, the rest goes once old enough, never under a running pull."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, run
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.cache import (
    STALE_PARTIAL_SECONDS,
    BlobCache,
    BlobFetcher,
    nothing_pruned,
    parse_max_age,
    prune_cache,
)
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.reference import parse_reference
from ansible_collections.virt.bootstrap.plugins.module_utils._sources.registry import RegistryOptions, RegistrySource
from ansible_collections.virt.bootstrap.tests.registry.fault_proxy import FaultProxy
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.registry_support import (
    BASE_TREE,
    files_below,
    layer_descriptors,
    layer_digests,
    rootfs_tree,
)

DAY = 86400.0
LONG_AGO = time.time() - 365 * DAY


def add_blob(cache_dir, data: bytes, mtime: float = LONG_AGO) -> str:
    """A complete cache entry holding `data`, last used at `mtime`; returns its digest."""
    digest = 'sha256:' + hashlib.sha256(data).hexdigest()
    cache = BlobCache(str(cache_dir))
    try:
        fd, partial = cache.new_partial(digest)
        with os.fdopen(fd, 'wb') as stream:
            stream.write(data)
        os.utime(cache.commit(partial, digest), (mtime, mtime))
    finally:
        cache.close()
    return digest


def entry(cache_dir, digest: str) -> str:
    return os.path.join(str(cache_dir), 'blobs', *digest.split(':', 1))


def name_dest(cache_dir, dest, record, digests) -> None:
    cache = BlobCache(str(cache_dir))
    try:
        cache.name_dest_blobs(str(dest), str(record), digests)
    finally:
        cache.close()


def make_record(path) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(str(path), 'w', encoding='utf-8') as stream:
        stream.write('{}')
    return str(path)


# -- ages -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('value, seconds', [
    ('30d', 30 * DAY), ('12h', 12 * 3600), ('1d12h', 1.5 * DAY), ('90m', 5400), ('45s', 45), ('2w', 14 * DAY),
    (' 7D ', 7 * DAY), ('3600', 3600), (3600, 3600), (0, 0), ('0s', 0), (None, None),
])
def test_max_ages_read_as_seconds(value, seconds):
    assert parse_max_age(value) == seconds


@pytest.mark.parametrize('value', ['30 days', '1.5d', 'd', '', '-1', '10y', True])
def test_a_max_age_that_is_not_one_is_refused(value):
    with pytest.raises(BootstrapError, match='cache_max_age .* is not an age|is negative'):
        parse_max_age(value)


def test_options_refuse_a_bad_max_age_and_pruning_without_a_cache():
    with pytest.raises(BootstrapError, match="cache_max_age 'soon' is not an age"):
        RegistryOptions(cache_max_age='soon')
    with pytest.raises(BootstrapError, match='no_cache does not use'):
        RegistryOptions(cache_max_age='30d', no_cache=True)
    assert RegistryOptions(cache_max_age='30d').cache_max_age == '30d'


# -- what goes ------------------------------------------------------------------------------------------------------

def test_old_blobs_no_dest_holds_go_and_the_rest_stays(tmp_path):
    cache_dir = tmp_path / 'cache'
    held_old = add_blob(cache_dir, b'held by a dest')
    unheld_old = add_blob(cache_dir, b'held by nobody, old')
    unheld_young = add_blob(cache_dir, b'held by nobody, used an hour ago', mtime=time.time() - 3600)
    name_dest(cache_dir, tmp_path / 'rootfs', make_record(tmp_path / '.rootfs.virt-bootstrap' / 'state.json'),
              [held_old])
    pruned = prune_cache(str(cache_dir), 30 * DAY)
    assert pruned == dict(nothing_pruned(), blobs_removed=1, bytes_freed=len(b'held by nobody, old'), blobs_kept=2)
    assert [os.path.exists(entry(cache_dir, digest)) for digest in (held_old, unheld_old, unheld_young)] == \
        [True, False, True]


def test_a_dest_whose_record_is_gone_holds_nothing(tmp_path):
    cache_dir = tmp_path / 'cache'
    digest = add_blob(cache_dir, b'of a removed rootfs')
    record = make_record(tmp_path / '.gone.virt-bootstrap' / 'state.json')
    name_dest(cache_dir, tmp_path / 'gone', record, [digest])
    os.unlink(record)
    pruned = prune_cache(str(cache_dir), 0)
    assert (pruned['refs_removed'], pruned['blobs_removed']) == (1, 1)
    assert os.listdir(cache_dir / 'refs') == []


def test_a_ref_that_cannot_be_read_is_dropped(tmp_path):
    cache_dir = tmp_path / 'cache'
    add_blob(cache_dir, b'x')
    (cache_dir / 'refs').mkdir()
    (cache_dir / 'refs' / 'broken.json').write_text('{not json')
    assert prune_cache(str(cache_dir), 0)['refs_removed'] == 1
    assert os.listdir(cache_dir / 'refs') == []


def test_a_dest_named_again_holds_what_it_holds_now(tmp_path):
    cache_dir = tmp_path / 'cache'
    shared, old_only, new_only = (add_blob(cache_dir, data) for data in (b'shared', b'old only', b'new only'))
    record = make_record(tmp_path / '.rootfs.virt-bootstrap' / 'state.json')
    name_dest(cache_dir, tmp_path / 'rootfs', record, [shared, old_only])
    name_dest(cache_dir, tmp_path / 'rootfs', record, [shared, new_only])  # rebuilt with another image
    assert len(os.listdir(cache_dir / 'refs')) == 1
    prune_cache(str(cache_dir), 0)
    assert [os.path.exists(entry(cache_dir, digest)) for digest in (shared, old_only, new_only)] == [True, False, True]


def test_partial_files_of_killed_runs_go_too(tmp_path):
    cache_dir = tmp_path / 'cache'
    add_blob(cache_dir, b'x', mtime=time.time())
    old = time.time() - STALE_PARTIAL_SECONDS - 60
    (cache_dir / 'partial' / 'killed').write_bytes(b'half a blob')
    os.utime(cache_dir / 'partial' / 'killed', (old, old))
    assert prune_cache(str(cache_dir), 30 * DAY)['partials_removed'] == 1
    assert os.listdir(cache_dir / 'partial') == []


def test_a_cache_that_does_not_exist_has_nothing_to_prune(tmp_path):
    assert prune_cache(str(tmp_path / 'none'), 0) == nothing_pruned()
    assert not os.path.exists(tmp_path / 'none')


def test_using_a_cached_blob_makes_it_young_again(tmp_path):
    cache_dir = tmp_path / 'cache'
    digest = add_blob(cache_dir, b'used today')
    cache = BlobCache(str(cache_dir))
    fetcher = BlobFetcher(cache, lambda *args: pytest.fail('a cached blob is not downloaded'))
    with fetcher.open(digest, len(b'used today')) as stream:
        assert stream.read() == b'used today'
    fetcher.close()
    cache.close()
    assert os.stat(entry(cache_dir, digest)).st_mtime > time.time() - 3600
    assert prune_cache(str(cache_dir), DAY)['blobs_kept'] == 1


# -- with other processes -------------------------------------------------------------------------------------------

def _hold_the_cache(cache_dir: str, holding, release) -> None:
    cache = BlobCache(cache_dir)
    holding.set()
    release.wait(30)
    cache.close()


def test_a_cache_in_use_by_another_process_is_not_pruned_until_it_is_done(tmp_path):
    cache_dir = tmp_path / 'cache'
    digest = add_blob(cache_dir, b'old, held by nobody')
    context = multiprocessing.get_context('fork')
    holding, release = context.Event(), context.Event()
    other = context.Process(target=_hold_the_cache, args=(str(cache_dir), holding, release))
    other.start()
    try:
        assert holding.wait(30)
        assert prune_cache(str(cache_dir), 0) == dict(nothing_pruned(), in_use=True)
        assert os.path.exists(entry(cache_dir, digest))
    finally:
        release.set()
        other.join(30)
    assert other.exitcode == 0
    assert prune_cache(str(cache_dir), 0)['blobs_removed'] == 1


def _pull(proxy_host: str, dest: str, cache_dir: str) -> None:
    run(Request(src='docker://%s/app:base' % proxy_host, dest=dest,
                registry=RegistryOptions(not_secure=True, cache_dir=cache_dir)))


def test_pruning_while_another_process_pulls_takes_nothing_from_it(tmp_path, http_registry):
    cache_dir = str(tmp_path / 'cache')
    layers = layer_digests(http_registry.layout, 'base')
    context = multiprocessing.get_context('fork')
    with FaultProxy('http://' + http_registry.registry.host) as proxy:
        proxy.chunk_delay = 0.01  # about a second for the big layer
        puller = context.Process(target=_pull, args=(proxy.host, str(tmp_path / 'rootfs'), cache_dir))
        puller.start()
        try:
            deadline = time.monotonic() + 30
            while not any(proxy.count('GET', digest) for digest in layers) and time.monotonic() < deadline:
                time.sleep(0.01)
            # Its layers are downloading into the cache: prune as eagerly as can be until it is done.
            prunes = []
            while puller.is_alive():
                prunes.append(prune_cache(cache_dir, 0))
                time.sleep(0.01)
        finally:
            puller.join(60)
    assert puller.exitcode == 0
    assert rootfs_tree(str(tmp_path / 'rootfs')) == BASE_TREE
    assert prunes[0] == dict(nothing_pruned(), in_use=True)
    # Once its rootfs is gone, its blobs may go, and do.
    os.unlink(tmp_path / '.rootfs.virt-bootstrap' / 'state.json')
    prunes.append(prune_cache(cache_dir, 0))
    assert sum(pruned['blobs_removed'] for pruned in prunes) == 3
    assert sum(pruned['bytes_freed'] for pruned in prunes) == sum(
        layer['size'] for layer in layer_descriptors(http_registry.layout, 'base'))
    assert files_below(os.path.join(cache_dir, 'blobs')) == []


# -- the engine's call ----------------------------------------------------------------------------------------------

def tidy(tmp_path, registry_host, dest, digests, **options):
    """What the engine does at the end of a present run: RegistrySource.tidy_cache."""
    options.setdefault('cache_dir', str(tmp_path / 'cache'))
    source = RegistrySource(parse_reference('%s/app:base' % registry_host), RegistryOptions(not_secure=True, **options))
    record = tmp_path / ('.%s.virt-bootstrap' % os.path.basename(str(dest))) / 'state.json'
    try:
        return source.tidy_cache(str(dest), str(record), digests)
    finally:
        source.close()


def test_tidy_cache_names_what_dest_holds_and_prunes_the_rest(tmp_path, http_registry):
    host = http_registry.registry.host
    run(Request(src=http_registry.ref('app:base'), dest=str(tmp_path / 'rootfs'),
                registry=RegistryOptions(not_secure=True, cache_dir=str(tmp_path / 'cache'))))
    run(Request(src=http_registry.ref('app:other'), dest=str(tmp_path / 'other'),
                registry=RegistryOptions(not_secure=True, cache_dir=str(tmp_path / 'cache'))))
    base, other = layer_digests(http_registry.layout, 'base'), layer_digests(http_registry.layout, 'other')
    os.unlink(tmp_path / '.other.virt-bootstrap' / 'state.json')  # other's rootfs is gone
    assert tidy(tmp_path, host, tmp_path / 'rootfs', base) is None  # no cache_max_age: named, not pruned
    pruned = tidy(tmp_path, host, tmp_path / 'rootfs', base, cache_max_age=0)
    # other's own layer goes; the layer it shares with base stays.
    assert (pruned['blobs_removed'], pruned['blobs_kept'], pruned['in_use']) == (1, 3, False)
    assert sorted(os.path.basename(path) for path in files_below(str(tmp_path / 'cache' / 'blobs'))) == \
        sorted(digest.split(':')[1] for digest in base)
    assert set(base) & set(other)


def test_tidy_cache_with_no_cache_does_nothing(tmp_path, http_registry):
    assert tidy(tmp_path, http_registry.registry.host, tmp_path / 'rootfs', ['sha256:' + '0' * 64],
                no_cache=True, cache_dir=str(tmp_path / 'cache')) is None
    assert not os.path.exists(tmp_path / 'cache')


def test_a_cache_that_cannot_be_pruned_is_reported_not_raised(tmp_path, http_registry):
    (tmp_path / 'cache').write_text('a file where the cache should be')
    pruned = tidy(tmp_path, http_registry.registry.host, tmp_path / 'rootfs', [], cache_max_age='1d')
    assert pruned['error'].startswith('the blob cache %s could not be pruned: ' % (tmp_path / 'cache'))
    assert pruned['blobs_removed'] == 0
