# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The layer applier on well-formed layers: whiteouts, links, metadata, compression, digests."""

from __future__ import annotations

import dataclasses
import errno
import gzip
import inspect
import io
import os
import pathlib
import re
import resource
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import typing as t
import zlib

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils._compression import inflate_module
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import DigestMismatch, HostileLayer, LayerError, SizeLimitExceeded
from ansible_collections.virt.bootstrap.plugins.module_utils._layers import RootfsBuilder
from ansible_collections.virt.bootstrap.plugins.module_utils._rootpath import remove_tree
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import (
    CAPABILITY_V2,
    COMPRESSIONS,
    LAYER_TAR,
    LAYER_TAR_GZIP,
    MTIME,
    TarBuilder,
    apply_layers,
    NOBODY,
    as_nobody,
    blob_layer,
    compress,
    listing,
    read,
    sha256,
    snapshot,
)
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.umoci_support import (
    gnu_tar,
    needs_umoci,
    stage,
    tree_differences,
    umoci_unpack,
)


@pytest.fixture
def root(tmp_path: pathlib.Path) -> str:
    path = tmp_path / 'rootfs'
    path.mkdir()
    return str(path)


def _xattr_supported(directory: str, name: str, value: bytes) -> bool:
    probe = os.path.join(directory, '.xattr-probe')
    with open(probe, 'wb'):
        pass
    try:
        os.setxattr(probe, name, value)
    except OSError:
        return False
    finally:
        os.unlink(probe)
    return True


def _mknod_permitted(directory: str) -> bool:
    probe = os.path.join(directory, '.mknod-probe')
    try:
        os.mknod(probe, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        return False
    os.unlink(probe)
    return True


def _refuse(*args: t.Any, **kwargs: t.Any) -> None:
    """Stands in for os.mknod where creating device nodes is not permitted."""
    raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))


# -- whiteouts -------------------------------------------------------------------------------------


def test_whiteout_removes_lower_file(root: str) -> None:
    lower = TarBuilder().dir('etc').file('etc/motd', b'hi').file('etc/keep', b'k').tar()
    upper = TarBuilder().whiteout('etc/motd').tar()
    stats = apply_layers(root, lower, upper)
    assert listing(root) == ['etc/', 'etc/keep']
    assert stats.whiteouts == 1


def test_whiteout_removes_lower_directory_tree(root: str) -> None:
    lower = TarBuilder().dir('opt').dir('opt/app').dir('opt/app/lib').file('opt/app/lib/x.so', b'x') \
        .symlink('opt/app/current', 'lib').file('opt/other', b'o').tar()
    upper = TarBuilder().whiteout('opt/app').tar()
    apply_layers(root, lower, upper)
    assert listing(root) == ['opt/', 'opt/other']


def test_whiteout_of_missing_path_is_not_an_error(root: str) -> None:
    lower = TarBuilder().dir('etc').file('etc/keep', b'k').tar()
    upper = TarBuilder().whiteout('etc/never-there').whiteout('no/such/dir/file').opaque('missing-dir') \
        .file('etc/new', b'n').tar()
    apply_layers(root, lower, upper)
    assert listing(root) == ['etc/', 'etc/keep', 'etc/new']


def test_whiteouts_below_what_replaced_a_directory_in_the_same_layer_are_ignored(root: str) -> None:
    # umoci writes `rm -rf srv/data; echo > srv/data` as the file, then a whiteout per old child.
    lower = TarBuilder().dir('srv').dir('srv/data').file('srv/data/x', b'x').dir('srv/link') \
        .file('srv/link/y', b'y').tar()
    upper = TarBuilder().file('srv/data', b'now a file').whiteout('srv/data/x') \
        .symlink('srv/link', '/elsewhere').whiteout('srv/link/y').opaque('srv/link').tar()
    apply_layers(root, lower, upper)
    assert listing(root) == ['srv/', 'srv/data', 'srv/link']
    assert open(os.path.join(root, 'srv/data'), 'rb').read() == b'now a file'
    assert os.readlink(os.path.join(root, 'srv/link')) == '/elsewhere'


def test_whiteout_below_a_lower_layer_file_is_ignored(root: str) -> None:
    lower = TarBuilder().dir('srv').file('srv/data', b'file').tar()
    apply_layers(root, lower, TarBuilder().whiteout('srv/data/x').tar())
    assert listing(root) == ['srv/', 'srv/data']


def test_opaque_whiteout_empties_lower_directory(root: str) -> None:
    lower = TarBuilder().dir('var').dir('var/lib').dir('var/lib/old').file('var/lib/old/db', b'db') \
        .file('var/lib/state', b's').file('var/keep', b'k').tar()
    upper = TarBuilder().dir('var/lib').opaque('var/lib').file('var/lib/fresh', b'f').tar()
    apply_layers(root, lower, upper)
    assert listing(root) == ['var/', 'var/keep', 'var/lib/', 'var/lib/fresh']


def test_opaque_whiteout_keeps_same_layer_entries(root: str) -> None:
    lower = TarBuilder().dir('d').file('d/lower-file', b'l').dir('d/sub').file('d/sub/lower-deep', b'l') \
        .dir('d/gone').file('d/gone/x', b'x').tar()
    # The marker comes after its siblings: what this layer wrote must survive it, including entries
    # inside a directory that a lower layer made.
    upper = TarBuilder().dir('d').file('d/same-layer', b's').file('d/sub/same-layer-deep', b's') \
        .opaque('d').tar()
    apply_layers(root, lower, upper)
    assert listing(root) == ['d/', 'd/same-layer', 'd/sub/', 'd/sub/same-layer-deep']
    assert read(os.path.join(root, 'd/sub/same-layer-deep')) == b's'


def test_whiteout_after_same_layer_entry_keeps_it(root: str) -> None:
    lower = TarBuilder().file('x', b'lower').dir('d').file('d/lower-child', b'l').tar()
    upper = TarBuilder().file('x', b'upper').dir('d').file('d/upper-child', b'u') \
        .whiteout('x').whiteout('d').tar()
    apply_layers(root, lower, upper)
    assert read(os.path.join(root, 'x')) == b'upper'
    # d's lower content is hidden, the layer's own directory and child are not.
    assert listing(root) == ['d/', 'd/upper-child', 'x']


def test_top_level_whiteout_and_opaque_markers(root: str) -> None:
    lower = TarBuilder().file('foo', b'f').file('bar', b'b').dir('baz').file('baz/q', b'q').tar()
    middle = TarBuilder().whiteout('foo').file('kept-by-middle', b'm').tar()
    assert apply_layers(root, lower, middle).whiteouts == 1
    assert listing(root) == ['bar', 'baz/', 'baz/q', 'kept-by-middle']

    upper = TarBuilder().file('top', b't').opaque('').tar()
    apply_layers(root, upper)
    assert listing(root) == ['top']


