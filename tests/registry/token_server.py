# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small token issuer for the distribution registry's `auth.token` mode (test fixture, stdlib only).

GET /token?service=S&scope=repository:NAME:ACTIONS with HTTP basic credentials answers
{"token": JWT}. POST /token with the OAuth2 form grant_type=refresh_token&refresh_token=T&service=S
&scope=...&client_id=C (how docker and containers/image use an auth file's `identitytoken`) answers
{"access_token": JWT} for a refresh token it knows, 400 invalid_grant for one it does not. The JWT
is signed RS256 with `openssl dgst -sign` (the `cryptography` package is not needed) and names its
signing certificate in the `x5c` header; that certificate must be in the registry's `rootcertbundle`.
Known users get what they ask for, anonymous callers a token that grants nothing (as Docker Hub does
for private repositories), wrong credentials a 401.

    python3 token_server.py CONFIG.json

CONFIG holds: signing_key, signing_cert (PEM paths), issuer, service, users_file (JSON
{"user": "password"}), optional tls_cert/tls_key (serve HTTPS), port (0 picks one), port_file (where
the port is written once listening), refresh_tokens_file (optional JSON {"token": "user"}), log_file
(JSON lines: method, path, grant_type, scope, user, status; never secrets),
token_lifetime (seconds), deny_repositories (names nobody gets access to, though the token is issued).
"""

from __future__ import annotations

import base64
import hmac
import http.server
import json
import os
import secrets
import ssl
import subprocess
import sys
import threading
import time
import typing as t
import urllib.parse


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode('ascii')


def certificate_der(pem_path: str) -> bytes:
    """The first certificate of a PEM file, DER-encoded (what x5c carries, in standard base64)."""
    with open(pem_path, encoding='ascii') as stream:
        text = stream.read()
    begin, end = '-----BEGIN CERTIFICATE-----', '-----END CERTIFICATE-----'
    body = text[text.index(begin) + len(begin):text.index(end)]
    return base64.b64decode(''.join(body.split()))


def sign_rs256(key_path: str, signing_input: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 with SHA-256: exactly what `openssl dgst -sha256 -sign` writes."""
    completed = subprocess.run(['openssl', 'dgst', '-sha256', '-sign', key_path], input=signing_input,
                               capture_output=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError('openssl dgst -sign failed: %s' % completed.stderr.decode('utf-8', 'replace'))
    return completed.stdout


def parse_scopes(values: t.Sequence[str]) -> t.List[t.Dict[str, t.Any]]:
    """'repository:team/app:pull,push' (several per value, space separated) as JWT access entries."""
    access = []
    for value in values:
        for scope in value.split():
            kind, _sep, rest = scope.partition(':')
            name, _sep, actions = rest.rpartition(':')
            if kind and name and actions:
                access.append({'type': kind, 'name': name, 'actions': sorted(set(actions.split(',')))})
    return access


class TokenIssuer:
    """Makes the signed tokens; separate from HTTP so tests could call it directly."""

    def __init__(self, config: t.Mapping[str, t.Any]) -> None:
        self.signing_key = str(config['signing_key'])
        self.issuer = str(config['issuer'])
        self.service = str(config['service'])
        self.lifetime = int(config.get('token_lifetime', 300))
        self.denied = frozenset(config.get('deny_repositories') or ())
        self._x5c = [base64.b64encode(certificate_der(str(config['signing_cert']))).decode('ascii')]
        with open(str(config['users_file']), encoding='utf-8') as stream:
            self.users: t.Dict[str, str] = json.load(stream)
        self.refresh_tokens: t.Dict[str, str] = {}
        if config.get('refresh_tokens_file'):
            with open(str(config['refresh_tokens_file']), encoding='utf-8') as stream:
                self.refresh_tokens = json.load(stream)

    def refresh_user(self, refresh_token: str) -> t.Optional[str]:
        """The user a refresh token was issued to, or None."""
        for known, user in self.refresh_tokens.items():
            if hmac.compare_digest(known.encode('utf-8'), refresh_token.encode('utf-8')):
                return user
        return None

    def check(self, authorization: t.Optional[str]) -> t.Tuple[bool, t.Optional[str]]:
        """(accepted, user): no header is anonymous (accepted, None); wrong credentials are refused."""
        if not authorization:
            return True, None
        scheme, _sep, encoded = authorization.partition(' ')
        if scheme.lower() != 'basic':
            return False, None
        try:
            user, _sep, password = base64.b64decode(encoded).decode('utf-8').partition(':')
        except (ValueError, UnicodeDecodeError):
            return False, None
        known = self.users.get(user)
        if known is None or not hmac.compare_digest(known.encode('utf-8'), password.encode('utf-8')):
            return False, user
        return True, user

    def token(self, user: t.Optional[str], service: str, scopes: t.Sequence[str]) -> str:
        now = int(time.time())
        access = [] if user is None else [entry for entry in parse_scopes(scopes) if entry['name'] not in self.denied]
        claims = {
            'iss': self.issuer, 'sub': user or '', 'aud': service, 'iat': now, 'nbf': now - 5,
            'exp': now + self.lifetime, 'jti': secrets.token_hex(8), 'access': access,
        }
        header = {'typ': 'JWT', 'alg': 'RS256', 'x5c': self._x5c}
        signing_input = ('%s.%s' % (b64url(json.dumps(header).encode('utf-8')),
                                    b64url(json.dumps(claims).encode('utf-8')))).encode('ascii')
        return '%s.%s' % (signing_input.decode('ascii'), b64url(sign_rs256(self.signing_key, signing_input)))


class _Handler(http.server.BaseHTTPRequestHandler):
    server: '_Server'

    def do_GET(self) -> None:  # pylint: disable=invalid-name
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        issuer = self.server.issuer
        accepted, user = issuer.check(self.headers.get('Authorization'))
        service = (query.get('service') or [issuer.service])[0]
        scopes = query.get('scope') or []
        if url.path != '/token':
            status, body = 404, {'errors': [{'code': 'NOT_FOUND'}]}
        elif not accepted:
            status, body = 401, {'errors': [{'code': 'UNAUTHORIZED', 'message': 'bad credentials'}]}
        elif service != issuer.service:
            status, body = 400, {'errors': [{'code': 'BAD_SERVICE'}]}
        else:
            token = issuer.token(user, service, scopes)
            status, body = 200, {'token': token, 'access_token': token, 'expires_in': issuer.lifetime,
                                 'issued_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
        self.server.log({'method': 'GET', 'path': url.path, 'scope': scopes, 'user': user, 'status': status})
        self._answer(status, body)

    def do_POST(self) -> None:  # pylint: disable=invalid-name
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get('Content-Length') or 0)
        form = urllib.parse.parse_qs(self.rfile.read(min(length, 1 << 16)).decode('utf-8', 'replace'))
        issuer = self.server.issuer
        grant_type = (form.get('grant_type') or [''])[0]
        service = (form.get('service') or [issuer.service])[0]
        scopes = form.get('scope') or []
        user = issuer.refresh_user((form.get('refresh_token') or [''])[0])
        if url.path != '/token':
            status, body = 404, {'error': 'not_found'}
        elif grant_type != 'refresh_token' or not form.get('client_id'):
            status, body = 400, {'error': 'unsupported_grant_type'}
        elif user is None:
            status, body = 400, {'error': 'invalid_grant'}
        elif service != issuer.service:
            status, body = 400, {'error': 'invalid_request'}
        else:
            token = issuer.token(user, service, scopes)
            status, body = 200, {'access_token': token, 'scope': ' '.join(scopes), 'expires_in': issuer.lifetime}
        self.server.log({'method': 'POST', 'path': url.path, 'grant_type': grant_type, 'scope': scopes, 'user': user,
                         'status': status})
        self._answer(status, body)

    def _answer(self, status: int, body: t.Mapping[str, t.Any]) -> None:
        data = json.dumps(body).encode('utf-8')
        self.send_response(status)
        if status == 401:
            self.send_header('WWW-Authenticate', 'Basic realm="token"')
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: t.Any) -> None:  # pylint: disable=redefined-builtin
        pass  # the JSON log says what matters; the default one would go to stderr


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, issuer: TokenIssuer, log_file: t.Optional[str]) -> None:
        super().__init__(('127.0.0.1', port), _Handler)
        self.issuer = issuer
        self._log_file = log_file
        self._log_lock = threading.Lock()

    def log(self, entry: t.Mapping[str, t.Any]) -> None:
        if not self._log_file:
            return
        with self._log_lock, open(self._log_file, 'a', encoding='utf-8') as stream:
            stream.write(json.dumps(entry) + '\n')


def serve(config: t.Mapping[str, t.Any]) -> None:
    server = _Server(int(config.get('port', 0)), TokenIssuer(config), config.get('log_file'))
    if config.get('tls_cert'):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(config['tls_cert']), str(config['tls_key']))
        server.socket = context.wrap_socket(server.socket, server_side=True)
    port_file = config.get('port_file')
    if port_file:
        with open(port_file + '.tmp', 'w', encoding='ascii') as stream:
            stream.write(str(server.server_address[1]))
        os.replace(port_file + '.tmp', port_file)
    server.serve_forever()


def main(argv: t.Sequence[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write('usage: token_server.py CONFIG.json\n')
        return 2
    with open(argv[0], encoding='utf-8') as stream:
        config = json.load(stream)
    try:
        serve(config)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
