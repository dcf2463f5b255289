# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Platform names normalised and matched as containerd does, and picking one image by platform."""

from __future__ import annotations

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import _platforms as platforms
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import PlatformError, SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._image import Platform, platform_from_json
from ansible_collections.virt.bootstrap.plugins.module_utils._platforms import (
    check_image_platform,
    choose,
    host_platform,
    compatible,
    matches,
    normalize,
    parse_platform,
)


@pytest.mark.parametrize('text, expected', [
    ('linux/arm64', Platform('linux', 'arm64')),
    ('arm64', Platform('linux', 'arm64')),
    ('linux/arm64/v8', Platform('linux', 'arm64')),       # v8 is arm64's baseline: written as no variant
    ('linux/arm64/8', Platform('linux', 'arm64')),
    ('linux/arm64/v8.0', Platform('linux', 'arm64')),
    ('linux/arm64/v8.2', Platform('linux', 'arm64', 'v8.2')),
    ('linux/arm64/9', Platform('linux', 'arm64', 'v9')),
    ('linux/arm64/v9.0', Platform('linux', 'arm64', 'v9')),
    ('aarch64', Platform('linux', 'arm64')),
    ('linux/aarch64/v8', Platform('linux', 'arm64')),
    ('linux/arm', Platform('linux', 'arm', 'v7')),        # v7 is arm's baseline: written out
    ('linux/arm/v7', Platform('linux', 'arm', 'v7')),
    ('linux/arm/7', Platform('linux', 'arm', 'v7')),      # a variant given without its v
    ('linux/arm/6', Platform('linux', 'arm', 'v6')),
    ('linux/arm/5', Platform('linux', 'arm', 'v5')),
    ('linux/arm/8', Platform('linux', 'arm', 'v8')),
    ('linux/arm/v6', Platform('linux', 'arm', 'v6')),
    ('armhf', Platform('linux', 'arm', 'v7')),
    ('armel', Platform('linux', 'arm', 'v6')),
    ('linux/armel', Platform('linux', 'arm', 'v6')),
    ('armv7l', Platform('linux', 'arm', 'v7')),
    ('linux/amd64', Platform('linux', 'amd64')),
    ('linux/amd64/v1', Platform('linux', 'amd64')),       # v1 is amd64's baseline
    ('linux/amd64/v3', Platform('linux', 'amd64', 'v3')),
    ('x86_64', Platform('linux', 'amd64')),
    ('x86-64', Platform('linux', 'amd64')),
    ('linux/x86_64', Platform('linux', 'amd64')),
    ('linux/x86_64/v2', Platform('linux', 'amd64', 'v2')),
    ('i386', Platform('linux', '386')),
    ('i486', Platform('linux', '386')),
    ('i586', Platform('linux', '386')),
    ('i686', Platform('linux', '386')),
    ('linux/386', Platform('linux', '386')),
    ('Linux/amd64', Platform('linux', 'amd64')),
    (' Linux/AMD64 ', Platform('linux', 'amd64')),
    ('LINUX/ARM/V7', Platform('linux', 'arm', 'v7')),
    ('windows/amd64', Platform('windows', 'amd64')),
    ('linux/riscv64', Platform('linux', 'riscv64')),
    ('linux/ppc64le', Platform('linux', 'ppc64le')),
])
def test_parse_platform_normalises_names_and_aliases_as_containerd(text, expected):
    assert parse_platform(text) == expected


@pytest.mark.parametrize('listed, expected', [
    (Platform('Linux', 'ARM64', 'v8'), Platform('linux', 'arm64')),
    (Platform('linux', 'arm'), Platform('linux', 'arm', 'v7')),
    (Platform('linux', 'arm', '7'), Platform('linux', 'arm', 'v7')),
    (Platform('linux', 'aarch64'), Platform('linux', 'arm64')),
    (Platform('linux', 'amd64', 'v1'), Platform('linux', 'amd64')),
    (Platform('', 'amd64'), Platform('linux', 'amd64')),
])
def test_normalize_gives_what_an_index_lists_its_canonical_spelling(listed, expected):
    assert normalize(listed) == expected


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


