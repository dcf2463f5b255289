# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qcow2 writer on real images: the same tree as the dir writer, a clean chain of true deltas."""

from __future__ import annotations

import io
import dataclasses
import os
import shutil
import signal
import struct

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import _qemu as qemu
from ansible_collections.virt.bootstrap.plugins.module_utils._layers import CAPABILITY_XATTR
from ansible_collections.virt.bootstrap.plugins.module_utils._idmap import parse_id_map
from ansible_collections.virt.bootstrap.plugins.module_utils._writers.dir import write_dir
from ansible_collections.virt.bootstrap.plugins.module_utils._writers.qcow2 import (
    Qcow2Settings,
    edit_guest_overlay,
    image_names,
    measure,
    size_for,
    write_qcow2,
)
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, HostileLayer, LayerError, ToolError
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.qcow2_support import (
    BIG,
    NOTHING_LEFT,
    SHADOW,
    allocated_bytes,
    file_sha256,
    image_info,
    layer_tars,
    layered_image,
    leftovers,
    looking_at,
    needs_qemu,
    tree_of,
)
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import (
    CAPABILITY_V2,
    TarBuilder,
    as_nobody,
)

MAX_SIZE = 1 << 30
HASH = '$6$salt$' + 'x' * 86


@pytest.fixture(autouse=True)
def qemu_tools():
    needs_qemu()


@pytest.fixture
def build(tmp_path):
    """A private build directory, as the engine makes beside dest."""
    path = tmp_path / 'build'
    path.mkdir(mode=0o700)
    yield path
    assert leftovers(str(tmp_path)) == NOTHING_LEFT


def dir_tree(tmp_path, name='dir-rootfs', **options):
    root = str(tmp_path / name)
    write_dir(layered_image(), root, MAX_SIZE, **options)
    return tree_of(root, filesystem='none')


def top_tree(images_dir, names, tmp_path, filesystem='ext4'):
    with looking_at(os.path.join(images_dir, names[-1]), str(tmp_path / 'look'), filesystem) as root:
        return tree_of(root, filesystem)


@pytest.mark.parametrize('filesystem', ['ext4', 'xfs'])
def test_chain_holds_the_tree_the_dir_writer_writes(tmp_path, build, filesystem):
    images = str(build / 'rootfs')
    written = write_qcow2(layered_image(), images, Qcow2Settings(filesystem=filesystem), MAX_SIZE)
    assert written.images == ['layer-0.qcow2', 'layer-1.qcow2', 'layer-2.qcow2', 'layer-3.qcow2']
    assert sorted(os.listdir(images)) == written.images
    expected = dir_tree(tmp_path)
    got = top_tree(images, written.images, tmp_path, filesystem)
    assert got == expected
    # What the comparison covers, so that it cannot pass on two empty trees.
    entries = got['entries']
    assert 'data/gone' not in entries and 'opaque/old-a' not in entries and 'opaque/new' in entries
    assert 'bin/sh-again' not in entries and entries['data/sh-link'][4] == 2  # linked across layers
    assert entries['home/user/notes'][1:3] == (1000, 1000) and entries['bin/sh'][0] & 0o4000
    assert got['xattrs']['bin/ping'] == {CAPABILITY_XATTR: CAPABILITY_V2}
    assert written.image_root_field == '*'


def test_chain_is_relative_with_formats_and_each_overlay_holds_its_delta(tmp_path, build):
    images = str(build / 'rootfs')
    names = write_qcow2(layered_image(), images, Qcow2Settings(), MAX_SIZE).images
    chain = image_info(os.path.join(images, names[-1]))
    assert [os.path.basename(entry['filename']) for entry in chain] == list(reversed(names))
    for upper, lower in zip(chain, chain[1:]):
        assert upper['backing-filename'] == os.path.basename(lower['filename'])  # relative
        assert upper['backing-filename-format'] == 'qcow2'
        assert upper['virtual-size'] == lower['virtual-size']
    assert 'backing-filename' not in chain[-1]
    base = allocated_bytes(os.path.join(images, names[0]))
    assert base >= len(BIG)
    # The upper layers hold some KiB each: a few metadata and directory blocks, never the base again.
    for name in names[1:3]:
        assert allocated_bytes(os.path.join(images, name)) < 2 << 20
    assert allocated_bytes(os.path.join(images, names[3])) == 0  # no map, no password: the guest's, empty
    # Moved elsewhere, the chain still opens.
    moved = str(tmp_path / 'moved')
    os.rename(images, moved)
    assert top_tree(moved, names, tmp_path) == dir_tree(tmp_path)


