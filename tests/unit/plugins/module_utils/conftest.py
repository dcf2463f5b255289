# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures for the registry tests: real registries shared by one pytest process (see registry_support)."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import typing as t

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import _qemu as qemu
from ansible_collections.virt.bootstrap.plugins.module_utils._registry import auth as auth_module
from ansible_collections.virt.bootstrap.plugins.module_utils._registry import client as client_module
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils import registry_support

_STATE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    # Made before ansible-test forks a process per test, so every test of this process sees it.
    config.stash[_STATE] = tempfile.mkdtemp(prefix='vb-registry-tests-')


def pytest_unconfigure(config: pytest.Config) -> None:
    state_dir = config.stash.get(_STATE, None)
    if state_dir:
        registry_support.stop_all(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def registry_state(request: pytest.FixtureRequest) -> str:
    lacking = registry_support.missing()
    if lacking:
        pytest.skip('registry tests need docker-registry and skopeo; missing: %s' % ', '.join(lacking))
    return request.config.stash[_STATE]


@pytest.fixture
def http_registry(registry_state: str) -> registry_support.Pushed:
    """Plain HTTP, anonymous, with every image of registry_support.PUSHED."""
    return registry_support.shared_registry(registry_state, 'http')


@pytest.fixture
def tls_registry(registry_state: str) -> registry_support.Pushed:
    """HTTPS (self-signed, registry.ca_path) and htpasswd basic auth, with app:base."""
    return registry_support.shared_registry(registry_state, 'tls')


@pytest.fixture
def token_registry(registry_state: str) -> registry_support.Pushed:
    """HTTPS and bearer tokens from token_server.py, with app:base."""
    return registry_support.shared_registry(registry_state, 'token')


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> t.List[float]:
    """Retry back-off without the waiting: the client's sleeps are recorded and return at once."""
    recorded: t.List[float] = []
    monkeypatch.setattr(client_module, '_pause', lambda _stopping, seconds: recorded.append(seconds))
    return recorded


@pytest.fixture
def auth_home(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A HOME of its own, no auth file variable set, and podman's per-uid file (/run/containers/UID/auth.json)
    moved below tmp_path: only the auth files a test writes are found."""
    home = tmp_path / 'home'
    home.mkdir()
    monkeypatch.setenv('HOME', str(home))
    for variable in ('XDG_RUNTIME_DIR', 'XDG_CONFIG_HOME', 'DOCKER_CONFIG', 'REGISTRY_AUTH_FILE'):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(auth_module, 'PER_UID_AUTH_FILE', str(tmp_path / 'run-containers' / '%d' / 'auth.json'))
    return home


@pytest.fixture
def per_uid_auth_file(auth_home: pathlib.Path, tmp_path: pathlib.Path) -> str:
    """Where podman login writes without XDG_RUNTIME_DIR (/run/containers/UID/auth.json), below tmp_path."""
    return str(tmp_path / 'run-containers' / str(os.getuid()) / 'auth.json')


@pytest.fixture
def tools_run(monkeypatch: pytest.MonkeyPatch) -> t.List[str]:
    """Every program the qcow2 code runs, in order (the real programs run)."""
    calls: t.List[str] = []
    real = qemu.run_tool

    def recorded(argv: t.Sequence[str], what: str) -> t.Any:
        calls.append(argv[0])
        return real(argv, what)
    monkeypatch.setattr(qemu, 'run_tool', recorded)
    return calls
