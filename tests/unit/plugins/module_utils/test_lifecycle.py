# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The life of a rootfs the module owns: kills at every step, remounts, guests living in it, mounts."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import time
import typing as t

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import bootstrap as engine
from ansible_collections.virt.bootstrap.plugins.module_utils import _destination as destination
from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, bootstrap, run
from ansible_collections.virt.bootstrap.plugins.module_utils._destination import Destination, identity_of
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import DestinationError
from ansible_collections.virt.bootstrap.plugins.module_utils._state import load_record
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import (
    compress,
    make_tar,
    snapshot_tree,
    write_file,
)

SHADOW = b'root:*:19000:0:99999:7:::\nbin:*:19000::::::\n'
V1 = {'etc': None, 'etc/os-release': b'ID=one\n', 'etc/shadow': SHADOW, 'bin': None, 'bin/sh': b'#!one\n'}
V2 = {'etc': None, 'etc/os-release': b'ID=two\n', 'etc/shadow': SHADOW, 'usr': None, 'usr/lib': None,
      'usr/lib/libc.so': b'\x7fELF'}


class Site:
    def __init__(self, top: str) -> None:
        self.top = top
        self.parent = os.path.join(top, 'hosts')
        os.makedirs(self.parent, exist_ok=True)
        self.dest = os.path.join(self.parent, 'rootfs')
        self.meta = os.path.join(self.parent, '.rootfs.virt-bootstrap')
        self.sources = os.path.join(top, 'sources')
        os.makedirs(self.sources, exist_ok=True)
        self.v1 = self.tarball(V1, 'v1.tar.gz')
        self.v2 = self.tarball(V2, 'v2.tar.gz')

    def tarball(self, entries: t.Mapping[str, t.Any], name: str) -> str:
        return write_file(os.path.join(self.sources, name), compress(make_tar(entries), 'gzip'))

    def run(self, src: t.Optional[str] = None, check_mode: bool = False, **options: t.Any) -> engine.Result:
        return run(Request(src=src, dest=self.dest, **options), check_mode=check_mode)

    def record(self) -> t.Any:
        return load_record(os.path.join(self.meta, 'state.json'))

    def content(self) -> t.Dict[str, t.Any]:
        return content_of(self.dest)

    def assert_no_debris(self) -> None:
        assert sorted(os.listdir(self.meta)) == ['lock', 'state.json']


def content_of(root: str) -> t.Dict[str, t.Any]:
    found: t.Dict[str, t.Any] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames:
            found[os.path.relpath(os.path.join(directory, name), root)] = None
        for name in filenames:
            with open(os.path.join(directory, name), 'rb') as stream:
                found[os.path.relpath(os.path.join(directory, name), root)] = stream.read()
    return found


@pytest.fixture
def site(tmp_path: t.Any) -> Site:
    return Site(str(tmp_path))


