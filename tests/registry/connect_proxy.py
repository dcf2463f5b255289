# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An HTTP CONNECT proxy on 127.0.0.1 that counts its tunnels (test fixture, stdlib only, a thread per tunnel).

What an HTTPS client behind a corporate proxy talks to: `CONNECT host:port`, `200 Connection
established`, then the TLS bytes relayed both ways unread. Each CONNECT is recorded (target, the
request's header names, its Proxy-Authorization value, the status answered) so tests can see what
reached the proxy. Only targets on this machine (127.0.0.1, localhost) are tunnelled to; anything
else is answered 403. With `login=(user, password)` a CONNECT without those Basic credentials is
answered 407. Other methods are answered 501: plain-HTTP proxying is not what this stands in for.

    with ConnectProxy() as proxy:
        os.environ['HTTPS_PROXY'] = proxy.url
        ... proxy.tunnels ...
"""

from __future__ import annotations

import base64
import select
import socket
import socketserver
import threading
import typing as t
from dataclasses import dataclass, field

from ansible_collections.virt.bootstrap.tests.registry.loopback import LoopbackServer

LOCAL_HOSTS = frozenset(('127.0.0.1', 'localhost'))
MAX_HEAD = 64 * 1024


@dataclass
class Tunnel:
    """One CONNECT request the proxy answered."""
    target: str  # host:port
    header_names: t.List[str] = field(default_factory=list)  # lower case
    proxy_authorization: t.Optional[str] = None
    status: int = 0


class ConnectProxy(LoopbackServer):
    NAME = 'connect-proxy'
    POLL_SECONDS = 0.05

    def __init__(self, login: t.Optional[t.Tuple[str, str]] = None) -> None:
        super().__init__()
        self.tunnels: t.List[Tunnel] = []
        self._expected = None if login is None else \
            'Basic ' + base64.b64encode(('%s:%s' % login).encode('utf-8')).decode('ascii')
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return 'http://127.0.0.1:%d' % self.port

    def url_with_login(self, user: str, password: str) -> str:
        return 'http://%s:%s@127.0.0.1:%d' % (user, password, self.port)

    def targets(self) -> t.List[str]:
        with self._lock:
            return [tunnel.target for tunnel in self.tunnels]

    def stop(self) -> None:
        self._stopping.set()  # relays notice within one select timeout
        super().stop()

    def _make_server(self) -> '_Server':
        return _Server(self)

    # -- used by the handler ---------------------------------------------------------------------

    def _record(self, tunnel: Tunnel) -> None:
        with self._lock:
            self.tunnels.append(tunnel)

    def _allows(self, proxy_authorization: t.Optional[str]) -> bool:
        return self._expected is None or proxy_authorization == self._expected


class _Handler(socketserver.BaseRequestHandler):
    server: '_Server'

    def handle(self) -> None:
        read = self._read_head()
        if read is None:
            return
        head, early = read
        request_line, *header_lines = head.split('\r\n')
        method, _sep, rest = request_line.partition(' ')
        target = rest.split(' ', 1)[0]
        headers = {}
        for line in header_lines:
            name, _sep, value = line.partition(':')
            headers[name.strip().lower()] = value.strip()
        if method != 'CONNECT':
            self._answer(501, 'Not Implemented')
            return
        proxy = self.server.proxy
        tunnel = Tunnel(target, sorted(headers), headers.get('proxy-authorization'))
        host, _sep, port = target.rpartition(':')
        if not proxy._allows(tunnel.proxy_authorization):  # pylint: disable=protected-access
            tunnel.status = 407
        elif host not in LOCAL_HOSTS or not port.isdigit():
            tunnel.status = 403  # never a tunnel off this machine
        proxy._record(tunnel)  # pylint: disable=protected-access
        if tunnel.status == 407:
            self._answer(407, 'Proxy Authentication Required', 'Proxy-Authenticate: Basic realm="test proxy"\r\n')
            return
        if tunnel.status == 403:
            self._answer(403, 'Forbidden')
            return
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except OSError:
            tunnel.status = 502
            self._answer(502, 'Bad Gateway')
            return
        tunnel.status = 200
        with upstream:
            self.request.sendall(b'HTTP/1.1 200 Connection established\r\n\r\n')
            if early:
                upstream.sendall(early)
            self._relay(upstream)

    def _read_head(self) -> t.Optional[t.Tuple[str, bytes]]:
        """The request line and headers, and whatever the client sent after them already."""
        data = b''
        while b'\r\n\r\n' not in data:
            chunk = self.request.recv(4096)
            if not chunk or len(data) > MAX_HEAD:
                return None
            data += chunk
        head, early = data.split(b'\r\n\r\n', 1)
        return head.decode('latin-1'), early

    def _answer(self, status: int, reason: str, extra_headers: str = '') -> None:
        self.request.sendall(('HTTP/1.1 %d %s\r\n%sContent-Length: 0\r\nConnection: close\r\n\r\n'
                              % (status, reason, extra_headers)).encode('ascii'))

    def _relay(self, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side closes (or the proxy stops)."""
        client = self.request
        peers = {client: upstream, upstream: client}
        stopping = self.server.proxy._stopping  # pylint: disable=protected-access
        while not stopping.is_set():
            readable, _writable, _errors = select.select(list(peers), [], [], 0.2)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                peers[sock].sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, proxy: ConnectProxy) -> None:
        super().__init__(('127.0.0.1', 0), _Handler)
        self.proxy = proxy
