# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real registries for the tests: Debian's docker-registry on 127.0.0.1 with a free port (test fixture).

Three kinds:
  http   plain HTTP, anonymous
  tls    HTTPS with a self-signed certificate (SAN IP:127.0.0.1, DNS:localhost) and htpasswd basic auth
  token  HTTPS and bearer tokens from token_server.py (itself on HTTPS with the same certificate);
         no token grants access to the repository DENIED_REPOSITORY; refresh_token is an OAuth2 refresh
         token (an auth file's `identitytoken`) the token server takes for the user

From Python: `with running('tls', workdir) as registry: ...`, or start()/stop().
From the shell (the processes outlive the command; WORKDIR/registry.json describes them):
    python3 registry.py start KIND WORKDIR      prints that JSON
    python3 registry.py stop WORKDIR
The generated password is in registry.json and auth.json (mode 0600) so tests can log in; it is
never put on a command line.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import typing as t
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field

REGISTRY_BINARY = '/usr/bin/docker-registry'
KINDS = ('http', 'tls', 'token')
TOOLS = (REGISTRY_BINARY, 'skopeo', 'openssl', 'htpasswd')
TOKEN_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'token_server.py')
DESCRIPTION = 'registry.json'
STARTUP_TIMEOUT = 15.0
# On the token registry, a repository no token grants access to, even with good credentials.
DENIED_REPOSITORY = 'forbidden'


@dataclass
class Registry:
    """A running registry: where it listens and how to log in to it."""
    kind: str
    host: str  # 127.0.0.1:PORT, as it goes into docker://HOST/name:tag
    workdir: str
    pids: t.List[int]
    ca_path: t.Optional[str] = None
    username: t.Optional[str] = None
    password: t.Optional[str] = field(default=None, repr=False)
    auth_file: t.Optional[str] = None  # auth.json with the credentials for this host
    token_log: t.Optional[str] = None
    refresh_token: t.Optional[str] = field(default=None, repr=False)

    @property
    def scheme(self) -> str:
        return 'http' if self.kind == 'http' else 'https'

    @property
    def url(self) -> str:
        return '%s://%s' % (self.scheme, self.host)

    def ref(self, name: str) -> str:
        """docker://HOST/NAME for a repository[:tag] on this registry."""
        return 'docker://%s/%s' % (self.host, name)

    def token_requests(self) -> t.List[t.Dict[str, t.Any]]:
        """What the token server logged (path, scope, user, status), oldest first."""
        if not self.token_log or not os.path.exists(self.token_log):
            return []
        with open(self.token_log, encoding='utf-8') as stream:
            return [json.loads(line) for line in stream if line.strip()]


def missing_tools() -> t.List[str]:
    """The tools these fixtures need that this machine lacks (tests skip naming them)."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(('127.0.0.1', 0))
        return int(probe.getsockname()[1])


def _run(argv: t.Sequence[str], stdin: t.Optional[bytes] = None) -> None:
    completed = subprocess.run(list(argv), input=stdin, capture_output=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError('%s failed (exit %d): %s' % (argv[0], completed.returncode,
                                                        completed.stderr.decode('utf-8', 'replace').strip()))


def make_certificate(directory: str, name: str, rsa: bool = False) -> t.Tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem). RSA when asked (RS256)."""
    cert, key = os.path.join(directory, name + '.crt'), os.path.join(directory, name + '.key')
    key_options = ['-newkey', 'rsa:2048'] if rsa else ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1']
    _run(['openssl', 'req', '-x509', '-nodes', '-days', '3', '-subj', '/CN=virt-bootstrap test ' + name,
          '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-addext', 'basicConstraints=critical,CA:TRUE',
          '-keyout', key, '-out', cert] + key_options)
    os.chmod(key, 0o600)
    return cert, key


def make_htpasswd(path: str, username: str, password: str) -> None:
    """A bcrypt htpasswd file; the password goes through stdin, never argv."""
    _run(['htpasswd', '-Bic', path, username], stdin=password.encode('utf-8'))


def write_auth_file(path: str, host: str, username: str, password: str) -> str:
    """An auth.json (podman/skopeo format) holding credentials for `host`."""
    encoded = base64.b64encode(('%s:%s' % (username, password)).encode('utf-8')).decode('ascii')
    _write_private(path, json.dumps({'auths': {host: {'auth': encoded}}}, indent=2))
    return path


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w', encoding='utf-8') as stream:
        stream.write(text)


