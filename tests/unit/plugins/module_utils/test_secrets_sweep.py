# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every secret, everywhere: a registry password, its bearer tokens and a root password, through Ansible itself
(-vvv, a log file, success and failure paths) and through the command line, under strace.

None of them may appear in the output, Ansible's log, the progress log, the state record, the cache, any file
left in HOME or TMPDIR, or the argv or environment of any process started (strace -f records each execve
with its whole environment).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import typing as t

import pytest

from ansible_collections.virt.bootstrap.tests.registry import push as pusher
from ansible_collections.virt.bootstrap.tests.registry.registry import write_auth_file
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.playbook_support import (
    ansible_playbook,
    clean_environment,
)
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import OciLayoutBuilder, make_tar
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.registry_support import (
    files_below,
    unique_name,
)

ROOT_PASSWORD = 'Root-Secret-For-The-Sweep'
ROOTFS = {'etc': None, 'etc/shadow': b'root:*:19000:0:99999:7:::\n', 'etc/os-release': b'ID=sweep\n'}
# Every JWT starts with the base64 of '{"': a bearer token the token service issued, whichever it was.
JWT_START = 'eyJ'
COLLECTIONS_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *(['..'] * 7)))
CLI = os.path.join(COLLECTIONS_ROOT, 'ansible_collections', 'virt', 'bootstrap', 'scripts', 'virt-bootstrap')


@pytest.fixture
def playbook_command():
    if shutil.which('strace') is None:
        pytest.fail('strace is missing (tests/run installs it)')
    command = ansible_playbook()
    if command is None:
        pytest.fail('no interpreter here can run ansible-playbook (tests/run installs ansible-core)')
    return command


@pytest.fixture
def image(token_registry, tmp_path_factory):
    """An image with an /etc/shadow, pushed to the token registry; its reference."""
    registry = token_registry.registry
    layout = str(tmp_path_factory.mktemp('sweep-layout'))
    builder = OciLayoutBuilder(layout)
    builder.write_index([(builder.image([make_tar(ROOTFS)]), 'one')])
    name = '%s:one' % unique_name('sweep')
    pusher.push('oci:%s:one' % layout, registry.host, name, registry.auth_file)
    return registry.ref(name)


def secrets_of(registry) -> t.List[str]:
    basic = base64.b64encode(('%s:%s' % (registry.username, registry.password)).encode()).decode()
    return [registry.password, basic, ROOT_PASSWORD, JWT_START]


def traced(command: t.Sequence[str], trace: str, environment: t.Mapping[str, str],
           stdin: t.Optional[bytes] = None) -> subprocess.CompletedProcess:
    return subprocess.run(['strace', '-f', '-qq', '-v', '-s', '65536', '-e', 'trace=execve', '-o', trace] +
                          list(command), env=dict(environment), input=stdin, capture_output=True, check=False,
                          timeout=600)


def assert_nowhere(secrets: t.Sequence[str], places: t.Dict[str, str]) -> None:
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, 'a secret (%s...) is in %s' % (secret[:3], where)


def texts_below(root: str, inputs: t.Sequence[str]) -> t.Dict[str, str]:
    found = {}
    for path in files_below(root):
        if path in inputs or os.path.islink(path):
            continue
        with open(path, 'rb') as stream:
            found[path] = stream.read().decode('latin-1')
    return found


def test_no_secret_anywhere_through_ansible_with_vvv_and_failures(playbook_command, tmp_path, token_registry, image):
    registry = token_registry.registry
    home, temporary = tmp_path / 'home', tmp_path / 'tmp'
    home.mkdir()
    temporary.mkdir()
    task = {'src': image, 'dest': str(tmp_path / 'guests' / 'one'), 'ca_path': registry.ca_path,
            'cache_dir': str(tmp_path / 'cache'), 'username': registry.username, 'password': registry.password,
            'root_password': ROOT_PASSWORD, 'progress_log': str(tmp_path / 'progress.jsonl')}
    tasks = [
        {'name': 'pull with credentials and a root password', 'virt.bootstrap.container_rootfs': task},
        {'name': 'again, unchanged', 'virt.bootstrap.container_rootfs': task},
        {'name': 'wrong password', 'ignore_errors': True,
         'virt.bootstrap.container_rootfs': dict(task, password='Wrong-' + registry.password,
                                                 dest=str(tmp_path / 'guests' / 'two'))},
        {'name': 'missing tag', 'ignore_errors': True,
         'virt.bootstrap.container_rootfs': dict(task, src=image.rsplit(':', 1)[0] + ':missing',
                                                 dest=str(tmp_path / 'guests' / 'three'))},
    ]
    playbook = tmp_path / 'play.yml'
    playbook.write_text(json.dumps([{'hosts': 'localhost', 'connection': 'local', 'gather_facts': False,
                                     'tasks': tasks}]))
    environment = clean_environment(
        HOME=str(home), TMPDIR=str(temporary), ANSIBLE_LOG_PATH=str(tmp_path / 'ansible.log'),
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_ROOT, ANSIBLE_LOCAL_TEMP=str(temporary / 'ansible-local'),
        ANSIBLE_REMOTE_TEMP=str(temporary / 'ansible-remote'), ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_NOCOLOR='1')
    trace = str(tmp_path / 'execve.trace')
    done = traced(playbook_command + ['-vvv', '-i', 'localhost,', str(playbook)], trace, environment)
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output[-3000:]
    assert 'ok=4 ' in output and 'changed=1 ' in output and 'ignored=2' in output
    assert 'refused the credentials' in output  # the failure paths really ran
    with open(trace, encoding='latin-1') as stream:
        execs = stream.read()
    assert execs.count('execve(') > 5
    assert 'ANSIBLE_COLLECTIONS_PATH=' in execs  # each execve is recorded with its environment
    places = {'output': output, 'the execve trace': execs}
    places.update(texts_below(str(tmp_path), inputs=[str(playbook), trace]))
    assert str(tmp_path / 'ansible.log') in places and str(tmp_path / 'progress.jsonl') in places
    assert_nowhere(secrets_of(registry), places)


def test_no_secret_anywhere_through_the_command_line(tmp_path, token_registry, image):
    registry = token_registry.registry
    auth_file = write_auth_file(str(tmp_path / 'auth.json'), registry.host, registry.username, registry.password)
    password_file = tmp_path / 'root-password'
    password_file.write_text(ROOT_PASSWORD + '\n')
    environment = dict(os.environ, HOME=str(tmp_path), TMPDIR=str(tmp_path), VIRT_BOOTSTRAP_PYTHON=sys.executable)
    trace = str(tmp_path / 'execve.trace')
    places = {}
    runs = [(image, 'one'), (image, 'one'), (image.rsplit(':', 1)[0] + ':missing', 'two')]
    for run, (source, dest) in enumerate(runs):
        done = traced([CLI, '--auth-file', auth_file, '--ca-path', registry.ca_path, '--cache-dir',
                       str(tmp_path / 'cache'), '--root-password', 'file:%s' % password_file, '--debug',
                       source, str(tmp_path / dest)], trace + str(run), environment)
        assert done.returncode == (1 if dest == 'two' else 0), done.stderr.decode()
        places['output of run %d' % run] = done.stdout.decode() + done.stderr.decode()
    assert 'has no image' in places['output of run 2']
    places.update(texts_below(str(tmp_path), inputs=[auth_file, str(password_file)]))
    assert_nowhere(secrets_of(registry), places)
