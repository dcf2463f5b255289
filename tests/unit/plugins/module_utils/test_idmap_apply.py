# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""UID/GID maps through the real engine: each inode shifted once as it is written, nothing lost."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import tempfile
import typing as t

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, bootstrap, run
from ansible_collections.virt.bootstrap.plugins.module_utils._idmap import parse_id_map
from ansible_collections.virt.bootstrap.plugins.module_utils._layers import shift_capability_root
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import (
    CAPABILITY_V2,
    TarBuilder,
    NOBODY,
    as_nobody,
    compress,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='writing files owned by other users needs root')

# The old virt-bootstrap's own test maps: applied by walking the tree, 0 went to 1000 and then on to 2000.
OLD_TOOL_MAP = [[1000, 2000, 10], [0, 1000, 10], [500, 500, 10]]
CAPABILITY_PAX = {'SCHILY.xattr.security.capability': CAPABILITY_V2.decode('utf-8', 'surrogateescape')}


def owner(path: str) -> t.Tuple[int, int]:
    info = os.lstat(path)
    return info.st_uid, info.st_gid


def old_tool_rootfs(root_entry: bool = True) -> bytes:
    builder = TarBuilder()
    if root_entry:
        builder.dir('.', mode=0o755)
    return builder \
        .dir('etc').file('etc/hostname', b'guest\n') \
        .dir('home').dir('home/user1', mode=0o700, uid=500, gid=500) \
        .file('home/user1/notes', b'one', uid=500, gid=500) \
        .dir('home/user2', mode=0o700, uid=1000, gid=1000) \
        .file('home/user2/notes', b'two', uid=1000, gid=1000) \
        .dir('bin') \
        .file('bin/su', b'su', mode=0o4755) \
        .file('bin/wall', b'wall', mode=0o2755, gid=5) \
        .file('bin/user2-tool', b'tool', mode=0o6755, uid=1000, gid=1000) \
        .file('bin/ping', b'ping', mode=0o755, pax=CAPABILITY_PAX) \
        .file('bin/busybox', b'bb', mode=0o755) \
        .hardlink('bin/sh', 'bin/busybox') \
        .hardlink('bin/ls', 'bin/busybox') \
        .symlink('bin/vi', 'busybox') \
        .symlink('home/user1/link', '../user2/notes', uid=500, gid=500) \
        .file('implicit/parents/file', b'x', uid=1000, gid=1000) \
        .tar()


class Site:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.dest = os.path.join(directory, 'hosts', 'guest')

    def tarball(self, data: bytes, name: str = 'rootfs.tar.gz') -> str:
        path = os.path.join(self.directory, name)
        with open(path, 'wb') as stream:
            stream.write(compress(data, 'gzip'))
        return path

    def path(self, relative: str) -> str:
        return os.path.join(self.dest, relative)


@pytest.fixture
def site(tmp_path) -> Site:
    return Site(str(tmp_path))


@pytest.fixture
def mapped(site: Site) -> Site:
    bootstrap(site.tarball(old_tool_rootfs()), site.dest, uid_map=OLD_TOOL_MAP, gid_map=OLD_TOOL_MAP)
    return site


@pytest.mark.parametrize('relative, expected', [
    ('etc/hostname', (1000, 1000)),
    ('etc', (1000, 1000)),
    ('home/user1', (500, 500)),
    ('home/user1/notes', (500, 500)),
    ('home/user2', (2000, 2000)),
    ('home/user2/notes', (2000, 2000)),
    ('bin/wall', (1000, 1005)),
])
def test_old_tool_fixture_maps_root_to_1000_keeps_500_and_moves_1000_to_2000(mapped, relative, expected):
    assert owner(mapped.path(relative)) == expected


def test_directories_created_for_entries_without_their_own_are_shifted(mapped):
    assert owner(mapped.path('implicit')) == (1000, 1000)
    assert owner(mapped.path('implicit/parents')) == (1000, 1000)
    assert owner(mapped.path('implicit/parents/file')) == (2000, 2000)


