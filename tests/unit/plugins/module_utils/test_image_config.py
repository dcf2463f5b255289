# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image's runtime config (Entrypoint, Cmd, Env, ...): read, checked, returned and kept in the record."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils._image import runtime_config
from ansible_collections.virt.bootstrap.plugins.module_utils._state import load_record
from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, run
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._sources.registry import RegistryOptions
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import (
    OciLayoutBuilder,
    compress,
    make_tar,
    snapshot_tree,
    write_file,
)

ROOTFS = {'bin': None, 'bin/sh': b'#!/bin/sh\n', 'srv': None}
RUNTIME = {
    'Entrypoint': ['/bin/sh', '-c'],
    'Cmd': ['while true; do sleep 1; done'],
    'Env': ['PATH=/usr/bin:/bin', 'GREETING=a=b', 'EMPTY='],
    'WorkingDir': '/srv',
    'User': '1000:1000',
    'Labels': {'org.opencontainers.image.title': 'loop'},
}
EXPECTED = {
    'entrypoint': ['/bin/sh', '-c'],
    'cmd': ['while true; do sleep 1; done'],
    'env': {'PATH': '/usr/bin:/bin', 'GREETING': 'a=b', 'EMPTY': ''},
    'working_dir': '/srv',
    'user': '1000:1000',
    'labels': {'org.opencontainers.image.title': 'loop'},
}
NOTHING = {'entrypoint': [], 'cmd': [], 'env': {}, 'working_dir': '', 'user': '', 'labels': {}}


def with_runtime(section):
    def edit(config):
        config['config'] = section
    return edit


def oci_source(directory, section, tag='latest'):
    builder = OciLayoutBuilder(str(directory))
    image = builder.image([make_tar(ROOTFS)], edit_config=with_runtime(section))
    builder.write_index([(image, tag)])
    return 'oci:%s:%s' % (directory, tag)


def test_runtime_config_keeps_every_field_and_splits_env_at_the_first_equals_sign():
    assert runtime_config({'config': RUNTIME}, 'image x') == EXPECTED


@pytest.mark.parametrize('config', [{}, {'config': None}, {'config': {}},
                                    {'config': {'Entrypoint': None, 'Cmd': None, 'Env': None, 'Labels': None}}])
def test_a_config_without_a_runtime_part_gives_empty_values(config):
    assert runtime_config(config, 'image x') == NOTHING


def test_an_env_entry_without_equals_names_an_empty_variable():
    assert runtime_config({'config': {'Env': ['LONELY']}}, 'image x')['env'] == {'LONELY': ''}


def test_docker_forms_are_read_as_docker_reads_them():
    """A string for Entrypoint or Cmd is one argument (Docker's strslice), a null in a list or object is ''."""
    runtime = runtime_config({'config': {'Entrypoint': '/bin/sh', 'Cmd': ['-c', None], 'Env': ['A=1', None],
                                         'Labels': {'empty': None}}}, 'image x')
    assert (runtime['entrypoint'], runtime['cmd'], runtime['env'], runtime['labels']) == (
        ['/bin/sh'], ['-c', ''], {'A': '1'}, {'empty': ''})


@pytest.mark.parametrize('section, message', [
    ('sh', "image x: config is 'sh', not an object"),
    ({'Cmd': 7}, "image x: Cmd is 7, not a list of strings"),
    ({'Entrypoint': ['/bin/sh', 1]}, "image x: Entrypoint is ['/bin/sh', 1], not a list of strings"),
    ({'Env': [['A', 'B']]}, "image x: Env is [['A', 'B']], not a list of strings"),
    ({'WorkingDir': ['/srv']}, "image x: WorkingDir is ['/srv'], not a string"),
    ({'User': 0}, 'image x: User is 0, not a string'),
    ({'Labels': {'a': 1}}, "image x: Labels is {'a': 1}, not an object of strings"),
    ({'Cmd': ['x' * 200, 1]}, "image x: Cmd is ['" + 'x' * 78 + '..., not a list of strings'),
    ({'Labels': ['a']}, "image x: Labels is ['a'], not an object of strings"),
])
def test_a_malformed_runtime_config_is_refused_naming_the_field(section, message):
    with pytest.raises(SourceError) as caught:
        runtime_config({'config': section}, 'image x')
    assert str(caught.value) == message


