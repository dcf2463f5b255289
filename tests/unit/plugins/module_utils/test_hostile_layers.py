# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Layers that try to reach outside the root or to exhaust the disk: refused, nothing outside changes."""

from __future__ import annotations

import os
import pathlib
import re
import stat
import tarfile
import time
import typing as t
from dataclasses import dataclass

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import (
    HostileLayer,
    LayerError,
    SizeLimitExceeded,
)
from ansible_collections.virt.bootstrap.plugins.module_utils._rootpath import remove_tree
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import (
    RESOLUTIONS,
    TarBuilder,
    apply_layers,
    compress,
    listing,
    read,
    snapshot,
    use_resolution,
)

MIB = 1 << 20

# A good first layer: the hostile one always lands on a root that already has content.
GOOD_LAYER = TarBuilder().dir('etc').file('etc/hostname', b'box\n').dir('usr').dir('usr/bin') \
    .file('usr/bin/tool', b'#!/bin/sh\n', mode=0o755).tar()


@dataclass
class Workspace:
    top: str
    root: str
    sentinel: str

    def outside(self) -> t.Dict[str, t.Tuple[t.Any, ...]]:
        """Everything beside the root: what no layer may change.

        The workspace directory's own times and link count move when the root is removed; a new
        entry in it shows up as a new path.
        """
        found = snapshot(self.top, skip=('rootfs',))
        del found['.']
        return found


@pytest.fixture
def workspace(tmp_path: pathlib.Path) -> Workspace:
    sentinel = tmp_path / 'sentinel'
    (sentinel / 'dir').mkdir(parents=True)
    (sentinel / 'file').write_bytes(b'precious')
    (sentinel / 'dir' / 'inner').write_bytes(b'inner')
    (sentinel / 'link').symlink_to('file')
    os.chmod(sentinel / 'file', 0o640)
    (tmp_path / 'rootfs').mkdir()
    return Workspace(str(tmp_path), str(tmp_path / 'rootfs'), str(sentinel))


@dataclass
class Hostile:
    name: str
    layers: t.Callable[[str], t.List[bytes]]  # given the sentinel's absolute path
    message: str  # a part of the message, as it is
    error: t.Type[LayerError] = HostileLayer


