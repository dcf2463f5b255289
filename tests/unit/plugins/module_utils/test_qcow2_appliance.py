# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qcow2 chain written through one libguestfs appliance: the primary path's tree, true deltas, one launch.

Every appliance launch costs ~10 s under TCG (KVM is broken on the test machines): the chain is built
once for the module and looked at by several tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import _qemu as qemu
from ansible_collections.virt.bootstrap.plugins.module_utils._writers.dir import write_dir
from ansible_collections.virt.bootstrap.plugins.module_utils._writers.qcow2 import (
    APPLIANCE,
    HOST_MOUNT,
    Qcow2Settings,
    image_names,
    write_qcow2,
)
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, HostileLayer, ToolError
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.qcow2_support import (
    BIG,
    NOTHING_LEFT,
    SHADOW,
    allocated_bytes,
    file_sha256,
    image_info,
    layered_image,
    leftovers,
    looking_at,
    needs_qemu,
    tree_of,
)
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import TarBuilder

MAX_SIZE = 1 << 30
HASH = '$6$salt$' + 'x' * 86


def needs_guestfish():
    needs_qemu()  # the trees are compared through host mounts
    try:
        qemu.tool('guestfish')
    except ToolError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope='module', autouse=True)
def force_tcg():
    needs_guestfish()
    saved = os.environ.get('LIBGUESTFS_BACKEND_SETTINGS')
    os.environ['LIBGUESTFS_BACKEND_SETTINGS'] = 'force_tcg'  # KVM is broken here
    yield
    if saved is None:
        del os.environ['LIBGUESTFS_BACKEND_SETTINGS']
    else:
        os.environ['LIBGUESTFS_BACKEND_SETTINGS'] = saved


def build_chain(base, method, root_hash=None, image=None):
    build = base / ('build-' + method)
    build.mkdir(mode=0o700)
    images = str(build / 'rootfs')
    written = write_qcow2(image or layered_image(), images, Qcow2Settings(method=method), MAX_SIZE,
                          root_hash=root_hash)
    return images, written


@pytest.fixture(scope='module')
def chains(tmp_path_factory):
    """The test image written both ways, and by the dir writer."""
    base = tmp_path_factory.mktemp('chains')
    appliance = build_chain(base, APPLIANCE, root_hash=HASH)
    host = build_chain(base, HOST_MOUNT, root_hash=HASH)
    write_dir(layered_image(), str(base / 'dir'), MAX_SIZE)
    yield base, appliance, host
    assert leftovers(str(base)) == NOTHING_LEFT


def tree_in(images_dir, name, look):
    with looking_at(os.path.join(images_dir, name), look) as root:
        return tree_of(root)


def test_appliance_chain_holds_the_tree_of_the_primary_path_and_of_the_dir_writer(chains):
    base, (appliance_dir, written), (host_dir, _host_written) = chains
    names = image_names(3, 'chain')
    assert written.method == APPLIANCE and written.appliance_launches == 1
    assert written.images == names
    for index in range(4):
        # Layer by layer, and the guest overlay: the same tree as the primary path's.
        assert differences(tree_in(appliance_dir, names[index], str(base / 'look-a')),
                           tree_in(host_dir, names[index], str(base / 'look-h'))) == {}, names[index]
    appliance_tree = tree_in(appliance_dir, names[-1], str(base / 'look-a'))
    entries = appliance_tree['entries']
    assert 'data/gone' not in entries and 'opaque/old-a' not in entries and 'bin/sh-again' not in entries
    assert entries['usr/lib/libc.so'][5] is not None and 'lib/libc.so' not in entries
    assert entries['home/user/notes'][1:3] == (1000, 1000)
    assert appliance_tree['xattrs']['bin/ping']['security.capability']
    assert entries['data/sh-link'][4] == 2  # a hard link to layer 0's file
    dir_tree = tree_of(str(base / 'dir'), filesystem='none')
    # The dir tree has no password: the file, and the time of its directory, differ.
    for tree in (appliance_tree, dir_tree):
        del tree['entries']['etc/shadow'], tree['entries']['etc']
    assert differences(appliance_tree, dir_tree) == {}


