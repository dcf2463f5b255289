# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Path-safety primitives: resolution inside a root (openat2 and our own walk)."""

from __future__ import annotations

import ctypes
import errno
import os
import pathlib
import subprocess
import typing as t

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import rootpath
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import HostileLayer, LayerError
from ansible_collections.virt.bootstrap.plugins.module_utils.rootpath import (
    MAX_LINK_HOPS,
    InRootDirs,
    open_dir_in_root,
)
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import RESOLUTIONS, use_resolution


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
    monkeypatch.setattr(rootpath._Libc, 'call', refused_by_seccomp)  # pylint: disable=protected-access
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