HOSTILE = [
    Hostile('dotdot-name', lambda s: [TarBuilder().file('../sentinel/escape', b'x').tar()], 'climbs out'),
    Hostile('dotdot-inside-name', lambda s: [TarBuilder().dir('a').file('a/../../sentinel/escape', b'x').tar()],
            'climbs out'),
    Hostile('dotdot-directory', lambda s: [TarBuilder().dir('../sentinel/newdir').tar()], 'climbs out'),
    Hostile('absolute-name', lambda s: [TarBuilder().file(s + '/passwd', b'x').tar()], 'absolute path'),
    Hostile('absolute-name-replacing-file', lambda s: [TarBuilder().file(s + '/file', b'pwned').tar()],
            'absolute path'),
    Hostile('hard-link-to-dotdot-path', lambda s: [TarBuilder().hardlink('stolen', '../sentinel/file').tar()],
            'climbs out'),
    Hostile('hard-link-to-absolute-path', lambda s: [TarBuilder().hardlink('stolen', s + '/file').tar()],
            'absolute path'),
    Hostile('hard-link-to-host-file', lambda s: [TarBuilder().hardlink('stolen', '/etc/hostname').tar()],
            "absolute path '/etc/hostname'"),
    # The target resolves inside the root, where there is no such file.
    Hostile('hard-link-through-symlinked-directory',
            lambda s: [TarBuilder().symlink('x', s).tar(), TarBuilder().hardlink('stolen', 'x/file').tar()],
            'hard link /stolen: target /x/file does not exist', LayerError),
    Hostile('hard-link-through-climbing-symlink',
            lambda s: [TarBuilder().symlink('up', '../../../../..').hardlink('stolen', 'up' + s + '/file').tar()],
            'does not exist', LayerError),
    Hostile('hard-link-to-directory', lambda s: [TarBuilder().hardlink('etc2', 'etc').tar()],
            'points at directory'),
    Hostile('whiteout-of-dotdot', lambda s: [TarBuilder().file('.wh...').tar()], 'whiteout'),
    Hostile('whiteout-of-dotdot-below', lambda s: [TarBuilder().file('etc/.wh...').tar()], 'whiteout'),
    Hostile('whiteout-of-dot', lambda s: [TarBuilder().file('etc/.wh..').tar()], 'whiteout'),
    Hostile('dot-entry-as-symlink', lambda s: [TarBuilder().symlink('.', s).file('pwned', b'x').tar()],
            'root itself'),
    Hostile('dot-slash-entry-as-symlink', lambda s: [TarBuilder().symlink('./', s).file('pwned', b'x').tar()],
            'root itself'),
    Hostile('slash-entry-as-symlink', lambda s: [TarBuilder().symlink('/', s).file('pwned', b'x').tar()],
            'absolute path'),
    Hostile('symlink-loop', lambda s: [TarBuilder().symlink('a', 'b').symlink('b', 'a').file('a/x', b'x').tar()],
            '/a: more than 40 symlinks to follow (a symlink loop?)', LayerError),
    Hostile('symlink-to-itself', lambda s: [TarBuilder().symlink('self', 'self').dir('self/d').tar()],
            'symlink loop', LayerError),
    Hostile('symlink-loop-through-parent', lambda s: [TarBuilder().symlink('a', 'a/b').file('a/x', b'x').tar()],
            'symlink loop', LayerError),
    Hostile('symlink-loop-in-lower-layer',
            lambda s: [TarBuilder().symlink('a', '/b').symlink('b', '../a').tar(), TarBuilder().file('a/x', b'x').tar()],
            'symlink loop', LayerError),
    Hostile('whiteout-through-symlink-loop',
            lambda s: [TarBuilder().symlink('a', 'b').symlink('b', 'a').tar(), TarBuilder().whiteout('a/x').tar()],
            'symlink loop', LayerError),
    Hostile('hard-link-target-through-symlink-loop',
            lambda s: [TarBuilder().symlink('a', 'b').symlink('b', 'a').hardlink('h', 'a/x').tar()],
            'symlink loop', LayerError),
    Hostile('symlink-resolving-deeper-than-any-tree',
            lambda s: [TarBuilder().symlink('deep', '/'.join(['d'] * 200)).file('deep/' + 'e/' * 100 + 'f', b'x').tar()],
            'resolves to more than 256 directories deep'),
    Hostile('symlink-chain-resolving-deeper-than-any-tree',
            lambda s: [TarBuilder().symlink('a', 'b/' * 150 + 'c').symlink('b/' * 150 + 'c', 'd/' * 150 + 'e')
                       .file('a/f', b'x').tar()],
            'resolves to more than 256 directories deep'),
    Hostile('name-deeper-than-any-tree', lambda s: [TarBuilder().file('a/' * 2000 + 'f', b'x').tar()],
            'more than 256 directories deep'),
    Hostile('hard-link-target-deeper-than-any-tree',
            lambda s: [TarBuilder().hardlink('f', 'a/' * 2000 + 'f').tar()], 'more than 256 directories deep'),
    # Header values no system call takes: a typed error, not a traceback.
    Hostile('nul-in-name', lambda s: [TarBuilder().file('x', b'x', pax={'path': 'etc/pass\x00wd'}).tar()],
            "entry 'etc/pass\\x00wd' cannot be written", LayerError),
    Hostile('nul-in-symlink-target',
            lambda s: [TarBuilder().symlink('x', 'y', pax={'linkpath': s + '\x00'}).tar()], 'cannot be written',
            LayerError),
    Hostile('owner-out-of-range', lambda s: [TarBuilder().file('x', b'x', pax={'uid': str(1 << 40)}).tar()],
            'cannot be written', LayerError),
    Hostile('mtime-out-of-range', lambda s: [TarBuilder().file('x', b'x', pax={'mtime': '9' * 30}).tar()],
            'cannot be written', LayerError),
    Hostile('mtime-infinite', lambda s: [TarBuilder().file('x', b'x', pax={'mtime': '1e400'}).tar()],
            'cannot be written', LayerError),
    Hostile('xattr-value-not-base64',
            lambda s: [TarBuilder().file('x', b'x', pax={'LIBARCHIVE.xattr.user.a': 'AAAAA'}).tar()],
            'cannot be written', LayerError),
]