def test_maps_and_password_go_in_the_top_overlay_only(tmp_path, build):
    images = str(build / 'rootfs')
    uid_map = parse_id_map([[0, 100000, 65536]])
    gid_map = parse_id_map([[0, 200000, 65536]])
    written = write_qcow2(layered_image(), images, Qcow2Settings(), MAX_SIZE,
                          id_mapper=lambda uid, gid: (uid_map(uid), gid_map(gid)), root_hash=HASH)
    expected = dir_tree(tmp_path, id_mapper=lambda uid, gid: (uid_map(uid), gid_map(gid)))
    got = top_tree(images, written.images, tmp_path)
    shadow_entry = got['entries'].pop('etc/shadow')
    expected_shadow = expected['entries'].pop('etc/shadow')
    assert got == expected
    assert shadow_entry[:3] == expected_shadow[:3]  # mode and mapped owners kept by the edit
    assert shadow_entry[5] == SHADOW.replace(b'root:*:', b'root:%s:' % HASH.encode())
    assert got['entries']['bin/sh'][0] & 0o4000 and got['entries']['home/user/notes'][1:3] == (101000, 201000)
    capability = got['xattrs']['bin/ping'][CAPABILITY_XATTR]
    assert len(capability) == 24 and struct.unpack_from('<I', capability, 20)[0] == 100000  # v3, mapped root
    # The image layers keep the image's own owners and root entry.
    with looking_at(os.path.join(images, written.images[-2]), str(tmp_path / 'look')) as root:
        lower = tree_of(root)
    assert lower == dir_tree(tmp_path, name='unmapped')


def test_password_edit_copies_only_the_guest_overlay(tmp_path, build):
    images = str(build / 'rootfs')
    names = write_qcow2(layered_image(), images, Qcow2Settings(), MAX_SIZE).images
    lower = {name: (file_sha256(os.path.join(images, name)), os.stat(os.path.join(images, name)).st_ino)
             for name in names[:-1]}
    edited_build = tmp_path / 'edit'
    edited_build.mkdir(mode=0o700)
    edited = str(edited_build / 'rootfs')
    edit_guest_overlay(images, edited, names, 'ext4', HASH)
    assert sorted(os.listdir(edited)) == names
    for name in names[:-1]:
        assert (file_sha256(os.path.join(edited, name)), os.stat(os.path.join(edited, name)).st_ino) == lower[name]
    with looking_at(os.path.join(edited, names[-1]), str(tmp_path / 'look')) as root:
        with open(os.path.join(root, 'etc/shadow'), 'rb') as stream:
            assert stream.read().startswith(b'root:%s:' % HASH.encode())
    # The old top is untouched: it still has the image's entry.
    with looking_at(os.path.join(images, names[-1]), str(tmp_path / 'look')) as root:
        with open(os.path.join(root, 'etc/shadow'), 'rb') as stream:
            assert stream.read() == SHADOW
    assert leftovers(str(tmp_path)) == NOTHING_LEFT


def test_size_comes_from_the_image_with_room_for_the_guest():
    total, entries = measure(layered_image(), MAX_SIZE)
    assert total >= len(BIG) and entries >= 30
    size = size_for(total, entries)
    assert size % (1 << 20) == 0 and size >= total + (512 << 20)


def test_given_size_is_the_virtual_size(tmp_path, build):
    images = str(build / 'rootfs')
    names = write_qcow2(layered_image(), images, Qcow2Settings(size=300 << 20), MAX_SIZE).images
    assert image_info(os.path.join(images, names[-1]))[0]['virtual-size'] == 300 << 20


def test_a_size_too_small_is_a_clear_error_and_leaves_nothing_mounted(tmp_path, build):
    with pytest.raises(BootstrapError) as caught:
        write_qcow2(layered_image(), str(build / 'rootfs'), Qcow2Settings(size=1 << 20), MAX_SIZE)
    assert str(caught.value) == 'the ext4 filesystem (1 MiB, qcow2_size) is full; give a larger qcow2_size'


