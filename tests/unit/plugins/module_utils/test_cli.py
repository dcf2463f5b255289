# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The virt-bootstrap command line, end to end: run as a program from an installed-like collection."""

from __future__ import annotations

import errno
import os
import pathlib
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import typing as t

import pytest
from passlib.hash import sha512_crypt

from ansible_collections.virt.bootstrap.plugins.module_utils import _cli as cli_module
from ansible_collections.virt.bootstrap.plugins.module_utils import _shadow as shadow
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import OciLayoutBuilder
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import TarBuilder

COLLECTION_ROOT = pathlib.Path(__file__).resolve().parents[4]
BUSYBOX = '/bin/busybox'
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason='writing files owned by other users needs root')


@pytest.fixture(scope='module')
def cli(tmp_path_factory) -> str:
    """scripts/virt-bootstrap in a copy of the collection laid out as ansible-galaxy installs it."""
    top = tmp_path_factory.mktemp('collections')
    installed = top / 'ansible_collections' / 'virt' / 'bootstrap'
    for part in ('plugins', 'scripts'):
        shutil.copytree(str(COLLECTION_ROOT / part), str(installed / part),
                        ignore=shutil.ignore_patterns('__pycache__'))
    if (COLLECTION_ROOT / 'galaxy.yml').exists():
        shutil.copy(str(COLLECTION_ROOT / 'galaxy.yml'), str(installed / 'galaxy.yml'))
    return str(installed / 'scripts' / 'virt-bootstrap')


def child_env() -> t.Dict[str, str]:
    # Without PYTHONPATH the script must find its collection from its own path.
    env = {key: value for key, value in os.environ.items() if key != 'PYTHONPATH'}
    env['LC_ALL'] = 'C.UTF-8'
    env['VIRT_BOOTSTRAP_PYTHON'] = sys.executable
    return env


def run_cli(cli: str, *args: str, **kwargs: t.Any) -> subprocess.CompletedProcess:
    return subprocess.run([cli] + list(args), stdin=subprocess.DEVNULL, capture_output=True, check=False,
                          text=True, env=child_env(), timeout=120, **kwargs)


def real_rootfs_layers() -> t.List[bytes]:
    """A small but real rootfs: a static busybox with its applet links, /etc/passwd and /etc/shadow."""
    if os.path.exists(BUSYBOX):
        with open(BUSYBOX, 'rb') as stream:
            busybox = stream.read()
    else:  # pragma: no cover - any executable content does for the CLI
        busybox = b'\x7fELF' + b'\0' * 4096
    base = TarBuilder().dir('.', mode=0o755).dir('bin').file('bin/busybox', busybox, mode=0o755)
    for applet in ('sh', 'ls', 'cat', 'passwd'):
        base.symlink('bin/' + applet, 'busybox')
    base.file('bin/su', busybox[:4096], mode=0o4755)
    base.dir('etc').file('etc/passwd', b'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n')
    base.file('etc/shadow', b'root:*:19000:0:99999:7:::\nuser:!:19000:0:99999:7:::\n', mode=0o640, gid=42)
    base.dir('root', mode=0o700).dir('home').dir('home/user', uid=1000, gid=1000)
    base.file('home/user/.profile', b'PS1=$ \n', uid=1000, gid=1000)
    top = TarBuilder().dir('etc').file('etc/os-release', b'ID=busybox\n').whiteout('bin/passwd')
    return [base.tar(), top.tar()]


@pytest.fixture(scope='module')
def image(tmp_path_factory) -> str:
    layout = str(tmp_path_factory.mktemp('image') / 'busybox')
    builder = OciLayoutBuilder(layout)
    manifest = builder.image(real_rootfs_layers(), compression='gzip')
    builder.write_index([(manifest, 'latest')])
    return 'oci:%s:latest' % layout


def owner(path: str) -> t.Tuple[int, int]:
    info = os.lstat(path)
    return info.st_uid, info.st_gid


def root_hash(dest: str) -> t.Optional[str]:
    with open(os.path.join(dest, 'etc', 'shadow'), 'rb') as stream:
        return shadow.root_hash(stream.read())


# -- success and what it prints ----------------------------------------------------------------------


