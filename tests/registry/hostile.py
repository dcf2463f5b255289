# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A hostile registry on 127.0.0.1 (test fixture, stdlib only, one thread per request).

It serves the images of an OCI layout over plain HTTP as a registry would (manifests by tag or digest,
blobs, HEAD), and answers any request whose path ends with a given part the way a test says:
a body of hundreds of MB, one that never ends, silence, a trickle, a redirect loop, a challenge
nobody can parse, ... Every request is recorded: `registry.count('GET', '/blobs/')`.

    with HostileRegistry(layout_dir) as registry:
        registry.on('/manifests/latest', endless_body)
        ... docker://127.0.0.1:<registry.port>/app:latest (not_secure: true) ...
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import threading
import time
import typing as t
from dataclasses import dataclass

from ansible_collections.virt.bootstrap.tests.registry.loopback import LoopbackServer

Behaviour = t.Callable[['_Handler'], None]
REF_NAME = 'org.opencontainers.image.ref.name'
OCI_INDEX = 'application/vnd.oci.image.index.v1+json'


@dataclass
class Seen:
    method: str
    path: str
    authorization: t.Optional[str]


class HostileRegistry(LoopbackServer):
    NAME = 'hostile-registry'

    def __init__(self, layout: str, address: str = '127.0.0.1') -> None:
        super().__init__()
        self.layout = layout
        self.address = address
        self.behaviours: t.List[t.Tuple[str, str, Behaviour]] = []
        self.seen: t.List[Seen] = []
        # Body bytes that behaviours sending endless or huge bodies got into the socket before the client quit.
        self.body_bytes_sent: t.List[int] = []
        self._lock = threading.Lock()
        # Set by stop(): behaviours that hold a connection open give up, so the server can shut down.
        self.stopping = threading.Event()

    @property
    def host(self) -> str:
        return '%s:%d' % (self.address, self.port)

    def ref(self, name_and_tag: str) -> str:
        return 'docker://%s/%s' % (self.host, name_and_tag)

    def on(self, part: str, behaviour: Behaviour, method: str = '') -> None:
        """Answer requests whose path holds `part` (and whose method is `method`, when given)."""
        self.behaviours.append((part, method, behaviour))

    def count(self, method: str, part: str) -> int:
        with self._lock:
            return sum(1 for seen in self.seen if seen.method == method and part in seen.path)

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def stop(self) -> None:
        self.stopping.set()
        super().stop()

    def _make_server(self) -> http.server.ThreadingHTTPServer:
        registry = self

        class Handler(_Handler):
            pass

        Handler.registry = registry
        server = http.server.ThreadingHTTPServer((self.address, 0), Handler)
        server.daemon_threads = True
        return server

    # -- what a well-behaved registry answers ------------------------------------------------------

    def blob(self, digest: str) -> t.Optional[bytes]:
        algorithm, _sep, hexdigest = digest.partition(':')
        path = os.path.join(self.layout, 'blobs', algorithm, hexdigest)
        if '/' in digest or not os.path.isfile(path):
            return None
        with open(path, 'rb') as stream:
            return stream.read()

    def manifest(self, reference: str) -> t.Optional[t.Tuple[bytes, str]]:
        with open(os.path.join(self.layout, 'index.json'), 'rb') as stream:
            index = json.load(stream)
        for entry in index['manifests']:
            if reference in (entry['digest'], entry.get('annotations', {}).get(REF_NAME)):
                body = self.blob(entry['digest'])
                return (body, entry['mediaType']) if body is not None else None
        return None


class _Handler(http.server.BaseHTTPRequestHandler):
    registry: HostileRegistry
    protocol_version = 'HTTP/1.1'

    def log_message(self, format: str, *args: t.Any) -> None:  # noqa: A002  (quiet in tests)
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def _answer(self) -> None:
        self.registry.record(Seen(self.command, self.path, self.headers.get('Authorization')))
        for part, method, behaviour in self.registry.behaviours:
            if part in self.path.split('?')[0] and method in ('', self.command):
                behaviour(self)
                return
        self.serve_normally()

    def serve_normally(self) -> None:
        path = self.path.split('?')[0]
        if path == '/v2/':
            self.send_body(b'{}', 'application/json')
            return
        parts = path.split('/')
        # /v2/NAME/manifests/REF or /v2/NAME/blobs/DIGEST
        if len(parts) >= 5 and parts[-2] == 'manifests':
            found = self.registry.manifest(parts[-1])
            if found is not None:
                body, media_type = found
                self.send_body(body, media_type, {'Docker-Content-Digest': 'sha256:' + hashlib.sha256(body).hexdigest()})
                return
        if len(parts) >= 5 and parts[-2] == 'blobs':
            body = self.registry.blob(parts[-1])
            if body is not None:
                self.send_body(body, 'application/octet-stream')
                return
        self.send_body(b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}', 'application/json',
                       status=404)

    def send_body(self, body: bytes, content_type: str, headers: t.Optional[t.Mapping[str, str]] = None,
                  status: int = 200) -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def wait(self, seconds: float) -> bool:
        """Sleep, unless the server is stopping; whether it is."""
        return self.registry.stopping.wait(seconds)


# -- behaviours ------------------------------------------------------------------------------------


def json_body(body: bytes, content_type: str = 'application/vnd.oci.image.manifest.v1+json') -> Behaviour:
    """Answer 200 with this body (and no digest header: the client hashes it itself)."""
    def answer(handler: _Handler) -> None:
        handler.send_body(body, content_type)
    return answer


