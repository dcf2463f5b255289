# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Layers written through symlinks of lower layers (merged /usr): paths resolve inside the root, as umoci's do."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import typing as t

import pytest

from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import (
    MTIME,
    RESOLUTIONS,
    TarBuilder,
    apply_layers,
    listing,
    read,
    use_resolution,
)
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.umoci_support import (
    gnu_tar,
    needs_umoci,
    stage,
    tree_differences,
    umoci_unpack,
)

# A merged-/usr base: lib and bin are links into usr, one relative and one absolute.
MERGED_USR = TarBuilder().dir('usr').dir('usr/lib').dir('usr/bin').file('usr/lib/old.so', b'old') \
    .file('usr/lib/keep.so', b'keep').file('usr/bin/busybox', b'bb', mode=0o755) \
    .symlink('lib', 'usr/lib').symlink('bin', '/usr/bin').tar()


@pytest.fixture(params=RESOLUTIONS)
def root(request: pytest.FixtureRequest, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty rootfs directory; the test runs once with openat2 and once with our own fd walk."""
    use_resolution(request.param, monkeypatch)
    path = tmp_path / 'rootfs'
    path.mkdir()
    return str(path)


def _is_link(root: str, name: str, target: str) -> bool:
    return os.readlink(os.path.join(root, name)) == target


def test_entries_below_a_lower_layer_link_land_where_it_points(root: str) -> None:
    upper = TarBuilder().file('lib/libfoo.so', b'foo').file('bin/tool', b't', mode=0o755).tar()
    apply_layers(root, MERGED_USR, upper)
    assert read(os.path.join(root, 'usr/lib/libfoo.so')) == b'foo'
    assert read(os.path.join(root, 'usr/bin/tool')) == b't'
    assert _is_link(root, 'lib', 'usr/lib') and _is_link(root, 'bin', '/usr/bin')


def test_whiteouts_below_a_lower_layer_link_hide_what_it_points_at(root: str) -> None:
    upper = TarBuilder().whiteout('lib/old.so').whiteout('bin/busybox').tar()
    stats = apply_layers(root, MERGED_USR, upper)
    assert listing(root) == ['bin', 'lib', 'usr/', 'usr/bin/', 'usr/lib/', 'usr/lib/keep.so']
    assert stats.whiteouts == 2


def test_opaque_marker_below_a_link_empties_what_it_points_at(root: str) -> None:
    upper = TarBuilder().opaque('lib').file('lib/new.so', b'n').tar()
    apply_layers(root, MERGED_USR, upper)
    assert sorted(os.listdir(os.path.join(root, 'usr/lib'))) == ['new.so']


@pytest.mark.parametrize('entries, landed', [
    (lambda b: b.file('lib/old.so', b'upper').whiteout('usr/lib/old.so'), 'usr/lib/old.so'),
    (lambda b: b.whiteout('usr/lib/old.so').file('lib/old.so', b'upper'), 'usr/lib/old.so'),
    (lambda b: b.file('usr/lib/old.so', b'upper').whiteout('lib/old.so'), 'usr/lib/old.so'),
    (lambda b: b.whiteout('lib/old.so').file('usr/lib/old.so', b'upper'), 'usr/lib/old.so'),
    (lambda b: b.file('bin/busybox', b'upper').whiteout('usr/bin/busybox'), 'usr/bin/busybox'),
], ids=['written-through-link', 'written-through-link-after', 'whited-out-through-link',
        'whited-out-through-link-after', 'absolute-link'])
def test_a_layer_never_hides_its_own_entries_under_another_name_for_the_same_path(
        root: str, entries: t.Callable[[TarBuilder], TarBuilder], landed: str) -> None:
    # Both names are one path once resolved: the layer's own entry stays, whatever the order.
    apply_layers(root, MERGED_USR, entries(TarBuilder()).tar())
    assert read(os.path.join(root, landed)) == b'upper'


def test_opaque_marker_keeps_what_the_same_layer_wrote_through_a_link(root: str) -> None:
    upper = TarBuilder().file('lib/new.so', b'n').opaque('usr/lib').tar()
    apply_layers(root, MERGED_USR, upper)
    assert sorted(os.listdir(os.path.join(root, 'usr/lib'))) == ['new.so']


def test_hard_link_target_resolves_through_links_and_the_link_itself_is_not_followed(root: str) -> None:
    upper = TarBuilder().hardlink('bin/sh', 'bin/busybox').hardlink('lib-alias', 'lib').tar()
    apply_layers(root, MERGED_USR, upper)
    busybox = os.lstat(os.path.join(root, 'usr/bin/busybox'))
    assert os.lstat(os.path.join(root, 'usr/bin/sh')).st_ino == busybox.st_ino
    assert busybox.st_nlink == 2
    # A hard link to the symlink `lib`: the same symlink inode, not the directory it names.
    assert os.lstat(os.path.join(root, 'lib-alias')).st_ino == os.lstat(os.path.join(root, 'lib')).st_ino


def test_a_dangling_link_gets_the_directories_it_names_as_umoci_makes_them(root: str) -> None:
    lower = TarBuilder().dir('usr').symlink('lib64', 'usr/lib64').tar()
    upper = TarBuilder().file('lib64/ld.so', b'ld').tar()
    apply_layers(root, lower, upper)
    assert read(os.path.join(root, 'usr/lib64/ld.so')) == b'ld'
    made = os.lstat(os.path.join(root, 'usr/lib64'))
    assert (stat.S_IMODE(made.st_mode), made.st_uid, made.st_gid) == (0o755, 0, 0)


def test_directory_metadata_applies_to_the_resolved_directory(root: str) -> None:
    upper = TarBuilder().dir('lib/sub', mode=0o750, mtime=MTIME + 7).file('lib/sub/f', b'f') \
        .dir('usr/lib', mode=0o711, mtime=MTIME + 8).file('lib/later', b'l').tar()
    apply_layers(root, MERGED_USR, upper)
    sub, lib = os.lstat(os.path.join(root, 'usr/lib/sub')), os.lstat(os.path.join(root, 'usr/lib'))
    assert (stat.S_IMODE(sub.st_mode), sub.st_mtime) == (0o750, MTIME + 7)
    assert (stat.S_IMODE(lib.st_mode), lib.st_mtime) == (0o711, MTIME + 8)


def test_an_entry_for_the_link_itself_is_never_followed(root: str) -> None:
    # A directory entry named like the link replaces the link, as in umoci and overlayfs.
    upper = TarBuilder().dir('lib', mode=0o700).file('lib/own.so', b'o').tar()
    apply_layers(root, MERGED_USR, upper)
    assert stat.S_ISDIR(os.lstat(os.path.join(root, 'lib')).st_mode)
    assert listing(os.path.join(root, 'lib')) == ['own.so']
    assert sorted(os.listdir(os.path.join(root, 'usr/lib'))) == ['keep.so', 'old.so']


def test_a_link_path_is_resolved_once_for_all_the_entries_below_it(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = use_resolution('openat2', monkeypatch)
    upper = TarBuilder()
    for number in range(50):
        upper.file('lib/f%d.so' % number, b'')
    apply_layers(str(tmp_path), MERGED_USR, upper.tar())
    assert len(os.listdir(str(tmp_path / 'usr/lib'))) == 52
    assert calls.count('lib') == 1


# -- what was cached about a path is dropped when the path changes ---------------------------------


def test_directory_replaced_by_a_link_then_written_through_it(root: str) -> None:
    lower = TarBuilder().dir('a').file('a/old', b'o').dir('b').tar()
    # `a` is looked up (and its fd kept) for a/x; then `a` becomes a link to b in the same layer.
    upper = TarBuilder().file('a/x', b'x').symlink('a', 'b').file('a/y', b'y').tar()
    later = TarBuilder().file('a/z', b'z').tar()
    apply_layers(root, lower, upper, later)
    assert listing(root) == ['a', 'b/', 'b/y', 'b/z']


def test_link_replaced_by_a_directory_then_written_into_it(root: str) -> None:
    lower = TarBuilder().dir('b').symlink('a', 'b').tar()
    upper = TarBuilder().file('a/x', b'x').dir('a').file('a/y', b'y').tar()
    later = TarBuilder().file('a/z', b'z').tar()
    apply_layers(root, lower, upper, later)
    assert listing(root) == ['a/', 'a/y', 'a/z', 'b/', 'b/x']


def test_link_pointed_elsewhere_then_written_through(root: str) -> None:
    layer = TarBuilder().dir('b').dir('c').symlink('a', 'b').file('a/x', b'x').symlink('a', 'c') \
        .file('a/y', b'y').tar()
    apply_layers(root, layer)
    assert listing(root) == ['a', 'b/', 'b/x', 'c/', 'c/y']


def test_directory_removed_and_made_again_gets_the_entries_after(root: str) -> None:
    lower = TarBuilder().dir('a').file('a/old', b'o').tar()
    middle = TarBuilder().file('a/x', b'x').tar()
    # `rm -rf a; mkdir a; touch a/y`: a whiteout for a, then the new directory.
    upper = TarBuilder().whiteout('a').dir('a').file('a/y', b'y').tar()
    apply_layers(root, lower, middle, upper)
    assert listing(root) == ['a/', 'a/y']


def test_ancestor_of_a_cached_directory_replaced_by_a_link(root: str) -> None:
    layer = TarBuilder().dir('p').dir('p/q').dir('p/q/r').file('p/q/r/first', b'1').dir('s') \
        .symlink('p', 's').file('p/q/r/second', b'2').tar()
    apply_layers(root, layer)
    assert listing(root) == ['p', 's/', 's/q/', 's/q/r/', 's/q/r/second']


def test_link_on_the_way_removed_by_a_whiteout(root: str) -> None:
    lower = TarBuilder().dir('b').symlink('a', 'b').file('a/x', b'x').tar()
    upper = TarBuilder().whiteout('a').file('a/y', b'y').tar()
    apply_layers(root, lower, upper)
    assert listing(root) == ['a/', 'a/y', 'b/', 'b/x']


# -- the same layers unpacked by umoci -------------------------------------------------------------


@needs_umoci
def test_merged_usr_layers_unpack_as_umoci_unpacks_them(root: str, tmp_path: pathlib.Path) -> None:
    lower_stage, upper_stage = tmp_path / 'lower', tmp_path / 'upper'
    stage(lower_stage, {
        'usr/lib/old.so': b'old', 'usr/lib/keep.so': b'keep', 'usr/bin/tool': b'tool', 'usr/share': None,
        'private/etc/hostname': b'box\n', 'private/etc/motd': b'hi\n',
        'lib': ('link', 'usr/lib'), 'bin': ('link', '/usr/bin'), 'lib64': ('link', 'usr/lib64'),
        'etc': ('link', 'private/etc'), 'share': ('link', 'usr/lib/../share'),
    })
    lower = gnu_tar(lower_stage, ['usr', 'usr/lib', 'usr/lib/old.so', 'usr/lib/keep.so', 'usr/bin', 'usr/bin/tool',
                                  'usr/share', 'private', 'private/etc', 'private/etc/hostname',
                                  'private/etc/motd', 'lib', 'bin', 'lib64', 'etc', 'share'],
                    tmp_path / 'lower.tar')
    # Written as crane append, ko or Jib write them: no entries for the linked directories themselves.
    stage(upper_stage, {
        'lib/libfoo.so': b'foo', 'lib/.wh.old.so': b'', 'bin/newtool': b'new', 'lib64/ld.so': b'ld',
        'etc/.wh..wh..opq': b'', 'etc/hostname': b'guest\n', 'share/doc': b'doc', 'bin/tool': b'tool',
    })
    os.link(upper_stage / 'bin/tool', upper_stage / 'bin/tool-link')
    upper_path = tmp_path / 'upper.tar'
    gnu_tar(upper_stage, ['lib/libfoo.so', 'lib/.wh.old.so', 'bin/newtool', 'lib64/ld.so', 'etc/.wh..wh..opq',
                          'etc/hostname', 'share/doc', 'bin/tool', 'bin/tool-link'], upper_path)
    # bin/tool-link stays a hard link to bin/tool, which only the lower layer holds (through /usr/bin).
    subprocess.run(['tar', '--delete', '-f', str(upper_path), 'bin/tool'], check=True)

    reference = umoci_unpack(tmp_path, [tmp_path / 'lower.tar', upper_path])
    apply_layers(root, lower, upper_path.read_bytes())
    assert read(os.path.join(root, 'usr/lib64/ld.so')) == b'ld'
    assert sorted(os.listdir(os.path.join(root, 'private/etc'))) == ['hostname']
    assert len(listing(root)) == 20
    # usr/lib64 has no entry: made when ld.so was written, its mtime is each unpacker's time of the
    # run. umoci's mkdir of it also moves the mtime of usr, whose entry we keep.
    assert tree_differences(root, reference, no_mtime=('usr/lib64', 'usr')) == []