def test_success_exits_0_prints_status_lines_and_writes_the_rootfs(cli, image, tmp_path):
    dest = str(tmp_path / 'guest')
    done = run_cli(cli, image, dest)
    assert (done.returncode, done.stderr) == (0, '')
    lines = done.stdout.splitlines()
    assert lines[0].startswith('Extracting layer (1/2) with size: ')
    assert 'Extraction completed successfully! (100%)' in lines
    assert re.fullmatch(r'virt-bootstrap: build sha256:[0-9a-f]{64} into %s' % re.escape(dest), lines[-1])
    assert '\r' not in done.stdout  # not a terminal: no progress bar
    if os.path.exists(BUSYBOX):
        with open(BUSYBOX, 'rb') as original, open(os.path.join(dest, 'bin', 'busybox'), 'rb') as written:
            assert original.read() == written.read()
    assert os.readlink(os.path.join(dest, 'bin', 'sh')) == 'busybox'
    assert not os.path.lexists(os.path.join(dest, 'bin', 'passwd'))

    again = run_cli(cli, image, dest)
    assert again.returncode == 0
    assert again.stdout.splitlines() == ['Nothing to do (100%)', 'virt-bootstrap: %s already holds %s' % (
        dest, re.search(r'sha256:[0-9a-f]{64}', lines[-1]).group(0))]


def test_quiet_prints_nothing_on_success(cli, image, tmp_path):
    done = run_cli(cli, image, str(tmp_path / 'guest'), '-q')
    assert (done.returncode, done.stdout, done.stderr) == (0, '', '')
    assert os.path.isfile(str(tmp_path / 'guest' / 'etc' / 'os-release'))


def test_version(cli):
    done = run_cli(cli, '--version')
    assert done.returncode == 0
    assert re.fullmatch(r'virt-bootstrap \d+\.\d+\.\d+\n', done.stdout)
    galaxy = pathlib.Path(cli).parents[1] / 'galaxy.yml'
    if galaxy.exists():
        version = re.search(r'^version:\s*(\S+)', galaxy.read_text(), re.M).group(1)
        assert done.stdout == 'virt-bootstrap %s\n' % version


def test_runs_through_a_symlink_in_path(cli, tmp_path):
    # README: `ln -s .../scripts/virt-bootstrap /usr/local/bin/`; the link must lead back to the collection.
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'virt-bootstrap').symlink_to(cli)
    (bin_dir / 'relative').symlink_to(os.path.relpath(cli, str(bin_dir)))
    for link in ('virt-bootstrap', 'relative'):
        done = run_cli(str(bin_dir / link), '--version')
        assert (done.returncode, done.stderr) == (0, ''), done.stderr


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('args, message', [
    ([], 'the following arguments are required'),
    (['/only/uri'], 'the following arguments are required'),
    (['/a', '/b', '--no-such-option'], 'unrecognized arguments'),
    (['/a', '/b', '-f', 'qcow3'], "invalid choice: 'qcow3'"),
    (['/a', '/b', '--uidmap', '1:2'], "'1:2' is not START:TARGET:COUNT"),
    (['/a', '/b', '--gidmap', 'a:b:c'], 'must be a number'),
    (['/a', '/b', '--idmap', '0:1000:0'], 'count must be at least 1'),
    (['/a', '/b', '--idmap=-1:1000:10'], 'cannot be negative'),
    (['/a', '/b', '--uidmap', '0:4294967295:1'], 'beyond 4294967294'),
    (['/a', '/b', '--uidmap'], 'expected one argument'),
])
def test_bad_arguments_exit_2_with_usage(cli, args, message):
    done = run_cli(cli, *args)
    assert done.returncode == 2
    assert done.stderr.startswith('usage: virt-bootstrap')
    assert message in done.stderr
    assert 'Traceback' not in done.stderr


@pytest.mark.parametrize('uri, message', [
    ('/no/such/rootfs.tar', '/no/such/rootfs.tar does not exist'),
    ('ftp://example.com/rootfs.tar', "unsupported source 'ftp://example.com/rootfs.tar'"),
    # Relative paths are the caller's, as with the original tool.
    ('relative/rootfs.tar', '%s/relative/rootfs.tar does not exist' % os.getcwd()),
])
def test_bad_source_exits_1_with_a_message_and_no_traceback(cli, tmp_path, uri, message):
    dest = str(tmp_path / 'guest')
    done = run_cli(cli, uri, dest)
    assert done.returncode == 1
    assert done.stderr.startswith('virt-bootstrap: ') and done.stderr.count('\n') == 1
    assert message in done.stderr
    assert 'Traceback' not in done.stderr
    assert not os.path.lexists(dest)