def _refused_and_contained(workspace: Workspace, case: Hostile) -> None:
    before = workspace.outside()
    with pytest.raises(case.error, match=re.escape(case.message)) as caught:
        apply_layers(workspace.root, GOOD_LAYER, *case.layers(workspace.sentinel))
    assert str(caught.value).startswith('layer '), 'the message names the layer: %s' % caught.value
    assert workspace.outside() == before
    # Cleaning up after the failure must not reach outside either.
    remove_tree(workspace.root)
    assert not os.path.lexists(workspace.root)
    assert workspace.outside() == before


@pytest.mark.parametrize('resolution', RESOLUTIONS)
@pytest.mark.parametrize('case', HOSTILE, ids=[case.name for case in HOSTILE])
def test_hostile_layer_is_refused_and_nothing_outside_the_root_changes(
        workspace: Workspace, case: Hostile, resolution: str, monkeypatch: pytest.MonkeyPatch) -> None:
    use_resolution(resolution, monkeypatch)
    _refused_and_contained(workspace, case)


# -- links followed inside the root: what they point at is the root's, never the host's ------------


DIR = 'a directory'
FIFO = 'a fifo'
HOST_FILES = ('/etc/passwd', '/etc/hostname')


@dataclass(frozen=True)
class Link:
    target: str


@dataclass
class Contained:
    """Layers that go through symlinks pointing outside; they resolve inside the root instead."""

    name: str
    layers: t.Callable[[str], t.List[bytes]]  # given the sentinel's absolute path
    # Given the sentinel's path inside the root (its absolute path without the leading '/'): what
    # must be at each path below the root afterwards (file content, DIR, FIFO or a Link), and what not.
    landed: t.Callable[[str], t.Dict[str, t.Any]]
    gone: t.Callable[[str], t.List[str]] = lambda inside: []
    # Pairs of paths below the root that must be one inode.
    same_inode: t.Callable[[str], t.List[t.Tuple[str, str]]] = lambda inside: []


def _inside(path: str) -> str:
    return path.lstrip('/')