@pytest.mark.parametrize('marker', [
    '.wh.foo', 'd/.wh.foo', '.wh..wh..opq', 'd/.wh..wh..opq', '.wh.never-there',
    '.wh..wh.plnk', '.wh..wh.aufs', 'd/.wh..wh.orph',
])
def test_whiteout_entries_are_never_written(root: str, marker: str) -> None:
    lower = TarBuilder().file('foo', b'f').dir('d').file('d/foo', b'f').tar()
    upper = TarBuilder().file(marker).tar()
    apply_layers(root, lower, upper)
    assert not [path for path in listing(root) if '.wh.' in path]


def test_aufs_metadata_is_never_written(root: str) -> None:
    layer = TarBuilder().dir('.wh..wh.plnk', mode=0o700).file('.wh..wh.plnk/1234.5678', b'hardlink-store') \
        .file('.wh..wh.aufs', b'').dir('.wh..wh.orph').file('usr', b'u').tar()
    apply_layers(root, layer)
    assert listing(root) == ['usr']


def test_tree_at_the_depth_limit_is_applied_pruned_and_removed(root: str) -> None:
    deep = '/'.join(['d'] * 255)
    lower = TarBuilder().file(deep + '/lower', b'l').tar()
    # Opaque markers after the same layer's entries make the pruning walk the whole depth.
    upper = TarBuilder().file(deep + '/upper', b'u').opaque('').opaque(deep).tar()
    apply_layers(root, lower, upper)
    assert os.listdir(os.path.join(root, deep)) == ['upper']
    remove_tree(root)
    assert not os.path.lexists(root)


def test_whiteouts_of_a_deep_lower_tree_are_applied_without_recursion(root: str) -> None:
    deep = '/'.join(['d'] * 250)
    lower = TarBuilder()
    for depth in range(1, 251):
        lower.file('/'.join(['d'] * depth) + '/lower', b'l')
    lower.file('side/' + deep + '/f', b'f')
    # The opaque marker keeps this layer's own deep entry: the pruning walks all the way down to it.
    upper = TarBuilder().file(deep + '/upper', b'u').opaque('').tar()
    frames = len(inspect.stack())
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(frames + 150)  # far fewer frames than the tree has levels
    try:
        apply_layers(root, lower.tar(), upper)
        assert os.listdir(root) == ['d'] and os.listdir(os.path.join(root, deep)) == ['upper']
        remove_tree(os.path.join(root, 'd'))
    finally:
        sys.setrecursionlimit(limit)
    assert os.listdir(root) == []


def test_stats_count_each_entry_once(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, 'mknod', _refuse)
    lower = TarBuilder().file('gone', b'g').tar()
    upper = TarBuilder().dir('./').dir('d').file('d/f', b'f').hardlink('d/h', 'd/f').symlink('s', 'd') \
        .fifo('p').chardev('null', 1, 3).whiteout('gone').whiteout('never-there').file('.wh..wh.plnk').tar()
    stats = apply_layers(root, lower, upper)
    # One file from the lower layer; './' is the root itself, the device node is skipped, the markers
    # are whiteouts (aufs metadata is not one).
    assert (stats.written, stats.whiteouts, stats.skipped) == (1 + 5, 2, {'device_node': 1})


# -- hard links ------------------------------------------------------------------------------------


def test_hard_link_across_layers_shares_the_inode(root: str) -> None:
    lower = TarBuilder().dir('bin').file('bin/busybox', b'bb', mode=0o755).tar()
    upper = TarBuilder().hardlink('bin/sh', 'bin/busybox').tar()
    apply_layers(root, lower, upper)
    original = os.lstat(os.path.join(root, 'bin/busybox'))
    link = os.lstat(os.path.join(root, 'bin/sh'))
    assert (link.st_ino, link.st_nlink) == (original.st_ino, 2)
    assert read(os.path.join(root, 'bin/sh')) == b'bb'


def test_hard_link_within_a_layer_shares_the_inode(root: str) -> None:
    layer = TarBuilder().file('a', b'data', uid=7, mode=0o4711).hardlink('b', 'a').hardlink('c/d', 'a').tar()
    apply_layers(root, layer)
    inodes = {os.lstat(os.path.join(root, name)).st_ino for name in ('a', 'b', 'c/d')}
    assert len(inodes) == 1
    info = os.lstat(os.path.join(root, 'c/d'))
    assert (info.st_nlink, info.st_uid, stat.S_IMODE(info.st_mode)) == (3, 7, 0o4711)


@pytest.mark.parametrize('replaced, kept', [('target', 'link'), ('link', 'target')])
def test_replacing_one_hard_link_keeps_the_old_content_in_the_other(root: str, replaced: str, kept: str) -> None:
    lower = TarBuilder().file('target', b'old', mode=0o644).tar()
    middle = TarBuilder().hardlink('link', 'target').tar()
    upper = TarBuilder().file(replaced, b'new', mode=0o600).tar()
    apply_layers(root, lower, middle, upper)
    assert read(os.path.join(root, replaced)) == b'new'
    assert read(os.path.join(root, kept)) == b'old'
    kept_info = os.lstat(os.path.join(root, kept))
    assert (kept_info.st_nlink, stat.S_IMODE(kept_info.st_mode)) == (1, 0o644)


def test_hard_link_to_missing_target_is_a_layer_error(root: str) -> None:
    layer = TarBuilder().hardlink('b', 'nowhere').tar()
    with pytest.raises(LayerError, match="hard link /b: target /nowhere does not exist"):
        apply_layers(root, layer)


def test_hard_link_replacing_a_directory_above_its_target_is_a_layer_error(root: str) -> None:
    layer = TarBuilder().dir('d').dir('d/e').file('d/e/f', b'x').hardlink('d', 'd/e/f').tar()
    with pytest.raises(LayerError, match="hard link /d would replace the directory holding its target /d/e/f"):
        apply_layers(root, layer)


# -- symlinks --------------------------------------------------------------------------------------


def test_symlinks_are_created_verbatim(root: str) -> None:
    targets = {
        'relative': '../lib/x',
        'absolute': '/etc/hostname',
        'dangling': '/no/such/thing',
        'dot': '.',
        'up-and-out': '../../../../../../etc',
    }
    builder = TarBuilder().dir('links')
    for name, target in targets.items():
        builder.symlink('links/' + name, target)
    apply_layers(root, builder.tar())
    for name, target in targets.items():
        path = os.path.join(root, 'links', name)
        assert stat.S_ISLNK(os.lstat(path).st_mode)
        assert os.readlink(path) == target


