# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the applier makes each inode: created first and replaced only when something is there, and
chown/chmod left out only where they would change nothing (so modes and owners are exact whatever
the umask, a setgid root or a default ACL would have given)."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import typing as t

import pytest

from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import (
    TarBuilder,
    apply_layers,
    read,
)

COLLECTIONS_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *(['..'] * 7)))
_MODES = {'private': 0o600, 'plain': 0o644, 'shared': 0o666, 'open': 0o777, 'setuid': 0o4755, 'none': 0o000,
          'group': 0o2750}


@pytest.fixture(name='root')
def fixture_root(tmp_path: pathlib.Path) -> str:
    path = tmp_path / 'rootfs'
    path.mkdir()
    return str(path)


def _modes_layer() -> bytes:
    layer = TarBuilder().dir('d', mode=0o755)
    for name, mode in _MODES.items():
        layer.file('d/' + name, b'x', mode=mode, uid=0, gid=0).fifo('d/fifo-' + name, mode=mode)
    return layer.tar()


def _modes(root: str) -> t.Dict[str, int]:
    return {name: stat.S_IMODE(os.lstat(os.path.join(root, 'd', name)).st_mode)
            for name in sorted(os.listdir(os.path.join(root, 'd')))}


def _expected_modes() -> t.Dict[str, int]:
    expected = {}
    for name, mode in _MODES.items():
        expected[name] = mode
        expected['fifo-' + name] = mode
    return dict(sorted(expected.items()))


@pytest.mark.parametrize('umask', [0o022, 0o077, 0o000, 0o777])
def test_modes_are_the_entries_whatever_the_umask(root: str, umask: int) -> None:
    before = os.umask(umask)
    try:
        apply_layers(root, _modes_layer())
        after = os.umask(before)
    finally:
        os.umask(before)
    assert after == umask, 'the applier changed the umask'
    assert _modes(root) == _expected_modes()


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to give the root directory another group')
def test_a_setgid_root_does_not_give_its_group_to_new_inodes(root: str) -> None:
    os.chmod(root, 0o2755)  # as a directory made in a setgid one is
    # The layer gives the root another group: what is made in it gets that group first.
    layer = TarBuilder().dir('./', uid=0, gid=4321).file('f', b'f', uid=0, gid=0).dir('d', uid=0, gid=0).symlink('l', 'f', uid=0, gid=0) \
        .fifo('p', uid=0, gid=0).file('d/below', b'b', uid=0, gid=0).file('implied/below', b'i').tar()
    apply_layers(root, layer)
    names = ('f', 'd', 'l', 'p', 'd/below', 'implied', 'implied/below')
    groups = {name: os.lstat(os.path.join(root, name)).st_gid for name in names}
    assert groups == dict.fromkeys(groups, 0)


@pytest.mark.skipif(shutil.which('setfacl') is None, reason='needs setfacl (acl)')
def test_a_default_acl_of_a_layer_does_not_change_the_modes_below_it(root: str, tmp_path: pathlib.Path) -> None:
    probe = tmp_path / 'probe'
    probe.mkdir()
    subprocess.run(['setfacl', '-d', '-m', 'u::rwx,g::---,o::---', str(probe)], check=True)
    default_acl = os.getxattr(str(probe), 'system.posix_acl_default').decode('utf-8', 'surrogateescape')
    try:
        os.setxattr(root, 'user.probe', b'1')
    except OSError:
        pytest.skip('this filesystem takes no xattrs')
    layer = TarBuilder().dir('acl', pax={'SCHILY.xattr.system.posix_acl_default': default_acl}) \
        .file('acl/f', b'f', mode=0o644).fifo('acl/p', mode=0o644).tar()
    apply_layers(root, layer)
    assert [stat.S_IMODE(os.lstat(os.path.join(root, 'acl', name)).st_mode) for name in ('f', 'p')] == [0o644, 0o644]


_KINDS: t.Dict[str, t.Callable[[TarBuilder, str], TarBuilder]] = {
    'file': lambda layer, name: layer.file(name, b'new file'),
    'dir': lambda layer, name: layer.dir(name).file(name + '/child', b'child'),
    'symlink': lambda layer, name: layer.symlink(name, 'target'),
    'fifo': lambda layer, name: layer.fifo(name),
    'hardlink': lambda layer, name: layer.file('target', b'target').hardlink(name, 'target'),
}


def _kind(path: str) -> str:
    mode = os.lstat(path).st_mode
    if stat.S_ISDIR(mode):
        return 'dir'
    if stat.S_ISLNK(mode):
        return 'symlink'
    if stat.S_ISFIFO(mode):
        return 'fifo'
    return 'hardlink' if os.lstat(path).st_nlink == 2 else 'file'


@pytest.mark.parametrize('new', list(_KINDS))
@pytest.mark.parametrize('old', list(_KINDS))
def test_an_entry_replaces_whatever_a_lower_layer_has_at_its_path(root: str, old: str, new: str) -> None:
    lower = _KINDS[old](TarBuilder(), 'x').tar()
    upper = _KINDS[new](TarBuilder(), 'x').tar()
    apply_layers(root, lower, upper)
    path = os.path.join(root, 'x')
    assert _kind(path) == new
    if new == 'file':
        assert read(path) == b'new file'
    if new == 'dir':
        assert os.listdir(path) == ['child']


