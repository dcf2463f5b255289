# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""format: qcow2 through the engine: build beside and swap, idempotency, password edits, guests, kills."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import threading
import time

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import _cli as cli
from ansible_collections.virt.bootstrap.plugins.module_utils import _layers as layers
from ansible_collections.virt.bootstrap.plugins.module_utils import _qemu as qemu
from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, bootstrap, build_request, run
from ansible_collections.virt.bootstrap.plugins.module_utils._destination import identity_of
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, DestinationError, ToolError
from ansible_collections.virt.bootstrap.plugins.module_utils._state import load_record
from ansible_collections.virt.bootstrap.plugins.module_utils._writers.dir import write_dir
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import (
    OciLayoutBuilder,
    source_uri,
)
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.qcow2_support import (
    NOTHING_LEFT,
    SHADOW,
    file_sha256,
    layer_tars,
    layered_image,
    leftovers,
    looking_at,
    needs_qemu,
    tree_of,
)

HASH = '$6$salt$' + 'y' * 86
OTHER_HASH = '$6$pepper$' + 'z' * 86
NAMES = ['layer-0.qcow2', 'layer-1.qcow2', 'layer-2.qcow2', 'layer-3.qcow2']


@pytest.fixture(autouse=True)
def qemu_tools():
    needs_qemu()


class Site:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.parent = tmp_path / 'images'
        self.parent.mkdir()
        self.dest = str(self.parent / 'web1')
        self.meta = str(self.parent / '.web1.virt-bootstrap')
        layout = OciLayoutBuilder(str(tmp_path / 'layout'))
        layout.write_index([(layout.image(layer_tars()), 'latest')])
        self.src = source_uri('oci', layout.root, 'latest')
        other = OciLayoutBuilder(str(tmp_path / 'other'))
        other.write_index([(other.image(layer_tars()[:2]), 'latest')])
        self.other_src = source_uri('oci', other.root, 'latest')

    def run(self, src=None, check_mode=False, **options):
        options.setdefault('format', 'qcow2')
        return run(build_request(src or self.src, self.dest, **options), check_mode=check_mode)

    def image(self, name):
        return os.path.join(self.dest, name)

    def checksums(self):
        return {name: file_sha256(self.image(name)) for name in sorted(os.listdir(self.dest))}

    def top_tree(self, name=NAMES[-1]):
        with looking_at(self.image(name), str(self.tmp / 'look')) as root:
            return tree_of(root)

    def shadow(self):
        with looking_at(self.image(NAMES[-1]), str(self.tmp / 'look')) as root:
            with open(os.path.join(root, 'etc/shadow'), 'rb') as stream:
                return stream.read()

    def meta_listing(self):
        return sorted(os.listdir(self.meta))


@pytest.fixture
def site(tmp_path):
    site = Site(tmp_path)
    yield site
    assert leftovers(str(tmp_path)) == NOTHING_LEFT


def test_builds_a_chain_beside_dest_and_swaps_it_in(site, tmp_path):
    result = site.run()
    assert result.changed and result.format == 'qcow2'
    assert result.qcow2_images == [site.image(name) for name in NAMES]
    assert result.qcow2_top == site.image(NAMES[-1])
    assert result.qcow2_method == 'host-mount'
    assert sorted(os.listdir(site.dest)) == NAMES
    assert site.meta_listing() == ['lock', 'state.json']
    record = load_record(os.path.join(site.meta, 'state.json'))
    assert record.format == 'qcow2' and record.dest_identity == identity_of(site.dest)
    assert record.options['qcow2_layers'] == 'chain' and record.image_root_field == '*'
    dir_root = str(tmp_path / 'dir')
    write_dir(layered_image(), dir_root, 1 << 30)
    assert site.top_tree() == tree_of(dir_root, filesystem='none')


def test_rerun_unchanged_runs_no_tool_and_check_mode_writes_nothing(site, tools_run):
    check = site.run(check_mode=True)
    assert check.changed and not os.path.exists(site.dest) and not os.path.exists(site.meta)
    assert tools_run == []
    site.run()
    assert tools_run.count('mount') == 3  # one mount per layer; the guest's overlay, with nothing to write, none
    before = site.checksums()
    tools_run.clear()
    again = site.run()
    assert not again.changed and again.qcow2_top == site.image(NAMES[-1])
    assert site.run(check_mode=True).changed is False
    assert tools_run == []  # nothing exported, attached or mounted
    assert site.checksums() == before


def test_changed_qcow2_options_rebuild(site):
    site.run()
    result = site.run(qcow2_size='700M')
    assert result.changed and result.msg.endswith('options changed')
    with open(site.image(NAMES[0]), 'rb'):
        pass
    out = subprocess.run(['qemu-img', 'info', '--output=json', site.image(NAMES[-1])], check=True,
                         capture_output=True, text=True).stdout
    assert '"virtual-size": %d' % (700 << 20) in out


