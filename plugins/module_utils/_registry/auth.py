# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""Registry credentials: given ones, or from the auth files podman, skopeo and docker write."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import typing as t
from dataclasses import dataclass, field

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError

DOCKER_HUB_KEYS = ('docker.io', 'index.docker.io', 'registry-1.docker.io', 'https://index.docker.io/v1/')


class AuthError(BootstrapError):
    """Credentials were refused or cannot be read."""


# Where `podman login` writes as root (and as any user) when XDG_RUNTIME_DIR is not set; %d is the uid.
PER_UID_AUTH_FILE = '/run/containers/%d/auth.json'


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    # Where they came from ('the username/password options' or an auth file path): safe to show.
    origin: str = 'the username/password options'
    # An OAuth2 refresh token (`identitytoken` in an auth file), exchanged for a bearer token at the realm.
    identity_token: t.Optional[str] = field(default=None, repr=False)


def default_auth_files() -> t.List[str]:
    """The files searched when no auth file is named, in the order podman and skopeo use.

    As containers/image (pkg/docker/config) does: ${XDG_RUNTIME_DIR}/containers/auth.json, or without
    XDG_RUNTIME_DIR /run/containers/UID/auth.json; ${XDG_CONFIG_HOME:-~/.config}/containers/auth.json;
    ${DOCKER_CONFIG:-~/.docker}/config.json. An XDG_RUNTIME_DIR that does not exist is passed over.
    """
    files = []
    runtime_dir = os.environ.get('XDG_RUNTIME_DIR')
    if runtime_dir:
        if os.path.isdir(runtime_dir):
            files.append(os.path.join(runtime_dir, 'containers', 'auth.json'))
    else:
        files.append(PER_UID_AUTH_FILE % os.getuid())
    home = os.path.expanduser('~')
    config_home = os.environ.get('XDG_CONFIG_HOME') or os.path.join(home, '.config')
    files.append(os.path.join(config_home, 'containers', 'auth.json'))
    files.append(os.path.join(os.environ.get('DOCKER_CONFIG') or os.path.join(home, '.docker'), 'config.json'))
    return files


def find_credentials(registry: str, repository: str, auth_file: t.Optional[str] = None) -> t.Optional[Credentials]:
    """Credentials for `registry`/`repository`: from `auth_file` alone when given, else from the file
    REGISTRY_AUTH_FILE names alone when it is set (as podman and skopeo read it), else the default files.

    A named file that does not exist is an error; missing default files are skipped.
    """
    if auth_file:
        if not os.path.exists(auth_file):
            raise AuthError('auth_file %s does not exist' % auth_file)
        return _from_file(auth_file, registry, repository)
    named = os.environ.get('REGISTRY_AUTH_FILE')
    if named:
        if not os.path.exists(named):
            raise AuthError('REGISTRY_AUTH_FILE names %s, which does not exist' % named)
        return _from_file(named, registry, repository)
    for path in default_auth_files():
        if os.path.exists(path):
            found = _from_file(path, registry, repository)
            if found is not None:
                return found
    return None


def _from_file(path: str, registry: str, repository: str) -> t.Optional[Credentials]:
    try:
        with open(path, encoding='utf-8') as stream:
            data = json.load(stream)
    except (OSError, ValueError) as exc:
        raise AuthError('cannot read auth file %s: %s' % (path, getattr(exc, 'strerror', None) or 'not valid JSON'))
    if not isinstance(data, dict):
        raise AuthError('auth file %s is not a JSON object' % path)
    keys = _lookup_keys(registry, repository)
    helpers = data.get('credHelpers') or {}
    for key in keys:
        if isinstance(helpers, dict) and helpers.get(key):
            return _from_helper(str(helpers[key]), key, path)
    auths = data.get('auths') or {}
    if isinstance(auths, dict):
        normalised = {_normalise_key(key): value for key, value in auths.items()}
        for key in keys:
            entry = normalised.get(key)
            if isinstance(entry, dict) and (entry.get('auth') or entry.get('identitytoken')):
                return _from_entry(entry, path)
    if data.get('credsStore'):
        return _from_helper(str(data['credsStore']), keys[-1], path)
    return None


def _lookup_keys(registry: str, repository: str) -> t.List[str]:
    """Most specific first, as podman does: registry/namespace/repo, ..., registry."""
    parts = repository.split('/')
    keys = ['%s/%s' % (registry, '/'.join(parts[:count])) for count in range(len(parts), 0, -1)]
    keys.append(registry)
    if registry == 'docker.io':
        keys.extend(key for key in DOCKER_HUB_KEYS if key not in keys)
    return keys


def _normalise_key(key: str) -> str:
    key = re.sub(r'^https?://', '', key)
    if key.endswith('/v1/') or key.endswith('/v2/'):
        key = key[:-4]
    key = key.rstrip('/')
    return 'docker.io' if key in ('index.docker.io', 'registry-1.docker.io') else key


def _from_entry(entry: t.Mapping[str, t.Any], origin: str) -> Credentials:
    """An `auths` entry: base64 user:password in `auth`, and/or an OAuth2 refresh token in `identitytoken`."""
    username, password = _decode_auth(str(entry['auth']), origin) if entry.get('auth') else ('', '')
    token = entry.get('identitytoken')
    if token is not None and not isinstance(token, str):
        raise AuthError('auth file %s has an identitytoken that is not a string' % origin)
    return Credentials(username, password, origin, identity_token=token or None)


def _decode_auth(encoded: str, origin: str) -> t.Tuple[str, str]:
    try:
        username, _sep, password = base64.b64decode(encoded).decode('utf-8').partition(':')
    except (ValueError, UnicodeDecodeError):
        raise AuthError('auth file %s has an entry that is not base64 of user:password' % origin)
    return username, password


def _from_helper(helper: str, server: str, origin: str) -> Credentials:
    """Ask docker-credential-HELPER; the server name goes on stdin, the secret comes on stdout."""
    if not re.match(r'^[A-Za-z0-9_.-]+$', helper):
        raise AuthError('auth file %s names an invalid credential helper' % origin)
    program = 'docker-credential-' + helper
    try:
        completed = subprocess.run([program, 'get'], input=server.encode('utf-8'), capture_output=True,
                                   timeout=60, check=False)
    except FileNotFoundError:
        raise AuthError('auth file %s names credential helper %s, which is not installed' % (origin, program))
    except subprocess.TimeoutExpired:
        raise AuthError('credential helper %s did not answer within 60 s' % program)
    if completed.returncode != 0:
        return_text = completed.stdout.decode('utf-8', 'replace').strip()
        if 'credentials not found' in return_text.lower():
            raise AuthError('credential helper %s has no credentials for %s' % (program, server))
        raise AuthError('credential helper %s failed (exit %d)' % (program, completed.returncode))
    try:
        answer = json.loads(completed.stdout)
        return Credentials(str(answer['Username']), str(answer['Secret']), '%s (%s)' % (origin, program))
    except (ValueError, KeyError, TypeError):
        raise AuthError('credential helper %s gave an answer that is not {"Username", "Secret"}' % program)


_CHALLENGE_PARAM_RE = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> t.Tuple[str, t.Dict[str, str]]:
    """('bearer', {'realm': ..., 'service': ..., 'scope': ...}) from a WWW-Authenticate header."""
    scheme, _sep, rest = header.strip().partition(' ')
    params = {}
    for match in _CHALLENGE_PARAM_RE.finditer(rest):
        value = match.group(2) if match.group(2) is not None else match.group(3)
        params[match.group(1).lower()] = re.sub(r'\\(.)', r'\1', value)
    return scheme.lower(), params