# -- a real kill at every step of a rebuild ------------------------------------------------------------------


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after(function: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    def call_then_die(*args: t.Any, **kwargs: t.Any) -> t.Any:
        function(*args, **kwargs)
        _kill_self()
    return call_then_die


def _before(_function: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    def die(*_args: t.Any, **_kwargs: t.Any) -> t.Any:
        _kill_self()
    return die


def _first_rename_of_the_fallback(dest: str) -> t.Callable[..., t.Any]:
    """The two-rename swap, killed between its renames (dest moved away, the new tree not yet in)."""
    real_rename = os.rename

    def rename(source: t.Any, target: t.Any) -> None:
        real_rename(source, target)
        if os.fspath(source) == dest:
            _kill_self()
    return rename


def _remove_one_file_then_die(path: str) -> None:
    os.unlink(os.path.join(path, 'rootfs', 'etc', 'os-release'))
    _kill_self()


# Where the kill lands, and how: each patch runs in the child only.
KILL_POINTS: t.Dict[str, t.Callable[[pytest.MonkeyPatch, Site], None]] = {
    'tree built, nothing recorded': lambda patch, site: patch.setattr(
        engine, 'mark_rootfs', _before(engine.mark_rootfs)),
    'tree flushed': lambda patch, site: patch.setattr(
        engine, 'flush_filesystem', _after(engine.flush_filesystem)),
    'pending record saved': lambda patch, site: patch.setattr(
        Destination, 'save_pending', _after(Destination.save_pending)),
    'swapped, record pending': lambda patch, site: patch.setattr(
        Destination, 'swap_in', _after(Destination.swap_in)),
    'record promoted': lambda patch, site: patch.setattr(
        Destination, 'promote_pending', _after(Destination.promote_pending)),
    'old tree being removed': lambda patch, site: patch.setattr(
        Destination, 'discard', _before(Destination.discard)),
    'old tree half removed': lambda patch, site: patch.setattr(
        destination, 'remove_tree', _remove_one_file_then_die),
    'between the two renames of the fallback swap': lambda patch, site: (
        patch.setattr(destination, '_rename_exchange', lambda _first, _second: False),
        patch.setattr(os, 'rename', _first_rename_of_the_fallback(site.dest))),
}


def _killed_rebuild(site: Site, point: str) -> int:
    """Rebuild dest from v2 in a child process that SIGKILLs itself at `point`; its exit status."""
    context = multiprocessing.get_context('fork')

    def child() -> None:
        with pytest.MonkeyPatch.context() as patch:
            KILL_POINTS[point](patch, site)
            run(Request(src=site.v2, dest=site.dest))
        os._exit(0)  # reached only when the kill point was never passed

    process = context.Process(target=child)
    process.start()
    process.join(60)
    return t.cast(int, process.exitcode)


@pytest.mark.parametrize('point', sorted(KILL_POINTS))
def test_a_run_killed_at_any_step_leaves_a_dest_the_next_run_knows(site: Site, point: str) -> None:
    site.run(site.v1)
    old_tree = snapshot_tree(site.dest)
    assert _killed_rebuild(site, point) == -signal.SIGKILL
    if point == 'between the two renames of the fallback swap':
        # The one window with no tree at dest: the old one is parked beside it, and put back by the next lock.
        assert not os.path.lexists(site.dest)
        parked = [name for name in os.listdir(site.meta) if name.startswith('old-')]
        assert len(parked) == 1 and content_of(os.path.join(site.meta, parked[0], 'old')) == V1
        holds_new = False
    else:
        # Exactly one of the two trees is at dest, never a mix or nothing.
        assert site.content() in (V1, V2)
        holds_new = site.content() == V2
        if not holds_new:
            assert snapshot_tree(site.dest) == old_tree
    # Check mode already sees the truth, before any run settled the bookkeeping.
    assert site.run(site.v2, check_mode=True).changed is not holds_new
    assert site.run(site.v1, check_mode=True).changed is holds_new
    # A rerun with the old source works without force: the module still knows its rootfs.
    again = site.run(site.v1)
    assert again.changed is holds_new
    assert site.content() == V1
    site.assert_no_debris()
    assert site.run(site.v2).changed
    assert site.content() == V2
    assert not site.run(site.v2).changed
    site.assert_no_debris()


def test_every_kill_point_is_reached(site: Site) -> None:
    """The table above stays honest: a point the build no longer passes would test nothing."""
    site.run(site.v1)
    for point in sorted(KILL_POINTS):
        site.run(site.v1)
        assert _killed_rebuild(site, point) == -signal.SIGKILL, point


def test_the_new_tree_is_flushed_before_its_record_and_the_swap(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.run(site.v1)
    calls: t.List[str] = []

    def spy(name: str, function: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
        def record_call(*args: t.Any, **kwargs: t.Any) -> t.Any:
            calls.append(name)
            return function(*args, **kwargs)
        return record_call

    monkeypatch.setattr(engine, 'flush_filesystem', spy('flush', engine.flush_filesystem))
    monkeypatch.setattr(Destination, 'save_pending', spy('pending', Destination.save_pending))
    monkeypatch.setattr(Destination, 'swap_in', spy('swap', Destination.swap_in))
    monkeypatch.setattr(Destination, 'flush_parent', spy('flush parent', Destination.flush_parent))
    monkeypatch.setattr(Destination, 'promote_pending', spy('promote', Destination.promote_pending))
    site.run(site.v2)
    assert calls == ['flush', 'pending', 'swap', 'flush parent', 'promote']


# -- an identity that survives a remount ----------------------------------------------------------------------


def _losetup(image: str) -> str:
    return subprocess.run(['losetup', '--find', '--show', image], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def loop_filesystem(tmp_path: t.Any) -> t.Iterator[t.Callable[[], t.Tuple[str, str]]]:
    """(mount point, loop device) of an ext4 image; each call mounts it again on another loop device."""
    if os.geteuid() != 0:
        pytest.skip('mounting a loop device needs root')
    image = str(tmp_path / 'fs.img')
    placeholder = str(tmp_path / 'placeholder.img')
    for path in (image, placeholder):
        with open(path, 'wb') as stream:
            stream.truncate(32 << 20)
    subprocess.run(['mkfs.ext4', '-q', '-F', image], check=True)
    mount_point = str(tmp_path / 'mnt')
    os.mkdir(mount_point)
    devices: t.List[str] = []

    def mount_again() -> t.Tuple[str, str]:
        if devices:
            subprocess.run(['umount', mount_point], check=True)
            old_device = devices.pop(0)
            subprocess.run(['losetup', '-d', old_device], check=True)
            # Hold the device it had, so the image comes back on another one (another st_dev).
            subprocess.run(['losetup', old_device, placeholder], check=True)
            devices.append(old_device)
        device = _losetup(image)
        devices.insert(0, device)
        subprocess.run(['mount', device, mount_point], check=True)
        return mount_point, device

    try:
        yield mount_again
    finally:
        subprocess.run(['umount', mount_point], check=False, capture_output=True)
        for device in devices:
            subprocess.run(['losetup', '-d', device], check=False, capture_output=True)


def test_the_rootfs_is_still_ours_after_its_filesystem_comes_back_on_another_device(loop_filesystem: t.Any) -> None:
    mount_point, _device = loop_filesystem()
    site = Site(mount_point)
    site.run(site.v1)
    device_before = os.lstat(site.dest).st_dev
    loop_filesystem()
    assert os.lstat(site.dest).st_dev != device_before  # what a reboot can do to btrfs, LVM, NFS...
    result = site.run(site.v1)
    assert not result.changed
    assert site.run(site.v2).changed
    assert site.content() == V2


def test_a_directory_made_again_at_dest_is_not_ours_even_with_the_same_inode(site: Site) -> None:
    site.run(site.v1)
    record = site.record()
    # Simulate inode reuse: strip the mark from the directory; only the mark tells a new directory apart.
    os.removexattr(site.dest, destination._MARK_XATTR)
    assert identity_of(site.dest)['inode'] == record.dest_identity['inode']
    write_file(os.path.join(site.dest, 'theirs'), b'data')
    with pytest.raises(DestinationError, match='not made by this module'):
        site.run(site.v2)


# -- what a guest can do to its rootfs ------------------------------------------------------------------------


def _make_deep_tree(top: str, depth: int) -> None:
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _level in range(depth):
            os.mkdir('d', dir_fd=fd)
            child = os.open('d', os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open('leaf', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), 'wb') as stream:
            stream.write(b'deep')
    finally:
        os.close(fd)


def test_a_very_deep_tree_made_by_a_guest_does_not_wedge_the_rootfs(site: Site) -> None:
    try:
        site.run(site.v1)
        _make_deep_tree(os.path.join(site.dest, 'etc'), 3000)
        result = site.run(site.v2)
        assert result.changed and not result.warnings
        assert site.content() == V2
        site.assert_no_debris()
        _make_deep_tree(os.path.join(site.dest, 'etc'), 3000)
        assert site.run(state='absent').changed
        assert os.listdir(site.parent) == []
    finally:
        # Whatever happened above, pytest cannot remove such a tree itself.
        subprocess.run(['rm', '-rf', '--one-file-system', site.parent], check=False)


def test_an_old_tree_that_cannot_be_removed_does_not_fail_the_swap(site: Site) -> None:
    if os.geteuid() != 0:
        pytest.skip('chattr +i needs root')
    site.run(site.v1)
    stuck = os.path.join(site.dest, 'etc', 'stuck')
    write_file(stuck, b'immutable')
    subprocess.run(['chattr', '+i', stuck], check=True)
    try:
        result = site.run(site.v2)
        assert result.changed
        assert site.content() == V2
        assert site.record().digest == result.digest
        assert any('could not be removed' in warning and 'the next run tries again' in warning
                   for warning in result.warnings), result.warnings
        # The leftover is retried at every lock; its failure is a warning, and the lock is always released.
        for source in (site.v1, site.v2):
            again = bootstrap(source, site.dest)
            assert again.changed and any('could not be removed' in warning for warning in again.warnings)
    finally:
        subprocess.run(['chattr', '-R', '-i', site.parent], check=True)
    final = bootstrap(site.v2, site.dest)
    assert not final.changed and not final.warnings
    assert site.content() == V2
    site.assert_no_debris()


def test_a_failing_recovery_releases_the_lock(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.run(site.v1)
    os.mkdir(os.path.join(site.meta, 'build-killed'))

    def broken(_self: Destination) -> None:
        raise OSError(5, 'Input/output error')

    with monkeypatch.context() as patch:
        patch.setattr(Destination, '_settle_pending', broken)
        with pytest.raises(OSError):
            bootstrap(site.v2, site.dest)
    # Same process, same lock file: a lock left held would make this wait for ever.
    context = multiprocessing.get_context('fork')
    probe = context.Process(target=Destination(site.dest).lock)
    probe.start()
    probe.join(10)
    assert probe.exitcode == 0
    assert bootstrap(site.v2, site.dest).changed


def _occupy(root: str, how: str, ready: t.Any) -> None:
    if how == 'root':
        os.chroot(root)
        os.chdir('/')
    else:
        os.chdir(os.path.join(root, 'etc'))
    ready.set()
    time.sleep(60)


@pytest.fixture
def occupant(site: Site) -> t.Iterator[t.Callable[[str], t.Any]]:
    context = multiprocessing.get_context('fork')
    started: t.List[t.Any] = []

    def start(how: str) -> t.Any:
        ready = context.Event()
        process = context.Process(target=_occupy, args=(site.dest, how, ready))
        process.start()
        assert ready.wait(10)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.join(10)


@pytest.mark.parametrize('how', ['root', 'working directory'])
def test_a_rootfs_in_use_is_never_replaced_or_removed(site: Site, occupant: t.Any, how: str) -> None:
    if how == 'root' and os.geteuid() != 0:
        pytest.skip('chroot needs root')
    site.run(site.v1)
    tree = snapshot_tree(site.dest)
    guest = occupant(how)
    expected = 'process %d \\(.*\\) has it as its %s' % (guest.pid, how)
    for options in ({'src': site.v2}, {'src': site.v2, 'force': True}, {'state': 'absent'}):
        with pytest.raises(DestinationError, match='while it is in use .*' + expected):
            site.run(**options)
        # Check mode says what a run would do once the guest is stopped, and warns that it runs now.
        predicted = site.run(check_mode=True, **options)
        assert predicted.changed
        assert [warning for warning in predicted.warnings if re.search('is in use .*' + expected, warning)]
    assert snapshot_tree(site.dest) == tree
    site.assert_no_debris()
    assert not site.run(site.v1).changed  # nothing to replace: fine while in use
    guest.kill()
    guest.join(10)
    assert site.run(site.v2).changed


@pytest.fixture
def tmpfs_at() -> t.Iterator[t.Callable[[str], None]]:
    if os.geteuid() != 0:
        pytest.skip('mounting needs root')
    mounted: t.List[str] = []

    def mount(path: str) -> None:
        os.makedirs(path, exist_ok=True)
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', path], check=True)
        mounted.append(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(['umount', path], check=False, capture_output=True)


def test_a_rootfs_with_a_mount_inside_is_never_replaced_or_removed(site: Site, tmpfs_at: t.Any) -> None:
    site.run(site.v1)
    inside = os.path.join(site.dest, 'srv', 'data')
    tmpfs_at(inside)
    write_file(os.path.join(inside, 'precious'), b'host data')
    for options in ({'src': site.v2}, {'state': 'absent'}):
        with pytest.raises(DestinationError, match='%s mounted inside it; unmount it first' % inside):
            site.run(**options)
    assert open(os.path.join(inside, 'precious'), 'rb').read() == b'host data'
    subprocess.run(['umount', inside], check=True)
    assert site.run(site.v2).changed


def test_a_dest_that_is_a_mount_point_is_refused_before_any_work(site: Site, tmpfs_at: t.Any) -> None:
    tmpfs_at(site.dest)
    for check_mode in (True, False):
        with pytest.raises(DestinationError, match='is a mount point.*use a directory inside it'):
            site.run(site.v1, check_mode=check_mode)
    assert os.listdir(site.parent) == ['rootfs']  # no bookkeeping, no build
    assert os.listdir(site.dest) == []


def test_update_never_keeps_the_rootfs_dest_holds(site: Site) -> None:
    assert site.run(site.v1, update='never').changed  # nothing there yet: built
    for check_mode in (True, False):
        result = site.run(site.v2, update='never', check_mode=check_mode)
        assert not result.changed and 'update: never' in result.msg
    assert site.content() == V1
    assert site.run(site.v2).changed  # update: always, the default


# -- the root password is an edit, not a rebuild ----------------------------------------------------------------


def test_adding_and_dropping_the_root_password_edits_the_tree_in_place(site: Site) -> None:
    site.run(site.v1)
    identity = identity_of(site.dest)
    # Something a guest wrote: a rebuild would discard it, an edit keeps it.
    write_file(os.path.join(site.dest, 'etc', 'written-by-the-guest'), b'kept')
    added = site.run(site.v1, root_password='s3cret')
    assert added.changed and added.msg == 'set the root password in %s' % site.dest
    assert (added.before.options['root_password'], added.after.options['root_password']) == (False, True)
    with open(os.path.join(site.dest, 'etc', 'shadow'), 'rb') as stream:
        assert stream.read().startswith(b'root:$6$')
    assert site.record().root_password is True and 's3cret' not in open(os.path.join(site.meta, 'state.json')).read()
    assert not site.run(site.v1, root_password='s3cret').changed
    dropped = site.run(site.v1)
    assert dropped.changed and "image's own root password entry" in dropped.msg
    with open(os.path.join(site.dest, 'etc', 'shadow'), 'rb') as stream:
        assert stream.read() == SHADOW
    assert not site.run(site.v1).changed
    assert identity_of(site.dest) == identity
    assert open(os.path.join(site.dest, 'etc', 'written-by-the-guest'), 'rb').read() == b'kept'


def test_a_refusal_seen_without_the_lock_is_decided_again_with_it(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    # What a run sees when it reads the bookkeeping just as another run swaps its tree in: the tree is
    # there, its record not yet. Deciding without the lock is a guess; only the locked decision counts.
    site.run(site.v1)
    real_load = Destination.load_record
    reads: t.List[int] = []

    def first_read_misses_the_record(self: Destination) -> t.Any:
        reads.append(1)
        return None if len(reads) == 1 else real_load(self)

    monkeypatch.setattr(Destination, 'load_record', first_read_misses_the_record)
    result = site.run(site.v2)
    assert result.changed and site.content() == V2
    assert len(reads) >= 2


def test_a_mount_inside_is_seen_through_a_symlinked_parent_of_dest(tmp_path: t.Any, tmpfs_at: t.Any) -> None:
    # /var/lib/libvirt/filesystems -> /data/fs is a common layout; the mount table names resolved paths.
    real = tmp_path / 'real'
    real.mkdir()
    (tmp_path / 'link').symlink_to(real)
    site = Site(str(tmp_path / 'link'))
    site.run(site.v1)
    inside = os.path.join(str(real), 'hosts', 'rootfs', 'srv')
    tmpfs_at(inside)
    write_file(os.path.join(inside, 'precious'), b'host data')
    for options in ({'src': site.v2}, {'state': 'absent'}):
        with pytest.raises(DestinationError, match='mounted inside it'):
            site.run(**options)
    assert open(os.path.join(inside, 'precious'), 'rb').read() == b'host data'


def test_tree_removal_never_goes_through_a_mount(tmp_path: t.Any, tmpfs_at: t.Any) -> None:
    from ansible_collections.virt.bootstrap.plugins.module_utils._rootpath import remove_tree
    top = tmp_path / 'tree'
    mounted = top / 'a' / 'b'
    tmpfs_at(str(mounted))
    write_file(str(mounted / 'precious'), b'host data')
    with pytest.raises(OSError, match='another filesystem is mounted there'):
        remove_tree(str(top))
    assert open(str(mounted / 'precious'), 'rb').read() == b'host data'


def test_a_dest_made_again_while_the_old_rootfs_was_parked_keeps_both(site: Site) -> None:
    site.run(site.v1)
    parked = os.path.join(site.meta, 'old-killed')
    os.mkdir(parked)
    os.rename(site.dest, os.path.join(parked, 'old'))  # a kill between the two renames of the fallback swap
    os.mkdir(site.dest)  # then a play's `file: state=directory`, say
    with pytest.raises(DestinationError, match='was made again while the previous rootfs was set aside'):
        site.run(site.v2)
    assert content_of(os.path.join(parked, 'old')) == V1
    os.rmdir(site.dest)
    assert not site.run(site.v1).changed  # put back, and known again
    site.assert_no_debris()


def test_a_progress_report_that_fails_after_the_swap_does_not_fail_the_run(site: Site) -> None:
    site.run(site.v1)

    def progress(event: t.Dict[str, t.Any]) -> None:
        if event['status'] == 'Extraction completed successfully!':
            raise OSError(28, 'No space left on device')

    result = site.run(site.v2, progress_cb=progress)
    assert result.changed and site.content() == V2
    assert any('progress could not be reported' in warning for warning in result.warnings)
    assert not site.run(site.v2).changed
