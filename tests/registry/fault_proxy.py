# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fault-injecting HTTP proxy in front of a registry (test fixture, stdlib only, one thread per request).

The client talks plain HTTP to 127.0.0.1:PORT as if it were the registry; the proxy forwards each
request to the upstream registry (http, or https without verification) and can, per path:
  - answer an HTTP status (500, 429 with Retry-After, 404 NAME_UNKNOWN, ...) the first N times,
  - cut the connection after K bytes of the body the first N times (close, or reset with RST),
  - ignore Range (forward without it, so the registry answers 200 with the whole blob),
  - slow bodies down (a pause before each chunk of 16 KiB), to make downloads overlap or finish in order,
  - drop a response header (Docker-Content-Digest from HEAD answers, say), as some registries do,
  - redirect requests elsewhere (307): a Location ending in /moved/ORIGINAL-PATH on this proxy is
    forwarded to the registry as ORIGINAL-PATH, like a repository moved on the same host.
Faults can be limited to one method (HEAD refused with 405 while GET works).
Every request is recorded (method, path, Range header, whether it carried Authorization, status
answered, bytes sent) so tests can
count them: `proxy.count('GET', '/manifests/')`.

    with FaultProxy('http://127.0.0.1:5000') as proxy:
        proxy.fail('/blobs/', 500, times=2)
        proxy.cut('/blobs/', after=100000, times=1)
        ... docker://127.0.0.1:<proxy.port>/name:tag ...