def test_symlink_owner_and_mtime_are_set_on_the_link(tmp_path: pathlib.Path, root: str) -> None:
    target = tmp_path / 'target'
    target.write_bytes(b't')
    before = os.lstat(target)
    layer = TarBuilder().symlink('link', str(target), uid=1234, gid=5678, mtime=MTIME + 5).tar()
    apply_layers(root, layer)
    info = os.lstat(os.path.join(root, 'link'))
    assert (info.st_uid, info.st_gid, info.st_mtime) == (1234, 5678, MTIME + 5)
    after = os.lstat(target)
    assert (after.st_uid, after.st_gid, after.st_mtime_ns) == (before.st_uid, before.st_gid, before.st_mtime_ns)


# -- modes, xattrs, special files ------------------------------------------------------------------


def test_setuid_setgid_and_sticky_modes_survive(root: str) -> None:
    layer = TarBuilder().dir('tmp', mode=0o1777).dir('shared', mode=0o2775, gid=50) \
        .file('usr-bin-su', b'su', mode=0o4755).file('usr-bin-wall', b'w', mode=0o2755, gid=5) \
        .file('odd', b'o', mode=0o6711, uid=1000, gid=1000).tar()
    apply_layers(root, layer)
    modes = {name: stat.S_IMODE(os.lstat(os.path.join(root, name)).st_mode)
             for name in ('tmp', 'shared', 'usr-bin-su', 'usr-bin-wall', 'odd')}
    assert modes == {'tmp': 0o1777, 'shared': 0o2775, 'usr-bin-su': 0o4755, 'usr-bin-wall': 0o2755, 'odd': 0o6711}


def test_file_capability_xattr_survives(root: str) -> None:
    if not _xattr_supported(root, 'security.capability', CAPABILITY_V2):
        pytest.skip('this filesystem does not take security.capability')
    pax = {'SCHILY.xattr.security.capability': CAPABILITY_V2.decode('utf-8', 'surrogateescape')}
    # A non-root owner and a setuid bit too: a chown after the xattr would drop the capability.
    layer = TarBuilder().file('ping', b'elf', mode=0o4755, uid=1000, gid=1000, pax=pax).tar()
    stats = apply_layers(root, layer)
    path = os.path.join(root, 'ping')
    assert os.getxattr(path, 'security.capability') == CAPABILITY_V2
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o4755
    assert stats.skipped == {}


def test_user_xattrs_survive_on_files_and_directories(root: str) -> None:
    if not _xattr_supported(root, 'user.probe', b'1'):
        pytest.skip('this filesystem does not take user.* xattrs')
    layer = TarBuilder() \
        .dir('d', pax={'SCHILY.xattr.user.dir': 'on a dir'}) \
        .file('d/f', b'x', pax={'SCHILY.xattr.user.one': 'first', 'SCHILY.xattr.user.two': '\u00e9t\u00e9'}) \
        .tar()
    apply_layers(root, layer)
    assert os.getxattr(os.path.join(root, 'd'), 'user.dir') == b'on a dir'
    assert os.getxattr(os.path.join(root, 'd/f'), 'user.one') == b'first'
    assert os.getxattr(os.path.join(root, 'd/f'), 'user.two') == '\u00e9t\u00e9'.encode('utf-8')


def _acl_xattrs(tmp_path: pathlib.Path, access: str, default: t.Optional[str] = None) -> t.Dict[str, str]:
    """PAX records holding the POSIX ACLs setfacl makes from `access` (and `default`), as GNU tar stores them."""
    probe = tmp_path / ('acl-probe-%d' % len(list(tmp_path.iterdir())))
    probe.mkdir()
    subprocess.run(['setfacl', '-m', access, str(probe)], check=True)
    names = ['system.posix_acl_access']
    if default:
        subprocess.run(['setfacl', '-d', '-m', default, str(probe)], check=True)
        names.append('system.posix_acl_default')
    return {'SCHILY.xattr.' + name: os.getxattr(str(probe), name).decode('utf-8', 'surrogateescape')
            for name in names}


def _acl(path: str) -> t.List[str]:
    getfacl = subprocess.run(['getfacl', '--omit-header', '--absolute-names', '--numeric', path],
                             check=True, capture_output=True, text=True)
    return [line for line in getfacl.stdout.splitlines() if line]


def test_a_redeclared_directory_has_only_its_own_xattrs_and_acls(root: str, tmp_path: pathlib.Path) -> None:
    if not _xattr_supported(root, 'user.probe', b'1') or shutil.which('setfacl') is None:
        pytest.skip('this filesystem does not take user.* xattrs, or setfacl is missing')
    lower_pax = dict(_acl_xattrs(tmp_path, 'u:1234:rwx', default='u:1234:r-x'), **{'SCHILY.xattr.user.old': 'lower'})
    upper_pax = dict(_acl_xattrs(tmp_path, 'u:4321:r-x'), **{'SCHILY.xattr.user.new': 'upper'})
    lower = TarBuilder().dir('./', pax={'SCHILY.xattr.user.root-old': 'lower'}).dir('d', mode=0o775, pax=lower_pax) \
        .dir('other', pax={'SCHILY.xattr.user.kept': 'kept'}).tar()
    upper = TarBuilder().dir('./', pax={'SCHILY.xattr.user.root-new': 'upper'}).dir('d', mode=0o755, pax=upper_pax) \
        .file('other/f', b'f').tar()
    directory = os.path.join(root, 'd')
    apply_layers(root, lower)
    assert 'user:1234:rwx' in _acl(directory) and 'default:user:1234:r-x' in _acl(directory)
    host_label = os.geteuid() == 0 and _xattr_supported(root, 'trusted.probe', b'1')
    if host_label:
        # Not an attribute images may set: someone else's, never cleared.
        os.setxattr(directory, 'trusted.host-label', b'keep')

    apply_layers(root, upper)
    expected = ['system.posix_acl_access', 'user.new'] + (['trusted.host-label'] if host_label else [])
    assert sorted(os.listxattr(directory)) == sorted(expected)
    assert _acl(directory) == ['user::rwx', 'user:4321:r-x', 'group::r-x', 'mask::r-x', 'other::r-x']
    assert os.listxattr(root) == ['user.root-new']
    # A directory no later entry declares keeps what its own entry gave it.
    assert os.listxattr(os.path.join(root, 'other')) == ['user.kept']


