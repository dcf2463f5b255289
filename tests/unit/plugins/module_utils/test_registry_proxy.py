# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pulls through an HTTPS proxy (a real CONNECT proxy on 127.0.0.1), as urllib reads the proxy variables."""

from __future__ import annotations

import base64
import os

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, Result, run
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.client import RegistryError
from ansible_collections.virt.bootstrap.plugins.module_utils._sources.registry import RegistryOptions
from ansible_collections.virt.bootstrap.tests.registry.connect_proxy import ConnectProxy
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.registry_support import (
    BASE_TREE,
    rootfs_tree,
)

PROXY_VARIABLES = ('http_proxy', 'https_proxy', 'no_proxy', 'all_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY',
                   'ALL_PROXY')
PROXY_LOGIN = ('proxy-user', 'proxy-Secret-1')


@pytest.fixture
def proxy_env(monkeypatch):
    """No proxy variable of the machine's: each test sets its own."""
    for variable in PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


@pytest.fixture
def proxy():
    with ConnectProxy() as running:
        yield running


def pull(tmp_path, pushed, **registry_options) -> Result:
    registry = pushed.registry
    registry_options.setdefault('ca_path', registry.ca_path)
    registry_options.setdefault('username', registry.username)
    registry_options.setdefault('password', registry.password)
    return run(Request(src=pushed.ref('app:base'), dest=str(tmp_path / 'rootfs'),
                       registry=RegistryOptions(cache_dir=str(tmp_path / 'cache'), **registry_options)))


def basic(user, password):
    return 'Basic ' + base64.b64encode(('%s:%s' % (user, password)).encode()).decode()


@pytest.mark.parametrize('variable', ['HTTPS_PROXY', 'https_proxy'])
def test_a_pull_from_a_tls_registry_goes_through_the_https_proxy(tmp_path, tls_registry, proxy_env, proxy, variable):
    proxy_env.setenv(variable, proxy.url)
    result = pull(tmp_path, tls_registry)
    assert result.digest == tls_registry.digests['app:base']
    assert rootfs_tree(str(tmp_path / 'rootfs')) == BASE_TREE
    # A tunnel per connection: the manifest (refused, then with the login), the config and three layers.
    assert proxy.targets() == [tls_registry.registry.host] * 6
    # The registry login travels inside TLS; the proxy sees neither it nor any login of its own.
    assert all('authorization' not in tunnel.header_names for tunnel in proxy.tunnels)
    assert all(tunnel.proxy_authorization is None for tunnel in proxy.tunnels)


def test_the_token_service_is_reached_through_the_proxy_too(tmp_path, token_registry, proxy_env, proxy):
    proxy_env.setenv('HTTPS_PROXY', proxy.url)
    with open(os.path.join(token_registry.registry.workdir, 'token.port'), encoding='ascii') as stream:
        token_host = '127.0.0.1:%s' % stream.read().strip()
    result = pull(tmp_path, token_registry)
    assert result.digest == token_registry.digests['app:base']
    targets = proxy.targets()
    assert set(targets) == {token_registry.registry.host, token_host}
    assert targets.count(token_host) == 1


@pytest.mark.parametrize('variable', ['NO_PROXY', 'no_proxy'])
def test_no_proxy_bypasses_the_proxy(tmp_path, tls_registry, proxy_env, proxy, variable):
    proxy_env.setenv('HTTPS_PROXY', proxy.url)
    proxy_env.setenv(variable, '127.0.0.1')
    result = pull(tmp_path, tls_registry)
    assert result.digest == tls_registry.digests['app:base']
    assert proxy.tunnels == []


def test_a_proxy_login_comes_from_the_proxy_url_only(tmp_path, tls_registry, proxy_env):
    with ConnectProxy(login=PROXY_LOGIN) as proxy:
        proxy_env.setenv('HTTPS_PROXY', proxy.url_with_login(*PROXY_LOGIN))
        result = pull(tmp_path, tls_registry)
    assert result.digest == tls_registry.digests['app:base']
    assert [tunnel.status for tunnel in proxy.tunnels] == [200] * 6
    assert {tunnel.proxy_authorization for tunnel in proxy.tunnels} == {basic(*PROXY_LOGIN)}


def test_a_proxy_refusing_the_tunnel_is_named_without_its_login_and_not_retried(tmp_path, tls_registry, proxy_env,
                                                                                sleeps):
    wrong = 'Wrong-' + PROXY_LOGIN[1]
    with ConnectProxy(login=PROXY_LOGIN) as proxy:
        proxy_env.setenv('HTTPS_PROXY', proxy.url_with_login(PROXY_LOGIN[0], wrong))
        with pytest.raises(RegistryError) as caught:
            pull(tmp_path, tls_registry)
        port = proxy.port
    assert str(caught.value) == ('%s (through the proxy 127.0.0.1:%d) is unreachable: Tunnel connection failed: 407 '
                                 'Proxy Authentication Required' % (tls_registry.registry.host, port))
    assert wrong not in str(caught.value)
    assert [tunnel.status for tunnel in proxy.tunnels] == [407]
    assert sleeps == []
    assert not os.path.lexists(tmp_path / 'rootfs')


def test_a_malformed_proxy_url_is_not_repeated(tmp_path, tls_registry, proxy_env):
    proxy_env.setenv('HTTPS_PROXY', 'http:/someone:hunter2-secret@127.0.0.1:9')
    with pytest.raises(RegistryError) as caught:
        pull(tmp_path, tls_registry)
    assert str(caught.value) == 'the proxy for %s (https_proxy) is not a valid URL' % tls_registry.registry.host