def test_debug_shows_the_traceback(cli, tmp_path):
    done = run_cli(cli, '/no/such/rootfs.tar', str(tmp_path / 'guest'), '--debug')
    assert done.returncode == 1
    assert 'Traceback (most recent call last)' in done.stderr
    assert done.stderr.splitlines()[-1] == 'virt-bootstrap: /no/such/rootfs.tar does not exist'


def test_engine_errors_after_parsing_exit_1(cli, image, tmp_path):
    overlapping = run_cli(cli, image, str(tmp_path / 'one'), '--uidmap', '0:1000:10', '--idmap', '5:2000:10')
    assert overlapping.returncode == 1 and 'overlap' in overlapping.stderr and 'Traceback' not in overlapping.stderr
    missing_password_file = run_cli(cli, image, str(tmp_path / 'two'), '--root-password', 'file:/no/such/file')
    assert missing_password_file.returncode == 1
    assert missing_password_file.stderr == \
        'virt-bootstrap: cannot read the root password from /no/such/file: No such file or directory\n'


# -- options -----------------------------------------------------------------------------------------


def test_root_password_from_a_file_uses_its_first_line(cli, image, tmp_path):
    password_file = tmp_path / 'pw'
    password_file.write_text('first line secret\r\nsecond line\n')
    dest = str(tmp_path / 'guest')
    done = run_cli(cli, image, dest, '-q', '--root-password', 'file:%s' % password_file)
    assert done.returncode == 0, done.stderr
    assert sha512_crypt.verify('first line secret', root_hash(dest))
    assert 'first line secret' not in done.stdout + done.stderr


def test_plain_root_password(cli, image, tmp_path):
    dest = str(tmp_path / 'guest')
    assert run_cli(cli, image, dest, '-q', '--root-password', 'plain').returncode == 0
    assert sha512_crypt.verify('plain', root_hash(dest))


@AS_ROOT
def test_idmap_applies_to_owners_and_groups(cli, image, tmp_path):
    dest = str(tmp_path / 'guest')
    done = run_cli(cli, image, dest, '-q', '--idmap', '0:100000:65536')
    assert done.returncode == 0, done.stderr
    assert owner(dest) == (100000, 100000)
    assert owner(os.path.join(dest, 'bin', 'sh')) == (100000, 100000)
    assert owner(os.path.join(dest, 'etc', 'shadow')) == (100000, 100042)
    assert owner(os.path.join(dest, 'home', 'user', '.profile')) == (101000, 101000)
    assert os.lstat(os.path.join(dest, 'bin', 'su')).st_mode & 0o7777 == 0o4755


@AS_ROOT
def test_uidmap_and_gidmap_apply_separately_and_repeat(cli, image, tmp_path):
    dest = str(tmp_path / 'guest')
    done = run_cli(cli, image, dest, '-q', '--uidmap', '0:100000:1000', '--uidmap', '1000:201000:10',
                   '--gidmap', '0:300000:65536')
    assert done.returncode == 0, done.stderr
    assert owner(os.path.join(dest, 'etc', 'shadow')) == (100000, 300042)
    assert owner(os.path.join(dest, 'home', 'user', '.profile')) == (201000, 301000)