@needs_umoci
def test_redeclared_directory_xattrs_as_umoci_unpacks_them(root: str, tmp_path: pathlib.Path) -> None:
    if not _xattr_supported(root, 'user.probe', b'1'):
        pytest.skip('this filesystem does not take user.* xattrs')
    lower_stage, upper_stage = tmp_path / 'lower', tmp_path / 'upper'
    stage(lower_stage, {'d/f': b'f', 'e': None}, xattrs={'d': {'user.old': b'lower'}, 'e': {'user.e': b'e'}})
    stage(upper_stage, {'d': None}, xattrs={'d': {'user.new': b'upper'}})
    layers = [gnu_tar(lower_stage, ['d', 'd/f', 'e'], tmp_path / 'lower.tar'),
              gnu_tar(upper_stage, ['d'], tmp_path / 'upper.tar')]
    reference = umoci_unpack(tmp_path, [tmp_path / 'lower.tar', tmp_path / 'upper.tar'])
    apply_layers(root, *layers)
    assert os.listxattr(os.path.join(root, 'd')) == ['user.new']
    assert tree_differences(root, reference) == []


def test_libarchive_xattr_form_is_read(root: str) -> None:
    if not _xattr_supported(root, 'user.probe', b'1'):
        pytest.skip('this filesystem does not take user.* xattrs')
    # libarchive percent-encodes the name and writes the value as base64 without padding.
    pax = {'LIBARCHIVE.xattr.user.with%3Dequals': 'AAEC/w'}
    apply_layers(root, TarBuilder().file('f', b'x', pax=pax).tar())
    assert os.getxattr(os.path.join(root, 'f'), 'user.with=equals') == b'\x00\x01\x02\xff'


def test_fifo_is_created(root: str) -> None:
    apply_layers(root, TarBuilder().fifo('run-fifo', mode=0o620, uid=3, gid=4).tar())
    info = os.lstat(os.path.join(root, 'run-fifo'))
    assert stat.S_ISFIFO(info.st_mode)
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o620, 3, 4)


def test_char_device_is_created_as_root(root: str) -> None:
    if os.geteuid() != 0 or not _mknod_permitted(root):
        pytest.skip('creating device nodes is not permitted here')
    stats = apply_layers(root, TarBuilder().dir('dev').chardev('dev/null', 1, 3, mode=0o666).tar(), device_nodes=True)
    info = os.lstat(os.path.join(root, 'dev/null'))
    assert stat.S_ISCHR(info.st_mode)
    assert (os.major(info.st_rdev), os.minor(info.st_rdev), stat.S_IMODE(info.st_mode)) == (1, 3, 0o666)
    assert stats.skipped == {}


def test_device_node_is_skipped_and_counted_when_mknod_is_not_permitted(
        root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, 'mknod', _refuse)
    layer = TarBuilder().dir('dev').chardev('dev/null', 1, 3).chardev('dev/zero', 1, 5).file('dev/keep', b'k').tar()
    stats = apply_layers(root, layer, device_nodes=True)
    assert stats.skipped == {'device_node_not_permitted': 2}
    assert listing(root) == ['dev/', 'dev/keep']


def test_device_nodes_are_skipped_unless_asked_for(root: str) -> None:
    # A 0666 disk node would give every host user who reaches the rootfs the raw disk.
    layer = TarBuilder().dir('dev').blockdev('dev/sda', 8, 0, mode=0o666).chardev('dev/mem', 1, 1, mode=0o666) \
        .file('dev/keep', b'k').tar()
    stats = apply_layers(root, layer)
    assert stats.skipped == {'device_node': 2}
    assert listing(root) == ['dev/', 'dev/keep']


# -- tar entry types -------------------------------------------------------------------------------


def test_every_kind_of_entry_a_rootfs_holds_is_written_as_what_it_is(root: str) -> None:
    if os.geteuid() != 0 or not _mknod_permitted(root):
        pytest.skip('creating device nodes is not permitted here')
    layer = TarBuilder().add('regular', tarfile.REGTYPE, data=b'0') \
        .add('old-regular', tarfile.AREGTYPE, data=b'nul') \
        .add('contiguous', tarfile.CONTTYPE, data=b'seven') \
        .add('hard', tarfile.LNKTYPE, linkname='regular') \
        .add('soft', tarfile.SYMTYPE, linkname='regular') \
        .add('char', tarfile.CHRTYPE, devmajor=1, devminor=3) \
        .add('block', tarfile.BLKTYPE, devmajor=7, devminor=0) \
        .add('dir', tarfile.DIRTYPE, mode=0o755) \
        .add('old-dir/', tarfile.AREGTYPE, mode=0o755) \
        .add('fifo', tarfile.FIFOTYPE).tar()
    apply_layers(root, layer, device_nodes=True)
    kinds = {name: stat.S_IFMT(os.lstat(os.path.join(root, name)).st_mode) for name in os.listdir(root)}
    assert kinds == {'regular': stat.S_IFREG, 'old-regular': stat.S_IFREG, 'contiguous': stat.S_IFREG,
                     'hard': stat.S_IFREG, 'soft': stat.S_IFLNK, 'char': stat.S_IFCHR, 'block': stat.S_IFBLK,
                     'dir': stat.S_IFDIR, 'old-dir': stat.S_IFDIR, 'fifo': stat.S_IFIFO}
    assert [read(os.path.join(root, name)) for name in ('regular', 'old-regular', 'contiguous', 'hard')] == \
        [b'0', b'nul', b'seven', b'0']
    assert os.lstat(os.path.join(root, 'hard')).st_ino == os.lstat(os.path.join(root, 'regular')).st_ino


