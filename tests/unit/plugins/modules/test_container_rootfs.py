# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The container_rootfs module run the way ansible runs it: arguments in, one JSON result out."""

from __future__ import annotations

import os

import pytest
import yaml

from ansible_collections.virt.bootstrap.plugins.modules import container_rootfs
from ansible_collections.virt.bootstrap.tests.unit.plugins.modules.module_runner import run_main
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import (
    compress,
    make_tar,
    sha256,
    write_file,
)


ROOTFS = {'etc': None, 'etc/os-release': b'ID=test\n'}
RETURNED = {'changed', 'msg', 'dest', 'format', 'digest', 'index_digest', 'platform', 'layers', 'entries_written',
            'entries_skipped', 'entries_skipped_by_reason', 'state', 'image_config'}


def run_module(capsys, args, check_mode=False, diff=False):
    """Run main() once; returns (exit code, result)."""
    code, _output, result = run_main(capsys, args, check_mode=check_mode, diff=diff)
    return code, result


@pytest.fixture
def paths(tmp_path):
    (tmp_path / 'hosts').mkdir()
    src = write_file(str(tmp_path / 'rootfs.tar.gz'), compress(make_tar(ROOTFS), 'gzip'))
    return {'src': src, 'dest': str(tmp_path / 'hosts' / 'web1'), 'parent': str(tmp_path / 'hosts')}


@pytest.mark.parametrize('args, message', [
    ({'dest': '{dest}'}, 'state is present but all of the following are missing: src'),
    ({'src': '{src}'}, 'missing required arguments: dest'),
    ({'src': '{src}', 'dest': '{dest}', 'max_size': 'lots'}, 'max_size: '),
    ({'src': '{src}', 'dest': '{dest}', 'max_size': '10 parsecs'}, 'max_size: '),
    ({'src': '{src}', 'dest': '{dest}', 'format': 'qcow3'}, 'value of format must be one of: dir'),
    ({'src': '{src}', 'dest': '{dest}', 'state': 'gone'}, 'value of state must be one of: present, absent'),
    ({'src': '{src}', 'dest': '{dest}', 'platform': 'linux/'}, 'not of the form os/arch'),
    ({'src': 'ftp://example.com/alpine', 'dest': '{dest}'}, 'unsupported source'),
    ({'src': '/nonexistent/rootfs.tar', 'dest': '{dest}'}, '/nonexistent/rootfs.tar does not exist'),
])
@pytest.mark.parametrize('check_mode', [True, False])
def test_bad_arguments_fail_with_a_message(capsys, paths, args, message, check_mode):
    args = {key: value.format(**paths) for key, value in args.items()}
    code, result = run_module(capsys, args, check_mode=check_mode)
    assert code == 1
    assert result['failed'] is True
    assert message in result['msg']
    assert not os.path.lexists(paths['dest'])


def test_present_returns_the_documented_keys(capsys, paths):
    code, result = run_module(capsys, {'src': paths['src'], 'dest': paths['dest']})
    assert code == 0
    assert RETURNED <= set(result)
    assert not {'before', 'after'} & set(result)  # the engine's records stay internal
    assert result['changed'] is True
    assert result['dest'] == paths['dest']
    assert result['format'] == 'dir'
    assert result['digest'] == sha256(open(paths['src'], 'rb').read())
    assert result['layers'] == [{'digest': result['digest'], 'size': os.path.getsize(paths['src']),
                                 'media_type': 'application/x-tar+gzip'}]
    assert result['entries_written'] > 0
    assert (result['entries_skipped'], result['entries_skipped_by_reason']) == (0, {})
    assert 'skipped' not in result
    assert result['image_config'] == {'entrypoint': [], 'cmd': [], 'env': {}, 'working_dir': '', 'user': '',
                                      'labels': {}}
    assert result['msg'].startswith('build ')
    assert open(os.path.join(paths['dest'], 'etc', 'os-release'), 'rb').read() == b'ID=test\n'


def test_every_returned_key_is_documented(capsys, paths):
    _code, result = run_module(capsys, {'src': paths['src'], 'dest': paths['dest']})
    documented = set(yaml.safe_load(container_rootfs.RETURN))
    assert set(result) - {'changed', 'invocation', 'warnings', 'deprecations'} <= documented