From the shell (runs until killed, prints its port):  python3 fault_proxy.py UPSTREAM_URL
"""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import ssl
import struct
import sys
import threading
import time
import typing as t
import urllib.parse
from dataclasses import dataclass

from ansible_collections.virt.bootstrap.tests.registry.loopback import LoopbackServer

HOP_BY_HOP = frozenset(('connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer',
                        'transfer-encoding', 'upgrade', 'host'))
CHUNK = 16 * 1024
MOVED = '/moved'


@dataclass
class Seen:
    """One request the proxy answered."""
    method: str
    path: str
    range: t.Optional[str]
    status: int
    sent: int = 0  # body bytes sent to the client
    cut: bool = False
    authorization: bool = False  # whether the request carried an Authorization header


@dataclass
class _Fault:
    path_contains: str
    times: int  # how many more requests it applies to; -1 for always
    status: int = 0
    retry_after: t.Union[int, str, None] = None  # seconds, or an HTTP date
    code: str = 'UNAVAILABLE'
    message: str = 'injected by the fault proxy'
    cut_after: t.Optional[int] = None
    reset: bool = False
    location: t.Optional[str] = None  # redirect to this prefix + the request's path
    method: t.Optional[str] = None  # None: every method

    def applies(self, method: str, path: str) -> bool:
        return self.times != 0 and self.path_contains in path and self.method in (None, method)


class FaultProxy(LoopbackServer):
    NAME = 'fault-proxy'
    POLL_SECONDS = 0.02

    def __init__(self, upstream: str) -> None:
        super().__init__()
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream_scheme = parsed.scheme
        self.upstream_host = parsed.netloc
        self.ignore_range = False
        self.chunk_delay = 0.0
        self.dropped_headers: t.Set[t.Tuple[str, str]] = set()  # (method, lower-case header name)
        self.requests: t.List[Seen] = []
        self._faults: t.List[_Fault] = []
        self._lock = threading.Lock()

    # -- configuration ---------------------------------------------------------------------------

    def fail(self, path_contains: str, status: int, times: int = 1, retry_after: t.Union[int, str, None] = None,
             code: str = 'UNAVAILABLE', method: t.Optional[str] = None,
             message: str = 'injected by the fault proxy') -> None:
        """Answer `status` with a registry error `code` to the next `times` (-1: all) requests for `path_contains`."""
        with self._lock:
            self._faults.append(_Fault(path_contains, times, status=status, retry_after=retry_after, code=code,
                                       message=message, method=method))

    def redirect(self, path_contains: str, location_prefix: str, times: int = -1) -> None:
        """Answer 307 with Location LOCATION_PREFIX + the request's path; LOCATION_PREFIX may be
        `self.moved_prefix` (this proxy, forwarding to the registry) or another server's URL."""
        with self._lock:
            self._faults.append(_Fault(path_contains, times, location=location_prefix))

    @property
    def moved_prefix(self) -> str:
        """http://127.0.0.1:PORT/moved: a redirect there stays on this proxy (the same origin)."""
        return 'http://%s%s' % (self.host, MOVED)

    def drop_header(self, name: str, method: str = 'HEAD') -> None:
        """Leave header `name` out of every answer to `method` requests."""
        with self._lock:
            self.dropped_headers.add((method, name.lower()))

    def cut(self, path_contains: str, after: int, times: int = 1, reset: bool = False) -> None:
        """Send only `after` body bytes, then close (or reset) the connection, `times` times (-1: always)."""
        with self._lock:
            self._faults.append(_Fault(path_contains, times, cut_after=after, reset=reset))

    def clear(self) -> None:
        """Forget the faults and the recorded requests."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.ignore_range = False
            self.chunk_delay = 0.0
            self.dropped_headers.clear()

    # -- what happened ---------------------------------------------------------------------------

    def seen(self, method: t.Optional[str] = None, path_contains: str = '') -> t.List[Seen]:
        with self._lock:
            return [entry for entry in self.requests
                    if (method is None or entry.method == method) and path_contains in entry.path]

    def count(self, method: t.Optional[str] = None, path_contains: str = '') -> int:
        return len(self.seen(method, path_contains))

    # -- running ---------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return '127.0.0.1:%d' % self.port

    def _make_server(self) -> '_Server':
        return _Server(self)

    # -- used by the handler ---------------------------------------------------------------------

    def _take_status_fault(self, method: str, path: str) -> t.Optional[_Fault]:
        return self._take(lambda fault: fault.applies(method, path) and bool(fault.status))

    def _take_redirect(self, method: str, path: str) -> t.Optional[_Fault]:
        return self._take(lambda fault: fault.applies(method, path) and fault.location is not None)

    def _take_cut(self, method: str, path: str, length: t.Optional[int]) -> t.Optional[_Fault]:
        """A cut for a body longer than its limit: a shorter one would arrive whole, and waste the fault."""
        return self._take(lambda fault: fault.applies(method, path) and fault.cut_after is not None
                          and (length is None or length > fault.cut_after))

    def _drops(self, method: str, header: str) -> bool:
        with self._lock:
            return (method, header.lower()) in self.dropped_headers

    def _take(self, wanted: t.Callable[[_Fault], bool]) -> t.Optional[_Fault]:
        with self._lock:
            for fault in self._faults:
                if wanted(fault):
                    if fault.times > 0:
                        fault.times -= 1
                    return fault
        return None

    def _record(self, entry: Seen) -> None:
        with self._lock:
            self.requests.append(entry)

    def _connect(self) -> http.client.HTTPConnection:
        if self.upstream_scheme == 'https':
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(self.upstream_host, timeout=30, context=context)
        return http.client.HTTPConnection(self.upstream_host, timeout=30)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server: '_Server'

    def do_GET(self) -> None:  # pylint: disable=invalid-name
        self._proxy()

    def do_HEAD(self) -> None:  # pylint: disable=invalid-name
        self._proxy()

    def _proxy(self) -> None:
        proxy = self.server.proxy
        self.close_connection = True
        range_header = self.headers.get('Range')
        authorization = 'Authorization' in self.headers
        moved = self.path.startswith(MOVED + '/')
        upstream_path = self.path[len(MOVED):] if moved else self.path
        fault = None if moved else proxy._take_redirect(self.command, self.path)  # pylint: disable=protected-access
        if fault is not None:
            proxy._record(Seen(self.command, self.path, range_header, 307,  # pylint: disable=protected-access
                               authorization=authorization))
            self._redirect(t.cast(str, fault.location) + self.path)
            return
        fault = proxy._take_status_fault(self.command, self.path)  # pylint: disable=protected-access
        if fault is not None:
            proxy._record(Seen(self.command, self.path, range_header, fault.status,  # pylint: disable=protected-access
                               authorization=authorization))
            self._answer_status(fault)
            return
        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
        if proxy.ignore_range:
            headers.pop('Range', None)
        headers['Host'] = proxy.upstream_host
        connection = proxy._connect()  # pylint: disable=protected-access
        try:
            connection.request(self.command, upstream_path, headers=headers)
            response = connection.getresponse()
            # Recorded before the client can see an answer, so a test never looks before it is there.
            entry = Seen(self.command, self.path, range_header, response.status, authorization=authorization)
            proxy._record(entry)  # pylint: disable=protected-access
            length = response.getheader('Content-Length')
            cut = None if self.command == 'HEAD' else proxy._take_cut(  # pylint: disable=protected-access
                self.command, self.path, int(length) if length and length.isdigit() else None)
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP and not proxy._drops(self.command, name):  # pylint: disable=protected-access
                    self.send_header(name, value)
            self.send_header('Connection', 'close')
            self.end_headers()
            if self.command != 'HEAD':
                self._copy_body(response, entry, cut)
        finally:
            connection.close()

    def _redirect(self, location: str) -> None:
        self.send_response(307)
        self.send_header('Location', location)
        self.send_header('Content-Length', '0')
        self.send_header('Connection', 'close')
        self.end_headers()

    def _answer_status(self, fault: _Fault) -> None:
        body = json.dumps({'errors': [{'code': fault.code, 'message': fault.message}]}).encode()
        self.send_response(fault.status)
        if fault.retry_after is not None:
            self.send_header('Retry-After', str(fault.retry_after))
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Connection', 'close')
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def _copy_body(self, response: http.client.HTTPResponse, entry: Seen, fault: t.Optional[_Fault]) -> None:
        limit = fault.cut_after if fault is not None else None
        delay = self.server.proxy.chunk_delay
        while True:
            size = CHUNK if limit is None else min(CHUNK, limit - entry.sent)
            chunk = response.read(size) if size > 0 else b''
            if not chunk:
                break
            if delay:
                time.sleep(delay)
            entry.sent += len(chunk)  # counted first: the client may act on these bytes before we get back here
            self.wfile.write(chunk)
            self.wfile.flush()
        if limit is not None and fault is not None:
            entry.cut = True
            self.wfile.flush()
            if fault.reset:
                time.sleep(0.1)  # let the client read what was sent: an RST makes the kernel drop unread data
                # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            else:
                self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: t.Any) -> None:  # pylint: disable=redefined-builtin
        pass  # requests are recorded in FaultProxy.requests


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: FaultProxy) -> None:
        super().__init__(('127.0.0.1', 0), _Handler)
        self.proxy = proxy


def main(argv: t.Sequence[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write('usage: fault_proxy.py UPSTREAM_URL\n')
        return 2
    proxy = FaultProxy(argv[0]).start()
    sys.stdout.write('%d\n' % proxy.port)
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        proxy.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