CONTAINED = [
    Contained('symlinked-parent-to-slash-from-lower-layer',
              lambda s: [TarBuilder().symlink('x', '/').tar(), TarBuilder().file('x' + s + '/pwned', b'x').tar()],
              lambda i: {i + '/pwned': b'x', 'x': Link('/')}),
    Contained('symlinked-parent-to-sibling-from-lower-layer',
              lambda s: [TarBuilder().symlink('x', '../sentinel').tar(), TarBuilder().file('x/pwned', b'x').tar()],
              lambda i: {'sentinel/pwned': b'x', 'x': Link('../sentinel')}),
    Contained('symlinked-parent-in-same-layer',
              lambda s: [TarBuilder().symlink('x', s).file('x/pwned', b'x').tar()],
              lambda i: {i + '/pwned': b'x'}),
    Contained('symlinked-parent-replacing-file',
              lambda s: [TarBuilder().symlink('x', s).file('x/file', b'pwned').tar()],
              lambda i: {i + '/file': b'pwned'}),
    Contained('directory-through-symlinked-parent',
              lambda s: [TarBuilder().symlink('x', s).dir('x/newdir').tar()],
              lambda i: {i + '/newdir': DIR}),
    Contained('symlink-through-symlinked-parent',
              lambda s: [TarBuilder().symlink('x', s).symlink('x/planted', '/').tar()],
              lambda i: {i + '/planted': Link('/')}),
    Contained('fifo-through-deep-symlinked-parent',
              lambda s: [TarBuilder().dir('a').symlink('a/x', '../../sentinel').fifo('a/x/dir/fifo').tar()],
              lambda i: {'sentinel/dir/fifo': FIFO}),
    Contained('symlink-pointing-outside-then-written-through',
              lambda s: [TarBuilder().symlink('out', '../sentinel/dir').file('out/pwned', b'x').tar()],
              lambda i: {'sentinel/dir/pwned': b'x'}),
    Contained('symlink-chain-climbing-out-with-dotdot',
              lambda s: [TarBuilder().symlink('l1', '../../../../..').dir('d').symlink('d/l2', '../l1/../../..').tar(),
                         TarBuilder().file('d/l2' + s + '/file', b'pwned').tar()],
              lambda i: {i + '/file': b'pwned'}),
    Contained('absolute-symlink-to-host-etc',
              lambda s: [TarBuilder().symlink('hostetc', '/etc').tar(),
                         TarBuilder().file('hostetc/passwd', b'pwned').file('hostetc/hostname', b'pwned').tar()],
              lambda i: {'etc/passwd': b'pwned', 'etc/hostname': b'pwned', 'hostetc': Link('/etc')}),
    Contained('dotdot-in-a-link-target-applies-where-the-link-before-it-led',
              lambda s: [TarBuilder().symlink('lib', 'usr/bin').symlink('b', 'lib/../x').tar(),
                         TarBuilder().file('b/f', b'f').tar()],
              lambda i: {'usr/x/f': b'f'}, gone=lambda i: ['x']),
    Contained('hard-link-into-symlinked-directory',
              lambda s: [TarBuilder().symlink('x', s).hardlink('x/planted', 'etc/hostname').tar()],
              lambda i: {i + '/planted': b'box\n'}, same_inode=lambda i: [(i + '/planted', 'etc/hostname')]),
    Contained('hard-link-through-symlink-to-outside-links-the-copy-inside',
              lambda s: [TarBuilder().file(_inside(s) + '/file', b'inside').symlink('x', s).tar(),
                         TarBuilder().hardlink('stolen', 'x/file').tar()],
              lambda i: {'stolen': b'inside'}, same_inode=lambda i: [('stolen', i + '/file')]),
    Contained('hard-link-through-absolute-symlink-to-host-etc',
              lambda s: [TarBuilder().symlink('hostetc', '/etc').tar(),
                         TarBuilder().hardlink('stolen', 'hostetc/hostname').tar()],
              lambda i: {'stolen': b'box\n'}, same_inode=lambda i: [('stolen', 'etc/hostname')]),
    Contained('whiteout-through-symlink',
              lambda s: [TarBuilder().file(_inside(s) + '/file', b'inside').file(_inside(s) + '/keep', b'k')
                         .symlink('x', s).tar(), TarBuilder().whiteout('x/file').tar()],
              lambda i: {i + '/keep': b'k'}, gone=lambda i: [i + '/file']),
    Contained('opaque-whiteout-through-symlink',
              lambda s: [TarBuilder().file(_inside(s) + '/file', b'inside').file(_inside(s) + '/dir/inner', b'i')
                         .symlink('x', s).tar(), TarBuilder().opaque('x').file('x/new', b'n').tar()],
              lambda i: {i + '/new': b'n'}, gone=lambda i: [i + '/file', i + '/dir']),
    Contained('whiteout-through-dotdot-climbing-links',
              lambda s: [TarBuilder().file(_inside(s) + '/file', b'inside').dir('a').symlink('a/up', '../../../..')
                         .tar(), TarBuilder().whiteout('a/up' + s + '/file').tar()],
              lambda i: {i: DIR}, gone=lambda i: [i + '/file']),
    Contained('opaque-whiteout-through-dotdot-climbing-links',
              lambda s: [TarBuilder().file(_inside(s) + '/dir/inner', b'i').file(_inside(s) + '/file', b'f')
                         .symlink('up', '../..').tar(), TarBuilder().opaque('up' + s + '/dir').tar()],
              lambda i: {i + '/dir': DIR, i + '/file': b'f'}, gone=lambda i: [i + '/dir/inner']),
]


