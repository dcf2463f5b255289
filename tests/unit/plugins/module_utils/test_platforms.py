# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Platform names, matching with default variants, and picking one image by platform."""

from __future__ import annotations

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import platforms
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import PlatformError, SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils.image import Platform, platform_from_json
from ansible_collections.virt.bootstrap.plugins.module_utils.platforms import (
    choose,
    host_platform,
    matches,
    parse_platform,
    require_match,
)


@pytest.mark.parametrize('text, expected', [
    ('linux/arm64', Platform('linux', 'arm64')),
    ('arm64', Platform('linux', 'arm64')),
    ('linux/arm/v7', Platform('linux', 'arm', 'v7')),
    ('linux/arm/v6', Platform('linux', 'arm', 'v6')),
    ('linux/amd64', Platform('linux', 'amd64')),
    ('x86_64', Platform('linux', 'amd64')),
    ('linux/x86_64', Platform('linux', 'amd64')),
    ('aarch64', Platform('linux', 'arm64')),
    ('linux/aarch64/v8', Platform('linux', 'arm64', 'v8')),
    ('armv7l', Platform('linux', 'arm', 'v7')),
    ('armhf', Platform('linux', 'arm', 'v7')),
    ('i686', Platform('linux', '386')),
    (' Linux/AMD64 ', Platform('linux', 'amd64')),
    ('windows/amd64', Platform('windows', 'amd64')),
    ('linux/riscv64', Platform('linux', 'riscv64')),
])
def test_parse_platform_normalises_names_and_aliases(text, expected):
    assert parse_platform(text) == expected


@pytest.mark.parametrize('text', ['', ' ', '/', 'linux/', '/arm64', 'linux//v7', 'linux/arm/v7/extra'])
def test_parse_platform_refuses_malformed_names(text):
    with pytest.raises(PlatformError, match='not of the form os/arch'):
        parse_platform(text)


@pytest.mark.parametrize('platform, text', [
    (Platform('linux', 'arm64'), 'linux/arm64'),
    (Platform('linux', 'arm', 'v7'), 'linux/arm/v7'),
])
def test_platform_prints_as_os_arch_variant(platform, text):
    assert str(platform) == text
    assert parse_platform(text) == platform


@pytest.mark.parametrize('candidate, wanted, expected', [
    ('linux/amd64', 'linux/amd64', True),
    ('linux/arm64', 'linux/arm64/v8', True),     # v8 is arm64's default variant
    ('linux/arm64/v8', 'linux/arm64', True),
    ('linux/arm64/v8', 'linux/arm64/v8', True),
    ('linux/arm', 'linux/arm/v7', True),         # v7 is arm's default variant
    ('linux/arm/v6', 'linux/arm/v7', False),
    ('linux/arm/v7', 'linux/arm/v6', False),
    ('linux/arm', 'linux/arm/v6', False),
    ('linux/arm/v6', 'linux/arm', True),         # no variant asked for: any will do
    ('linux/amd64', 'linux/arm64', False),
    ('windows/amd64', 'linux/amd64', False),
    ('linux/amd64/v3', 'linux/amd64', True),
    ('linux/amd64', 'linux/amd64/v3', False),    # amd64 has no default variant
])
def test_matches_treats_a_missing_variant_as_the_default(candidate, wanted, expected):
    assert matches(parse_platform(candidate), parse_platform(wanted)) is expected


def test_choose_returns_the_matching_item():
    candidates = [(parse_platform('linux/amd64'), 'a'), (parse_platform('linux/arm64/v8'), 'b'), (None, 'c')]
    assert choose(candidates, parse_platform('linux/arm64'), 'here') == 'b'
    assert choose(candidates, parse_platform('linux/amd64'), 'here') == 'a'


@pytest.mark.parametrize('wanted, expected', [
    ('linux/arm', 'v7'),        # docker's linux/arm is arm/v7, wherever it is listed
    ('linux/arm/v7', 'v7'),
    ('linux/arm/v6', 'v6'),
    ('linux/arm/v5', 'v5'),
])
def test_choose_prefers_the_default_variant_when_none_is_asked_for(wanted, expected):
    candidates = [(parse_platform('linux/arm/' + variant), variant) for variant in ('v5', 'v6', 'v7')]
    assert choose(candidates, parse_platform(wanted), 'here') == expected


def test_choose_without_the_default_variant_takes_the_first_compatible_one():
    candidates = [(parse_platform('linux/arm/v6'), 'v6'), (parse_platform('linux/arm/v5'), 'v5')]
    assert choose(candidates, parse_platform('linux/arm'), 'here') == 'v6'


def test_choose_error_names_the_wanted_platform_and_every_one_available():
    candidates = [(parse_platform('linux/arm64/v8'), 1), (None, 2), (parse_platform('linux/amd64'), 3)]
    with pytest.raises(PlatformError) as caught:
        choose(candidates, parse_platform('linux/s390x'), 'oci:/srv/layout')
    assert str(caught.value) == ('oci:/srv/layout has no image for platform linux/s390x; '
                                 'available: linux/amd64, linux/arm64/v8')


def test_choose_error_says_none_when_no_platform_is_known():
    with pytest.raises(PlatformError, match='available: none$'):
        choose([(None, 1)], parse_platform('linux/amd64'), 'here')


@pytest.mark.parametrize('data, expected', [
    ({'architecture': 'arm64', 'os': 'linux', 'variant': 'v8'}, Platform('linux', 'arm64', 'v8')),
    ({'architecture': 'amd64'}, Platform('linux', 'amd64')),
    ({'os': 'linux'}, None),
    ({}, None),
    (None, None),
])
def test_platform_from_json_reads_config_and_descriptor_fields(data, expected):
    assert platform_from_json(data, 'here') == expected


@pytest.mark.parametrize('data, message', [
    ({'architecture': 5}, 'architecture 5, not a string'),
    ({'architecture': 'arm64', 'os': ['linux']}, r"os \['linux'\], not a string"),
    ({'architecture': 'arm', 'variant': {'v': 7}}, 'variant'),
])
def test_platform_from_json_refuses_fields_that_are_not_strings(data, message):
    with pytest.raises(SourceError, match='^config of x has ' + message):
        platform_from_json(data, 'config of x')


@pytest.mark.parametrize('actual, wanted', [
    (None, None), (None, 'linux/arm64'), ('linux/arm64', None), ('linux/arm64/v8', 'linux/arm64'),
])
def test_require_match_passes_when_nothing_is_asked_known_or_different(actual, wanted):
    require_match(actual and parse_platform(actual), wanted and parse_platform(wanted), 'here')


def test_require_match_names_the_platform_asked_for_and_the_one_there_is():
    with pytest.raises(PlatformError) as caught:
        require_match(parse_platform('linux/amd64'), parse_platform('linux/arm64'), 'oci:/srv/layout')
    assert str(caught.value) == 'oci:/srv/layout has no image for platform linux/arm64; available: linux/amd64'


@pytest.mark.parametrize('machine, expected', [
    ('x86_64', Platform('linux', 'amd64')),
    ('aarch64', Platform('linux', 'arm64')),
    ('armv7l', Platform('linux', 'arm', 'v7')),
    ('s390x', Platform('linux', 's390x')),
])
def test_host_platform_maps_the_kernel_machine_name(monkeypatch, machine, expected):
    monkeypatch.setattr(platforms._host, 'machine', lambda: machine)
    assert host_platform() == expected
