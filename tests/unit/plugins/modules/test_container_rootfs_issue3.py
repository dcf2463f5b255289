# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""container_rootfs with a root password, UID/GID maps and a progress log, run as ansible runs it."""

from __future__ import annotations

import json
import os
import stat
import tarfile
import typing as t

import pytest
from passlib.hash import sha512_crypt

from ansible_collections.virt.bootstrap.plugins.module_utils import _shadow as shadow
from ansible_collections.virt.bootstrap.tests.unit.plugins.modules.module_runner import run_main
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import TarBuilder, compress


PASSWORD = 'Tr0ub4dor-and-3'
KNOWN_HASH = sha512_crypt.using(rounds=5000, salt='modulesalt').hash('known')
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason='writing files owned by other users needs root')


def run_module(capsys, args: t.Dict[str, t.Any], check_mode: bool = False) -> t.Tuple[int, str, t.Dict[str, t.Any]]:
    """Run main() once; returns (exit code, the JSON text printed, the result)."""
    return run_main(capsys, args, check_mode=check_mode, diff=bool(args.pop('_ansible_diff', False)))


@pytest.fixture
def paths(tmp_path) -> t.Dict[str, str]:
    layer = TarBuilder().dir('.').dir('etc').file('etc/os-release', b'ID=test\n') \
        .file('etc/shadow', b'root:*:19000:0:99999:7:::\nbin:*:19000::::::\n', mode=0o640, gid=42) \
        .dir('home').file('home/user', b'u', uid=1000, gid=1000).tar()
    src = str(tmp_path / 'rootfs.tar.gz')
    with open(src, 'wb') as stream:
        stream.write(compress(layer, 'gzip'))
    return {'src': src, 'dest': str(tmp_path / 'hosts' / 'web1'), 'log': str(tmp_path / 'progress.jsonl'),
            'meta': str(tmp_path / 'hosts' / '.web1.virt-bootstrap')}


def root_hash(dest: str) -> t.Optional[str]:
    with open(os.path.join(dest, 'etc', 'shadow'), 'rb') as stream:
        return shadow.root_hash(stream.read())


def test_root_password_is_set_and_never_returned(capsys, paths):
    code, output, result = run_module(capsys, {'src': paths['src'], 'dest': paths['dest'], 'root_password': PASSWORD})
    assert code == 0 and result['changed'] is True
    written = root_hash(paths['dest'])
    assert sha512_crypt.verify(PASSWORD, written)
    # Not even masked: the result never holds the password, so nothing needed hiding.
    assert PASSWORD not in output and '********' not in output
    assert written not in output
    with open(os.path.join(paths['meta'], 'state.json')) as stream:
        record = stream.read()
    assert PASSWORD not in record and written not in record

    code, output, again = run_module(capsys, {'src': paths['src'], 'dest': paths['dest'], 'root_password': PASSWORD})
    assert code == 0 and again['changed'] is False
    assert PASSWORD not in output
    assert root_hash(paths['dest']) == written


def test_a_different_root_password_is_a_change_and_check_mode_only_reports_it(capsys, paths):
    run_module(capsys, {'src': paths['src'], 'dest': paths['dest'], 'root_password': PASSWORD})
    first = root_hash(paths['dest'])
    _code, output, check = run_module(capsys, {'src': paths['src'], 'dest': paths['dest'], 'root_password': 'other'},
                                      check_mode=True)
    assert check['changed'] is True and root_hash(paths['dest']) == first
    _code, output, result = run_module(capsys, {'src': paths['src'], 'dest': paths['dest'], 'root_password': 'other'})
    assert result['changed'] is True
    assert sha512_crypt.verify('other', root_hash(paths['dest']))
    assert 'other' not in output and '********' not in output


def test_root_password_hash_is_written_verbatim(capsys, paths):
    code, output, result = run_module(capsys, {'src': paths['src'], 'dest': paths['dest'],
                                               'root_password_hash': KNOWN_HASH})
    assert code == 0 and result['changed'] is True
    assert root_hash(paths['dest']) == KNOWN_HASH
    assert KNOWN_HASH not in output


@pytest.mark.parametrize('args, message', [
    ({'root_password': PASSWORD, 'root_password_hash': KNOWN_HASH}, 'mutually exclusive'),
    ({'root_password_hash': 'not-a-hash'}, 'root_password_hash is not a crypt(5) hash'),
    ({'root_password_hash': '$6$salt$hash\nevil::0:0:::::'}, 'root_password_hash is not a crypt(5) hash'),
    ({'uid_map': [[0, 1000]], 'gid_map': [[0, 1000, 10]]}, 'uid_map entry 1 must be [start, target, count]'),
    ({'uid_map': [[0, 1000, 10]], 'gid_map': [[0, 1000, 0]]}, 'gid_map entry 1: count must be at least 1'),
    ({'uid_map': [[0, 1000, 10], [5, 2000, 10]], 'gid_map': [[0, 1000, 10]]}, 'overlap'),
    ({'uid_map': [['a', 1000, 10]], 'gid_map': [[0, 1000, 10]]}, 'start must be a number'),
    ({'uid_map': [[0, 1000, 10]]}, 'parameters are required together: uid_map, gid_map'),
    ({'uid_map': '0:1000:10', 'gid_map': [[0, 1000, 10], [20, 1005, 10]]}, 'target ranges'),
])
@pytest.mark.parametrize('check_mode', [False, True])
def test_bad_password_or_map_options_fail_before_anything_is_written(capsys, paths, args, message, check_mode):
    code, output, result = run_module(capsys, dict(args, src=paths['src'], dest=paths['dest']), check_mode=check_mode)
    assert code == 1 and result['failed'] is True
    assert message in result['msg']
    assert not os.path.lexists(paths['dest'])