def _host_files() -> t.Dict[str, t.Tuple[t.Any, ...]]:
    found = {}
    for path in HOST_FILES:
        info = os.lstat(path)
        found[path] = (read(path), info.st_ino, info.st_mtime_ns, info.st_nlink)
    return found


def _check_landed(root: str, path: str, expected: t.Any) -> None:
    full = os.path.join(root, path)
    info = os.lstat(full)
    if expected == DIR:
        assert stat.S_ISDIR(info.st_mode), path
    elif expected == FIFO:
        assert stat.S_ISFIFO(info.st_mode), path
    elif isinstance(expected, Link):
        assert os.readlink(full) == expected.target, path
    else:
        assert stat.S_ISREG(info.st_mode), path
        assert read(full) == expected, path


@pytest.mark.parametrize('resolution', RESOLUTIONS)
@pytest.mark.parametrize('case', CONTAINED, ids=[case.name for case in CONTAINED])
def test_paths_through_symlinks_resolve_inside_the_root_and_nothing_outside_changes(
        workspace: Workspace, case: Contained, resolution: str, monkeypatch: pytest.MonkeyPatch) -> None:
    openat2_calls = use_resolution(resolution, monkeypatch)
    before, host_before = workspace.outside(), _host_files()
    inside = _inside(workspace.sentinel)
    apply_layers(workspace.root, GOOD_LAYER, *case.layers(workspace.sentinel))
    assert workspace.outside() == before
    assert _host_files() == host_before
    for path, expected in case.landed(inside).items():
        _check_landed(workspace.root, path, expected)
    for path in case.gone(inside):
        assert not os.path.lexists(os.path.join(workspace.root, path)), path
    for first, second in case.same_inode(inside):
        assert os.lstat(os.path.join(workspace.root, first)).st_ino == \
            os.lstat(os.path.join(workspace.root, second)).st_ino
    if resolution == 'openat2':
        assert openat2_calls, 'the kernel resolved no path'
    remove_tree(workspace.root)
    assert workspace.outside() == before


# -- links that point outside are created, never followed ------------------------------------------


def test_symlinks_pointing_outside_are_created_not_followed(workspace: Workspace) -> None:
    before = workspace.outside()
    lower = TarBuilder().symlink('rel', '../sentinel/file').symlink('abs', workspace.sentinel + '/file') \
        .symlink('dir', workspace.sentinel + '/dir').symlink('etc/passwd', workspace.sentinel + '/file').tar()
    # Each later entry replaces the link itself; nothing is written where the link points.
    upper = TarBuilder().file('rel', b'pwned').dir('dir', mode=0o700).fifo('abs').file('etc/passwd', b'root::0:0') \
        .tar()
    apply_layers(workspace.root, GOOD_LAYER, lower)
    assert os.readlink(os.path.join(workspace.root, 'rel')) == '../sentinel/file'
    assert os.readlink(os.path.join(workspace.root, 'abs')) == workspace.sentinel + '/file'
    apply_layers(workspace.root, upper)
    assert read(os.path.join(workspace.root, 'rel')) == b'pwned'
    assert stat.S_ISDIR(os.lstat(os.path.join(workspace.root, 'dir')).st_mode)
    assert stat.S_ISFIFO(os.lstat(os.path.join(workspace.root, 'abs')).st_mode)
    assert read(os.path.join(workspace.root, 'etc/passwd')) == b'root::0:0'
    assert workspace.outside() == before


def test_metadata_of_a_symlink_pointing_outside_is_set_on_the_link(workspace: Workspace) -> None:
    before = workspace.outside()
    layer = TarBuilder().symlink('out', workspace.sentinel + '/file', uid=4321, gid=4321, mtime=12345).tar()
    apply_layers(workspace.root, layer)
    assert os.lstat(os.path.join(workspace.root, 'out'))[4:6] == (4321, 4321)
    assert workspace.outside() == before