def huge_body(size: int, content_type: str = 'application/vnd.oci.image.manifest.v1+json') -> Behaviour:
    """A body of `size` bytes of JSON-looking filler, announced with its Content-Length."""
    def answer(handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header('Content-Type', content_type)
        handler.send_header('Content-Length', str(size))
        handler.end_headers()
        chunk = b' ' * (1 << 16)
        sent = 0
        try:
            handler.wfile.write(b'{"a":"')
            while sent < size and not handler.registry.stopping.is_set():
                handler.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the client stopped reading: what it should do
        handler.registry.body_bytes_sent.append(sent)
    return answer


def endless_body(handler: _Handler) -> None:
    """A chunked body that never ends."""
    handler.send_response(200)
    handler.send_header('Content-Type', 'application/vnd.oci.image.manifest.v1+json')
    handler.send_header('Transfer-Encoding', 'chunked')
    handler.end_headers()
    chunk = b' ' * (1 << 16)
    framed = b'%x\r\n%s\r\n' % (len(chunk), chunk)
    sent = 0
    try:
        handler.wfile.write(b'6\r\n{"a":"\r\n')
        while not handler.registry.stopping.is_set():
            handler.wfile.write(framed)
            sent += len(chunk)
    except OSError:
        pass
    handler.registry.body_bytes_sent.append(sent)


def silence(handler: _Handler) -> None:
    """Accept the request and never answer (until the server stops)."""
    handler.wait(3600)
    handler.close_connection = True


def headers_then_silence(handler: _Handler) -> None:
    """Announce a body, then send nothing of it."""
    handler.send_response(200)
    handler.send_header('Content-Type', 'application/octet-stream')
    handler.send_header('Content-Length', '1000000')
    handler.end_headers()
    handler.wfile.flush()
    handler.wait(3600)
    handler.close_connection = True


def trickle(interval: float, content_type: str = 'application/octet-stream') -> Behaviour:
    """Send the real answer one byte every `interval` seconds: never silent for long, never done."""
    def answer(handler: _Handler) -> None:
        parts = handler.path.split('?')[0].split('/')
        body = handler.registry.blob(parts[-1]) if parts[-2] == 'blobs' else None
        if body is None:
            found = handler.registry.manifest(parts[-1])
            body = found[0] if found else b'{}'
        handler.send_response(200)
        handler.send_header('Content-Type', content_type)
        handler.send_header('Content-Length', str(len(body)))
        handler.end_headers()
        try:
            for offset in range(len(body)):
                handler.wfile.write(body[offset:offset + 1])
                handler.wfile.flush()
                if handler.wait(interval):
                    break
        except OSError:
            pass
        handler.close_connection = True
    return answer


def slow_headers(interval: float) -> Behaviour:
    """A status line and then one header byte every `interval` seconds, never ending the headers."""
    def answer(handler: _Handler) -> None:
        try:
            handler.wfile.write(b'HTTP/1.1 200 OK\r\nX-Padding: ')
            handler.wfile.flush()
            while not handler.wait(interval):
                handler.wfile.write(b'a')
                handler.wfile.flush()
        except OSError:
            pass
        handler.close_connection = True
    return answer


def redirect(location: t.Callable[[_Handler], str], status: int = 307) -> Behaviour:
    """Redirect to the URL `location` makes of the request."""
    def answer(handler: _Handler) -> None:
        handler.send_response(status)
        handler.send_header('Location', location(handler))
        handler.send_header('Content-Length', '0')
        handler.end_headers()
    return answer


def status(code: int, headers: t.Optional[t.Mapping[str, str]] = None) -> Behaviour:
    """Answer `code` with these headers and an empty body."""
    def answer(handler: _Handler) -> None:
        handler.send_body(b'', 'application/json', headers, status=code)
    return answer


def challenge(header: str, status: int = 401) -> Behaviour:  # pylint: disable=redefined-outer-name
    """Answer 401 with this WWW-Authenticate header (no token ever accepted)."""
    def answer(handler: _Handler) -> None:
        handler.send_response(status)
        handler.send_header('WWW-Authenticate', header)
        handler.send_header('Content-Length', '0')
        handler.end_headers()
    return answer


def challenge_unless_authorized(header: str) -> Behaviour:
    """A registry behind a token service: 401 with `header` without Authorization, the real answer with it."""
    def answer(handler: _Handler) -> None:
        if handler.headers.get('Authorization'):
            handler.serve_normally()
        else:
            challenge(header)(handler)
    return answer


def token(value: str = 'a-token') -> Behaviour:
    """A token service that gives out a token to anyone."""
    def answer(handler: _Handler) -> None:
        handler.send_body(json.dumps({'token': value}).encode(), 'application/json')
    return answer


def once(behaviour: Behaviour) -> Behaviour:
    """`behaviour` for the first matching request, the normal answer after."""
    used = threading.Event()

    def answer(handler: _Handler) -> None:
        if used.is_set():
            handler.serve_normally()
        else:
            used.set()
            behaviour(handler)
    return answer


def reset(handler: _Handler) -> None:
    """Close the connection without an answer."""
    handler.close_connection = True
    try:
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def elapsed(function: t.Callable[[], t.Any]) -> t.Tuple[float, t.Optional[BaseException]]:
    """How long `function` took, and what it raised."""
    started = time.monotonic()
    try:
        function()
    except BaseException as exc:  # the tests look at it  # pylint: disable=broad-except
        return time.monotonic() - started, exc
    return time.monotonic() - started, None