def test_an_entry_replaces_an_earlier_one_of_the_same_layer(root: str) -> None:
    layer = TarBuilder().file('x', b'first').symlink('x', 'elsewhere').file('x', b'last', mode=0o600).tar()
    apply_layers(root, layer)
    assert read(os.path.join(root, 'x')) == b'last'
    assert stat.S_IMODE(os.lstat(os.path.join(root, 'x')).st_mode) == 0o600


@pytest.mark.skipif(shutil.which('strace') is None or os.geteuid() != 0, reason='needs strace, as root')
def test_new_files_cost_no_lookup_chown_or_chmod(tmp_path: pathlib.Path) -> None:
    """A fresh tree of root-owned 0644 files: each is opened, written, timed and closed, nothing more."""
    layer = TarBuilder()
    for number in range(200):
        layer.file('f%03d' % number, b'data', mode=0o644, uid=0, gid=0)
    (tmp_path / 'layer.tar').write_bytes(layer.tar())
    (tmp_path / 'root').mkdir()
    script = ('import sys\n'
              'from ansible_collections.virt.bootstrap.plugins.module_utils._layers import RootfsBuilder\n'
              'with RootfsBuilder(sys.argv[1]) as builder, open(sys.argv[2], "rb") as layer:\n'
              '    builder.apply_tar_stream(layer)\n')
    traced = subprocess.run(['strace', '-f', '-e', 'trace=newfstatat,fchown,fchmod,openat', sys.executable, '-c',
                             script, str(tmp_path / 'root'), str(tmp_path / 'layer.tar')],
                            capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONPATH=COLLECTIONS_ROOT))
    calls = [line for line in traced.stderr.splitlines() if re.search(r'"f\d{3}"', line)]
    assert sorted(os.listdir(tmp_path / 'root')) == ['f%03d' % number for number in range(200)]
    assert len(calls) == 200 and all('openat(' in call and 'O_EXCL' in call for call in calls), calls[:5]
    owners_and_modes = [line for line in traced.stderr.splitlines() if re.match(r'(\[pid +\d+\] )?(fchown|fchmod)\(', line)]
    assert len(owners_and_modes) == 1 and 'fchown(' in owners_and_modes[0]  # the root's, given to root when it starts


def _groups_layer() -> bytes:
    return TarBuilder().dir('g', mode=0o755, gid=60).file('g/f', b'f', gid=0).dir('g/d', gid=0) \
        .symlink('g/l', 'f', gid=0).fifo('g/p', gid=0).tar()


def _groups(root: str) -> t.Dict[str, int]:
    return {name: os.lstat(os.path.join(root, name)).st_gid for name in ('g', 'g/f', 'g/d', 'g/l', 'g/p')}


@pytest.mark.skipif(os.geteuid() != 0, reason='mounting a filesystem needs root')
def test_groups_are_the_entries_on_a_filesystem_mounted_with_grpid(tmp_path: pathlib.Path) -> None:
    # Under grpid a new inode takes its directory's group, not the creator's: chown cannot be left out.
    image = tmp_path / 'grpid.ext4'
    with open(image, 'wb') as stream:
        stream.truncate(64 << 20)
    subprocess.run(['mkfs.ext4', '-q', '-F', str(image)], check=True)
    mount_point = tmp_path / 'mnt'
    mount_point.mkdir()
    subprocess.run(['mount', '-o', 'loop,grpid', str(image), str(mount_point)], check=True)
    try:
        root = mount_point / 'rootfs'
        root.mkdir(mode=0o700)
        apply_layers(str(root), _groups_layer())
        assert _groups(str(root)) == {'g': 60, 'g/f': 0, 'g/d': 0, 'g/l': 0, 'g/p': 0}
        assert sorted(os.listdir(root)) == ['g']  # the probe that found grpid left nothing behind
    finally:
        subprocess.run(['umount', str(mount_point)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason='groups other than our own need root')
def test_a_builder_going_on_over_lower_layers_gives_every_inode_its_group(root: str) -> None:
    # The qcow2 chain: a setgid directory of a lower layer has its final mode when the next layer is written.
    from ansible_collections.virt.bootstrap.plugins.module_utils._layers import RootfsBuilder
    from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import blob_layer
    lower = TarBuilder().dir('sg', mode=0o2775, gid=50).tar()
    upper = TarBuilder().file('sg/new', b'n', gid=0).dir('sg/d', gid=0).tar()
    with RootfsBuilder(root) as builder:
        builder.apply_layer(blob_layer(lower))
        builder.finish(final=False)
        directories = builder.directories()
    with RootfsBuilder(root, directories=directories) as builder:
        builder.apply_layer(blob_layer(upper))
        builder.finish()
    assert [os.lstat(os.path.join(root, name)).st_gid for name in ('sg', 'sg/new', 'sg/d')] == [50, 0, 0]
    with RootfsBuilder(root) as builder:  # the same, going on with move_root
        builder.apply_layer(blob_layer(TarBuilder().dir('sg2', mode=0o2775, gid=50).tar()))
        builder.finish(final=False)
        builder.move_root(root)
        builder.apply_layer(blob_layer(TarBuilder().file('sg2/new', b'n', gid=0).tar()))
        builder.finish()
    assert os.lstat(os.path.join(root, 'sg2', 'new')).st_gid == 0