def test_hard_link_to_a_symlink_pointing_outside_links_the_symlink(workspace: Workspace) -> None:
    before = workspace.outside()
    layer = TarBuilder().symlink('out', workspace.sentinel + '/file').hardlink('copy', 'out').tar()
    apply_layers(workspace.root, layer)
    copy = os.path.join(workspace.root, 'copy')
    assert stat.S_ISLNK(os.lstat(copy).st_mode)
    assert os.lstat(copy).st_ino == os.lstat(os.path.join(workspace.root, 'out')).st_ino
    assert workspace.outside() == before


def test_whiteouts_remove_links_to_outside_not_their_targets(workspace: Workspace) -> None:
    before = workspace.outside()
    lower = TarBuilder().symlink('to-dir', workspace.sentinel + '/dir').symlink('to-file', '../sentinel/file') \
        .dir('d').symlink('d/to-sentinel', workspace.sentinel).tar()
    upper = TarBuilder().whiteout('to-dir').whiteout('to-file').opaque('d').tar()
    apply_layers(workspace.root, GOOD_LAYER, lower, upper)
    assert listing(workspace.root) == ['d/', 'etc/', 'etc/hostname', 'usr/', 'usr/bin/', 'usr/bin/tool']
    assert workspace.outside() == before


def test_replacing_a_lower_directory_full_of_links_to_outside_removes_only_the_links(workspace: Workspace) -> None:
    before = workspace.outside()
    lower = TarBuilder().dir('d').symlink('d/a', workspace.sentinel).symlink('d/b', '../../sentinel/file') \
        .dir('d/ro', mode=0o500).symlink('d/ro/c', workspace.sentinel + '/dir').tar()
    upper = TarBuilder().file('d', b'now a file').tar()
    apply_layers(workspace.root, lower, upper)
    assert listing(workspace.root) == ['d']
    assert workspace.outside() == before


# -- decompression bombs and the size limit --------------------------------------------------------


def _bomb(compression: str, payload: int = 200 * MIB, as_tar: bool = True) -> bytes:
    """`payload` bytes of zeros (inside a tar by default) as concatenated compressed streams; cheap to make."""
    chunk = compress(bytes(MIB), compression)
    head = b''
    if as_tar:
        info = tarfile.TarInfo('zeros')
        info.size = payload
        head = compress(info.tobuf(tarfile.PAX_FORMAT), compression)
    return head + chunk * (payload // MIB)


@pytest.mark.parametrize('compression', ['gzip', 'zstd', 'xz', 'bzip2'])
def test_decompression_bomb_stops_at_max_size_quickly(workspace: Workspace, compression: str) -> None:
    blob = _bomb(compression)
    assert len(blob) < 2 * MIB
    before = workspace.outside()
    started = time.monotonic()
    limit_message = r'^layer 2/2 sha256:[0-9a-f]+: layers expand to more than max_size \(10485760 bytes\)'
    with pytest.raises(SizeLimitExceeded, match=limit_message):
        apply_layers(workspace.root, GOOD_LAYER, blob, max_size=10 * MIB)
    assert time.monotonic() - started < 5
    assert os.lstat(os.path.join(workspace.root, 'zeros')).st_size <= 10 * MIB
    assert workspace.outside() == before


def test_compressed_zeros_that_are_not_a_tar_still_count_against_max_size(workspace: Workspace) -> None:
    blob = _bomb('gzip', as_tar=False)
    with pytest.raises(SizeLimitExceeded):
        apply_layers(workspace.root, blob, max_size=10 * MIB)


def test_size_limit_spans_all_layers(workspace: Workspace) -> None:
    def layer(name: str) -> bytes:
        return compress(TarBuilder().file(name, bytes(4 * MIB)).tar(), 'gzip')

    # Two layers fit in 10 MiB, the third one does not.
    apply_layers(workspace.root, layer('one'), layer('two'), max_size=10 * MIB)
    with pytest.raises(SizeLimitExceeded, match='^layer 3/3 '):
        apply_layers(workspace.root, layer('one'), layer('two'), layer('three'), max_size=10 * MIB)