def test_interrupt_exits_130_and_leaves_no_partial_rootfs(cli, tmp_path):
    size = 300 << 20
    tarball = str(tmp_path / 'big.tar')
    with tarfile.open(tarball, 'w', format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo('big')
        info.size = size
        archive.addfile(info, _Zeros(size))
    dest = str(tmp_path / 'hosts' / 'guest')
    meta = str(tmp_path / 'hosts' / '.guest.virt-bootstrap')
    child = subprocess.Popen([cli, tarball, dest, '--status-only'], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        first = child.stdout.readline()
        assert first.startswith('Extracting layer (1/1) with size: 300.0 MiB'), first
        deadline = time.monotonic() + 30
        while not _partially_written(meta, 'big') and time.monotonic() < deadline:
            time.sleep(0.002)
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.unlink(tarball)  # pytest keeps recent tmp dirs; 300 MB each is too much to keep
    assert child.returncode == 130, (stdout, stderr)
    assert stderr.strip() == 'virt-bootstrap: interrupted'
    assert not os.path.lexists(dest)
    assert [name for name in os.listdir(meta) if name.startswith('build-')] == []


def _partially_written(meta: str, name: str) -> bool:
    try:
        builds = [entry for entry in os.listdir(meta) if entry.startswith('build-')]
        return any(os.path.getsize(os.path.join(meta, build, 'rootfs', name)) > 0 for build in builds)
    except OSError:
        return False


class _Zeros:
    def __init__(self, size: int) -> None:
        self._left = size

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        self._left -= size
        return bytes(size)


# -- on a terminal -----------------------------------------------------------------------------------


def run_in_pty(cli: str, args: t.Sequence[str], answers: t.Mapping[bytes, bytes] = None,
               timeout: float = 60) -> t.Tuple[int, bytes]:
    """Run the CLI with a pseudo-terminal as its controlling terminal; answer prompts as they appear."""
    answers = dict(answers or {})
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - replaced by the program
        try:
            os.execve(cli, [cli] + list(args), child_env())
        finally:
            os._exit(127)  # pylint: disable=protected-access
    output = b''
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _writable, _failed = select.select([master], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError as exc:
                if exc.errno == errno.EIO:  # the child closed the terminal
                    break
                raise
            if not chunk:
                break
            output += chunk
            for prompt in list(answers):
                if prompt in output:
                    os.write(master, answers.pop(prompt))
    finally:
        os.close(master)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output


def test_username_without_password_prompts_without_echo(cli, image, tmp_path):
    dest = str(tmp_path / 'guest')
    code, output = run_in_pty(cli, [image, dest, '-u', 'alice'],
                              answers={b'Enter password for alice: ': b'registry-secret\n'})
    assert code == 0, output
    assert b'Enter password for alice: ' in output
    assert b'registry-secret' not in output
    assert os.path.isfile(os.path.join(dest, 'etc', 'os-release'))


def test_no_prompt_when_the_password_is_given(cli, image, tmp_path):
    code, output = run_in_pty(cli, [image, str(tmp_path / 'guest'), '-u', 'alice', '-p', 'given', '-q'])
    assert (code, output) == (0, b'')


def test_terminal_gets_a_progress_bar_and_status_only_gets_lines(cli, image, tmp_path):
    code, screen = run_in_pty(cli, [image, str(tmp_path / 'one')])
    assert code == 0
    assert re.search(rb'\r\[#* *\] +\d+\.\d% Extracting layer \(1/2\)', screen)
    assert re.search(rb'\r\[#{30}\] 100\.0% Extraction completed successfully!', screen)

    code, lines = run_in_pty(cli, [image, str(tmp_path / 'two'), '--status-only'])
    assert code == 0
    assert b'\r[' not in lines
    text = lines.decode().replace('\r\n', '\n').splitlines()
    assert text[0].startswith('Extracting layer (1/2) with size: ') and text[0].endswith('(0%)')
    assert 'Extraction completed successfully! (100%)' in text


# -- main() in process: failures nobody planned for --------------------------------------------------


@pytest.mark.parametrize('debug', [False, True])
def test_unexpected_exception_exits_1_with_a_message_and_a_traceback_only_with_debug(monkeypatch, capsys, debug):
    def broken(*args: t.Any, **kwargs: t.Any) -> t.NoReturn:
        raise RuntimeError('something nobody planned for')

    monkeypatch.setattr(cli_module, 'bootstrap', broken)
    code = cli_module.main(['/rootfs.tar', '/dest'] + (['--debug'] if debug else []))
    err = capsys.readouterr().err
    assert code == 1
    assert 'virt-bootstrap: unexpected error: RuntimeError: something nobody planned for' in err
    assert ('Traceback (most recent call last)' in err) is debug


def test_keyboard_interrupt_in_main_exits_130(monkeypatch, capsys):
    def interrupted(*args: t.Any, **kwargs: t.Any) -> t.NoReturn:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, 'bootstrap', interrupted)
    assert cli_module.main(['/rootfs.tar', '/dest']) == 130
    assert capsys.readouterr().err.strip() == 'virt-bootstrap: interrupted'


def test_maps_reach_bootstrap_as_given(monkeypatch):
    calls: t.List[t.Dict[str, t.Any]] = []

    def record(uri: str, dest: str, **kwargs: t.Any) -> t.Any:
        calls.append(dict(kwargs, uri=uri, dest=dest))
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, 'bootstrap', record)
    cli_module.main(['/r.tar', '/d', '--uidmap', '0:1000:10', '--gidmap', '0:2000:10', '--idmap', '500:1500:10'])
    cli_module.main(['/r.tar', '/d'])
    assert calls[0]['uid_map'] == [[0, 1000, 10], [500, 1500, 10]]
    assert calls[0]['gid_map'] == [[0, 2000, 10], [500, 1500, 10]]
    assert calls[1]['uid_map'] is None and calls[1]['gid_map'] is None
