# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The state record: the options hash, and loading and saving the record."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils._state import (
    RECORD_VERSION,
    StateRecord,
    load_record,
    options_hash,
    save_record,
)


def record(**changes):
    values = dict(source='/srv/rootfs.tar', digest='sha256:' + 'a' * 64, format='dir',
                  options_hash=options_hash({'format': 'dir'}), platform='linux/amd64',
                  layers=[{'digest': 'sha256:' + 'a' * 64, 'size': 10, 'media_type': 'application/x-tar'}],
                  dest_identity={'inode': 2, 'mark': 'a' * 32})
    values.update(changes)
    return StateRecord(**values)


def test_options_hash_is_stable_across_calls_and_key_order():
    first = options_hash({'format': 'dir', 'uid_map': [[0, 1000, 10]], 'qcow2': {'size': '5G', 'fs': 'ext4'}})
    second = options_hash({'qcow2': {'fs': 'ext4', 'size': '5G'}, 'uid_map': [[0, 1000, 10]], 'format': 'dir'})
    assert first == second
    assert first.startswith('sha256:') and len(first) == len('sha256:') + 64
    # Pinned: a change of encoding would make every existing dest rebuild once.
    assert options_hash({'format': 'dir'}) == 'sha256:' + hashlib.sha256(b'{"format":"dir"}').hexdigest()


@pytest.mark.parametrize('other', [
    {'format': 'qcow2'},
    {'format': 'dir', 'uid_map': [[0, 1000, 10]]},
    {'format': 'dir', 'uid_map': [[500, 1500, 10], [0, 1000, 10]]},
])
def test_options_hash_changes_with_any_shaping_option(other):
    assert options_hash(other) != options_hash({'format': 'dir'})


def test_options_hash_keeps_list_order_meaningful():
    assert options_hash({'uid_map': [[0, 1000, 10], [500, 1500, 10]]}) != \
        options_hash({'uid_map': [[500, 1500, 10], [0, 1000, 10]]})


def test_save_then_load_round_trips(tmp_path):
    path = str(tmp_path / 'state.json')
    saved = record(index_digest='sha256:' + 'b' * 64)
    save_record(path, saved)
    assert load_record(path) == saved
    assert json.loads(open(path).read())['version'] == RECORD_VERSION


@pytest.mark.parametrize('content', [
    None,                                         # no file
    b'',                                          # empty
    b'{"source": "/x", "digest": ',               # truncated
    b'\xff\xfe not utf-8',
    b'[1, 2, 3]',                                 # not an object
    b'{"version": 1}',                            # fields missing
])
def test_load_record_treats_missing_or_garbled_files_as_no_record(tmp_path, content):
    path = tmp_path / 'state.json'
    if content is not None:
        path.write_bytes(content)
    assert load_record(str(path)) is None


@pytest.mark.parametrize('version', [0, RECORD_VERSION + 1, '1', None])
def test_load_record_ignores_records_of_other_versions(tmp_path, version):
    data = asdict(record())
    data['version'] = version
    path = tmp_path / 'state.json'
    path.write_text(json.dumps(data))
    assert load_record(str(path)) is None


def test_load_record_ignores_fields_it_does_not_know(tmp_path):
    data = dict(asdict(record()), written_by_a_newer_release=True)
    path = tmp_path / 'state.json'
    path.write_text(json.dumps(data))
    assert load_record(str(path)) == record()


def test_save_record_replaces_atomically_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / 'state.json')
    save_record(path, record())
    inode = os.stat(path).st_ino
    save_record(path, record(digest='sha256:' + 'c' * 64))
    assert os.listdir(str(tmp_path)) == ['state.json']
    assert os.stat(path).st_ino != inode  # a new file renamed over the old one, never rewritten in place
    assert load_record(path).digest == 'sha256:' + 'c' * 64


def test_save_record_that_fails_keeps_the_old_record_and_no_debris(tmp_path):
    path = str(tmp_path / 'state.json')
    save_record(path, record())
    with pytest.raises(TypeError):
        save_record(path, record(layers=[{'size': object()}]))  # not JSON-serialisable
    assert os.listdir(str(tmp_path)) == ['state.json']
    assert load_record(path) == record()


def test_same_result_compares_content_not_bookkeeping():
    assert record().same_result(record(source='file:///srv/rootfs.tar', dest_identity={'inode': 4, 'mark': None},
                                       platform=None, root_password=True))
    assert not record().same_result(record(digest='sha256:' + 'd' * 64))
    assert not record().same_result(record(options_hash=options_hash({'format': 'qcow2'})))
