# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The appliance's layer plans, made on the host: canonical names only, removals of canonical paths.

No appliance here: the plans are read back as tars. What they must hold is what the applier would
do in a directory, with every name a path of real directories, so that GNU tar in the appliance
never meets a symlink on the way.
"""

from __future__ import annotations

import os
import tarfile

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import HostileLayer, LayerError
from ansible_collections.virt.bootstrap.plugins.module_utils._writers.qcow2_plan import LayerPlanner
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.qcow2_support import acl_pax, layer_tars, layered_image
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import CAPABILITY_V2, TarBuilder


def plan(tmp_path, tars):
    """[(removals, [(name, type, linkname, tarinfo)])] per layer."""
    skeleton = tmp_path / 'skeleton'
    skeleton.mkdir(mode=0o700)
    planner = LayerPlanner(str(skeleton), str(tmp_path))
    plans = []
    try:
        for index, layer in enumerate(layered_image(tars).layers):
            layer_plan = planner.plan(layer, 'layer %d' % (index + 1), index)
            with tarfile.open(layer_plan.tar_path, errors='surrogateescape') as tar:
                members = [(member.name, member.type, member.linkname, member) for member in tar]
            plans.append((['/'.join(path) for path in layer_plan.removals], members))
    finally:
        planner.close()
    return plans


def names(members, kind=None):
    return [name for name, type_, _link, _member in members if kind is None or type_ == kind]


def assert_parents_are_real_directories(plans):
    """Every name's parents are directories the plan made or left, never a symlink or a file."""
    dirs = {'.'}
    others = set()
    for removals, members in plans:
        for removed in removals:
            dirs = {path for path in dirs if path != removed and not path.startswith(removed + '/')}
            others = {path for path in others if path != removed and not path.startswith(removed + '/')}
        for name, type_, _link, _member in members:
            parent = os.path.dirname(name) or '.'
            if name != '.':
                assert parent in dirs and parent not in others, name
            if type_ == tarfile.DIRTYPE:
                dirs.add(name)
                others.discard(name)
            else:
                others.add(name)
                dirs.discard(name)


def test_an_absolute_link_on_the_way_is_followed_inside_the_root(tmp_path):
    plans = plan(tmp_path, [TarBuilder().symlink('lib', '/usr/lib').file('lib/x', b'x').tar()])
    (removals, members), = plans
    assert removals == []
    assert names(members, tarfile.SYMTYPE) == ['lib']
    assert names(members, tarfile.REGTYPE) == ['usr/lib/x']
    made = {name: member for name, _type, _link, member in members if name in ('usr', 'usr/lib')}
    assert {name: (member.mode, member.uid, member.gid) for name, member in made.items()} == \
        {'usr': (0o755, 0, 0), 'usr/lib': (0o755, 0, 0)}
    assert_parents_are_real_directories(plans)


def test_link_chains_and_links_climbing_out_are_resolved_and_clamped_at_the_root(tmp_path):
    plans = plan(tmp_path, [
        TarBuilder().dir('c').dir('c/d').symlink('b', 'c/d').symlink('a', 'b').file('a/x', b'x')
        .symlink('up', '../../../..').file('up/etc/passwd', b'root').tar()])
    (_removals, members), = plans
    assert set(names(members, tarfile.REGTYPE)) == {'c/d/x', 'etc/passwd'}
    assert_parents_are_real_directories(plans)


def test_a_link_to_a_directory_made_in_a_lower_layer_then_an_entry_under_it(tmp_path):
    plans = plan(tmp_path, [
        TarBuilder().dir('real').symlink('alias', 'real').tar(),
        TarBuilder().file('alias/new', b'n').dir('alias/sub').file('alias/sub/f', b'f').tar()])
    assert names(plans[1][1], tarfile.REGTYPE) == ['real/new', 'real/sub/f']
    assert 'real/sub' in names(plans[1][1], tarfile.DIRTYPE)
    assert_parents_are_real_directories(plans)


def test_hard_links_through_links_name_the_resolved_target(tmp_path):
    plans = plan(tmp_path, [
        TarBuilder().dir('usr').dir('usr/lib').symlink('lib', 'usr/lib').file('usr/lib/f', b'f').tar(),
        TarBuilder().hardlink('lib/g', 'lib/f').hardlink('h', 'lib/f').tar()])
    links = {name: link for name, type_, link, _member in plans[1][1] if type_ == tarfile.LNKTYPE}
    assert links == {'usr/lib/g': 'usr/lib/f', 'h': 'usr/lib/f'}


def test_whiteouts_through_a_symlinked_directory_and_of_the_link_itself(tmp_path):
    plans = plan(tmp_path, [
        TarBuilder().dir('real').file('real/a', b'a').file('real/b', b'b').symlink('alias', 'real').tar(),
        TarBuilder().whiteout('alias/a').tar(),
        TarBuilder().whiteout('alias').tar()])
    assert plans[1][0] == ['real/a']
    assert plans[2][0] == ['alias']
    assert 'real' in names(plans[1][1], tarfile.DIRTYPE)  # its mtime, changed by the removal, given back


def test_an_opaque_directory_removes_only_what_lower_layers_put_there(tmp_path):
    plans = plan(tmp_path, [
        TarBuilder().dir('o').file('o/old', b'o').dir('o/d').file('o/d/f', b'f').tar(),
        TarBuilder().file('o/new', b'n').opaque('o').tar()])
    assert sorted(plans[1][0]) == ['o/d', 'o/old']
    assert 'o/new' in names(plans[1][1], tarfile.REGTYPE)