def differences(tree, other):
    """What differs between two trees of tree_of(), by path: readable where == would only say 'not equal'."""
    found = {}
    for kind in ('entries', 'xattrs'):
        for path in sorted(set(tree[kind]) | set(other[kind])):
            if tree[kind].get(path) != other[kind].get(path):
                found['%s %s' % (kind, path)] = (tree[kind].get(path), other[kind].get(path))
    return found


def test_appliance_chain_is_relative_with_formats_and_each_overlay_holds_its_delta(chains):
    _base, (appliance_dir, written), _host = chains
    top = os.path.join(appliance_dir, written.images[-1])
    chain = image_info(top)
    assert [os.path.basename(entry['filename']) for entry in chain] == \
        ['layer-3.qcow2', 'layer-2.qcow2', 'layer-1.qcow2', 'layer-0.qcow2']
    for entry, below in zip(chain, chain[1:]):
        assert entry['backing-filename'] == os.path.basename(below['filename'])
        assert entry['backing-filename-format'] == 'qcow2'
    sizes = [allocated_bytes(os.path.join(appliance_dir, name)) for name in written.images]
    assert sizes[0] > len(BIG)
    # The upper layers hold a few small files, and the metadata blocks they changed.
    assert all(size < len(BIG) // 2 for size in sizes[1:])


def test_password_lands_in_the_guest_overlay_with_owner_and_mode_and_the_image_entry_is_kept(chains):
    base, (appliance_dir, written), _host = chains
    assert written.image_root_field == '*'
    with looking_at(os.path.join(appliance_dir, written.images[-1]), str(base / 'look-p')) as root:
        info = os.lstat(os.path.join(root, 'etc/shadow'))
        with open(os.path.join(root, 'etc/shadow'), 'rb') as stream:
            assert stream.read() == SHADOW.replace(b'root:*:', b'root:%s:' % HASH.encode())
    assert (info.st_mode & 0o7777, info.st_uid, info.st_gid) == (0o640, 0, 42)
    with looking_at(os.path.join(appliance_dir, written.images[-2]), str(base / 'look-p')) as root:
        with open(os.path.join(root, 'etc/shadow'), 'rb') as stream:
            assert stream.read() == SHADOW  # the layer below never changes


def test_maps_are_refused_in_the_appliance_with_the_way_that_works(tmp_path):
    from ansible_collections.virt.bootstrap.plugins.module_utils._idmap import parse_id_map
    uid_map = parse_id_map([[0, 100000, 65536]], 'uid_map')
    with pytest.raises(BootstrapError, match='qcow2_method: host-mount'):
        write_qcow2(layered_image(), str(tmp_path / 'rootfs'), Qcow2Settings(method=APPLIANCE), MAX_SIZE,
                    id_mapper=lambda uid, gid: (uid_map(uid), gid))
    assert not os.path.exists(str(tmp_path / 'rootfs'))


def test_a_hostile_layer_is_refused_before_any_image_is_written(tmp_path):
    tars = [TarBuilder().dir('etc').tar(), TarBuilder().file('../escape', b'x').tar()]
    image = layered_image(tars)
    build = tmp_path / 'build'
    build.mkdir(mode=0o700)
    with pytest.raises(HostileLayer):
        write_qcow2(image, str(build / 'rootfs'), Qcow2Settings(method=APPLIANCE), MAX_SIZE)
    assert os.listdir(str(build / 'rootfs')) == []
    assert not os.path.exists(str(build / 'appliance'))
    assert not _guestfish_processes(str(build))


def _guestfish_processes(below):
    """guestfish and qemu processes whose command line names a path below `below`."""
    found = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % name, 'rb') as stream:
                argv = stream.read().decode('utf-8', 'replace').replace('\0', ' ')
        except OSError:
            continue
        if below in argv and ('qemu' in argv or 'guestfish' in argv) and not qemu.wait_gone(int(name), 0):
            found.append(argv)
    return found
