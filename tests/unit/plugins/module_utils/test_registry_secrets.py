# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Registry credentials never show: not in the state record, the cache, results, messages or process arguments."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import traceback
import typing as t
from dataclasses import asdict

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, run
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError
from ansible_collections.virt.bootstrap.plugins.module_utils._sources.registry import RegistryOptions
from ansible_collections.virt.bootstrap.tests.unit.plugins.modules.module_runner import run_main
from ansible_collections.virt.bootstrap.tests.registry.fault_proxy import FaultProxy
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.registry_support import files_below


def secret_forms(username: str, password: str) -> t.List[str]:
    """The password and what carries it on the wire (HTTP basic credentials)."""
    basic_token = base64.b64encode(('%s:%s' % (username, password)).encode()).decode()
    return [password, basic_token]


def assert_nowhere(forms: t.Sequence[str], *texts: str) -> None:
    for text in texts:
        for form in forms:
            assert form not in text


def file_texts(*roots: str) -> t.List[str]:
    texts = []
    for root in roots:
        for path in files_below(root):
            with open(path, 'rb') as stream:
                texts.append(stream.read().decode('latin-1'))
    return texts


@pytest.fixture(params=['tls', 'token'])
def auth_registry(request):
    """Each registry that wants a login: htpasswd basic auth, and bearer tokens."""
    return request.getfixturevalue(request.param + '_registry')


def pull(tmp_path, pushed, **registry_options):
    registry_options.setdefault('ca_path', pushed.registry.ca_path)
    registry_options.setdefault('cache_dir', str(tmp_path / 'cache'))
    return run(Request(src=pushed.ref('app:base'), dest=str(tmp_path / 'rootfs'),
                       registry=RegistryOptions(**registry_options)))


def test_a_pull_with_credentials_leaves_them_nowhere(tmp_path, auth_registry):
    registry = auth_registry.registry
    result = pull(tmp_path, auth_registry, username=registry.username, password=registry.password)
    assert result.credentials_from == 'the username/password options'
    forms = secret_forms(registry.username, registry.password)
    assert_nowhere(forms, str(result), repr(result), json.dumps(asdict(result)))
    assert_nowhere(forms, *file_texts(str(tmp_path / '.rootfs.virt-bootstrap'), str(tmp_path / 'cache')))


@pytest.mark.parametrize('good', [True, False], ids=['taken', 'refused'])
def test_an_identity_token_goes_nowhere_but_the_token_service(tmp_path, token_registry, good):
    registry = token_registry.registry
    token = registry.refresh_token if good else 'Wrong-' + registry.refresh_token
    auth_file = str(tmp_path / 'config.json')
    with open(auth_file, 'w', encoding='utf-8') as stream:
        json.dump({'auths': {registry.host: {'identitytoken': token}}}, stream)
    texts = []
    try:
        result = pull(tmp_path, token_registry, auth_file=auth_file)
        assert good and result.credentials_from == auth_file
        texts += [str(result), repr(result), json.dumps(asdict(result))]
    except BootstrapError as exc:
        assert not good
        texts += [''.join(traceback.format_exception(type(exc), exc, exc.__traceback__)), repr(exc)]
    assert_nowhere([token], *texts)
    assert_nowhere([token], *file_texts(str(tmp_path / '.rootfs.virt-bootstrap'), str(tmp_path / 'cache')))


def test_refused_credentials_are_not_in_the_error_or_its_traceback(tmp_path, auth_registry):
    registry = auth_registry.registry
    wrong = 'Wrong-' + registry.password
    with pytest.raises(BootstrapError) as caught:
        pull(tmp_path, auth_registry, username=registry.username, password=wrong)
    text = ''.join(traceback.format_exception(caught.type, caught.value, caught.tb))
    assert 'refused the credentials' in text
    forms = secret_forms(registry.username, wrong) + secret_forms(registry.username, registry.password)
    assert_nowhere(forms, text, repr(caught.value))
    assert_nowhere(forms, *file_texts(str(tmp_path)))