@pytest.mark.parametrize('relative, mode, expected_owner', [
    ('bin/su', 0o4755, (1000, 1000)),
    ('bin/wall', 0o2755, (1000, 1005)),
    ('bin/user2-tool', 0o6755, (2000, 2000)),
])
def test_setuid_and_setgid_bits_survive_mapping(mapped, relative, mode, expected_owner):
    # chown() clears these bits: they must be set after the owner, not before.
    info = os.lstat(mapped.path(relative))
    assert (stat.S_IMODE(info.st_mode), (info.st_uid, info.st_gid)) == (mode, expected_owner)


def test_file_capability_survives_mapping_as_v3_naming_the_guest_root(mapped):
    # chown() drops security.capability too; and a v2 capability only counts for the host's root,
    # so under a map that moves root to 1000 it must become v3 with rootid 1000 (umoci#261).
    path = mapped.path('bin/ping')
    assert owner(path) == (1000, 1000)
    value = os.getxattr(path, 'security.capability', follow_symlinks=False)
    assert value == struct.pack('<I', 0x03000001) + CAPABILITY_V2[4:] + struct.pack('<I', 1000)


V3_ROOTID_500 = struct.pack('<IIIIII', 0x03000001, 1 << 13, 0, 0, 0, 500)


@pytest.mark.parametrize('value, uid_map, expected', [
    (CAPABILITY_V2, [[1, 100001, 10]], CAPABILITY_V2),  # root not moved: v2 stays as it is
    (CAPABILITY_V2, [[0, 100000, 65536]], struct.pack('<I', 0x03000001) + CAPABILITY_V2[4:] + struct.pack('<I', 100000)),
    (V3_ROOTID_500, [[0, 100000, 65536]], V3_ROOTID_500[:20] + struct.pack('<I', 100500)),
    (V3_ROOTID_500, [[0, 1000, 10]], V3_ROOTID_500),  # its root uid is outside every range
    (b'\x00\x00\x00\x01' + b'\x00' * 8, [[0, 100000, 65536]], b'\x00\x00\x00\x01' + b'\x00' * 8),  # v1: as is
])
def test_capability_root_follows_the_uid_map(value, uid_map, expected):
    id_map = parse_id_map(uid_map)
    assert shift_capability_root(value, id_map) == expected


def test_hard_linked_file_is_shifted_once(mapped):
    # Walking every path would chown the inode once per name: 0 -> 1000 -> 2000 -> (2000).
    names = [mapped.path(name) for name in ('bin/busybox', 'bin/sh', 'bin/ls')]
    infos = [os.lstat(name) for name in names]
    assert {(info.st_dev, info.st_ino) for info in infos} == {(infos[0].st_dev, infos[0].st_ino)}
    assert infos[0].st_nlink == 3
    assert {(info.st_uid, info.st_gid) for info in infos} == {(1000, 1000)}


def test_symlink_own_owner_is_shifted_not_its_target(mapped):
    assert owner(mapped.path('bin/vi')) == (1000, 1000)
    assert os.readlink(mapped.path('bin/vi')) == 'busybox'
    assert owner(mapped.path('home/user1/link')) == (500, 500)
    # The target (user2's file) was shifted once, for its own entry only.
    assert os.stat(mapped.path('home/user1/link')).st_uid == 2000


def test_root_directory_entry_is_shifted(mapped):
    assert owner(mapped.dest) == (1000, 1000)


def test_root_directory_is_shifted_when_the_layer_has_no_entry_for_it(site):
    # Image layers seldom carry './'; the guest's / must still belong to its (mapped) root.
    bootstrap(site.tarball(old_tool_rootfs(root_entry=False)), site.dest, uid_map=OLD_TOOL_MAP,
              gid_map=OLD_TOOL_MAP)
    assert owner(site.dest) == (1000, 1000)


def test_uid_and_gid_maps_apply_separately(site):
    bootstrap(site.tarball(old_tool_rootfs()), site.dest, uid_map=[[0, 100000, 65536]], gid_map=[[0, 300000, 65536]])
    assert owner(site.path('etc/hostname')) == (100000, 300000)
    assert owner(site.path('home/user1/notes')) == (100500, 300500)
    assert owner(site.path('bin/wall')) == (100000, 300005)