def test_a_kind_change_is_removed_first_and_a_file_over_a_file_is_left_to_tar(tmp_path):
    plans = plan(tmp_path, [
        TarBuilder().dir('d').file('d/f', b'f').file('file', b'1').file('same', b'1').tar(),
        TarBuilder().file('d', b'now a file').dir('file').file('same', b'2').tar()])
    assert sorted(plans[1][0]) == ['d', 'file']
    assert [(name, type_) for name, type_, _link, _member in plans[1][1] if name in ('d', 'file', 'same')] == \
        [('d', tarfile.REGTYPE), ('file', tarfile.DIRTYPE), ('same', tarfile.REGTYPE)]


def test_an_entry_written_twice_in_a_layer_is_planned_once_with_its_last_content(tmp_path):
    plans = plan(tmp_path, [TarBuilder().file('f', b'first').dir('d').file('d/x', b'x').file('d', b'file').file(
        'f', b'second').tar()])
    (removals, members), = plans
    assert names(members, tarfile.REGTYPE) == ['d', 'f']
    assert removals == ['d']  # harmless in the appliance: nothing lower was there
    assert_parents_are_real_directories(plans)


def test_owners_are_numeric_and_only_allowed_xattrs_are_kept(tmp_path):
    pax = {'SCHILY.xattr.security.capability': CAPABILITY_V2.decode('utf-8', 'surrogateescape'),
           'SCHILY.xattr.trusted.overlay.opaque': 'y', 'SCHILY.xattr.user.note': 'kept'}
    plans = plan(tmp_path, [TarBuilder().file('bin/ping', b'p', uid=1000, gid=1000, uname='someone',
                                              gname='group', pax=pax).tar()])
    member = [member for name, _type, _link, member in plans[0][1] if name == 'bin/ping'][0]
    assert (member.uid, member.gid, member.uname, member.gname) == (1000, 1000, '', '')
    xattrs = {key: value for key, value in member.pax_headers.items() if key.startswith('SCHILY.xattr.')}
    assert set(xattrs) == {'SCHILY.xattr.security.capability', 'SCHILY.xattr.user.note'}


def test_the_test_image_plans_whiteouts_as_removals_and_every_name_is_canonical(tmp_path):
    plans = plan(tmp_path, layer_tars())
    assert plans[1][0] == ['data/gone', 'opaque/old-a', 'opaque/old-dir']
    assert plans[2][0] == ['bin/sh-again']
    assert 'usr/lib/libc.so' in names(plans[1][1]) and not any(name.startswith('lib/') for name in names(plans[1][1]))
    assert_parents_are_real_directories(plans)


@pytest.mark.parametrize('tars, error', [
    ([TarBuilder().file('../escape', b'x').tar()], HostileLayer),
    ([TarBuilder().file('/etc/passwd', b'x').tar()], HostileLayer),
    ([TarBuilder().dir('d').hardlink('h', 'd').tar()], HostileLayer),
    ([TarBuilder().file('f', b'x').tar(), TarBuilder().hardlink('h', 'f').whiteout('f').tar()], LayerError),
    ([TarBuilder().file('f', b'x').hardlink('h', 'f').file('f', b'y').tar()], LayerError),
])
def test_refusals_of_the_applier_and_what_the_appliance_cannot_write_fail_while_planning(tmp_path, tars, error):
    with pytest.raises(error):
        plan(tmp_path, tars)


def test_a_directory_declared_again_without_a_lower_xattr_has_it_removed(tmp_path):
    skeleton = tmp_path / 'skeleton'
    skeleton.mkdir(mode=0o700)
    image = layered_image([TarBuilder().dir('d', pax={'SCHILY.xattr.user.old': 'o', 'SCHILY.xattr.user.both': 'b'})
                           .tar(), TarBuilder().dir('d', pax={'SCHILY.xattr.user.both': 'b2'}).tar()])
    planner = LayerPlanner(str(skeleton), str(tmp_path))
    try:
        assert planner.plan(image.layers[0], 'layer 1', 0).stale_xattrs == []
        assert planner.plan(image.layers[1], 'layer 2', 1).stale_xattrs == [(('d',), 'user.old')]
    finally:
        planner.close()


def test_a_directory_declared_again_then_replaced_has_no_stale_xattrs_left_to_remove(tmp_path):
    skeleton = tmp_path / 'skeleton'
    skeleton.mkdir(mode=0o700)
    image = layered_image([TarBuilder().dir('d', pax={'SCHILY.xattr.user.old': 'o'}).tar(),
                           TarBuilder().dir('d').file('d', b'now a file').tar()])
    planner = LayerPlanner(str(skeleton), str(tmp_path))
    try:
        planner.plan(image.layers[0], 'layer 1', 0)
        layer_plan = planner.plan(image.layers[1], 'layer 2', 1)
    finally:
        planner.close()
    assert layer_plan.stale_xattrs == [] and layer_plan.removals == [('d',)]


def test_acls_are_planned_only_where_the_applier_sets_them(tmp_path):
    # acl-set-file in the appliance follows a symlink; the applier sets no ACL on a symlink or a hard link,
    # and a default ACL only on a directory (found in review: the victim's ACL and mode changed).
    acls = acl_pax(tmp_path)
    layer = TarBuilder().file('victim', b'v').symlink('l', 'victim', pax=acls).hardlink('h', 'victim', pax=acls) \
        .file('f', b'f', pax=acls).dir('d', pax=acls).tar()
    skeleton = tmp_path / 'skeleton'
    skeleton.mkdir(mode=0o700)
    planner = LayerPlanner(str(skeleton), str(tmp_path))
    try:
        layer_plan = planner.plan(layered_image([layer]).layers[0], 'layer 1', 0)
    finally:
        planner.close()
    assert sorted((acl.path, acl.kind) for acl in layer_plan.file_acls + layer_plan.directory_acls) == [
        (('d',), 'access'), (('d',), 'default'), (('f',), 'access')]