def test_gnu_long_names_and_link_targets_are_read(root: str) -> None:
    long_dir = 'd' * 120
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.GNU_FORMAT) as archive:
        for name, kind, linkname in ((long_dir, tarfile.DIRTYPE, ''), (long_dir + '/' + 'f' * 120, tarfile.REGTYPE, ''),
                                     ('link', tarfile.SYMTYPE, 't' * 150),
                                     ('hard', tarfile.LNKTYPE, long_dir + '/' + 'f' * 120)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = kind, linkname, 0o755
            archive.addfile(info)
    blob = buffer.getvalue()
    assert b'././@LongLink' in blob
    apply_layers(root, blob)
    assert sorted(os.listdir(root)) == sorted([long_dir, 'link', 'hard'])
    assert os.readlink(os.path.join(root, 'link')) == 't' * 150
    assert os.lstat(os.path.join(root, 'hard')).st_nlink == 2


@pytest.mark.parametrize('tar_format', ['gnu', 'pax'])
def test_sparse_files_are_written_with_their_holes_as_zeros(root: str, tmp_path: pathlib.Path, tar_format: str) -> None:
    sparse = tmp_path / 'sparse'
    with open(sparse, 'wb') as stream:
        stream.write(b'head')
        stream.seek(1 << 20)
        stream.write(b'tail')
    archive = tmp_path / 'sparse.tar'
    subprocess.run(['tar', '--sparse', '--format=' + tar_format, '-C', str(tmp_path), '-cf', str(archive), 'sparse'],
                   check=True)
    if tar_format == 'gnu':
        assert archive.read_bytes()[156:157] == tarfile.GNUTYPE_SPARSE
    apply_layers(root, archive.read_bytes())
    assert read(os.path.join(root, 'sparse')) == b'head' + bytes((1 << 20) - 4) + b'tail'


@pytest.mark.parametrize('kind', [b'V', b'D', b'M', b'N', b'A', b'I', b'9', b'\x99'],
                         ids=['volume-label', 'dumpdir', 'multivolume', 'old-long-name', 'solaris-acl', 'inode',
                              'digit', 'high-byte'])
def test_entries_of_unknown_tar_types_are_refused(root: str, kind: bytes) -> None:
    layer = TarBuilder().file('before', b'b').add('odd', kind, data=b'would be a file').tar()
    with pytest.raises(LayerError, match=r"^layer 1/1 .*: entry 'odd' has tar type %s \(0x%02x\)"
                       % (re.escape(repr(kind.decode('latin-1'))), kind[0])):
        apply_layers(root, layer)
    assert listing(root) == ['before']


def test_a_whiteout_is_known_by_its_name_whatever_its_tar_type(root: str) -> None:
    # Like umoci: the layer spec names whiteouts by path only.
    lower = TarBuilder().file('gone', b'g').tar()
    upper = TarBuilder().add('.wh.gone', tarfile.FIFOTYPE).add('.wh.never', b'V').tar()
    apply_layers(root, lower, upper)
    assert listing(root) == []


def test_sparse_files_count_at_their_full_size_against_max_size(root: str, tmp_path: pathlib.Path) -> None:
    sparse = tmp_path / 'sparse'
    with open(sparse, 'wb') as stream:
        stream.truncate(64 << 20)
        stream.write(b'x')
    archive = tmp_path / 'sparse.tar'
    subprocess.run(['tar', '--sparse', '--format=pax', '-C', str(tmp_path), '-cf', str(archive), 'sparse'], check=True)
    blob = archive.read_bytes()
    assert len(blob) < 1 << 20
    with pytest.raises(SizeLimitExceeded):
        apply_layers(root, blob, max_size=8 << 20)


def test_a_huge_long_name_header_is_refused_before_it_is_read(root: str) -> None:
    # GNU tar's long-name entry ('L'): tarfile would read its whole body into memory at once.
    name = b'a' * (20 << 20)
    header = tarfile.TarInfo('././@LongLink')
    header.type = tarfile.GNUTYPE_LONGNAME
    header.size = len(name) + 1
    blob = header.tobuf(format=tarfile.GNU_FORMAT) + name + b'\0' * (512 - len(name) % 512) + b'\0' * 1024
    with pytest.raises(HostileLayer, match='asks for .* bytes at once') as caught:
        apply_layers(root, gzip.compress(blob))
    assert len(str(caught.value)) < 400


def test_extended_attributes_outside_the_allowed_namespaces_are_skipped(root: str) -> None:
    pax = {'SCHILY.xattr.user.note': 'kept', 'SCHILY.xattr.trusted.overlay.opaque': 'y',
           'SCHILY.xattr.security.selinux': 'system_u:object_r:shadow_t:s0'}
    stats = apply_layers(root, TarBuilder().file('f', b'x', pax=pax).tar())
    assert os.listxattr(os.path.join(root, 'f')) == ['user.note']
    assert stats.skipped == {'xattr_not_allowed': 2}


def test_a_wide_opaque_directory_does_not_run_out_of_file_descriptors(root: str) -> None:
    lower = TarBuilder().dir('d')
    for number in range(1500):
        lower.dir('d/%d' % number).file('d/%d/f' % number, b'')
    upper = TarBuilder().file('d/%d/new' % 7, b'n').opaque('d').tar()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        apply_layers(root, lower.tar(), upper)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert listing(root) == ['d/', 'd/7/', 'd/7/new']


# -- owners ----------------------------------------------------------------------------------------


def test_numeric_owner_wins_over_conflicting_names(root: str) -> None:
    layer = TarBuilder().file('f', b'x', uid=4242, gid=4343, uname='daemon', gname='root') \
        .dir('d', uid=4242, gid=4343, uname='daemon', gname='root').tar()
    apply_layers(root, layer)
    for name in ('f', 'd'):
        info = os.lstat(os.path.join(root, name))
        assert (info.st_uid, info.st_gid) == (4242, 4343)


def test_id_mapper_shifts_each_inode_once(root: str) -> None:
    def shift(uid: int, gid: int) -> t.Tuple[int, int]:
        return uid + 100000, gid + 100000

    layer = TarBuilder().dir('bin').file('bin/su', b'su', mode=0o4755).hardlink('bin/su2', 'bin/su') \
        .symlink('bin/link', 'su', uid=5, gid=6).file('bin/user', b'u', uid=1000, gid=1000).tar()
    apply_layers(root, layer, id_mapper=shift)
    owners = {name: os.lstat(os.path.join(root, name))[4:6] for name in ('.', 'bin', 'bin/su', 'bin/su2',
                                                                         'bin/link', 'bin/user')}
    # The root has no entry: it belongs to the mapped root user, like any directory no entry names.
    assert owners == {'.': (100000, 100000), 'bin': (100000, 100000), 'bin/su': (100000, 100000),
                      'bin/su2': (100000, 100000), 'bin/link': (100005, 100006), 'bin/user': (101000, 101000)}
    assert stat.S_IMODE(os.lstat(os.path.join(root, 'bin/su')).st_mode) == 0o4755


# -- dev directories and replacements --------------------------------------------------------------


def test_nested_dev_directories_are_ordinary(root: str) -> None:
    layer = TarBuilder().dir('usr').dir('usr/share').dir('usr/share/dev').file('usr/share/dev/x', b'x') \
        .dir('a').dir('a/dev').file('a/dev/b', b'b').tar()
    apply_layers(root, layer)
    assert listing(root) == ['a/', 'a/dev/', 'a/dev/b', 'usr/', 'usr/share/', 'usr/share/dev/',
                             'usr/share/dev/x']


def test_top_level_dev_entries_are_written(root: str) -> None:
    layer = TarBuilder().dir('dev').dir('dev/pts').symlink('dev/fd', '/proc/self/fd').file('dev/.keep', b'') \
        .dir('dev/shm', mode=0o1777).tar()
    apply_layers(root, layer)
    assert listing(root) == ['dev/', 'dev/.keep', 'dev/fd', 'dev/pts/', 'dev/shm/']
    assert stat.S_IMODE(os.lstat(os.path.join(root, 'dev/shm')).st_mode) == 0o1777


def test_directory_replaced_by_file_and_back(root: str) -> None:
    first = TarBuilder().dir('thing').file('thing/child', b'c').dir('thing/sub').tar()
    second = TarBuilder().file('thing', b'now a file', mode=0o600).tar()
    third = TarBuilder().dir('thing', mode=0o750).file('thing/new', b'n').tar()
    apply_layers(root, first, second)
    assert read(os.path.join(root, 'thing')) == b'now a file'
    apply_layers(root, third)
    assert listing(root) == ['thing/', 'thing/new']
    assert stat.S_IMODE(os.lstat(os.path.join(root, 'thing')).st_mode) == 0o750


def test_symlink_replaced_by_directory(root: str) -> None:
    lower = TarBuilder().dir('real').file('real/f', b'r').symlink('alias', 'real').tar()
    upper = TarBuilder().dir('alias', mode=0o711).file('alias/g', b'g').tar()
    apply_layers(root, lower, upper)
    assert listing(root) == ['alias/', 'alias/g', 'real/', 'real/f']
    assert stat.S_IMODE(os.lstat(os.path.join(root, 'alias')).st_mode) == 0o711


def test_file_replaced_by_symlink_does_not_touch_the_old_inode(root: str) -> None:
    lower = TarBuilder().file('etc-passwd', b'root:x:0:0').hardlink('backup', 'etc-passwd').tar()
    upper = TarBuilder().symlink('etc-passwd', 'backup').tar()
    apply_layers(root, lower, upper)
    assert os.readlink(os.path.join(root, 'etc-passwd')) == 'backup'
    assert read(os.path.join(root, 'backup')) == b'root:x:0:0'


# -- directory and file times and modes ------------------------------------------------------------


def test_read_only_directory_gets_its_mode_after_its_children(root: str) -> None:
    lower = TarBuilder().dir('ro', mode=0o555).file('ro/a', b'a').dir('ro/sub', mode=0o500) \
        .file('ro/sub/b', b'b').dir('none', mode=0o000).file('none/c', b'c').tar()
    upper = TarBuilder().file('ro/later', b'l').file('none/later', b'l').tar()
    apply_layers(root, lower, upper)
    modes = {name: stat.S_IMODE(os.lstat(os.path.join(root, name)).st_mode) for name in ('ro', 'ro/sub', 'none')}
    assert modes == {'ro': 0o555, 'ro/sub': 0o500, 'none': 0o000}
    assert listing(root) == ['none/', 'none/c', 'none/later', 'ro/', 'ro/a', 'ro/later', 'ro/sub/', 'ro/sub/b']


def test_directory_mtimes_survive_children_written_in_later_layers(root: str) -> None:
    lower = TarBuilder().dir('d', mtime=MTIME + 1).dir('d/e', mtime=MTIME + 2).file('d/e/f', b'', mtime=MTIME + 3) \
        .tar()
    upper = TarBuilder().file('d/new', b'n', mtime=MTIME + 4).file('d/e/new', b'n', mtime=MTIME + 5) \
        .whiteout('d/e/f').tar()
    apply_layers(root, lower, upper)
    times = {name: os.lstat(os.path.join(root, name)).st_mtime for name in ('d', 'd/e', 'd/new', 'd/e/new')}
    assert times == {'d': MTIME + 1, 'd/e': MTIME + 2, 'd/new': MTIME + 4, 'd/e/new': MTIME + 5}


def test_file_mtimes_are_kept_to_the_nanosecond_pax_gives(root: str) -> None:
    layer = TarBuilder().file('whole', b'w', mtime=MTIME).file('fraction', b'f', pax={'mtime': '1500000000.25'}) \
        .file('nanos', b'n', pax={'mtime': '1700000000.123456789'}).file('before-1970', b'b', pax={'mtime': '-1.5'}) \
        .tar()
    apply_layers(root, layer)
    times = {name: os.lstat(os.path.join(root, name)).st_mtime_ns for name in listing(root)}
    assert times == {'whole': MTIME * 10**9, 'fraction': MTIME * 10**9 + 250_000_000,
                     'nanos': 1_700_000_000_123_456_789, 'before-1970': -1_500_000_000}


def test_root_entry_sets_the_root_directory_metadata(root: str) -> None:
    layer = TarBuilder().dir('./', mode=0o700, uid=12, gid=34, mtime=MTIME + 9).file('./etc', b'e').tar()
    apply_layers(root, layer)
    info = os.lstat(root)
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, info.st_mtime) == (0o700, 12, 34, MTIME + 9)
    assert listing(root) == ['etc']