def test_missing_shadow_fails_with_a_clear_message(capsys, paths, tmp_path):
    src = str(tmp_path / 'noshadow.tar.gz')
    with open(src, 'wb') as stream:
        stream.write(compress(TarBuilder().dir('etc').file('etc/os-release', b'x').tar(), 'gzip'))
    code, _output, result = run_module(capsys, {'src': src, 'dest': paths['dest'], 'root_password': PASSWORD})
    assert code == 1
    assert result['msg'] == 'the rootfs has no /etc/shadow to set the root password in'
    assert not os.path.lexists(paths['dest'])


@AS_ROOT
def test_uid_and_gid_maps_shift_owners_and_a_changed_map_rebuilds(capsys, paths):
    args = {'src': paths['src'], 'dest': paths['dest'], 'uid_map': [[0, 100000, 65536]],
            'gid_map': [['0', '200000', '65536']]}
    code, _output, result = run_module(capsys, args)
    assert code == 0 and result['changed'] is True
    info = os.lstat(os.path.join(paths['dest'], 'home', 'user'))
    assert (info.st_uid, info.st_gid) == (101000, 201000)
    info = os.lstat(os.path.join(paths['dest'], 'etc', 'shadow'))
    assert (info.st_uid, info.st_gid) == (100000, 200042)
    assert run_module(capsys, args)[2]['changed'] is False
    args['uid_map'] = [[0, 300000, 65536]]
    assert run_module(capsys, args, check_mode=True)[2]['changed'] is True
    assert os.lstat(os.path.join(paths['dest'], 'home', 'user')).st_uid == 101000
    assert run_module(capsys, args)[2]['changed'] is True
    assert os.lstat(os.path.join(paths['dest'], 'home', 'user')).st_uid == 301000


def test_progress_log_gets_json_lines_ending_at_100(capsys, paths):
    code, _output, result = run_module(capsys, {'src': paths['src'], 'dest': paths['dest'], 'progress_log': paths['log']})
    assert code == 0 and result['changed'] is True
    with open(paths['log'], encoding='utf-8') as stream:
        records = [json.loads(line) for line in stream]
    assert records[0]['value'] == 0 and records[0]['status'].startswith('Extracting layer (1/1)')
    assert records[-1] == dict(records[-1], status='Extraction completed successfully!', value=100)
    assert all(set(record) == {'status', 'value', 'time'} for record in records)


def test_progress_log_is_not_written_in_check_mode(capsys, paths):
    code, _output, result = run_module(capsys, {'src': paths['src'], 'dest': paths['dest'],
                                                'progress_log': paths['log']}, check_mode=True)
    assert code == 0 and result['changed'] is True
    assert not os.path.exists(paths['log'])


def test_progress_log_that_cannot_be_opened_fails_clearly(capsys, paths, tmp_path):
    log = str(tmp_path / 'no-such-dir' / 'progress.jsonl')
    code, _output, result = run_module(capsys, {'src': paths['src'], 'dest': paths['dest'], 'progress_log': log})
    assert code == 1
    assert result['msg'].startswith('cannot open progress_log %s' % log)
    assert not os.path.lexists(paths['dest'])


def test_diff_shows_a_changed_uid_map(capsys, paths):
    run_module(capsys, {'src': paths['src'], 'dest': paths['dest']})
    args = {'src': paths['src'], 'dest': paths['dest'], 'uid_map': [[0, 100000, 65536]],
            'gid_map': [[0, 100000, 65536]], '_ansible_diff': True}
    _code, _output, result = run_module(capsys, args, check_mode=True)
    assert result['changed'] is True
    assert 'uid_map: []' in result['diff']['before']
    assert 'uid_map: [[0, 100000, 65536]]' in result['diff']['after']
    assert result['diff']['before'] != result['diff']['after']


def test_device_nodes_are_skipped_unless_the_option_asks_for_them(capsys, tmp_path):
    layer = TarBuilder().dir('.').dir('dev').add('dev/null', tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3).tar()
    src = str(tmp_path / 'dev.tar')
    with open(src, 'wb') as stream:
        stream.write(layer)
    _code, _output, result = run_module(capsys, {'src': src, 'dest': str(tmp_path / 'guest')})
    assert result['entries_skipped_by_reason'] == {'device_node': 1} and result['entries_skipped'] == 1
    # The option left it out: nothing went wrong, so nothing to warn about.
    assert not result.get('warnings')
    assert not os.path.lexists(str(tmp_path / 'guest' / 'dev' / 'null'))
    _code, _output, result = run_module(capsys, {'src': src, 'dest': str(tmp_path / 'guest'), 'device_nodes': True})
    assert result['changed'] is True
    # As root the kernel lets us make it; the tests run as root.
    assert stat.S_ISCHR(os.lstat(str(tmp_path / 'guest' / 'dev' / 'null')).st_mode)
    assert result['entries_skipped_by_reason'] == {}


def test_maps_in_the_command_line_form_are_accepted(capsys, paths):
    args = {'src': paths['src'], 'dest': paths['dest'], 'uid_map': ['0:100000:65536'], 'gid_map': ['0:100000:65536']}
    code, _output, result = run_module(capsys, args)
    assert code == 0 and result['changed'] is True
    assert os.lstat(os.path.join(paths['dest'], 'etc', 'shadow')).st_uid == 100000
