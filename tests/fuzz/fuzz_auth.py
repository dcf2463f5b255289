# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fuzz the auth file reader (auth.json / docker config.json) and the WWW-Authenticate parser."""

from __future__ import annotations

import os
import tempfile

import atheris

from ansible_collections.virt.bootstrap.tests.fuzz._harness import fuzz, typed_errors_only

with atheris.instrument_imports(include=['ansible_collections.virt.bootstrap']):
    from ansible_collections.virt.bootstrap.plugins.module_utils._registry.auth import find_credentials, parse_challenge

# A credential helper named by a fuzzed file must never run: nothing is found on this PATH.
os.environ['PATH'] = tempfile.mkdtemp(prefix='fuzz-empty-path-')
AUTH_FILE = os.path.join(tempfile.mkdtemp(prefix='fuzz-auth-'), 'auth.json')
REGISTRIES = ('docker.io', 'registry.example.com:5000', '127.0.0.1:5000')


def read_auth_file(data: bytes, registry: str) -> None:
    credentials = find_credentials(registry, 'team/app', AUTH_FILE)
    if credentials is not None:
        assert isinstance(credentials.username, str) and isinstance(credentials.password, str)


def parse_header(text: str) -> None:
    scheme, params = parse_challenge(text)
    assert scheme == scheme.lower() and all(key == key.lower() for key in params)


def test_one_input(data: bytes) -> None:
    with open(AUTH_FILE, 'wb') as stream:
        stream.write(data)
    for registry in REGISTRIES:
        typed_errors_only(read_auth_file, data, registry)
    typed_errors_only(parse_header, data.decode('latin-1'))


if __name__ == '__main__':
    fuzz(test_one_input)