# -- compression and digests -----------------------------------------------------------------------


def _rich_layer() -> bytes:
    return TarBuilder().dir('etc', mtime=MTIME + 1).file('etc/hostname', b'box\n', mtime=MTIME + 2) \
        .file('bin-su', b'su' * 5000, mode=0o4755, uid=0, gid=0).hardlink('bin-su-link', 'bin-su') \
        .symlink('lib', 'usr/lib').dir('usr').dir('usr/lib', mode=0o700).fifo('fifo').tar()


def _apply_one(root: str, blob: bytes, media_type: str) -> None:
    with RootfsBuilder(root) as builder:
        builder.apply_layer(blob_layer(blob, digest=sha256(blob), media_type=media_type), label='layer 1/1')
        builder.finish()


def test_every_compression_applies_identically_whatever_the_media_type(tmp_path: pathlib.Path) -> None:
    tar = _rich_layer()
    results = {}
    for compression in COMPRESSIONS:
        # The media type deliberately disagrees with the data: the magic bytes decide.
        media_type = LAYER_TAR if compression != 'none' else LAYER_TAR_GZIP
        target = tmp_path / compression
        target.mkdir()
        _apply_one(str(target), compress(tar, compression), media_type)
        tree = snapshot(str(target))
        del tree['.']  # the root has no entry, so its mtime is the time of the run
        results[compression] = tree
    assert len(results['none']) == 8
    for compression in COMPRESSIONS:
        assert results[compression] == results['none'], compression


def test_apply_tar_stream_detects_compression(root: str) -> None:
    tar = TarBuilder().file('hello', b'world').tar()
    with RootfsBuilder(root) as builder:
        builder.apply_tar_stream(io.BytesIO(compress(tar, 'xz')))
        builder.finish()
    assert read(os.path.join(root, 'hello')) == b'world'