def test_the_engine_returns_it_on_build_check_mode_and_unchanged_reruns(tmp_path):
    src = oci_source(tmp_path / 'layout', RUNTIME)
    dest = str(tmp_path / 'rootfs')
    check = run(Request(src=src, dest=dest), check_mode=True)
    built = run(Request(src=src, dest=dest))
    again = run(Request(src=src, dest=dest))
    assert [check.changed, built.changed, again.changed] == [True, True, False]
    assert check.image_config == built.image_config == again.image_config == EXPECTED
    assert load_record(str(tmp_path / '.rootfs.virt-bootstrap' / 'state.json')).image_config == EXPECTED


def test_a_rootfs_tarball_has_an_empty_runtime_config(tmp_path):
    src = write_file(str(tmp_path / 'rootfs.tar.gz'), compress(make_tar(ROOTFS), 'gzip'))
    assert run(Request(src=src, dest=str(tmp_path / 'rootfs'))).image_config == NOTHING


def test_a_malformed_runtime_config_leaves_the_rootfs_as_it_was(tmp_path):
    dest = str(tmp_path / 'rootfs')
    run(Request(src=oci_source(tmp_path / 'good', RUNTIME), dest=dest))
    before = snapshot_tree(dest)
    with pytest.raises(SourceError, match='Cmd is'):
        run(Request(src=oci_source(tmp_path / 'bad', {'Cmd': {'not': 'a list'}}), dest=dest))
    assert snapshot_tree(dest) == before


def test_a_changed_runtime_config_is_a_new_image(tmp_path):
    dest = str(tmp_path / 'rootfs')
    run(Request(src=oci_source(tmp_path / 'one', RUNTIME), dest=dest))
    changed = run(Request(src=oci_source(tmp_path / 'two', dict(RUNTIME, Cmd=['sleep', '60'])), dest=dest))
    assert changed.changed
    assert changed.image_config['cmd'] == ['sleep', '60']


def forget_image_config(record_path):
    """Make the record look like one written before image_config was kept."""
    with open(record_path) as stream:
        data = json.load(stream)
    del data['image_config']
    with open(record_path, 'w') as stream:
        json.dump(data, stream)


def test_a_record_without_it_is_completed_by_an_unchanged_rerun(tmp_path):
    src = oci_source(tmp_path / 'layout', RUNTIME)
    dest = str(tmp_path / 'rootfs')
    run(Request(src=src, dest=dest))
    record_path = str(tmp_path / '.rootfs.virt-bootstrap' / 'state.json')
    forget_image_config(record_path)
    before = snapshot_tree(dest)
    again = run(Request(src=src, dest=dest))
    assert not again.changed and again.entries_written == 0
    assert again.image_config == EXPECTED
    assert load_record(record_path).image_config == EXPECTED
    assert snapshot_tree(dest) == before


def test_a_registry_rerun_with_such_a_record_resolves_once_instead_of_probing(tmp_path, http_registry):
    def pull():
        return run(Request(src=http_registry.ref('app:base'), dest=str(tmp_path / 'rootfs'),
                           registry=RegistryOptions(not_secure=True, cache_dir=str(tmp_path / 'cache'))))
    first = pull()
    record_path = str(tmp_path / '.rootfs.virt-bootstrap' / 'state.json')
    forget_image_config(record_path)
    again = pull()
    assert not again.changed
    assert again.image_config == first.image_config == NOTHING
    assert load_record(record_path).image_config == NOTHING
    assert os.path.isdir(str(tmp_path / 'rootfs'))