def test_corrupt_layer_fails_with_layer_error_and_nothing_mounted(tmp_path, build):
    image = layered_image()
    blob = image.layers[1].open_blob().read()
    damaged = blob[:len(blob) // 2] + bytes(64) + blob[len(blob) // 2 + 64:]
    image.layers[1].open_blob = lambda: io.BytesIO(damaged)
    with pytest.raises(LayerError):
        write_qcow2(image, str(build / 'rootfs'), Qcow2Settings(size=300 << 20), MAX_SIZE)


def test_flat_is_one_image_without_backing_holding_the_same_tree(tmp_path, build):
    images = str(build / 'rootfs')
    written = write_qcow2(layered_image(), images, Qcow2Settings(layers='flat'), MAX_SIZE)
    assert written.images == ['rootfs.qcow2'] and sorted(os.listdir(images)) == ['rootfs.qcow2']
    assert sorted(os.listdir(str(build))) == ['rootfs']  # the tree and the raw image are gone
    info = image_info(os.path.join(images, 'rootfs.qcow2'))
    assert len(info) == 1 and 'backing-filename' not in info[0]
    assert top_tree(images, written.images, tmp_path) == dir_tree(tmp_path)
    assert written.image_root_field == '*'


def test_flat_root_directory_keeps_the_image_attributes(tmp_path, build):
    tars = layer_tars()
    tars[0] = TarBuilder().dir('./', mode=0o711, uid=5, gid=6, mtime=1_400_000_000.25,
                               pax={'SCHILY.xattr.user.origin': 'image'}).dir('etc').file('etc/shadow', SHADOW).tar()
    images = str(build / 'rootfs')
    written = write_qcow2(layered_image(tars[:1]), images, Qcow2Settings(layers='flat'), MAX_SIZE)
    root_dir = str(tmp_path / 'dir-rootfs')
    write_dir(layered_image(tars[:1]), root_dir, MAX_SIZE)
    got = top_tree(images, written.images, tmp_path)
    assert got == tree_of(root_dir, filesystem='none')
    assert got['entries']['.'][:4] == (0o40711, 5, 6, 1_400_000_000_250_000_000)
    assert got['xattrs']['.'] == {'user.origin': b'image'}


def test_flat_with_maps_and_password(tmp_path, build):
    uid_map = parse_id_map([[0, 100000, 65536]])

    def mapper(uid, gid):
        return uid_map(uid), uid_map(gid)
    images = str(build / 'rootfs')
    written = write_qcow2(layered_image(), images, Qcow2Settings(layers='flat'), MAX_SIZE, id_mapper=mapper,
                          root_hash=HASH)
    got = top_tree(images, written.images, tmp_path)
    expected = dir_tree(tmp_path, id_mapper=mapper)
    assert got['entries'].pop('etc/shadow')[5].startswith(b'root:%s:' % HASH.encode())
    expected['entries'].pop('etc/shadow')
    assert got == expected and got['entries']['home/user/notes'][1:3] == (101000, 101000)


def test_host_mount_not_as_root_is_a_clear_error_before_any_work(tmp_path):
    os.chmod(str(tmp_path), 0o777)
    images = str(tmp_path / 'rootfs')
    outcome = as_nobody(lambda: write_qcow2(layered_image(), images, Qcow2Settings(method='host-mount'), MAX_SIZE))
    assert outcome.get('error') == 'ToolError', outcome
    assert outcome['message'] == ('qcow2 images are mounted on the host through loop devices, which needs root '
                                  '(running as uid 65534); qcow2_method: appliance writes them through libguestfs '
                                  'instead')
    assert not os.path.exists(images)


def test_image_names():
    assert image_names(2, 'chain') == ['layer-0.qcow2', 'layer-1.qcow2', 'layer-2.qcow2']
    assert image_names(2, 'flat') == ['rootfs.qcow2']


def test_unknown_settings_are_refused(tmp_path):
    for settings, word in ((Qcow2Settings(layers='stacked'), 'qcow2_layers'),
                           (Qcow2Settings(filesystem='btrfs'), 'qcow2_filesystem'),
                           (Qcow2Settings(layers='flat', filesystem='xfs'), 'xfs')):
        with pytest.raises(BootstrapError, match=word):
            write_qcow2(layered_image(), str(tmp_path / 'rootfs'), settings, MAX_SIZE)
    assert not os.path.exists(str(tmp_path / 'rootfs'))
    shutil.rmtree(str(tmp_path), ignore_errors=True)


def test_hostile_layer_is_refused_inside_the_image_and_nothing_stays_mounted(tmp_path, build):
    escape = TarBuilder().dir('etc').symlink('etc/host', '/../../..').file('etc/host/escaped', b'x').tar()
    climb = TarBuilder().file('../outside', b'x').tar()
    written = write_qcow2(layered_image([escape]), str(build / 'rootfs'), Qcow2Settings(size=300 << 20), MAX_SIZE)
    with looking_at(os.path.join(str(build / 'rootfs'), written.images[-1]), str(tmp_path / 'look')) as root:
        assert os.listdir(os.path.join(root, 'etc')) == ['host'] and os.path.isfile(os.path.join(root, 'escaped'))
    other = tmp_path / 'other'
    other.mkdir(mode=0o700)
    with pytest.raises(HostileLayer):
        write_qcow2(layered_image([climb]), str(other / 'rootfs'), Qcow2Settings(size=300 << 20), MAX_SIZE)
    assert leftovers(str(tmp_path)) == NOTHING_LEFT


def test_paths_with_commas_reach_qemu_whole(tmp_path):
    build = tmp_path / 'a,b=c'
    build.mkdir(mode=0o700)
    written = write_qcow2(layered_image(), str(build / 'rootfs'), Qcow2Settings(size=300 << 20), MAX_SIZE)
    assert top_tree(str(build / 'rootfs'), written.images, tmp_path) == dir_tree(tmp_path)
    assert leftovers(str(tmp_path)) == NOTHING_LEFT


def test_sigterm_while_taking_a_mount_down_waits_until_it_is_down():
    reached = []
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(qemu.Interrupted):
        with qemu._TermGuard() as guard:
            guard.disarm()
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # a second one is not raised again
            reached.append('after the signals')
    assert reached == ['after the signals']
    assert signal.getsignal(signal.SIGTERM) == before  # put back


def test_sigterm_while_armed_raises_at_once():
    with pytest.raises(qemu.Interrupted):
        with qemu._TermGuard():
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError('not reached')


def test_sigterm_inside_a_step_waits_until_its_undo_is_registered():
    reached = []
    with pytest.raises(qemu.Interrupted):
        with qemu._TermGuard() as guard:
            with guard.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                reached.append('the step and its undo')
            reached.append('not reached')
    assert reached == ['the step and its undo']


def test_a_cleanup_that_fails_never_hides_the_error_that_started_it(tmp_path, build):
    image = str(build / 'one.qcow2')
    qemu.create_image(image, size=64 << 20)
    work = str(build / 'mount')
    busy = []
    with pytest.raises(BootstrapError) as caught:
        with qemu.mounted_image(image, work, 'ext4', make_filesystem=True) as root:
            busy.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY))  # the unmount will find it busy
            os.chdir(root)
            raise BootstrapError('the write failed')
    os.chdir(str(tmp_path))
    os.close(busy[0])
    message = str(caught.value)
    assert message.startswith('the write failed (and then cleaning up failed: unmounting ')
    assert qemu.release_debris(str(build))  # what the failed cleanup left, the next run takes down
    assert leftovers(str(tmp_path)) == NOTHING_LEFT