def test_right_digest_passes_and_wrong_digest_raises_digest_mismatch(tmp_path: pathlib.Path) -> None:
    blob = compress(TarBuilder().file('f', b'x').tar(), 'gzip')
    (tmp_path / 'good').mkdir()
    (tmp_path / 'bad').mkdir()
    with RootfsBuilder(str(tmp_path / 'good')) as builder:
        builder.apply_layer(blob_layer(blob, digest=sha256(blob)))
    wrong = sha256(blob + b'tampered')
    with RootfsBuilder(str(tmp_path / 'bad')) as builder:
        with pytest.raises(DigestMismatch, match='layer 1/1 %s: content hashes to %s, expected %s'
                           % (wrong, sha256(blob), wrong)):
            builder.apply_layer(blob_layer(blob, digest=wrong), label='layer 1/1')


def test_diff_id_is_verified_for_a_layer_named_only_by_its_uncompressed_digest(tmp_path: pathlib.Path) -> None:
    tar = TarBuilder().file('f', b'x').tar()
    blob = compress(tar, 'gzip')
    (tmp_path / 'good').mkdir()
    (tmp_path / 'bad').mkdir()
    with RootfsBuilder(str(tmp_path / 'good')) as builder:
        builder.apply_layer(blob_layer(blob, diff_id=sha256(tar)))
    with RootfsBuilder(str(tmp_path / 'bad')) as builder:
        with pytest.raises(DigestMismatch, match=r'\(uncompressed\): content hashes to %s' % sha256(tar)):
            builder.apply_layer(blob_layer(blob, diff_id=sha256(blob)))


def _gzip_with_bad_checksum() -> bytes:
    data = compress(TarBuilder().file('f', b'a' * 65536).tar(), 'gzip')
    return data[:-8] + bytes(byte ^ 0xff for byte in data[-8:-4]) + data[-4:]