def _spawn(argv: t.Sequence[str], log_path: str) -> subprocess.Popen:
    """A process in its own session with its output in a log file, so it outlives a CLI parent."""
    with open(log_path, 'ab') as log:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)


def _wait_until(ready: t.Callable[[], bool], process: subprocess.Popen, what: str, log_path: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError('%s exited with %d:\n%s' % (what, process.returncode, _tail(log_path)))
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError('%s did not come up within %d s:\n%s' % (what, STARTUP_TIMEOUT, _tail(log_path)))


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding='utf-8', errors='replace') as stream:
            return ''.join(stream.readlines()[-lines:])
    except OSError:
        return ''


def _answers(url: str) -> bool:
    """Whether /v2/ answers HTTP at all (401 counts: the registry is up and wants a login)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url + '/v2/', timeout=2, context=context):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ssl.SSLError):
        return False


def _start_token_server(workdir: str, cert: str, key: str, username: str, password: str,
                        refresh_token: str) -> t.Tuple[subprocess.Popen, str, str]:
    """(process, realm URL, signing certificate to trust)."""
    signing_cert, signing_key = make_certificate(workdir, 'token-signer', rsa=True)
    users_file = os.path.join(workdir, 'token-users.json')
    _write_private(users_file, json.dumps({username: password}))
    refresh_tokens_file = os.path.join(workdir, 'token-refresh.json')
    _write_private(refresh_tokens_file, json.dumps({refresh_token: username}))
    port_file = os.path.join(workdir, 'token.port')
    config = {
        'signing_key': signing_key, 'signing_cert': signing_cert, 'issuer': 'virt-bootstrap-test-issuer',
        'service': 'virt-bootstrap-test-registry', 'users_file': users_file, 'tls_cert': cert, 'tls_key': key,
        'refresh_tokens_file': refresh_tokens_file,
        'port': 0, 'port_file': port_file, 'log_file': os.path.join(workdir, 'token-requests.jsonl'),
        'deny_repositories': [DENIED_REPOSITORY],
    }
    config_path = os.path.join(workdir, 'token-server.json')
    _write_private(config_path, json.dumps(config, indent=2))
    log_path = os.path.join(workdir, 'token-server.log')
    process = _spawn([sys.executable, TOKEN_SERVER, config_path], log_path)
    _wait_until(lambda: os.path.exists(port_file), process, 'token_server.py', log_path)
    with open(port_file, encoding='ascii') as stream:
        port = int(stream.read())
    return process, 'https://127.0.0.1:%d/token' % port, signing_cert


def _registry_config(kind: str, workdir: str, port: int, cert: t.Optional[str], key: t.Optional[str],
                     auth: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    config: t.Dict[str, t.Any] = {
        'version': 0.1,
        'log': {'level': 'info', 'accesslog': {'disabled': False}},
        'storage': {'filesystem': {'rootdirectory': os.path.join(workdir, 'storage')},
                    'delete': {'enabled': True}, 'maintenance': {'uploadpurging': {'enabled': False}}},
        'http': {'addr': '127.0.0.1:%d' % port, 'secret': secrets.token_hex(16)},
    }
    if kind != 'http':
        config['http']['tls'] = {'certificate': cert, 'key': key}
    if auth:
        config['auth'] = auth
    return config


def start(kind: str, workdir: str, username: str = 'tester', password: t.Optional[str] = None) -> Registry:
    """Start a registry of `kind` keeping everything (storage, certificates, logs) in `workdir`."""
    if kind not in KINDS:
        raise ValueError('kind must be one of %s' % ', '.join(KINDS))
    os.makedirs(workdir, exist_ok=True)
    workdir = os.path.abspath(workdir)
    password = password or secrets.token_urlsafe(18)
    processes: t.List[subprocess.Popen] = []
    try:
        cert = key = None
        auth: t.Dict[str, t.Any] = {}
        registry = Registry(kind=kind, host='', workdir=workdir, pids=[])
        if kind != 'http':
            cert, key = make_certificate(workdir, 'registry')
            registry.ca_path = cert
            registry.username, registry.password = username, password
        if kind == 'tls':
            htpasswd = os.path.join(workdir, 'htpasswd')
            make_htpasswd(htpasswd, username, password)
            auth = {'htpasswd': {'realm': 'virt-bootstrap-test', 'path': htpasswd}}
        elif kind == 'token':
            registry.refresh_token = secrets.token_urlsafe(24)
            token_process, realm, signing_cert = _start_token_server(workdir, t.cast(str, cert), t.cast(str, key),
                                                                     username, password, registry.refresh_token)
            processes.append(token_process)
            registry.token_log = os.path.join(workdir, 'token-requests.jsonl')
            auth = {'token': {'realm': realm, 'service': 'virt-bootstrap-test-registry',
                              'issuer': 'virt-bootstrap-test-issuer', 'rootcertbundle': signing_cert}}
        log_path = os.path.join(workdir, 'registry.log')
        # The port is free when probed; another process may take it before the registry binds it: retry.
        for _attempt in range(5):
            port = free_port()
            config_path = os.path.join(workdir, 'config.yml')
            _write_private(config_path, json.dumps(_registry_config(kind, workdir, port, cert, key, auth), indent=2))
            process = _spawn([REGISTRY_BINARY, 'serve', config_path], log_path)
            registry.host = '127.0.0.1:%d' % port
            try:
                _wait_until(lambda: _answers(registry.url), process, 'docker-registry', log_path)
            except RuntimeError:
                if process.poll() is not None and 'address already in use' in _tail(log_path):
                    continue
                processes.append(process)
                raise
            processes.append(process)
            break
        else:
            raise RuntimeError('docker-registry found no free port')
        registry.pids = [process.pid for process in processes]
        if registry.password is not None:
            registry.auth_file = write_auth_file(os.path.join(workdir, 'auth.json'), registry.host,
                                                 username, registry.password)
        _write_private(os.path.join(workdir, DESCRIPTION), json.dumps(asdict(registry), indent=2))
        return registry
    except BaseException:
        for process in processes:
            _stop_pid(process.pid)
        raise


def load(workdir: str) -> Registry:
    with open(os.path.join(workdir, DESCRIPTION), encoding='utf-8') as stream:
        return Registry(**json.load(stream))


def stop(registry: Registry) -> None:
    """Stop every process of `registry` (by the pids it recorded); the files stay."""
    for pid in reversed(registry.pids):
        _stop_pid(pid)


def _is_ours(pid: int) -> bool:
    """Whether `pid` is still a live registry or token server (not a zombie, not a reused pid)."""
    try:
        with open('/proc/%d/stat' % pid, encoding='ascii', errors='replace') as stream:
            if stream.read().rsplit(')', 1)[-1].split()[0] == 'Z':
                return False
        with open('/proc/%d/cmdline' % pid, 'rb') as stream:
            cmdline = stream.read()
    except (OSError, IndexError):
        return False
    return REGISTRY_BINARY.encode() in cmdline or TOKEN_SERVER.encode() in cmdline


def _stop_pid(pid: int, timeout: float = 5.0) -> None:
    if not _is_ours(pid):
        _reap(pid)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not _is_ours(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect our own child's exit status; a process started by another CLI call is not ours to wait for."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@contextlib.contextmanager
def running(kind: str, workdir: str, username: str = 'tester',
            password: t.Optional[str] = None) -> t.Iterator[Registry]:
    registry = start(kind, workdir, username, password)
    try:
        yield registry
    finally:
        stop(registry)


def main(argv: t.Sequence[str]) -> int:
    if len(argv) == 3 and argv[0] == 'start' and argv[1] in KINDS:
        missing = missing_tools()
        if missing:
            sys.stderr.write('registry.py: missing %s\n' % ', '.join(missing))
            return 2
        registry = start(argv[1], argv[2])
        sys.stdout.write(json.dumps(asdict(registry), indent=2) + '\n')
        return 0
    if len(argv) == 2 and argv[0] == 'stop':
        if os.path.exists(os.path.join(argv[1], DESCRIPTION)):
            stop(load(argv[1]))
        return 0
    sys.stderr.write('usage: registry.py start http|tls|token WORKDIR | registry.py stop WORKDIR\n')
    return 2


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