@pytest.mark.parametrize('wanted, expected', [
    ('linux/amd64', ['linux/amd64']),                                   # a plain amd64 never takes v2+
    ('linux/amd64/v2', ['linux/amd64/v2', 'linux/amd64']),
    ('linux/amd64/v4', ['linux/amd64/v4', 'linux/amd64/v3', 'linux/amd64/v2', 'linux/amd64']),
    ('linux/arm', ['linux/arm/v7', 'linux/arm/v6', 'linux/arm/v5']),
    ('linux/arm/v8', ['linux/arm/v8', 'linux/arm/v7', 'linux/arm/v6', 'linux/arm/v5']),
    ('linux/arm/v6', ['linux/arm/v6', 'linux/arm/v5']),
    ('linux/arm/v5', ['linux/arm/v5']),
    ('linux/arm64', ['linux/arm64']),
    ('linux/arm64/v8.2', ['linux/arm64/v8.2', 'linux/arm64/v8.1', 'linux/arm64']),
    ('linux/arm64/v9', ['linux/arm64/v9'] + ['linux/arm64/v8.%d' % minor for minor in (5, 4, 3, 2, 1)]
     + ['linux/arm64']),
    ('linux/arm64/v9.1', ['linux/arm64/v9.1', 'linux/arm64/v9'] + ['linux/arm64/v8.%d' % minor
                                                                   for minor in (6, 5, 4, 3, 2, 1)] + ['linux/arm64']),
    ('linux/386', ['linux/386']),                                       # no other architecture is offered
    ('linux/s390x', ['linux/s390x']),
    ('windows/amd64', ['windows/amd64']),
])
def test_compatible_lists_the_lower_variants_of_the_same_architecture_best_first(wanted, expected):
    assert [str(platform) for platform in compatible(parse_platform(wanted))] == expected


@pytest.mark.parametrize('candidate, wanted, expected', [
    ('linux/amd64', 'linux/amd64', True),
    ('linux/arm64', 'linux/arm64/v8', True),     # v8 is arm64's baseline
    ('linux/arm64/v8', 'linux/arm64', True),
    ('linux/arm64/v8', 'linux/arm64/v8', True),
    ('linux/arm64/v8.1', 'linux/arm64', False),
    ('linux/arm64', 'linux/arm64/v8.1', True),
    ('linux/arm', 'linux/arm/v7', True),         # v7 is arm's baseline
    ('linux/arm/7', 'linux/arm/v7', True),
    ('linux/arm/v6', 'linux/arm/v7', True),      # a lower variant runs
    ('linux/arm/v5', 'linux/arm/v7', True),
    ('linux/arm/v7', 'linux/arm/v6', False),     # a higher one does not
    ('linux/arm', 'linux/arm/v6', False),
    ('linux/arm/v6', 'linux/arm', True),
    ('linux/arm/v8', 'linux/arm', False),
    ('linux/armel', 'linux/arm/v6', True),
    ('linux/amd64', 'linux/arm64', False),
    ('windows/amd64', 'linux/amd64', False),
    ('Linux/amd64', 'linux/amd64', True),
    ('linux/x86_64', 'linux/amd64', True),
    ('linux/amd64/v3', 'linux/amd64', False),    # a plain amd64 never takes v2+
    ('linux/amd64/v2', 'linux/amd64/v3', True),
    ('linux/amd64', 'linux/amd64/v3', True),
    ('linux/amd64/v1', 'linux/amd64/v3', True),
    ('linux/amd64/v4', 'linux/amd64/v3', False),
    ('linux/386', 'linux/amd64', False),
    ('linux/arm/v7', 'linux/arm64', False),
])
def test_matches_takes_the_same_or_a_lower_variant(candidate, wanted, expected):
    listed = Platform(*(candidate.split('/') + [''])[:3])  # as an index lists it, not normalised
    assert matches(listed, parse_platform(wanted)) is expected


def test_choose_returns_the_matching_item():
    candidates = [(parse_platform('linux/amd64'), 'a'), (Platform('linux', 'arm64', 'v8'), 'b'), (None, 'c')]
    assert choose(candidates, parse_platform('linux/arm64'), 'here') == 'b'
    assert choose(candidates, parse_platform('linux/amd64'), 'here') == 'a'


@pytest.mark.parametrize('wanted, expected', [
    ('linux/arm', 'v7'),        # docker's linux/arm is arm/v7, wherever it is listed
    ('linux/arm/v7', 'v7'),
    ('linux/arm/v6', 'v6'),
    ('linux/arm/v5', 'v5'),
    ('linux/arm/v8', 'v7'),
])
def test_choose_takes_the_best_variant_whatever_the_order(wanted, expected):
    candidates = [(Platform('linux', 'arm', variant), variant) for variant in ('v5', 'v6', 'v7')]
    assert choose(candidates, parse_platform(wanted), 'here') == expected
    assert choose(list(reversed(candidates)), parse_platform(wanted), 'here') == expected