def test_flat_too_small_says_which_option_to_raise(build):
    with pytest.raises(ToolError, match='making a 4 MiB ext4 filesystem from the tree .too small. give a larger '
                                        'qcow2_size.: mke2fs failed'):
        write_qcow2(layered_image(), str(build / 'rootfs'), Qcow2Settings(layers='flat', size=4 << 20), MAX_SIZE)


class _Stopped(BaseException):
    pass


def test_sigterm_goes_to_the_callers_own_handler_once_the_mount_is_down():
    def stop(_signum, _frame):
        raise _Stopped()
    before = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(_Stopped):
            with qemu._TermGuard() as guard:
                guard.disarm()
                os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is stop
    finally:
        signal.signal(signal.SIGTERM, before)


def _mark_finished(root):
    """A source's own edit of the finished tree (as virt-builder's fstab edit is)."""
    with open(os.path.join(root, 'etc', 'finished-by-source'), 'wb') as stream:
        stream.write(b'edited\n')


@pytest.mark.parametrize('layers', ['chain', 'flat'])
def test_the_sources_finish_tree_edit_lands_in_the_guest_overlay_never_in_a_layer(tmp_path, build, layers):
    images = str(build / 'rootfs')
    image = dataclasses.replace(layered_image(), finish_tree=_mark_finished)
    written = write_qcow2(image, images, Qcow2Settings(layers=layers), MAX_SIZE)
    assert top_tree(images, written.images, tmp_path)['entries']['etc/finished-by-source'][5] == b'edited\n'
    for name in written.images[:-1]:
        with looking_at(os.path.join(images, name), str(tmp_path / 'look')) as root:
            assert not os.path.lexists(os.path.join(root, 'etc', 'finished-by-source'))


def test_layers_that_tell_their_size_are_read_once(tmp_path, build):
    """A source that knows its sizes (virt-builder builds its one layer on each read) is never read twice."""
    opened = []
    image = layered_image()
    for index, layer in enumerate(image.layers):
        def open_blob(real=layer.open_blob, index=index):
            opened.append(index)
            return real()
        image.layers[index] = dataclasses.replace(layer, open_blob=open_blob, size_hint=(64 << 20, 16384))
    written = write_qcow2(image, str(build / 'rootfs'), Qcow2Settings(), MAX_SIZE)
    assert opened == list(range(len(image.layers)))
    assert top_tree(str(build / 'rootfs'), written.images, tmp_path) == dir_tree(tmp_path)
