# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shared layer store: a second guest writes only its overlay; images in the store never change."""

from __future__ import annotations

import fcntl
import os
import time

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import build_request, run
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, DestinationError
from ansible_collections.virt.bootstrap.plugins.module_utils._writers.dir import write_dir
from ansible_collections.virt.bootstrap.plugins.module_utils._writers.qcow2 import Qcow2Settings, write_qcow2
from ansible_collections.virt.bootstrap.plugins.module_utils._writers.qcow2_store import STALE_NEW_SECONDS, LayerStore, chain_keys
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import (
    OciLayoutBuilder,
    source_uri,
)
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.qcow2_support import (
    NOTHING_LEFT,
    file_sha256,
    image_info,
    layer_tars,
    layered_image,
    leftovers,
    looking_at,
    needs_qemu,
    tree_of,
)

MAX_SIZE = 1 << 30
HASH = '$6$salt$' + 'q' * 86


@pytest.fixture(autouse=True)
def qemu_tools():
    needs_qemu()


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / 'store')
    yield path
    assert leftovers(str(tmp_path)) == NOTHING_LEFT


def build_dir(tmp_path, name):
    path = tmp_path / name
    path.mkdir(mode=0o700)
    return str(path / 'rootfs')


def dir_tree(tmp_path, tars, name='dir-rootfs'):
    root = str(tmp_path / name)
    write_dir(layered_image(tars), root, MAX_SIZE)
    return tree_of(root, filesystem='none')


def top_tree(path, tmp_path):
    with looking_at(path, str(tmp_path / 'look')) as root:
        return tree_of(root)


def store_checksums(store):
    return {name: file_sha256(os.path.join(store, name)) for name in sorted(os.listdir(store))}


def test_second_guest_writes_only_its_overlay(tmp_path, store, tools_run):
    settings = Qcow2Settings(layer_store=store)
    first = build_dir(tmp_path, 'one')
    written = write_qcow2(layered_image(), first, settings, MAX_SIZE)
    assert written.images == ['layer-3.qcow2'] and os.listdir(first) == ['layer-3.qcow2']
    keys = chain_keys([layer.digest for layer in layered_image().layers], 'ext4', None, False)
    assert sorted(os.listdir(store)) == sorted([key + '.qcow2' for key in keys] + [key + '.json' for key in keys])
    before = store_checksums(store)
    tools_run.clear()
    second = build_dir(tmp_path, 'two')
    again = write_qcow2(layered_image(), second, settings, MAX_SIZE)
    assert tools_run == ['qemu-img']  # the overlay is created; nothing is mounted
    assert again.image_root_field == written.image_root_field == '*'
    assert store_checksums(store) == before
    chain = image_info(os.path.join(second, 'layer-3.qcow2'))
    assert chain[0]['backing-filename'] == os.path.join(store, keys[-1] + '.qcow2')
    assert [entry.get('backing-filename') for entry in chain[1:]] == [keys[1] + '.qcow2', keys[0] + '.qcow2', None]
    expected = dir_tree(tmp_path, layer_tars())
    assert top_tree(os.path.join(second, 'layer-3.qcow2'), tmp_path) == expected
    assert all(os.stat(os.path.join(store, key + '.qcow2')).st_mode & 0o777 == 0o444 for key in keys)


def test_an_image_that_adds_a_layer_builds_only_that_one_and_gets_the_same_tree(tmp_path, store, tools_run):
    settings = Qcow2Settings(layer_store=store, size=400 << 20)
    tars = layer_tars()
    write_qcow2(layered_image(tars[:2]), build_dir(tmp_path, 'two-layers'), settings, MAX_SIZE)
    before = store_checksums(store)
    tools_run.clear()
    three = build_dir(tmp_path, 'three-layers')
    write_qcow2(layered_image(tars), three, settings, MAX_SIZE)
    assert tools_run.count('mount') == 1  # the third layer only
    assert all(store_checksums(store)[name] == digest for name, digest in before.items())
    # The third layer touches directories the store's images made (etc, bin): their mtimes are put back.
    assert top_tree(os.path.join(three, 'layer-3.qcow2'), tmp_path) == dir_tree(tmp_path, tars)


def test_an_image_needing_a_bigger_disk_than_the_stores_grows_it_in_its_first_new_image(tmp_path, store):
    settings = Qcow2Settings(layer_store=store)
    tars = layer_tars()
    write_qcow2(layered_image(tars[:2]), build_dir(tmp_path, 'small'), settings, MAX_SIZE)
    before = store_checksums(store)
    big = layered_image(tars)
    for layer, hint in zip(big.layers, [(1 << 20, 100), (1 << 20, 100), (3 << 30, 100)]):
        layer.size_hint = hint  # the third layer says it needs gigabytes
    three = build_dir(tmp_path, 'big')
    write_qcow2(big, three, settings, MAX_SIZE)
    assert all(store_checksums(store)[name] == digest for name, digest in before.items())
    top = os.path.join(three, 'layer-3.qcow2')
    sizes = [entry['virtual-size'] for entry in image_info(top)]
    assert sizes[0] == sizes[1] > 3 << 30 and sizes[2] == sizes[3] < 1 << 30  # the new ones, the store's
    with looking_at(top, str(tmp_path / 'look')) as root:
        fs = os.statvfs(root)
        assert fs.f_blocks * fs.f_frsize > 3 << 30  # the filesystem fills the bigger disk
        assert tree_of(root) == dir_tree(tmp_path, tars)