@pytest.mark.parametrize('listed, wanted, expected', [
    (['linux/arm/v6', 'linux/arm/v5'], 'linux/arm/v7', 'linux/arm/v6'),
    (['linux/arm/v5', 'linux/arm/v6'], 'linux/arm', 'linux/arm/v6'),
    (['linux/amd64', 'linux/amd64/v2', 'linux/amd64/v3'], 'linux/amd64/v3', 'linux/amd64/v3'),
    (['linux/amd64', 'linux/amd64/v2', 'linux/amd64/v4'], 'linux/amd64/v3', 'linux/amd64/v2'),
    (['linux/amd64/v4', 'linux/amd64'], 'linux/amd64/v3', 'linux/amd64'),
    (['linux/amd64/v2', 'linux/amd64/v3', 'linux/amd64'], 'linux/amd64', 'linux/amd64'),
    (['linux/arm64/v8.1', 'linux/arm64/v8'], 'linux/arm64/v8.2', 'linux/arm64/v8.1'),
])
def test_choose_falls_back_to_the_best_lower_variant(listed, wanted, expected):
    candidates = [(Platform(*text.split('/')), text) for text in listed]
    assert choose(candidates, parse_platform(wanted), 'here') == expected


def test_choose_takes_the_first_listed_of_equals():
    candidates = [(Platform('linux', 'arm64', 'v8'), 'first'), (Platform('linux', 'arm64'), 'second')]
    assert choose(candidates, parse_platform('linux/arm64'), 'here') == 'first'


@pytest.mark.parametrize('listed, wanted', [
    (['linux/amd64/v2', 'linux/amd64/v3'], 'linux/amd64'),
    (['linux/arm/v7', 'linux/arm/v8'], 'linux/arm/v6'),
    (['linux/386', 'linux/arm/v7'], 'linux/amd64'),
])
def test_choose_never_takes_a_higher_variant_or_another_architecture(listed, wanted):
    candidates = [(Platform(*text.split('/')), text) for text in listed]
    with pytest.raises(PlatformError, match='no image for platform %s; available: %s$' % (
            parse_platform(wanted), ', '.join(sorted(listed)))):
        choose(candidates, parse_platform(wanted), 'here')


def test_choose_error_names_the_wanted_platform_and_every_one_available():
    candidates = [(Platform('linux', 'arm64', 'v8'), 1), (None, 2), (Platform('linux', 'amd64'), 3)]
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
    (None, None), (None, 'linux/arm64'), ('linux/arm64', 'linux/arm64'), ('linux/arm64/v8', 'linux/arm64'),
    ('linux/arm/v6', 'linux/arm/v7'), ('linux/amd64', None), ('linux/amd64/v1', None),
])
def test_check_image_platform_is_silent_when_asked_for_unknown_or_the_hosts(monkeypatch, actual, wanted):
    monkeypatch.setattr(platforms._host, 'machine', lambda: 'x86_64')
    listed = actual and Platform(*actual.split('/'))
    assert check_image_platform(listed, wanted and parse_platform(wanted), 'here') == []


def test_check_image_platform_names_the_platform_asked_for_and_the_one_there_is():
    with pytest.raises(PlatformError) as caught:
        check_image_platform(Platform('linux', 'amd64'), parse_platform('linux/arm64'), 'oci:/srv/layout')
    assert str(caught.value) == 'oci:/srv/layout has no image for platform linux/arm64; available: linux/amd64'


@pytest.mark.parametrize('actual, setting', [
    ('linux/arm64/v8', 'linux/arm64'), ('linux/amd64/v3', 'linux/amd64/v3'), ('linux/386', 'linux/386'),
])
def test_check_image_platform_warns_of_an_image_for_another_platform_when_none_was_asked_for(
        monkeypatch, actual, setting):
    monkeypatch.setattr(platforms._host, 'machine', lambda: 'x86_64')
    assert check_image_platform(Platform(*actual.split('/')), None, 'oci:/srv/layout') == [
        "oci:/srv/layout: the image is for platform %s, not this host's (linux/amd64); it is used as no platform "
        "was asked for (set platform: %s to say this is intended)" % (actual, setting)]


@pytest.mark.parametrize('machine, expected', [
    ('x86_64', Platform('linux', 'amd64')),
    ('aarch64', Platform('linux', 'arm64')),
    ('armv7l', Platform('linux', 'arm', 'v7')),
    ('armv6l', Platform('linux', 'arm', 'v6')),
    ('i686', Platform('linux', '386')),
    ('s390x', Platform('linux', 's390x')),
])
def test_host_platform_maps_the_kernel_machine_name(monkeypatch, machine, expected):
    monkeypatch.setattr(platforms._host, 'machine', lambda: machine)
    assert host_platform() == expected