def test_uri_is_an_alias_of_src(capsys, paths):
    code, result = run_module(capsys, {'uri': paths['src'], 'dest': paths['dest']})
    assert code == 0 and result['changed']


def test_check_mode_and_diff_show_digests_before_and_after(capsys, paths):
    args = {'src': paths['src'], 'dest': paths['dest']}
    old_digest = sha256(open(paths['src'], 'rb').read())

    code, fresh = run_module(capsys, args, check_mode=True, diff=True)
    assert code == 0 and fresh['changed']
    assert os.listdir(paths['parent']) == []
    assert fresh['diff']['before'] == ''
    assert 'digest: %s' % old_digest in fresh['diff']['after']
    assert fresh['entries_written'] == 0

    run_module(capsys, args)
    _code, same = run_module(capsys, args, check_mode=True, diff=True)
    assert not same['changed']
    assert same['diff']['before'] == same['diff']['after']
    assert 'digest: %s' % old_digest in same['diff']['before']

    write_file(paths['src'], compress(make_tar({'etc': None, 'etc/os-release': b'ID=new\n'}), 'gzip'))
    new_digest = sha256(open(paths['src'], 'rb').read())
    _code, moved = run_module(capsys, args, check_mode=True, diff=True)
    assert moved['changed']
    assert 'digest: %s' % old_digest in moved['diff']['before']
    assert 'digest: %s' % new_digest in moved['diff']['after']
    assert moved['digest'] == new_digest
    assert open(os.path.join(paths['dest'], 'etc', 'os-release'), 'rb').read() == b'ID=test\n'


def test_no_diff_key_without_diff_mode(capsys, paths):
    _code, result = run_module(capsys, {'src': paths['src'], 'dest': paths['dest']})
    assert 'diff' not in result


def test_rerun_reports_unchanged(capsys, paths):
    args = {'src': paths['src'], 'dest': paths['dest']}
    run_module(capsys, args)
    code, again = run_module(capsys, args)
    assert code == 0
    assert not again['changed']
    assert again['entries_written'] == 0
    assert again['msg'] == '%s already holds %s' % (paths['dest'], again['digest'])


def test_foreign_dest_is_refused_then_replaced_with_force(capsys, paths):
    os.mkdir(paths['dest'])
    write_file(os.path.join(paths['dest'], 'precious'), b'x')
    code, refused = run_module(capsys, {'src': paths['src'], 'dest': paths['dest']})
    assert code == 1 and 'set force: true' in refused['msg']
    assert os.path.exists(os.path.join(paths['dest'], 'precious'))
    code, forced = run_module(capsys, {'src': paths['src'], 'dest': paths['dest'], 'force': True})
    assert code == 0 and forced['changed']
    assert not os.path.exists(os.path.join(paths['dest'], 'precious'))


def test_absent_removes_and_then_is_unchanged(capsys, paths):
    run_module(capsys, {'src': paths['src'], 'dest': paths['dest']})
    code, check = run_module(capsys, {'dest': paths['dest'], 'state': 'absent'}, check_mode=True, diff=True)
    assert code == 0 and check['changed'] and os.path.isdir(paths['dest'])
    assert check['diff']['after'] == ''
    code, removed = run_module(capsys, {'dest': paths['dest'], 'state': 'absent'})
    assert code == 0 and removed['changed']
    assert not os.path.lexists(paths['dest'])
    # The image keys are documented for state=present only, and state tells the file type of dest.
    assert not {'digest', 'index_digest', 'platform', 'layers', 'image_config'} & set(removed)
    assert removed['state'] == 'absent'
    _code, again = run_module(capsys, {'dest': paths['dest'], 'state': 'absent'})
    assert not again['changed']


def test_failed_build_is_reported_without_a_traceback_in_msg(capsys, paths, tmp_path):
    corrupt = write_file(str(tmp_path / 'corrupt.tar.gz'), compress(make_tar(ROOTFS), 'gzip')[:-30])
    code, result = run_module(capsys, {'src': corrupt, 'dest': paths['dest']})
    assert code == 1
    assert 'corrupt or truncated' in result['msg']
    assert 'Traceback' not in result['msg']
    assert not os.path.lexists(paths['dest'])
