# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qcow2 chain written through one libguestfs appliance: the primary path's tree, true deltas, one launch.

Every appliance launch costs ~10 s under TCG (KVM is broken on the test machines): the chain is built
once for the module and looked at by several tests.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
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
    acl_pax,
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
    host_sizes = [allocated_bytes(os.path.join(_host[0], name)) for name in written.images]
    assert sizes[0] > len(BIG)
    # The upper layers hold a few small files, and the metadata blocks they changed: no more than the
    # primary path's overlays (measured: 512, 448, 320 KiB against 640, 512, 512 KiB).
    assert all(size < len(BIG) // 2 for size in sizes[1:])
    assert all(size <= host_size + (128 << 10) for size, host_size in zip(sizes[1:], host_sizes[1:]))


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


# -- through the engine ----------------------------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path):
    from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.test_qcow2_engine import Site
    site = Site(tmp_path)
    yield site
    assert leftovers(str(tmp_path)) == NOTHING_LEFT


def test_engine_one_launch_a_build_none_a_rerun_and_the_method_alone_never_rebuilds(site):
    built = site.run(qcow2_method='appliance')
    assert built.changed and built.qcow2_method == 'appliance' and built.appliance_launches == 1
    assert sorted(os.listdir(site.dest)) == image_names(3, 'chain')
    before = site.checksums()
    again = site.run(qcow2_method='appliance')
    assert not again.changed and again.appliance_launches == 0 and again.qcow2_method == 'appliance'
    other_way = site.run(qcow2_method='host-mount')
    assert not other_way.changed and other_way.qcow2_method == 'appliance'  # what wrote the images
    assert site.checksums() == before
    assert site.meta_listing() == ['lock', 'state.json']

    # A password is an edit of the guest overlay in one more launch; the layers stay the very same files.
    lower = {name: (os.stat(site.image(name)).st_ino, file_sha256(site.image(name)))
             for name in image_names(3, 'chain')[:-1]}
    edited = site.run(qcow2_method='appliance', root_password_hash=HASH)
    assert edited.changed and edited.appliance_launches == 1
    assert {name: (os.stat(site.image(name)).st_ino, file_sha256(site.image(name))) for name in lower} == lower
    assert site.shadow() == SHADOW.replace(b'root:*:', b'root:%s:' % HASH.encode())
    with looking_at(site.image('layer-3.qcow2'), str(site.tmp / 'look')) as root:
        info = os.lstat(os.path.join(root, 'etc/shadow'))
        assert (info.st_mode & 0o7777, info.st_uid, info.st_gid) == (0o640, 0, 42)
        assert os.lstat(os.path.join(root, 'etc')).st_mtime == 1500000000
    # Whether the password is set takes a look through a read-only appliance.
    looked = site.run(qcow2_method='appliance', root_password_hash=HASH)
    assert not looked.changed and looked.appliance_launches == 1
    assert site.meta_listing() == ['lock', 'state.json']


def test_a_killed_run_ends_guestfish_and_its_appliance_and_leaves_the_old_images(site):
    site.run(site.other_src)
    before = site.checksums()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child is killed
        try:
            site.run(qcow2_method='appliance')
        finally:
            os._exit(3)
    guestfish = _wait_for(lambda: _children_named(pid, 'guestfish'))[0]
    _wait_for(lambda: _descendants_named(guestfish, 'qemu'))  # the appliance is booting
    tools = [guestfish] + _descendants_named(guestfish, '')
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert all(qemu.wait_gone(tool, 30) for tool in tools)
    assert site.checksums() == before
    result = site.run(site.other_src)  # settles what the killed run left
    assert not result.changed
    assert site.meta_listing() == ['lock', 'state.json']
    assert site.checksums() == before


def test_auto_as_a_real_unprivileged_process_writes_through_the_appliance(tmp_path):
    from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import as_nobody
    home = tempfile.mkdtemp(prefix='vb-nobody-')  # below /tmp: pytest's own directories are root's only
    try:
        os.chmod(home, 0o755)
        os.chown(home, 65534, 65534)
        kernel = os.path.join(home, 'vmlinuz')
        shutil.copyfile(kernel_path(), kernel)  # Debian's is 0600 on some hosts
        os.chmod(kernel, 0o644)
        modules = '/lib/modules/' + os.path.basename(kernel_path()).split('vmlinuz-', 1)[1]

        def build():
            os.environ.update(SUPERMIN_KERNEL=kernel, SUPERMIN_MODULES=modules, HOME=home, TMPDIR=home,
                              LIBGUESTFS_CACHEDIR=home)
            build_dir = os.path.join(home, 'build')
            os.mkdir(build_dir, 0o700)
            written = write_qcow2(layered_image(), os.path.join(build_dir, 'rootfs'), Qcow2Settings(), MAX_SIZE)
            return [written.method, written.appliance_launches, written.images]

        outcome = as_nobody(build)
        assert outcome.get('value') == [APPLIANCE, 1, image_names(3, 'chain')], outcome
        rootfs = os.path.join(home, 'build', 'rootfs')
        tree = tree_in(rootfs, 'layer-3.qcow2', str(tmp_path / 'look'))
        assert tree['entries']['home/user/notes'][1:3] == (1000, 1000)  # owners kept, though written by nobody
        assert tree['xattrs']['bin/ping']['security.capability']
        assert leftovers(home) == NOTHING_LEFT
    finally:
        shutil.rmtree(home)


def kernel_path():
    return sorted(glob.glob('/boot/vmlinuz-*'))[-1]


def _wait_for(find, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError('not seen within %d s' % timeout)


def _processes():
    """{pid: (parent pid, command name)} of every live process."""
    found = {}
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                with open('/proc/%s/stat' % name, 'rb') as stream:
                    head, rest = stream.read().rsplit(b')', 1)
            except (OSError, ValueError):
                continue
            fields = rest.split()
            if fields[0] not in (b'Z', b'X'):
                found[int(name)] = (int(fields[1]), head.split(b'(', 1)[1].decode('utf-8', 'replace'))
    return found


def _children_named(parent, name):
    return [pid for pid, (ppid, command) in _processes().items() if ppid == parent and command.startswith(name)]


def _descendants_named(ancestor, name):
    processes = _processes()
    found, parents = [], {ancestor}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _command) in processes.items():
            if ppid in parents and pid not in parents:
                parents.add(pid)
                changed = True
    for pid in parents - {ancestor}:
        if processes[pid][1].startswith(name):
            found.append(pid)
    return found


@pytest.mark.parametrize('filesystem', ['ext4', 'xfs'])
def test_replacements_of_every_kind_and_acls_give_the_dir_writers_tree(tmp_path, filesystem):
    # tar in the appliance replaces a non-directory by another itself; the plan removes the rest first.
    tars = [
        TarBuilder().dir('./', mode=0o755).file('f', b'f').dir('d').file('d/x', b'x').symlink('s', 'd')
        .dir('e', pax={'SCHILY.xattr.user.old': 'o'}).file('e/y', b'y').symlink('t', 'e').file('h', b'h')
        .hardlink('h2', 'h')
        .dir('acl', mode=0o770, pax=acl_pax(tmp_path)).file('acl/f', b'a', pax={'SCHILY.xattr.user.note': 'n'})
        .tar(),
        TarBuilder().file('s', b'was a link').symlink('f', 'd/x').symlink('d', 'e').dir('t').file('t/z', b'z')
        .fifo('e/y').file('h', b'new h').dir('e').tar(),  # e declared again: its old xattr goes
    ]
    build = tmp_path / 'build'
    build.mkdir(mode=0o700)
    written = write_qcow2(layered_image(tars), str(build / 'rootfs'),
                          Qcow2Settings(method=APPLIANCE, filesystem=filesystem), MAX_SIZE)
    with looking_at(os.path.join(str(build / 'rootfs'), written.images[-1]), str(tmp_path / 'look'),
                    filesystem) as root:
        tree = tree_of(root, filesystem)
    write_dir(layered_image(tars), str(tmp_path / 'dir'), MAX_SIZE)
    for xattrs in tree['xattrs'].values():
        for name in [name for name in xattrs if name.startswith('trusted.SGI_ACL_')]:
            del xattrs[name]  # xfs shows root its own copy of each ACL
    assert differences(tree, tree_of(str(tmp_path / 'dir'), filesystem='none')) == {}
    assert tree['entries']['h2'][5] == b'h'  # the old inode, as a hard link elsewhere must keep it
    assert 'e' not in tree['xattrs']
    assert set(tree['xattrs']['acl']) == {'system.posix_acl_access', 'system.posix_acl_default'}
    # Inherited from the directory's default ACL, as when the applier writes a directory.
    assert set(tree['xattrs']['acl/f']) == {'user.note', 'system.posix_acl_access'}
    assert leftovers(str(tmp_path)) == NOTHING_LEFT


def test_a_full_filesystem_says_which_size_to_raise_and_leaves_nothing(tmp_path):
    build = tmp_path / 'build'
    build.mkdir(mode=0o700)
    with pytest.raises(BootstrapError, match=r'the ext4 filesystem \(16 MiB, qcow2_size\) is full; give a larger'):
        write_qcow2(layered_image([TarBuilder().file('big', BIG * 5).tar()]), str(build / 'rootfs'),
                    Qcow2Settings(method=APPLIANCE, size=16 << 20), MAX_SIZE)
    assert not os.path.exists(str(build / 'appliance'))
    assert leftovers(str(tmp_path)) == NOTHING_LEFT


def test_the_cli_takes_the_method_to_the_engine(site, capsys):
    from ansible_collections.virt.bootstrap.plugins.module_utils import _cli as cli
    # Refused before any launch: the maps need host mounts, which --qcow2-method appliance gives up.
    assert cli.main([site.src, site.dest, '-f', 'qcow2', '--qcow2-method', 'appliance', '--idmap', '0:100000:65536',
                     '-q']) == 1
    assert 'uid_map/gid_map cannot be applied through the libguestfs appliance' in capsys.readouterr().err
    assert not os.path.exists(site.dest) and site.meta_listing() == ['lock']


def test_a_full_host_disk_is_not_reported_as_a_full_guest_filesystem() -> None:
    # Only what failed inside the appliance is the guest filesystem's; qemu-img on the host is the host's.
    from ansible_collections.virt.bootstrap.plugins.module_utils._guestfish import ApplianceError
    from ansible_collections.virt.bootstrap.plugins.module_utils._writers.qcow2_appliance import _full_is_clear
    from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, ToolError
    host = ToolError('making layer 2/3 an image: qemu-img: error while writing: No space left on device')
    with pytest.raises(ToolError) as caught:
        with _full_is_clear(256 << 20, 'ext4', size_given=False):
            raise host
    assert caught.value is host
    with pytest.raises(BootstrapError, match=r'the ext4 filesystem \(256 MiB, sized from the image\) is full'):
        with _full_is_clear(256 << 20, 'ext4', size_given=False):
            raise ApplianceError('writing layer 1/3: guestfish failed (exit 1): tar: Wrote only 512 of 10240 bytes')


def test_ending_a_session_waits_for_every_process_of_its_group() -> None:
    # guestfish's qemu outlives it by seconds: a failed run must not return while the appliance holds its disk.
    from ansible_collections.virt.bootstrap.plugins.module_utils import _guestfish
    from ansible_collections.virt.bootstrap.plugins.module_utils._occupancy import group_running
    child = subprocess.Popen(['sh', '-c', 'sleep 60 & sleep 60 & wait'], start_new_session=True)
    try:
        time.sleep(0.2)
        assert group_running(child.pid)
        child.kill()
        child.wait()
        assert group_running(child.pid)  # its sleeps go on without it
        _guestfish._end_group(child.pid, kill=True)  # pylint: disable=protected-access
        assert not group_running(child.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