def test_no_process_is_started_with_the_password(tmp_path, tls_registry, monkeypatch):
    """Neither in argv (ps shows it to every user) nor in the environment of a child."""
    registry = tls_registry.registry
    started = []
    real_init = subprocess.Popen.__init__

    def recording_init(self, args, *rest, **kwargs):
        started.append((args, kwargs.get('env')))
        real_init(self, args, *rest, **kwargs)
    monkeypatch.setattr(subprocess.Popen, '__init__', recording_init)

    found_in_ps = []
    done = threading.Event()

    def watch_ps():
        while not done.is_set():
            for pid in os.listdir('/proc'):
                if pid.isdigit():
                    try:
                        with open('/proc/%s/cmdline' % pid, 'rb') as stream:
                            if registry.password.encode() in stream.read():
                                found_in_ps.append(pid)
                    except OSError:
                        pass
            done.wait(0.01)

    watcher = threading.Thread(target=watch_ps)
    with FaultProxy('https://' + registry.host) as proxy:
        proxy.chunk_delay = 0.005  # a run long enough for the watcher to look many times
        watcher.start()
        try:
            run(Request(src='docker://%s/app:base' % proxy.host, dest=str(tmp_path / 'rootfs'),
                        registry=RegistryOptions(username=registry.username, password=registry.password,
                                                 not_secure=True, cache_dir=str(tmp_path / 'cache'))))
        finally:
            done.set()
            watcher.join()
    assert found_in_ps == []
    assert started == []


def test_a_credential_helper_gets_the_server_on_stdin_and_nothing_else(tmp_path, tls_registry, monkeypatch):
    registry = tls_registry.registry
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    helper = bin_dir / 'docker-credential-vbtest'
    helper.write_text('#!/bin/sh\nread server\necho "$@ $server" > %s\ncat %s\n' % (
        tmp_path / 'helper-called', tmp_path / 'answer.json'))
    helper.chmod(0o700)
    (tmp_path / 'answer.json').write_text(json.dumps({'Username': registry.username, 'Secret': registry.password}))
    monkeypatch.setenv('PATH', '%s:%s' % (bin_dir, os.environ['PATH']))
    auth_file = tmp_path / 'config.json'
    auth_file.write_text(json.dumps({'credHelpers': {registry.host: 'vbtest'}}))
    started = []
    real_run = subprocess.run

    def recording_run(args, *rest, **kwargs):
        started.append(args)
        return real_run(args, *rest, **kwargs)  # pylint: disable=subprocess-run-check
    monkeypatch.setattr(subprocess, 'run', recording_run)

    result = pull(tmp_path, tls_registry, auth_file=str(auth_file))
    assert result.credentials_from == '%s (docker-credential-vbtest)' % auth_file
    assert started == [['docker-credential-vbtest', 'get']]
    assert (tmp_path / 'helper-called').read_text() == 'get %s\n' % registry.host
    assert_nowhere(secret_forms(registry.username, registry.password), json.dumps(asdict(result)),
                   *file_texts(str(tmp_path / '.rootfs.virt-bootstrap'), str(tmp_path / 'cache')))


def test_the_module_output_holds_no_password(tmp_path, capsys, tls_registry):
    registry = tls_registry.registry
    args = {'src': tls_registry.ref('app:base'), 'dest': str(tmp_path / 'rootfs'), 'ca_path': registry.ca_path,
            'cache_dir': str(tmp_path / 'cache'), 'username': registry.username, 'password': registry.password}
    code, output, result = run_main(capsys, args)
    assert code == 0 and result['changed']
    assert result['credentials_from'] == 'the username/password options'
    assert_nowhere(secret_forms(registry.username, registry.password), output)

    wrong = 'Wrong-' + registry.password
    code, output, result = run_main(capsys, dict(args, dest=str(tmp_path / 'other'), password=wrong))
    assert code == 1
    assert result['msg'] == '%s refused the credentials from the username/password options for app' % registry.host
    assert_nowhere(secret_forms(registry.username, wrong), output)