def test_password_is_an_edit_of_the_guest_overlay_only(site):
    site.run()
    lower = {name: (file_sha256(site.image(name)), os.stat(site.image(name)).st_ino) for name in NAMES[:-1]}
    result = site.run(root_password_hash=HASH)
    assert result.changed and result.msg.startswith('set the root password')
    assert site.shadow() == SHADOW.replace(b'root:*:', b'root:%s:' % HASH.encode())
    assert {name: (file_sha256(site.image(name)), os.stat(site.image(name)).st_ino)
            for name in NAMES[:-1]} == lower
    assert site.run(root_password_hash=HASH).changed is False  # a read-only look says it is set
    assert site.run(root_password_hash=OTHER_HASH).changed
    assert site.shadow().startswith(b'root:%s:' % OTHER_HASH.encode())
    dropped = site.run()
    assert dropped.changed and 'put back' in dropped.msg
    assert site.shadow() == SHADOW
    assert site.meta_listing() == ['lock', 'state.json']


def test_a_look_for_the_password_waits_while_another_run_holds_the_lock(site):
    """A run holding the lock may take down what it finds mounted in the bookkeeping: never a live look."""
    site.run(root_password_hash=HASH)
    fd = os.open(os.path.join(site.meta, 'lock'), os.O_RDWR | os.O_CLOEXEC)
    results = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        looker = threading.Thread(target=lambda: results.append(site.run(root_password_hash=HASH, check_mode=True)))
        looker.start()
        looked_meanwhile = False
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            looked_meanwhile |= any(name.startswith('build-look-') for name in os.listdir(site.meta))
            time.sleep(0.01)
        assert looker.is_alive() and not looked_meanwhile
    finally:
        os.close(fd)
    looker.join(60)
    assert [result.changed for result in results] == [False]
    assert site.meta_listing() == ['lock', 'state.json']


def test_password_edit_keeps_what_the_guest_wrote(site):
    site.run()
    with qemu.mounted_image(site.image(NAMES[-1]), str(site.tmp / 'guest'), 'ext4') as root:
        with open(os.path.join(root, 'guest-data'), 'wb') as stream:
            stream.write(b'written by the guest')
    site.run(root_password_hash=HASH)
    tree = site.top_tree()
    assert tree['entries']['guest-data'][5] == b'written by the guest'


def test_maps_and_password_in_one_build(site):
    result = site.run(root_password_hash=HASH, uid_map=[[0, 100000, 65536]], gid_map=[[0, 100000, 65536]])
    assert result.changed
    tree = site.top_tree()
    assert tree['entries']['home/user/notes'][1:3] == (101000, 101000)
    assert tree['entries']['.'][1:3] == (100000, 100000)
    with looking_at(site.image(NAMES[-2]), str(site.tmp / 'look')) as root:
        assert os.stat(os.path.join(root, 'home/user/notes')).st_uid == 1000  # the layer keeps the image's owner


def test_images_held_open_are_never_replaced(site):
    site.run()
    before = site.checksums()
    with open(site.image(NAMES[-1]), 'rb') as held:
        guest = subprocess.Popen(['sleep', '60'], stdin=held)
    try:
        with pytest.raises(DestinationError) as caught:
            site.run(site.other_src)
        assert 'process %d (sleep) has layer-3.qcow2 open' % guest.pid in str(caught.value)
        with pytest.raises(DestinationError):
            site.run(root_password_hash=HASH)
    finally:
        guest.kill()
        guest.wait()
    assert site.checksums() == before
    assert site.meta_listing() == ['lock', 'state.json']


