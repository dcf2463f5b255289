# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Path-safety primitives: resolution inside a root (openat2 and our own walk), removing trees."""

from __future__ import annotations

import ctypes
import errno
import os
import pathlib
import shutil
import stat
import subprocess
import tempfile
import typing as t

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import _rootpath as rootpath
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import HostileLayer, LayerError
from ansible_collections.virt.bootstrap.plugins.module_utils._rootpath import (
    MAX_LINK_HOPS,
    InRootDirs,
    open_dir_in_root,
)
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import (
    NOBODY,
    RESOLUTIONS,
    as_nobody,
    use_resolution,
)


@pytest.fixture(params=RESOLUTIONS)
def resolution(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> t.List[str]:
    """Runs the test with openat2 and with our own walk; the paths given to openat2."""
    return use_resolution(request.param, monkeypatch)


@pytest.fixture
def tree(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / 'rootfs'
    (root / 'usr' / 'lib').mkdir(parents=True)
    (root / 'lib').symlink_to('usr/lib')
    (tmp_path / 'outside').mkdir()
    return root


def _resolved(root: pathlib.Path, parts: t.Tuple[str, ...], create: bool = False) -> t.Tuple[t.Tuple[str, ...], int]:
    """(resolved path, inode of the directory) for `parts` below `root`."""
    root_fd = os.open(str(root), rootpath.DIR_FLAGS)
    dirs = InRootDirs(root_fd)
    try:
        resolved, fd = dirs.resolve(parts, create=create)
        return resolved, os.fstat(fd).st_ino
    finally:
        dirs.release()
        os.close(root_fd)


def _chain(root: pathlib.Path, links: int) -> None:
    """link0 -> link1 -> ... -> link(N-1) -> usr: following link0 takes `links` hops."""
    for number in range(links):
        target = 'link%d' % (number + 1) if number + 1 < links else 'usr'
        (root / ('link%d' % number)).symlink_to(target)


@pytest.mark.parametrize('parts, expected', [
    (('lib',), ('usr', 'lib')),
    (('usr', 'lib'), ('usr', 'lib')),
    (('abs',), ('usr', 'lib')),
    (('up',), ('usr', 'lib')),
    (('usr', 'lib', 'back'), ('usr',)),
], ids=['relative-link', 'no-link', 'absolute-link', 'climbing-link', 'dotdot-link'])
def test_paths_resolve_inside_the_root(tree: pathlib.Path, resolution: t.List[str], parts: t.Tuple[str, ...],
                                       expected: t.Tuple[str, ...]) -> None:
    (tree / 'abs').symlink_to('/usr/lib')
    (tree / 'up').symlink_to('../../../../usr/lib')
    (tree / 'usr' / 'lib' / 'back').symlink_to('..')
    resolved, inode = _resolved(tree, parts)
    assert resolved == expected
    assert inode == os.lstat(os.path.join(str(tree), *expected)).st_ino


def test_the_kernel_resolves_what_is_not_cached(tree: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = use_resolution('openat2', monkeypatch)
    _resolved(tree, ('lib',))
    assert calls == ['lib']


@pytest.mark.parametrize('hops, fails', [(MAX_LINK_HOPS, False), (MAX_LINK_HOPS + 1, True)])
def test_symlinks_are_followed_up_to_the_kernel_limit(
        tree: pathlib.Path, resolution: t.List[str], hops: int, fails: bool) -> None:
    _chain(tree, hops)
    if fails:
        with pytest.raises(LayerError, match='more than 40 symlinks to follow'):
            _resolved(tree, ('link0',))
    else:
        assert _resolved(tree, ('link0',))[0] == ('usr',)


def test_a_missing_directory_is_file_not_found_unless_created(tree: pathlib.Path, resolution: t.List[str]) -> None:
    (tree / 'dangling').symlink_to('/usr/lib64/deep')
    with pytest.raises(FileNotFoundError):
        _resolved(tree, ('dangling',))
    assert _resolved(tree, ('dangling', 'x'), create=True)[0] == ('usr', 'lib64', 'deep', 'x')
    assert (tree / 'usr' / 'lib64' / 'deep' / 'x').is_dir()


def test_a_file_on_the_way_is_not_a_directory(tree: pathlib.Path, resolution: t.List[str]) -> None:
    (tree / 'usr' / 'file').write_bytes(b'')
    (tree / 'to-file').symlink_to('usr/file')
    for parts in (('usr', 'file'), ('to-file', 'x')):
        with pytest.raises(LayerError, match='/usr/file is not a directory'):
            _resolved(tree, parts)


@pytest.mark.skipif(os.geteuid() != 0, reason='mounting needs root')
def test_a_mount_point_below_the_root_is_never_crossed(tree: pathlib.Path, resolution: t.List[str]) -> None:
    mount_point = tree / 'usr' / 'lib' / 'mnt'
    mount_point.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', 'tmpfs', str(mount_point)], check=True)
    try:
        (mount_point / 'inside').mkdir()
        for parts in (('usr', 'lib', 'mnt', 'inside'), ('lib', 'mnt')):
            with pytest.raises(HostileLayer, match='crosses a mount point'):
                _resolved(tree, parts)
    finally:
        subprocess.run(['umount', str(mount_point)], check=True)


def test_without_openat2_the_walk_does_the_same(tree: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A seccomp filter (as in some container runtimes) answers ENOSYS or EPERM for calls it does not know.
    def refused_by_seccomp(*args: t.Any) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(rootpath, '_openat2_works', None)
    monkeypatch.setattr(rootpath, '_syscall', lambda: refused_by_seccomp)
    root_fd = os.open(str(tree), rootpath.DIR_FLAGS)
    try:
        assert not rootpath.openat2_works(root_fd)
        assert _resolved(tree, ('lib',))[0] == ('usr', 'lib')
    finally:
        os.close(root_fd)


@pytest.mark.parametrize('root_name', ['root\nwith newline', 'root (deleted)', 'root with space'])
def test_odd_root_names_resolve_the_same(tmp_path: pathlib.Path, resolution: t.List[str], root_name: str) -> None:
    root = tmp_path / root_name
    (root / 'usr' / 'lib').mkdir(parents=True)
    (root / 'lib').symlink_to('/usr/lib')
    assert _resolved(root, ('lib',))[0] == ('usr', 'lib')


def test_the_cache_follows_what_forget_is_told(tree: pathlib.Path, resolution: t.List[str]) -> None:
    root_fd = os.open(str(tree), rootpath.DIR_FLAGS)
    dirs = InRootDirs(root_fd)
    try:
        assert dirs.resolve(('lib',))[0] == ('usr', 'lib')
        (tree / 'lib').unlink()
        (tree / 'lib').symlink_to('usr')
        dirs.forget(('lib',))
        assert dirs.resolve(('lib',))[0] == ('usr',)
        dirs.resolve(('usr',))
        os.rename(str(tree / 'usr'), str(tree / 'old-usr'))
        (tree / 'usr').mkdir()
        dirs.forget(('usr',))
        assert os.fstat(dirs.resolve(('usr',))[1]).st_ino == os.lstat(str(tree / 'usr')).st_ino
    finally:
        dirs.release()
        os.close(root_fd)


def test_open_dir_in_root_gives_an_fd_of_its_own(tree: pathlib.Path, resolution: t.List[str]) -> None:
    root_fd = os.open(str(tree), rootpath.DIR_FLAGS)
    try:
        fd = open_dir_in_root(root_fd, ('lib',))
    finally:
        os.close(root_fd)
    try:
        assert os.fstat(fd).st_ino == os.lstat(str(tree / 'usr' / 'lib')).st_ino
    finally:
        os.close(fd)


# -- removing trees --------------------------------------------------------------------------------


class _FdWatch:
    """Counts the fds open in this process each time os.open is called; the highest count seen."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.baseline = self.open_now()
        self.peak = self.baseline
        real_open = os.open

        def watched(*args: t.Any, **kwargs: t.Any) -> int:
            self.peak = max(self.peak, self.open_now())
            return real_open(*args, **kwargs)

        monkeypatch.setattr(os, 'open', watched)

    @staticmethod
    def open_now() -> int:
        return len(os.listdir('/proc/self/fd')) - 1  # the listing's own fd


def _nested(top: str, depth: int, per_level: t.Callable[[int, int], None]) -> None:
    """`depth` directories nested below `top`, made through fds (the whole path is longer than PATH_MAX).

    per_level(level, fd) adds entries to each directory through its fd, after its child exists.
    """
    fd = os.open(top, rootpath.DIR_FLAGS)
    try:
        for level in range(depth):
            os.mkdir('d', dir_fd=fd)
            per_level(level, fd)
            child = os.open('d', rootpath.DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


@pytest.fixture
def work(tmp_path: pathlib.Path) -> t.Iterator[pathlib.Path]:
    """A private directory for big trees: in memory (/dev/shm) where there is one, as making thousands of
    directories on disk takes far longer than removing them. GNU rm cleans up whatever a test leaves."""
    shm = '/dev/shm'
    path = pathlib.Path(tempfile.mkdtemp(prefix='vb-rootpath-', dir=shm)) if os.access(shm, os.W_OK) else tmp_path
    try:
        yield path
    finally:
        subprocess.run(['rm', '-rf', '--one-file-system', str(path)], check=True)


@pytest.fixture
def beside(work: pathlib.Path) -> pathlib.Path:
    """A directory beside the trees the tests remove, with content no removal may touch."""
    path = work / 'beside'
    (path / 'dir').mkdir(parents=True)
    (path / 'dir' / 'file').write_bytes(b'precious')
    return path


def _state(path: pathlib.Path) -> t.Dict[str, t.Tuple[t.Any, ...]]:
    found = {}
    for below, dirs, files in os.walk(str(path)):
        for name in dirs + files:
            full = os.path.join(below, name)
            info = os.lstat(full)
            content = open(full, 'rb').read() if stat.S_ISREG(info.st_mode) else None
            found[os.path.relpath(full, str(path))] = (info.st_mode, info.st_ino, info.st_mtime_ns, content)
    return found


def test_a_tree_5000_levels_deep_is_removed_with_few_fds_and_no_link_followed(
        work: pathlib.Path, beside: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = work / 'tree'
    top.mkdir()

    def per_level(level: int, fd: int) -> None:
        os.close(os.open('file', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        os.symlink(str(beside / 'dir'), 'to-dir', dir_fd=fd)
        os.symlink('../' * (level % 1000 + 2) + 'beside/dir/file', 'to-file', dir_fd=fd)

    _nested(str(top), 5000, per_level)
    before = _state(beside)
    watch = _FdWatch(monkeypatch)
    rootpath.remove_tree(str(top))
    assert sorted(os.listdir(str(work))) == ['beside']
    assert _state(beside) == before
    assert watch.peak - watch.baseline <= rootpath.REMOVAL_DEPTH + 2


def test_a_very_wide_tree_is_removed_with_few_fds(work: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = work / 'tree'
    top.mkdir()
    for number in range(3000):
        (top / ('dir%d' % number)).mkdir()
        (top / ('dir%d' % number) / 'file').write_bytes(b'')
        (top / ('file%d' % number)).write_bytes(b'')
    watch = _FdWatch(monkeypatch)
    rootpath.remove_tree(str(top))
    assert os.listdir(str(work)) == []
    assert watch.peak - watch.baseline <= rootpath.REMOVAL_DEPTH + 2


def test_a_very_wide_directory_is_listed_a_batch_at_a_time(work: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = work / 'tree'
    top.mkdir()
    for number in range(3 * rootpath.REMOVAL_BATCH + 5):
        (top / ('file%d' % number)).write_bytes(b'')
    (top / 'deep').mkdir()
    real_entries = rootpath._entries  # pylint: disable=protected-access
    batches: t.List[int] = []

    def recording(dir_fd: int) -> t.List[t.Tuple[str, bool]]:
        listed = real_entries(dir_fd)
        batches.append(len(listed))
        return listed

    monkeypatch.setattr(rootpath, '_entries', recording)
    rootpath.remove_tree(str(top))
    assert os.listdir(str(work)) == []
    assert max(batches) == rootpath.REMOVAL_BATCH and sum(batches) == 3 * rootpath.REMOVAL_BATCH + 6


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to become an unprivileged user')
def test_an_unprivileged_caller_removes_a_deep_tree_of_locked_directories(beside: pathlib.Path) -> None:
    workdir = tempfile.mkdtemp(prefix='virt-bootstrap-removal-')
    try:
        os.chown(workdir, NOBODY, NOBODY)
        top = os.path.join(workdir, 'tree')
        os.mkdir(top)
        os.chown(top, NOBODY, NOBODY)

        def per_level(level: int, fd: int) -> None:
            os.close(os.open('file', os.O_WRONLY | os.O_CREAT, 0o400, dir_fd=fd))
            os.symlink(str(beside), 'out', dir_fd=fd)
            for name in ('d', 'file', 'out'):
                os.chown(name, NOBODY, NOBODY, dir_fd=fd, follow_symlinks=False)
            # Read-only, unreadable or unsearchable: the caller owns them but cannot remove their entries.
            os.chmod(fd, (0o500, 0o000, 0o300, 0o100)[level % 4])

        # Deeper than REMOVAL_DEPTH, so locked directories are also moved up to the top.
        _nested(top, 3 * rootpath.REMOVAL_DEPTH + 5, per_level)
        before = _state(beside)
        outcome = as_nobody(lambda: rootpath.remove_tree(top))
        assert 'error' not in outcome, outcome
        assert os.listdir(workdir) == []
        assert _state(beside) == before
    finally:
        shutil.rmtree(workdir)
