# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""A client for the OCI distribution API: auth challenges, manifests, and blobs with retries and resume."""

from __future__ import annotations

import base64
import contextlib
import datetime
import email.utils
import http.client
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
import typing as t
import urllib.error
import urllib.parse
import urllib.request

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._image import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_METADATA_SIZE,
    SCHEMA1_MEDIA_TYPES,
    is_digest,
    new_hasher,
    parse_json,
    parse_json_object,
    sha256_digest,
    verify_digest,
)
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.auth import AuthError, Credentials, parse_challenge
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.reference import ImageReference

MANIFEST_ACCEPT = ', '.join(sorted(INDEX_MEDIA_TYPES | MANIFEST_MEDIA_TYPES))
USER_AGENT = 'virt.bootstrap'
_RETRY_STATUS = frozenset((408, 429, 500, 502, 503, 504))
# A HEAD answered with these is asked again as a GET, whose error body (HEAD has none) says what is wrong.
_HEAD_REFUSED = frozenset((400, 403, 404, 405, 406, 501))
# The longest back-off between two tries, and the longest wait a Retry-After header is granted: a registry
# that asks for longer (Docker Hub's rate limit asks for hours) is given up on at once, with its reason.
MAX_BACKOFF = 30.0
MAX_RETRY_AFTER = 60.0
# How much of a registry's own explanation of an error goes into a message: errors, characters of each.
_EXPLAINED_ERRORS = 3
_EXPLANATION_LENGTH = 300
_TRANSIENT_ERRORS = (ConnectionError, socket.timeout, http.client.IncompleteRead, http.client.RemoteDisconnected,
                     http.client.BadStatusLine, TimeoutError)


class RegistryError(SourceError):
    """The registry could not be reached or refused a request."""


class _SameOriginAuth(urllib.request.HTTPRedirectHandler):
    """Follow redirects (blob storage often lives elsewhere); credentials go along only to the same origin.

    The same origin is the same scheme, host and port, as for docker and browsers: a registry that moves a
    repository on its own host keeps working, a storage service elsewhere never sees the registry's login.
    """

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        # urllib would follow ftp:// too; a registry's answers only ever live on HTTP(S).
        refusal = _unfollowed_redirect(req.full_url, newurl)
        if refusal is not None:
            fp.close()
            raise refusal
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            for name in list(new.headers):
                if name.lower() == 'authorization':
                    del new.headers[name]
            authorization = req.unredirected_hdrs.get('Authorization')
            origin = _origin(req.full_url)
            if authorization and origin is not None and origin == _origin(new.full_url):
                new.add_unredirected_header('Authorization', authorization)
        return new


def _unfollowed_redirect(url: str, location: str) -> t.Optional['RegistryError']:
    """The error for a redirect of `url` to `location` that is not followed (not HTTP(S)), or None."""
    scheme = urllib.parse.urlsplit(urllib.parse.urljoin(url, location)).scheme.lower()
    if scheme in ('http', 'https'):
        return None
    return RegistryError('%s redirected a request to a %s URL, which is not followed'
                         % (urllib.parse.urlsplit(url).netloc, scheme or 'scheme-less'))


def _origin(url: str) -> t.Optional[t.Tuple[str, str, t.Optional[int]]]:
    """(scheme, host, port) of a URL, the port made explicit; None for a URL with a malformed port."""
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    try:
        port = parsed.port or {'https': 443, 'http': 80}.get(scheme)
    except ValueError:
        return None
    return scheme, (parsed.hostname or '').lower(), port


# A blob download that brings less than this in `timeout` seconds is stalled: the attempt is given up and
# resumed. (A trickle resets a socket timeout with every byte; this rule it does not.)
STALL_BYTES = 64 << 10
_watching = threading.local()