def _forked_run(site, hold_in_layer, src):
    """A run in a child process that stops (and says so on a pipe) while layer `hold_in_layer` is mounted."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child is killed
        try:
            os.close(reader)
            real = layers.RootfsBuilder.apply_layer

            def held(builder, layer, label='layer'):
                if label.startswith('layer %d/' % hold_in_layer):
                    os.write(writer, b'mounted')
                    time.sleep(120)
                return real(builder, layer, label)
            layers.RootfsBuilder.apply_layer = held
            site.run(src)
        finally:
            os._exit(3)
    os.close(writer)
    assert os.read(reader, 16) == b'mounted'
    os.close(reader)
    return pid


def test_a_killed_run_leaves_the_old_images_and_the_next_run_takes_its_mounts_down(site):
    site.run(site.other_src)
    before = site.checksums()
    pid = _forked_run(site, 2, site.src)
    assert leftovers(site.meta)['mounts']  # the child is writing into a mounted image
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert site.checksums() == before
    left = leftovers(site.meta)
    assert left['mounts'] and left['loops'] and left['daemons']  # what the kill left
    result = site.run(site.other_src)
    assert not result.changed
    assert leftovers(site.meta) == NOTHING_LEFT
    assert site.meta_listing() == ['lock', 'state.json']
    assert site.checksums() == before


def test_sigterm_takes_the_mount_down_before_the_run_ends(site):
    site.run(site.other_src)
    before = site.checksums()
    pid = _forked_run(site, 2, site.src)
    os.kill(pid, signal.SIGTERM)
    status = os.waitpid(pid, 0)[1]
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3  # it ran its cleanup and got to the end
    assert leftovers(site.meta) == NOTHING_LEFT
    assert site.meta_listing() == ['lock', 'state.json']
    assert site.checksums() == before


def test_corrupt_layer_leaves_the_old_images(site, tmp_path):
    site.run(site.other_src)
    before = site.checksums()
    layout = OciLayoutBuilder(str(tmp_path / 'bad'))
    manifest = layout.image(layer_tars())
    blob = open(layout.blob_path(manifest['layers'][1]['digest']), 'rb').read()
    layout.tamper(manifest['layers'][1], blob[:-40] + bytes(40))
    layout.write_index([(manifest, 'latest')])
    with pytest.raises(BootstrapError):
        site.run(source_uri('oci', layout.root, 'latest'), qcow2_size='600M')
    assert site.checksums() == before
    assert site.meta_listing() == ['lock', 'state.json']


def test_missing_program_names_its_debian_package(site, monkeypatch, tmp_path):
    empty = tmp_path / 'bin'
    empty.mkdir()
    for name in ('qemu-img', 'python3'):
        os.symlink(qemu.shutil.which(name), str(empty / name))
    monkeypatch.setenv('PATH', str(empty))
    monkeypatch.setattr(qemu, 'SYSTEM_PATH', '')
    with pytest.raises(ToolError) as caught:
        site.run(qcow2_method='host-mount')
    assert str(caught.value) == 'qemu-storage-daemon is not installed: install the Debian package qemu-system-common'
    with pytest.raises(ToolError) as caught:
        site.run()  # auto: host mounts cannot work here, so the appliance it is
    assert str(caught.value) == 'guestfish is not installed: install the Debian package libguestfs-tools'
    assert not os.path.exists(site.dest)


def test_bootstrap_and_the_cli_write_qcow2(site, tmp_path):
    result = bootstrap(site.src, str(tmp_path / 'api'), fmt='qcow2')
    assert result.qcow2_top == str(tmp_path / 'api' / NAMES[-1])
    assert cli.main([site.src, str(tmp_path / 'cli'), '-f', 'qcow2', '-q']) == 0
    assert sorted(os.listdir(str(tmp_path / 'cli'))) == NAMES
    assert cli.main([site.src, str(tmp_path / 'flat'), '-f', 'qcow2', '--qcow2-layers', 'flat', '--qcow2-size', '600M',
                     '-q']) == 0
    assert sorted(os.listdir(str(tmp_path / 'flat'))) == ['rootfs.qcow2']


def test_state_absent_removes_the_images(site):
    site.run()
    result = run(Request(src=None, dest=site.dest, format='qcow2', state='absent'))
    assert result.changed and not os.path.exists(site.dest) and not os.path.exists(site.meta)


def test_flat_through_the_engine_and_its_password_edit(site, tmp_path):
    result = site.run(qcow2_layers='flat')
    assert result.qcow2_images == [site.image('rootfs.qcow2')] and result.qcow2_method == 'flat'
    dir_root = str(tmp_path / 'dir')
    write_dir(layered_image(), dir_root, 1 << 30)
    assert site.top_tree('rootfs.qcow2') == tree_of(dir_root, filesystem='none')
    chain = site.run()
    assert chain.changed and chain.msg.endswith('options changed') and sorted(os.listdir(site.dest)) == NAMES
    site.run(qcow2_layers='flat')
    edited = site.run(qcow2_layers='flat', root_password_hash=HASH)
    assert edited.changed and edited.msg.startswith('set the root password')
    with looking_at(site.image('rootfs.qcow2'), str(tmp_path / 'look')) as root:
        with open(os.path.join(root, 'etc/shadow'), 'rb') as stream:
            assert stream.read().startswith(b'root:%s:' % HASH.encode())
    assert site.run(qcow2_layers='flat', root_password_hash=HASH).changed is False


def test_an_image_removed_behind_our_back_is_rebuilt(site):
    site.run()
    os.unlink(site.image(NAMES[1]))
    result = site.run()
    assert result.changed and 'changed or removed outside this module' in result.msg
    assert sorted(os.listdir(site.dest)) == NAMES


def test_switching_between_dir_and_qcow2_rebuilds_in_place(site):
    site.run(format='dir')
    assert os.path.isfile(os.path.join(site.dest, 'etc/hostname'))
    to_qcow2 = site.run()
    assert to_qcow2.changed and sorted(os.listdir(site.dest)) == NAMES
    back = site.run(format='dir')
    assert back.changed and back.qcow2_images == [] and os.path.isfile(os.path.join(site.dest, 'etc/hostname'))
    assert site.meta_listing() == ['lock', 'state.json']


def test_check_mode_says_which_way_a_build_would_take(site, monkeypatch):
    assert site.run(check_mode=True, qcow2_method='appliance').qcow2_method == 'appliance'
    assert site.run(check_mode=True).qcow2_method == 'host-mount'
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, 'exists', lambda path: path != '/dev/fuse' and real_exists(path))
    assert site.run(check_mode=True).qcow2_method == 'appliance'  # no FUSE: host-mount cannot export an image
    assert not os.path.exists(site.dest)