def _gzip_with_bad_deflate_block_after(good: int) -> bytes:
    """A gzip stream whose deflate data turns invalid after `good` bytes of a tar holding one big file."""
    tar = TarBuilder().file('big', b'text line\n' * (good // 5)).tar()
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    header = b'\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff'
    # A byte-aligned end of block, then a final block of the reserved type 3.
    return header + deflate.compress(tar[:good]) + deflate.flush(zlib.Z_SYNC_FLUSH) + b'\x07' + bytes(64)


def _big_tar() -> bytes:
    return TarBuilder().file('f', b'x' * 100000).file('g', b'y' * 1000).tar()


# What the inflater in use (python-isal's when it is installed, else zlib) says of a bad deflate block.
_INVALID_BLOCK = 'Invalid deflate block' if inflate_module() is not zlib else 'invalid block type'
_SECOND_HEADER = 512 + 100352  # the header of 'g': after f's header and f's data padded to whole blocks


@pytest.mark.parametrize('blob, message', [
    (_gzip_with_bad_checksum(), r'corrupt or truncated data \(gzip\): CRC check failed'),
    # Past the read-ahead of tar headers, so the damage shows while a file's data is copied.
    (_gzip_with_bad_deflate_block_after(3 << 20), r'corrupt or truncated data \(gzip\): .*' + _INVALID_BLOCK),
    (_gzip_with_bad_deflate_block_after(1000), 'corrupt or truncated .*' + _INVALID_BLOCK),
    (compress(_big_tar(), 'gzip')[:-200], r'corrupt or truncated data \(gzip\): Compressed file ended'),
    (compress(_big_tar(), 'xz')[:-50], r'corrupt or truncated data \(xz\): Compressed file ended'),
    (compress(_big_tar(), 'bzip2')[:-50], r'corrupt or truncated data \(bzip2\): Compressed file ended'),
    # zstandard reports no truncated frame: what comes out just ends, and the tar reader notices.
    (compress(_big_tar(), 'zstd')[:-50], r'corrupt or truncated data \(zstd\)'),
    (_big_tar()[:50000], r'corrupt or truncated data \(tar\): unexpected end of data'),
    (_big_tar()[:_SECOND_HEADER + 100], 'damaged tar header at byte %d' % _SECOND_HEADER),
    (_big_tar()[:_SECOND_HEADER] + b'garbage!' * 64, 'damaged tar header at byte %d' % _SECOND_HEADER),
    (_big_tar()[:_SECOND_HEADER] + b'garbage!' * 640, 'damaged tar header at byte %d' % _SECOND_HEADER),
    (b'this is not a tar archive at all' * 40, r'corrupt or truncated data \(tar\)'),
], ids=['gzip-bad-checksum', 'gzip-bad-block-in-file-data', 'gzip-bad-block-in-header', 'truncated-gzip',
        'truncated-xz', 'truncated-bzip2', 'truncated-zstd', 'truncated-tar-in-data', 'truncated-tar-in-header',
        'one-block-of-garbage-after-entries', 'garbage-after-entries', 'not-a-tar'])
def test_corrupt_or_truncated_layer_raises_layer_error(root: str, blob: bytes, message: str) -> None:
    with RootfsBuilder(root) as builder:
        with pytest.raises(LayerError, match='^layer 2/3: %s' % message):
            builder.apply_layer(blob_layer(blob), label='layer 2/3')


def test_tar_without_end_of_archive_marker_is_accepted(root: str) -> None:
    # Some writers leave the two zero blocks out; like libarchive, take the end of data for the end.
    tar = TarBuilder().file('f', b'x' * 1000).file('g', b'y').tar()
    apply_layers(root, tar[:512 + 1024 + 512 + 512])
    assert listing(root) == ['f', 'g']


def test_failing_writes_are_not_reported_as_damaged_data(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(fd: int, data: t.Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, 'write', disk_full)
    blob = compress(TarBuilder().file('f', b'data').tar(), 'gzip')
    with RootfsBuilder(root) as builder:
        with pytest.raises(OSError) as caught:
            builder.apply_layer(blob_layer(blob), label='layer 1/1')
    assert caught.value.errno == errno.ENOSPC


class _BrokenConnection(io.BytesIO):
    def read(self, size: t.Optional[int] = -1) -> bytes:
        if self.tell() > 1000:
            raise ConnectionResetError(errno.ECONNRESET, 'Connection reset by peer')
        return super().read(min(size, 100) if size is not None and size >= 0 else 100)


@pytest.mark.parametrize('compression', ['gzip', 'xz', 'zstd', 'none'])
def test_failing_blob_reads_are_not_reported_as_damaged_data(root: str, compression: str) -> None:
    blob = compress(TarBuilder().file('f', os.urandom(50000)).tar(), compression)
    layer = blob_layer(blob)
    layer.open_blob = lambda: _BrokenConnection(blob)
    with RootfsBuilder(root) as builder:
        with pytest.raises(ConnectionResetError):
            builder.apply_layer(layer, label='layer 1/1')


# -- unprivileged callers --------------------------------------------------------------------------


def _run_as_nobody(action: t.Callable[[], t.Any]) -> t.Any:
    """What `action` returns when run as uid/gid 65534; its failure fails the test."""
    outcome = as_nobody(action)
    assert 'error' not in outcome, outcome
    return outcome['value']


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to become an unprivileged user')
def test_unprivileged_apply_keeps_modes_and_gives_everything_to_the_caller() -> None:
    lower = TarBuilder().dir('ro', mode=0o555).file('ro/a', b'a', uid=1000, gid=1000) \
        .dir('ro/sub', mode=0o555, uid=2).file('ro/sub/b', b'b', mode=0o400) \
        .dir('locked', mode=0o000).dir('locked/inner', mode=0o000).file('locked/inner/c', b'c', mode=0o000) \
        .dir('bin').file('bin/su', b'su', mode=0o4755).file('bin/wall', b'w', mode=0o2755, gid=5) \
        .file('bin/ping', b'p', mode=0o755, pax={
            'SCHILY.xattr.security.capability': CAPABILITY_V2.decode('utf-8', 'surrogateescape')}) \
        .symlink('link', 'ro/a', uid=1234).hardlink('ro/hard', 'ro/a').dir('dev').chardev('dev/null', 1, 3).tar()
    upper = TarBuilder().file('ro/later', b'l', uid=3).file('locked/inner/later', b'l').tar()

    workdir = tempfile.mkdtemp(prefix='virt-bootstrap-unprivileged-')
    try:
        os.chown(workdir, NOBODY, NOBODY)
        root = os.path.join(workdir, 'rootfs')

        def build() -> t.Dict[str, t.Any]:
            os.mkdir(root, 0o700)
            stats = apply_layers(root, lower, upper)
            return dataclasses.asdict(stats)

        stats = _run_as_nobody(build)
        assert stats['owners_not_kept'] > 0
        assert stats['skipped'] == {'device_node': 1, 'xattr': 1}

        tree = snapshot(root)
        assert sorted(tree) == ['.', 'bin', 'bin/ping', 'bin/su', 'bin/wall', 'dev', 'link', 'locked',
                                'locked/inner', 'locked/inner/c', 'locked/inner/later', 'ro', 'ro/a', 'ro/hard',
                                'ro/later', 'ro/sub', 'ro/sub/b']
        assert {entry[1:3] for entry in tree.values()} == {(NOBODY, NOBODY)}
        modes = {path: stat.S_IMODE(entry[0]) for path, entry in tree.items() if not stat.S_ISLNK(entry[0])}
        assert modes == {
            '.': 0o755, 'bin': 0o755, 'bin/ping': 0o755, 'bin/su': 0o4755, 'bin/wall': 0o2755, 'dev': 0o755,
            'locked': 0o000, 'locked/inner': 0o000, 'locked/inner/c': 0o000, 'locked/inner/later': 0o644,
            'ro': 0o555, 'ro/a': 0o644, 'ro/hard': 0o644, 'ro/later': 0o644, 'ro/sub': 0o555, 'ro/sub/b': 0o400,
        }
        assert tree['ro/hard'][4] == 2

        _run_as_nobody(lambda: remove_tree(root))
        assert os.listdir(workdir) == []
    finally:
        shutil.rmtree(workdir)


def test_remove_tree_removes_read_only_trees_and_never_follows_links(tmp_path: pathlib.Path) -> None:
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'keep').write_bytes(b'k')
    root = tmp_path / 'rootfs'
    root.mkdir()
    layer = TarBuilder().dir('ro', mode=0o555).file('ro/f', b'f').symlink('ro/out', str(outside)) \
        .symlink('out-rel', '../outside').dir('none', mode=0o000).tar()
    apply_layers(str(root), layer)
    remove_tree(str(root))
    assert sorted(os.listdir(tmp_path)) == ['outside']
    assert os.listdir(outside) == ['keep']


def test_zstd_cut_at_a_tar_header_boundary_is_still_an_error(root: str) -> None:
    # zstandard's stream_reader ends quietly at a truncated frame; when the cut falls between tar
    # entries, tar alone cannot tell either.
    import zstandard
    tar = TarBuilder().file('a', b'a' * 512).file('b', b'b' * 512).tar()
    frames = zstandard.ZstdCompressor().compress(tar[:1024]) + zstandard.ZstdCompressor().compress(tar[1024:])
    with pytest.raises(LayerError, match=r'corrupt or truncated data \(zstd\)'):
        apply_layers(root, frames[:-3])


def test_more_entries_than_any_rootfs_holds_are_refused(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr('ansible_collections.virt.bootstrap.plugins.module_utils._layers.MAX_ENTRIES', 5)
    layer = TarBuilder()
    for number in range(6):
        layer.file('f%d' % number, b'')
    with pytest.raises(SizeLimitExceeded, match='more than 5 entries'):
        apply_layers(root, layer.tar())


def test_dir_metas_forget_a_whole_subtree_and_nothing_beside_it() -> None:
    from ansible_collections.virt.bootstrap.plugins.module_utils._layers import _DirMeta, _DirMetas
    metas = _DirMetas([((), _DirMeta(0o755, None)), (('a',), _DirMeta(0o700, 1)), (('a', 'b', 'c'), _DirMeta(0o711, 2)),
                       (('a', 'bb'), _DirMeta(0o750, 3)), (('ab',), _DirMeta(0o705, 4))])
    metas.remove_tree(('a', 'b'))  # no metadata of its own, but a directory below it has
    assert sorted(metas) == [(), ('a',), ('a', 'bb'), ('ab',)]
    metas.remove_tree(('a',))
    assert sorted(metas) == [(), ('ab',)]
    metas[('a', 'b')] = _DirMeta(0o700, 5)  # made again: known again, and found again by a removal above
    metas.remove_tree(('a',))
    assert sorted(metas) == [(), ('ab',)]


def test_a_directory_made_again_after_its_tree_was_replaced_gets_the_new_metadata(root: str) -> None:
    lower = TarBuilder().dir('a', mode=0o701).dir('a/b', mode=0o702).dir('a/b/c', mode=0o703).tar()
    replace = TarBuilder().file('a/b', b'now a file').tar()
    again = TarBuilder().whiteout('a/b').file('a/b/c/f', b'f').tar()  # a/b and a/b/c made on the way: 0755
    apply_layers(root, lower, replace, again)
    assert [stat.S_IMODE(os.lstat(os.path.join(root, path)).st_mode) for path in ('a', 'a/b', 'a/b/c')] == \
        [0o701, 0o755, 0o755]