def test_guest_maps_and_password_leave_the_store_alone(tmp_path, store):
    settings = Qcow2Settings(layer_store=store)
    write_qcow2(layered_image(), build_dir(tmp_path, 'one'), settings, MAX_SIZE)
    before = store_checksums(store)
    second = build_dir(tmp_path, 'two')
    write_qcow2(layered_image(), second, settings, MAX_SIZE, id_mapper=lambda uid, gid: (uid + 100000, gid + 100000),
                root_hash=HASH)
    assert store_checksums(store) == before
    tree = top_tree(os.path.join(second, 'layer-3.qcow2'), tmp_path)
    assert tree['entries']['home/user/notes'][1:3] == (101000, 101000)


def test_abandoned_builds_go_and_live_ones_stay(tmp_path, store):
    layer_store = LayerStore(store)
    layer_store.open()
    abandoned = os.path.join(store, '.build-dead-x.qcow2')
    live = os.path.join(store, '.build-live-y.qcow2')
    for path in (abandoned, live):
        open(path, 'wb').close()
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        LayerStore(store).open()
        assert sorted(os.listdir(store)) == ['.build-live-y.qcow2']
    finally:
        os.close(fd)


def test_temporary_files_of_killed_runs_go_once_stale(tmp_path, store):
    LayerStore(store).open()
    stale, fresh = os.path.join(store, '.new-dead.json'), os.path.join(store, '.new-being-written.json')
    for path in (stale, fresh):
        open(path, 'wb').close()
    old = time.time() - STALE_NEW_SECONDS - 60
    os.utime(stale, (old, old))
    LayerStore(store).open()
    assert sorted(os.listdir(store)) == ['.new-being-written.json']
    os.unlink(fresh)


def test_a_store_others_can_write_is_refused(tmp_path):
    path = tmp_path / 'store'
    path.mkdir(mode=0o777)
    os.chmod(str(path), 0o777)
    with pytest.raises(DestinationError, match='only it can write'):
        write_qcow2(layered_image(), build_dir(tmp_path, 'one'), Qcow2Settings(layer_store=str(path)), MAX_SIZE)


def test_store_settings_are_checked():
    with pytest.raises(BootstrapError, match='flat has none'):
        Qcow2Settings(layers='flat', layer_store='/var/lib/layers').validate()
    with pytest.raises(DestinationError, match='absolute'):
        Qcow2Settings(layer_store='layers').validate()


def test_keys_follow_everything_below_and_what_shapes_the_filesystem():
    base = chain_keys(['sha256:a', 'sha256:b'], 'ext4', None, False)
    assert chain_keys(['sha256:a'], 'ext4', None, False) == base[:1]
    assert chain_keys(['sha256:x', 'sha256:b'], 'ext4', None, False)[1] != base[1]
    for other in (chain_keys(['sha256:a', 'sha256:b'], 'xfs', None, False),
                  chain_keys(['sha256:a', 'sha256:b'], 'ext4', 1 << 30, False),
                  chain_keys(['sha256:a', 'sha256:b'], 'ext4', None, True)):
        assert not set(other) & set(base)


def test_two_guests_through_the_engine_share_the_store(tmp_path, store):
    layout = OciLayoutBuilder(str(tmp_path / 'layout'))
    layout.write_index([(layout.image(layer_tars()), 'latest')])
    src = source_uri('oci', layout.root, 'latest')
    parent = tmp_path / 'guests'
    parent.mkdir()
    results = [run(build_request(src, str(parent / name), format='qcow2', qcow2_layer_store=store))
               for name in ('web1', 'web2')]
    assert results[0].qcow2_images[:-1] == results[1].qcow2_images[:-1]
    assert all(path.startswith(store + '/') for path in results[0].qcow2_images[:-1])
    assert [result.qcow2_top for result in results] == [str(parent / name / 'layer-3.qcow2') for name in ('web1', 'web2')]
    assert results[1].entries_written == 0  # every layer came from the store
    again = run(build_request(src, str(parent / 'web2'), format='qcow2', qcow2_layer_store=store))
    assert not again.changed
    password = run(build_request(src, str(parent / 'web2'), format='qcow2', qcow2_layer_store=store,
                                 root_password_hash=HASH))
    assert password.changed and os.listdir(str(parent / 'web2')) == ['layer-3.qcow2']
    os.unlink(results[0].qcow2_images[1])
    rebuilt = run(build_request(src, str(parent / 'web1'), format='qcow2', qcow2_layer_store=store))
    assert rebuilt.changed and os.path.isfile(results[0].qcow2_images[1])


def test_concurrent_builders_of_the_same_layers_both_end_with_one_image_per_layer(tmp_path, store):
    settings = Qcow2Settings(layer_store=store, size=400 << 20)
    pids = []
    for name in ('one', 'two'):
        images = build_dir(tmp_path, name)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - reports through its exit status
            status = 1
            try:
                write_qcow2(layered_image(), images, settings, MAX_SIZE)
                status = 0
            finally:
                os._exit(status)
        pids.append(pid)
    assert [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids] == [0, 0]
    keys = chain_keys([layer.digest for layer in layered_image().layers], 'ext4', 400 << 20, False)
    assert sorted(os.listdir(store)) == sorted([key + '.qcow2' for key in keys] + [key + '.json' for key in keys])
    expected = dir_tree(tmp_path, layer_tars())
    for name in ('one', 'two'):
        assert top_tree(os.path.join(str(tmp_path / name / 'rootfs'), 'layer-3.qcow2'), tmp_path) == expected