def test_uid_map_alone_leaves_groups_as_in_the_image(site):
    bootstrap(site.tarball(old_tool_rootfs()), site.dest, uid_map=[[0, 100000, 65536]])
    assert owner(site.path('home/user1/notes')) == (100500, 500)
    assert owner(site.path('bin/wall')) == (100000, 5)


def test_ids_outside_every_range_stay(site):
    bootstrap(site.tarball(old_tool_rootfs()), site.dest, uid_map=[[1000, 5000, 1]], gid_map=[[1000, 5000, 1]])
    assert owner(site.path('etc/hostname')) == (0, 0)
    assert owner(site.path('home/user1/notes')) == (500, 500)
    assert owner(site.path('home/user2/notes')) == (5000, 5000)


def test_changing_a_map_rebuilds_and_an_identical_rerun_does_not(site):
    src = site.tarball(old_tool_rootfs())
    first = run(Request(src=src, dest=site.dest, uid_map=parse_id_map([[0, 1000, 10]]),
                        gid_map=parse_id_map([[0, 1000, 10]])))
    assert first.changed
    again = run(Request(src=src, dest=site.dest, uid_map=parse_id_map([[0, 1000, 10]]),
                        gid_map=parse_id_map([[0, 1000, 10]])))
    assert not again.changed and again.entries_written == 0
    assert owner(site.path('etc/hostname')) == (1000, 1000)

    shifted = run(Request(src=src, dest=site.dest, uid_map=parse_id_map([[0, 3000, 10]]),
                          gid_map=parse_id_map([[0, 1000, 10]])))
    assert shifted.changed and shifted.entries_written > 0
    assert owner(site.path('etc/hostname')) == (3000, 1000)

    regrouped = run(Request(src=src, dest=site.dest, uid_map=parse_id_map([[0, 3000, 10]]),
                            gid_map=parse_id_map([[0, 4000, 10]])))
    assert regrouped.changed
    assert owner(site.path('etc/hostname')) == (3000, 4000)

    unmapped = run(Request(src=src, dest=site.dest))
    assert unmapped.changed
    assert owner(site.path('etc/hostname')) == (0, 0)
    assert not run(Request(src=src, dest=site.dest)).changed


def test_check_mode_reports_a_map_change_without_writing(site):
    src = site.tarball(old_tool_rootfs())
    bootstrap(src, site.dest, uid_map=[[0, 1000, 10]])
    result = run(Request(src=src, dest=site.dest, uid_map=parse_id_map([[0, 2000, 10]])), check_mode=True)
    assert result.changed
    assert owner(site.path('etc/hostname')) == (1000, 0)


# -- unprivileged callers --------------------------------------------------------------------------


@pytest.fixture
def nobody_site():
    # pytest's tmp_path is private to root; this one belongs to the unprivileged user.
    directory = tempfile.mkdtemp(prefix='virt-bootstrap-idmap-')
    try:
        os.chown(directory, NOBODY, NOBODY)
        site = Site(directory)
        source = site.tarball(old_tool_rootfs())
        os.chown(source, NOBODY, NOBODY)
        yield site, source
    finally:
        shutil.rmtree(directory)


@pytest.mark.parametrize('maps', [
    {'uid_map': [[0, 100000, 65536]]},
    {'gid_map': [[0, 100000, 65536]]},
    {'uid_map': [[0, 100000, 65536]], 'gid_map': [[0, 100000, 65536]]},
])
def test_unprivileged_caller_asking_for_a_map_with_dir_gets_a_clear_refusal(nobody_site, maps):
    site, source = nobody_site
    outcome = as_nobody(lambda: bootstrap(source, site.dest, fmt='dir', **maps).changed)
    assert outcome.get('error') == 'BootstrapError', outcome
    assert 'need root' in outcome['message'] and 'uid %d' % NOBODY in outcome['message']
    assert not os.path.lexists(site.dest)


def test_unprivileged_caller_without_a_map_can_still_build(nobody_site):
    # The control for the refusal above: it is the map that is refused, not the caller.
    site, source = nobody_site
    outcome = as_nobody(lambda: bootstrap(source, site.dest, fmt='dir').changed)
    assert outcome == {'value': True}
    assert owner(site.path('home/user2/notes')) == (NOBODY, NOBODY)