class _Deadline:
    """Time for one exchange with a server: when it is up, the sockets opened for it are shut down.

    The sockets are those connected in this thread while the deadline is the current one (see
    _WatchedConnection), so a server that trickles its headers or body cannot hold a run for ever.
    `extend()` starts the time again (a download that makes progress).
    """

    def __init__(self, seconds: float, active: t.Optional[t.Set['_Deadline']] = None,
                 stopping: t.Optional[threading.Event] = None) -> None:
        self.seconds = seconds
        # The set of deadlines in progress this one joins while it runs, and the event that ends them all
        # (see RegistryClient.stop).
        self._active = active
        self._stopping = stopping
        self.expired = False
        self._left = seconds  # while the clock is stopped
        self._due: t.Optional[float] = None  # the monotonic time it is up, while the clock runs
        self._sockets: t.List[socket.socket] = []
        self._lock = threading.Lock()
        self._clock = threading.Lock()  # _due, _left and _timer
        self._timer: t.Optional[threading.Timer] = None
        self._outer: t.Optional[_Deadline] = None

    def __enter__(self) -> '_Deadline':
        self._outer = getattr(_watching, 'deadline', None)
        _watching.deadline = self
        if self._active is not None:
            self._active.add(self)
        self.extend()
        if self._stopping is not None and self._stopping.is_set():  # stop() came before we joined the set
            self.expire()
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        with self._clock:
            self._due = None
            self._disarm()
        if self._active is not None:
            self._active.discard(self)
        _watching.deadline = self._outer

    def extend(self) -> None:
        """All the time again (a download that makes progress).

        Called for every bit of progress: it only moves the due time. The timer armed already fires at
        the old one and arms itself again for what is left (one thread per timeout, not per call).
        """
        with self._clock:
            self._left = self.seconds
            if self._due is not None:
                self._due = time.monotonic() + self.seconds
            else:
                self._start()

    def pause(self) -> None:
        """Stop the clock (while waiting to retry: the registry's Retry-After is not its slowness)."""
        with self._clock:
            if self._due is not None:
                self._left = self._due - time.monotonic()
                self._due = None
                self._disarm()

    def resume(self) -> None:
        with self._clock:
            self._disarm()
            self._start()

    def _start(self) -> None:
        self._due = time.monotonic() + self._left
        self._arm(self._left)

    def _arm(self, seconds: float) -> None:
        self._timer = threading.Timer(max(seconds, 0.0), self._ring)
        self._timer.daemon = True
        self._timer.start()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _ring(self) -> None:
        with self._clock:
            if self._due is None or threading.current_thread() is not self._timer:
                return  # stopped, or armed again, since this timer was set
            left = self._due - time.monotonic()
            if left > 0:
                self._arm(left)
                return
            self._timer = None
        self.expire()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut_down(sock)

    def expire(self) -> None:
        """Time is up (or the run is ending): shut the exchange's sockets down, now and when they connect."""
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for a TLS socket: it wakes a reader blocked in another thread and
    # leaves the TLS state to that reader (SSLSocket.shutdown would drop it under its feet).
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _WatchedConnection:
    """Mixed into http.client's connections: the socket joins the thread's current deadline, if any."""

    sock: t.Any

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        deadline = getattr(_watching, 'deadline', None)
        if deadline is not None:
            deadline.watch(self.sock)


class _WatchedHTTPConnection(_WatchedConnection, http.client.HTTPConnection):
    pass


class _WatchedHTTPSConnection(http.client.HTTPSConnection):
    """The plain socket is watched before the TLS handshake, which a server can trickle too."""

    sock: t.Any

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # TCP, and a proxy's CONNECT tunnel
        deadline = getattr(_watching, 'deadline', None)
        if deadline is not None:
            deadline.watch(self.sock)
        # As HTTPSConnection.connect does after its own HTTPConnection.connect (Python 3.9 to 3.13).
        server_hostname = self._tunnel_host or self.host  # type: ignore[attr-defined]
        self.sock = self._context.wrap_socket(self.sock, server_hostname=server_hostname)  # type: ignore[attr-defined]
        if deadline is not None:
            deadline.watch(self.sock)


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):  # type: ignore[no-untyped-def]
        return self.do_open(_WatchedHTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._tls_context = context

    def https_open(self, req):  # type: ignore[no-untyped-def]
        return self.do_open(_WatchedHTTPSConnection, req, context=self._tls_context)


class RegistryClient:
    """Talks to one repository of one registry; remembers the scheme and the token that worked."""

    def __init__(self, reference: ImageReference, credentials: t.Optional[Credentials] = None,
                 not_secure: bool = False, ca_path: t.Optional[str] = None, timeout: float = 60.0,
                 retries: int = 5, backoff: float = 0.5) -> None:
        self.reference = reference
        self._credentials = credentials
        self._not_secure = not_secure
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._scheme = 'https'
        self._stopping = threading.Event()
        self._deadlines: t.Set[_Deadline] = set()
        self._authorization: t.Optional[str] = None
        # The token service the credentials were not sent to (on another site than the registry), if any.
        self._withheld_from: t.Optional[str] = None
        if not_secure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            try:
                context = ssl.create_default_context(cafile=ca_path)
            except (OSError, ssl.SSLError) as exc:
                raise RegistryError('ca_path %s cannot be used: %s' % (ca_path, exc))
        # As urllib reads them: https_proxy, http_proxy (lower case first, then upper case); no_proxy is
        # consulted for each request. Only a proxy URL's own user:password@ becomes Proxy-Authorization.
        self._proxies = urllib.request.getproxies()
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler(self._proxies), _HTTPHandler(),
                                                   _HTTPSHandler(context), _SameOriginAuth())

    @property
    def host(self) -> str:
        return self.reference.api_host

    # -- manifests -------------------------------------------------------------------------------

    def get_manifest(self, reference: str) -> t.Tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest or index, by tag or digest."""
        body, headers = self._get_whole('manifests/%s' % reference, {'Accept': MANIFEST_ACCEPT}, MAX_METADATA_SIZE)
        header_type = (headers.get('Content-Type') or '').split(';')[0].strip()
        served_digest = headers.get('Docker-Content-Digest')
        what = '%s: the manifest for %s' % (self.host, reference)
        if len(body) > MAX_METADATA_SIZE:
            raise RegistryError('%s is larger than %d bytes' % (what, MAX_METADATA_SIZE))
        media_type = parse_json_object(body, what).get('mediaType') or header_type
        if not isinstance(media_type, str):
            raise RegistryError('%s has media type %r, not a string' % (what, media_type))
        if media_type in SCHEMA1_MEDIA_TYPES or header_type in SCHEMA1_MEDIA_TYPES:
            raise RegistryError('%s serves %s as a Docker schema 1 manifest, which is not supported; push it again '
                                'with a current tool (skopeo copy --format v2s2)' % (self.host, reference))
        digest = sha256_digest(body)
        if ':' in reference:  # a digest; tags cannot hold ':' (but may start with 'sha')
            verify_digest(_rehash(body, reference), reference, '%s: manifest' % self.host)
            digest = reference
        elif served_digest and served_digest.startswith('sha256:') and served_digest != digest:
            raise RegistryError('%s: the manifest for %s hashes to %s but the registry says %s'
                                % (self.host, reference, digest, served_digest))
        return body, media_type, digest

    def head_manifest(self, reference: str) -> t.Optional[t.Tuple[str, str]]:
        """(digest, media type) of what `reference` names, from a HEAD request: registries count a manifest GET
        as a pull (Docker Hub against its rate limit), a HEAD not. None when the registry refuses HEAD or
        gives no digest: then only a GET can tell."""
        with self._within_timeout('the manifest for %s' % reference):
            response = self._request('HEAD', 'manifests/%s' % reference, {'Accept': MANIFEST_ACCEPT},
                                     give_up_on=_HEAD_REFUSED)
            if response is None:
                return None
            with response:
                digest = response.headers.get('Docker-Content-Digest') or ''
                media_type = (response.headers.get('Content-Type') or '').split(';')[0].strip()
        return (digest, media_type) if is_digest(digest) else None

    def get_small_blob(self, digest: str, limit: int = MAX_METADATA_SIZE) -> bytes:
        """A config blob, read whole and verified."""
        body = self._get_whole('blobs/%s' % digest, {}, limit)[0]
        if len(body) > limit:
            raise RegistryError('%s: blob %s is larger than %d bytes' % (self.host, digest, limit))
        verify_digest(_rehash(body, digest), digest, '%s: blob' % self.host)
        return body

    # -- blobs -----------------------------------------------------------------------------------

    def download_blob(self, digest: str, write: t.Callable[[bytes], None], offset: int = 0,
                      cancelled: t.Callable[[], bool] = lambda: False) -> int:
        """Stream a blob to `write` from `offset` on, resuming with Range after connection loss.

        Returns the total size. Bytes before `offset` are never passed to `write` again, even when the
        registry ignores Range and sends the blob from its start.
        """
        failures = 0
        offset_at_failure = offset
        stalled = 'less than %d KiB in %s s (timeout)' % (STALL_BYTES >> 10, _seconds(self._timeout))

        def count_failure(problem: str) -> None:
            nonlocal failures, offset_at_failure
            # Only failures in a row count: a long download over a flaky link still moves on. After a stall,
            # only real progress (STALL_BYTES) starts the count again: a trickle must not go on for ever.
            progress_needed = STALL_BYTES if problem == stalled else 1
            failures = 1 if offset - offset_at_failure >= progress_needed else failures + 1
            offset_at_failure = offset
            if failures > self._retries:
                raise RegistryError('%s: downloading %s failed %d times in a row at byte %d, last: %s'
                                    % (self.host, digest, failures, offset, problem))

        while True:
            if cancelled():
                raise BootstrapError('download of %s cancelled' % digest)
            headers = {'Range': 'bytes=%d-' % offset} if offset else {}
            # Connecting, auth and 429/5xx answers are retried inside _request; here a lost connection
            # in the middle of the body is resumed from the last byte written.
            with self._deadline() as deadline, self._request('GET', 'blobs/%s' % digest, headers) as response:
                progress_mark = offset
                skip = 0
                length = response.headers.get('Content-Length')
                expected_end = int(length) if length and length.isdigit() else None
                if expected_end is not None and response.status == 206:
                    expected_end += offset
                if offset and response.status == 206:
                    if _content_range_start(response.headers.get('Content-Range')) not in (None, offset):
                        raise RegistryError('%s answered a Range request for %s with the wrong range'
                                            % (self.host, digest))
                elif offset:
                    skip = offset  # the whole blob again: drop what we already have
                while True:
                    if cancelled():
                        raise BootstrapError('download of %s cancelled' % digest)
                    try:
                        # read1: what has arrived, at once. read() would wait for a full chunk, and a reset
                        # while it waits would lose the bytes it already took from the socket.
                        chunk = response.read1(1 << 20)
                    except _TRANSIENT_ERRORS + (OSError, http.client.HTTPException) as exc:
                        count_failure(stalled if deadline.expired else _reason(exc))
                        break
                    if not chunk:
                        if deadline.expired:  # the socket was shut down: the end of the body it seems is not one
                            count_failure(stalled)
                            break
                        if expected_end is None or offset >= expected_end:
                            return offset
                        # http.client ends quietly when a connection closes early.
                        count_failure('the connection closed at byte %d of %d' % (offset, expected_end))
                        break
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk, skip = chunk[dropped:], skip - dropped
                    if chunk:
                        write(chunk)
                        offset += len(chunk)
                        if offset - progress_mark >= STALL_BYTES:
                            deadline.extend()
                            progress_mark = offset
            self._sleep(failures, None)

    # -- requests, auth and retries ---------------------------------------------------------------

    def _url(self, path: str) -> str:
        return '%s://%s/v2/%s/%s' % (self._scheme, self.host, self.reference.repository, path)

    def _get_whole(self, path: str, headers: t.Dict[str, str], limit: int) -> t.Tuple[bytes, t.Any]:
        """(body, headers) of a small document; one cut short by a lost connection is asked for again.

        All of it, retries included, must arrive within the timeout.
        """
        with self._within_timeout(path):
            return self._get_whole_in_time(path, headers, limit)

    def _get_whole_in_time(self, path: str, headers: t.Dict[str, str], limit: int) -> t.Tuple[bytes, t.Any]:
        failures = 0
        while True:
            with self._request('GET', path, headers) as response:
                length = response.headers.get('Content-Length')
                problem = None
                try:
                    body = response.read(limit + 1)
                except _TRANSIENT_ERRORS + (OSError, http.client.HTTPException) as exc:
                    body, problem = b'', _reason(exc)
                # http.client ends quietly when a connection closes early.
                if problem is None and length and length.isdigit() and len(body) < min(int(length), limit + 1):
                    problem = 'the connection closed after %d of %s bytes' % (len(body), length)
                response_headers = response.headers
            if problem is None:
                return body, response_headers
            failures += 1
            if failures > self._retries:
                raise RegistryError('%s: reading %s failed %d times, last: %s' % (self.host, path, failures, problem))
            self._sleep(failures, None)

    def _request(self, method: str, path: str, headers: t.Dict[str, str], retry: bool = True,
                 give_up_on: t.AbstractSet[int] = frozenset()) -> t.Any:
        """Send a request, answering auth challenges and retrying 429/5xx and lost connections.

        An answer with a status in `give_up_on` returns None instead of raising.
        """
        failures = 0
        challenged = False
        while True:
            try:
                return self._send(method, self._url(path), headers, self._authorization)
            except urllib.error.HTTPError as exc:
                if exc.code in give_up_on:
                    exc.close()
                    return None
                if exc.code == 401 and not challenged:
                    challenged = True
                    self._answer_challenge(exc.headers.get('WWW-Authenticate') or '')
                    exc.close()
                    continue
                if exc.code in _RETRY_STATUS and failures < self._retries:
                    wait = _retry_after_seconds(exc.headers.get('Retry-After'))
                    if wait is None or wait <= MAX_RETRY_AFTER:
                        failures += 1
                        exc.close()
                        self._sleep(failures, wait)
                        continue
                    raise self._http_error(exc, path, '; it asks to wait %d s before trying again' % wait)
                raise self._http_error(exc, path)
            except urllib.error.URLError as exc:
                if self._switch_to_http(exc):
                    continue
                if not retry or not _is_transient(exc) or failures >= self._retries:
                    raise self._connection_error(exc, self._url(path))
                failures += 1
                self._sleep(failures, None)
            except _TRANSIENT_ERRORS as exc:
                if not retry or failures >= self._retries:
                    raise RegistryError('%s: connection lost: %s' % (self.host, _reason(exc)))
                failures += 1
                self._sleep(failures, None)

    def _send(self, method: str, url: str, headers: t.Dict[str, str], authorization: t.Optional[str],
              data: t.Optional[bytes] = None) -> t.Any:
        request = urllib.request.Request(url, data=data, method=method,
                                         headers=dict(headers, **{'User-Agent': USER_AGENT}))
        if authorization:
            request.add_unredirected_header('Authorization', authorization)
        try:
            return self._opener.open(request, timeout=self._timeout)
        except _TRANSIENT_ERRORS:
            raise
        except http.client.HTTPException as exc:
            # A header line over 64 KiB, more than 100 headers, ...: http.client's words name no content.
            raise RegistryError('%s: %s answered with a malformed HTTP response (%s)'
                                % (self.host, urllib.parse.urlsplit(url).netloc, str(exc)[:100] or type(exc).__name__))
        except ValueError as exc:
            # A malformed proxy URL, redirect or header. urllib's words are never repeated: they would quote a
            # proxy URL with its password, or a header with its token.
            parsed = urllib.parse.urlsplit(url)
            if self._proxy_for(url) is not None:
                raise RegistryError('the proxy for %s (%s_proxy) is not a valid URL' % (parsed.netloc, parsed.scheme))
            raise RegistryError('%s: a request to %s could not be made (%s)' % (self.host, parsed.netloc,
                                                                                type(exc).__name__))

    def _proxy_for(self, url: str) -> t.Optional[str]:
        """HOST:PORT of the proxy a request for `url` goes through (never its user:password), or None."""
        parsed = urllib.parse.urlsplit(url)
        proxy = self._proxies.get(parsed.scheme)
        if not proxy or urllib.request.proxy_bypass(parsed.netloc):
            return None
        after_scheme = proxy.partition('://')[2] or proxy
        return after_scheme.split('/', 1)[0].rpartition('@')[2]

    def _answer_challenge(self, header: str) -> None:
        scheme, params = parse_challenge(header)
        if scheme == 'basic':
            if self._credentials is None:
                raise AuthError('%s requires a login for %s: give username and password, or an auth file'
                                % (self.host, self.reference.repository))
            if self._credentials.identity_token and not self._credentials.password:
                raise AuthError('%s asks for a user name and password, but %s holds only an identity token for it, '
                                'which only a token service takes' % (self.host, self._credentials.origin))
            self._authorization = 'Basic ' + _basic_token(self._credentials)
        elif scheme == 'bearer' and params.get('realm'):
            self._authorization = 'Bearer ' + self._fetch_token(params)
        elif scheme == 'bearer':
            raise RegistryError('%s asks for a bearer token but names no token service (realm) in its challenge'
                                % self.host)
        else:
            raise RegistryError('%s asks for an authentication scheme this client does not speak (%s)'
                                % (self.host, scheme or 'none'))

    def _fetch_token(self, params: t.Dict[str, str]) -> str:
        """A bearer token from the realm: GET with basic credentials (or none), or, for an identity token,
        POST of an OAuth2 refresh_token grant, as docker and containers/image do."""
        query = {'scope': params.get('scope') or 'repository:%s:pull' % self.reference.repository}
        if params.get('service'):
            query['service'] = params['service']
        realm = params['realm']
        parsed = urllib.parse.urlsplit(realm)
        if parsed.scheme not in ('https', 'http'):
            raise RegistryError('%s names a token service that is not http(s)' % self.host)
        credentials = self._credentials
        if credentials is not None and not _same_site(self.host, parsed.hostname or ''):
            # A registry may send its login to any URL it names; only its own site gets it (auth.docker.io for
            # registry-1.docker.io, gitlab.com for registry.gitlab.com). Elsewhere the token is asked for
            # anonymously, which is enough for public images.
            self._withheld_from = parsed.netloc.rpartition('@')[2]
            credentials = None
        # Credentials go in the clear only where the user accepted plain HTTP (not_secure), or where the
        # registry itself is spoken to in the clear anyway.
        if parsed.scheme == 'http' and credentials is not None and not (self._not_secure or self._scheme == 'http'):
            raise RegistryError('%s names a token service over plain HTTP (http://%s): the credentials from %s are '
                                'not sent unencrypted; set not_secure: true to allow it'
                                % (self.host, parsed.netloc.rpartition('@')[2], credentials.origin))
        identity_token = credentials.identity_token if credentials is not None else None
        with self._within_timeout('the token from %s' % parsed.netloc.rpartition('@')[2]):
            return self._ask_token_service(realm, query, credentials, identity_token)

    def _ask_token_service(self, realm: str, query: t.Dict[str, str], credentials: t.Optional[Credentials],
                           identity_token: t.Optional[str]) -> str:
        try:
            if identity_token:
                form = dict(query, grant_type='refresh_token', refresh_token=identity_token, client_id=USER_AGENT)
                response = self._send('POST', realm, {'Content-Type': 'application/x-www-form-urlencoded'}, None,
                                      data=urllib.parse.urlencode(form).encode('ascii'))
            else:
                authorization = 'Basic ' + _basic_token(credentials) if credentials is not None else None
                url = realm + ('&' if '?' in realm else '?') + urllib.parse.urlencode(query)
                response = self._send('GET', url, {}, authorization)
            with response:
                answer = parse_json(response.read(1 << 20), 'the answer of the token service of %s' % self.host)
        except urllib.error.HTTPError as exc:
            # An OAuth2 server answers a refresh token it does not take with 400 invalid_grant.
            if exc.code in (401, 403) or (exc.code == 400 and identity_token):
                raise self._refused()
            explanation = self._explain(_registry_errors(exc))
            raise RegistryError('the token service of %s answered HTTP %d%s' % (
                self.host, exc.code, ' (%s)' % explanation if explanation else ''))
        except urllib.error.URLError as exc:
            raise self._connection_error(exc, realm, 'the token service of %s' % self.host)
        except SourceError:
            raise RegistryError('the token service of %s did not answer with JSON' % self.host)
        token = answer.get('token') or answer.get('access_token') if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError('the token service of %s gave no token' % self.host)
        return token

    def _switch_to_http(self, exc: urllib.error.URLError) -> bool:
        """With not_secure, a registry that only speaks plain HTTP is used over HTTP."""
        if not self._not_secure or self._scheme != 'https' or not isinstance(exc.reason, ssl.SSLError):
            return False
        self._scheme = 'http'
        return True

    def _refused(self, token_denied: bool = False) -> AuthError:
        """Credentials refused; or, with `token_denied`, accepted by the token service for a token that is denied."""
        if self._credentials is not None and self._withheld_from is not None:
            return AuthError('%s refused access to %s with an anonymous token: its token service %s is on another site, '
                             'so the credentials from %s were not sent there'
                             % (self.host, self.reference.repository, self._withheld_from, self._credentials.origin))
        if self._credentials is None:
            return AuthError('%s refused anonymous access to %s: it needs a login (username and password, or an '
                             'auth file), or does not exist' % (self.host, self.reference.repository))
        if token_denied:
            return AuthError('%s denied the credentials from %s access to %s: they may not allow pulling it, or it '
                             'does not exist' % (self.host, self._credentials.origin, self.reference.repository))
        return AuthError('%s refused the credentials from %s for %s' % (self.host, self._credentials.origin,
                                                                        self.reference.repository))

    def _http_error(self, exc: urllib.error.HTTPError, path: str, postscript: str = '') -> BootstrapError:
        errors = _registry_errors(exc)
        exc.close()
        codes = [code for code, _message in errors]
        if exc.code == 407:
            return RegistryError('the proxy %s asks for a login (HTTP 407) to reach %s: give it in the proxy URL, '
                                 'http://USER:PASSWORD@HOST:PORT' % (self._proxy_for(self._url(path)), self.host))
        if exc.code == 401 or exc.code == 403 and 'DENIED' in codes:
            return self._refused(token_denied=(self._authorization or '').startswith('Bearer '))
        if exc.code == 404 or 'MANIFEST_UNKNOWN' in codes or 'NAME_UNKNOWN' in codes:
            if path.startswith('manifests/') and 'NAME_UNKNOWN' in codes:
                return RegistryError('%s has no repository %s' % (self.host, self.reference.repository))
            if path.startswith('manifests/'):
                wanted = path[len('manifests/'):]
                return RegistryError('%s has no image %s%s%s' % (self.host, self.reference.repository,
                                                                 '@' if ':' in wanted else ':', wanted))
            return RegistryError('%s has no blob %s in %s' % (self.host, path[len('blobs/'):],
                                                              self.reference.repository))
        if 300 <= exc.code < 400:
            # urllib refuses a redirect to file: and other schemes, and gives up on a loop or after 10 redirects.
            refusal = _unfollowed_redirect(self._url(path), exc.headers.get('Location') or '')
            if refusal is not None:
                return refusal
            return RegistryError('%s redirected %s in a loop or too many times (HTTP %d)' % (self.host, path, exc.code))
        explanation = self._explain(errors)
        return RegistryError('%s answered HTTP %d for %s%s%s' % (self.host, exc.code, path,
                                                                 ' (%s)' % explanation if explanation else '',
                                                                 postscript))

    def _explain(self, errors: t.Sequence[t.Tuple[str, str]]) -> str:
        """The registry's own words on an error ("TOOMANYREQUESTS: You have reached your pull rate limit..."),
        bounded, printable, and without any secret of ours it may have echoed."""
        parts = []
        for code, message in errors[:_EXPLAINED_ERRORS]:
            text = '%s: %s' % (code, message) if code and message else code or message
            for secret in self._secrets():  # before cutting, which could leave half a secret
                text = text.replace(secret, '***')
            text = ''.join(char if char.isprintable() else ' ' for char in text)
            if len(text) > _EXPLANATION_LENGTH:
                text = text[:_EXPLANATION_LENGTH - 3] + '...'
            parts.append(text)
        return '; '.join(parts)

    def _secrets(self) -> t.List[str]:
        secrets = [self._authorization.partition(' ')[2]] if self._authorization else []
        if self._credentials is not None:
            secrets.extend((self._credentials.password, self._credentials.identity_token or ''))
        return [secret for secret in secrets if secret]

    def _connection_error(self, exc: urllib.error.URLError, url: str, what: t.Optional[str] = None) -> RegistryError:
        what = what or self.host
        proxy = self._proxy_for(url)
        if proxy is not None:
            what += ' (through the proxy %s)' % proxy
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            return RegistryError('TLS verification of %s failed: %s; give the CA with ca_path, or set not_secure: '
                                 'true to skip verification' % (what, reason.verify_message or reason))
        if isinstance(reason, ssl.SSLError):
            return RegistryError('TLS with %s failed: %s; if it speaks plain HTTP, set not_secure: true'
                                 % (what, reason))
        return RegistryError('%s is unreachable: %s' % (what, _reason(reason)))

    @contextlib.contextmanager
    def _within_timeout(self, what: str) -> t.Iterator[_Deadline]:
        """Run an exchange that must be over within the timeout; its failure once time is up says so."""
        with self._deadline() as deadline:
            timed_out = RegistryError('%s: %s did not arrive within %s s (timeout): the registry stalls or is too slow'
                                      % (self.host, what, _seconds(self._timeout)))
            try:
                yield deadline
            except (BootstrapError, OSError, http.client.HTTPException):
                if deadline.expired:
                    raise timed_out from None
                raise
            if deadline.expired:  # http.client can take a connection shut down half-way for the end of an answer
                raise timed_out

    def _deadline(self) -> _Deadline:
        return _Deadline(self._timeout, self._deadlines, self._stopping)

    def stop(self) -> None:
        """Make retries waiting and downloads reading in other threads give up at once (the run is ending)."""
        self._stopping.set()
        for deadline in list(self._deadlines):
            deadline.expire()

    def _sleep(self, failures: int, retry_after: t.Optional[float]) -> None:
        """Back off before try `failures` + 1: doubling each time, at least as long as the registry asked."""
        deadline = getattr(_watching, 'deadline', None)
        if deadline is not None and deadline.expired:
            raise RegistryError('%s: no answer in time' % self.host)  # _within_timeout says what for
        delay = min(self._backoff * (2 ** (failures - 1)), MAX_BACKOFF)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        if deadline is not None:
            deadline.pause()
        try:
            _pause(self._stopping, delay)
        finally:
            if deadline is not None:
                deadline.resume()
        if self._stopping.is_set():
            raise BootstrapError('%s: stopped while waiting to retry' % self.host)


def _pause(stopping: threading.Event, seconds: float) -> None:
    """Wait before a retry; a run that is ending cuts the wait short."""
    stopping.wait(seconds)


def _same_site(registry_host: str, realm_host: str) -> bool:
    """Whether a token service is the registry's own: the same host, or a name sharing its last two labels.

    IP addresses match only themselves. (Without a public suffix list, two names under one two-label public
    suffix such as co.uk count as one site: the cost is a login sent to a neighbour the registry named.)
    """
    registry = (urllib.parse.urlsplit('//' + registry_host).hostname or '').rstrip('.')
    realm = realm_host.lower().rstrip('.')
    if registry == realm:
        return True
    if _is_ip_address(registry) or _is_ip_address(realm):
        return False
    registry_labels, realm_labels = registry.split('.'), realm.split('.')
    return len(registry_labels) >= 2 and len(realm_labels) >= 2 and registry_labels[-2:] == realm_labels[-2:]


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _seconds(value: float) -> str:
    return ('%f' % value).rstrip('0').rstrip('.')


def _rehash(body: bytes, digest: str) -> t.Any:
    hasher = new_hasher(digest)
    hasher.update(body)
    return hasher


def _basic_token(credentials: Credentials) -> str:
    return base64.b64encode(('%s:%s' % (credentials.username, credentials.password)).encode('utf-8')).decode('ascii')


def _content_range_start(header: t.Optional[str]) -> t.Optional[int]:
    if not header or not header.startswith('bytes '):
        return None
    try:
        return int(header[len('bytes '):].split('-', 1)[0])
    except ValueError:
        return None


def _registry_errors(exc: urllib.error.HTTPError) -> t.List[t.Tuple[str, str]]:
    """(code, message) of each entry of a registry's error body ({"errors": [{"code", "message"}]})."""
    try:
        body = json.loads(exc.read(1 << 16))
        return [(str(error.get('code') or ''), str(error.get('message') or '')) for error in body.get('errors', [])
                if isinstance(error, dict)]
    except (ValueError, AttributeError, OSError, http.client.HTTPException):
        return []


def _retry_after_seconds(header: t.Optional[str]) -> t.Optional[float]:
    """Retry-After as seconds from now: given as seconds, or as an HTTP date (RFC 9110); None when absent or unreadable."""
    text = (header or '').strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):  # TypeError on Python < 3.10
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


def _is_transient(exc: urllib.error.URLError) -> bool:
    """Lost or reset connections and timeouts are retried; refused connections, DNS, TLS and a proxy's refusal
    to open a tunnel (other than 502-504) are not."""
    reason = exc.reason
    if isinstance(reason, (ssl.SSLError, socket.gaierror, ConnectionRefusedError)):
        return False
    tunnel = re.match(r'Tunnel connection failed: (\d+)', str(reason))  # http.client's words for a refused CONNECT
    if tunnel:
        return tunnel.group(1) in ('502', '503', '504')
    return isinstance(reason, (OSError,) + _TRANSIENT_ERRORS)


def _reason(reason: t.Any) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__
