# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Platform names (os/arch[/variant]) and picking one image out of an index."""

from __future__ import annotations

import platform as _host
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import PlatformError
from ansible_collections.virt.bootstrap.plugins.module_utils.image import Platform

_ARCH_ALIASES = {
    'x86_64': ('amd64', ''), 'x86-64': ('amd64', ''), 'amd64': ('amd64', ''),
    'aarch64': ('arm64', ''), 'arm64': ('arm64', ''),
    'armv7l': ('arm', 'v7'), 'armv7': ('arm', 'v7'), 'armv6l': ('arm', 'v6'), 'armhf': ('arm', 'v7'),
    'i386': ('386', ''), 'i486': ('386', ''), 'i586': ('386', ''), 'i686': ('386', ''), '386': ('386', ''),
    'ppc64le': ('ppc64le', ''), 's390x': ('s390x', ''), 'riscv64': ('riscv64', ''),
}
# Variants an image may omit because they are the architecture's default.
_DEFAULT_VARIANTS = {'arm64': 'v8', 'arm': 'v7'}


def parse_platform(text: str) -> Platform:
    """'linux/arm64', 'linux/arm/v7', 'arm64' (os defaults to linux)."""
    fields = [field.strip() for field in text.strip().split('/')]
    if len(fields) == 1:
        fields.insert(0, 'linux')
    if not 2 <= len(fields) <= 3 or not all(fields):
        raise PlatformError('platform %r is not of the form os/arch[/variant] (e.g. linux/arm64)' % text)
    os_name = fields[0].lower()
    arch, variant = _ARCH_ALIASES.get(fields[1].lower(), (fields[1].lower(), ''))
    if len(fields) == 3:
        variant = fields[2].lower()
    return Platform(os_name, arch, variant)


def host_platform() -> Platform:
    machine = _host.machine().lower()
    arch, variant = _ARCH_ALIASES.get(machine, (machine, ''))
    return Platform('linux', arch, variant)


def _variant(platform: Platform) -> str:
    return platform.variant or _DEFAULT_VARIANTS.get(platform.architecture, '')


def matches(candidate: Platform, wanted: Platform) -> bool:
    if (candidate.os, candidate.architecture) != (wanted.os, wanted.architecture):
        return False
    return not wanted.variant or _variant(candidate) == wanted.variant


T = t.TypeVar('T')


def choose(candidates: t.Sequence[t.Tuple[t.Optional[Platform], T]], wanted: Platform, where: str) -> T:
    """Pick the entry for `wanted`; the error names every platform that exists."""
    matching = [(candidate, item) for candidate, item in candidates
                if candidate is not None and matches(candidate, wanted)]
    # No variant asked for means the default one (linux/arm is arm/v7, as docker has it), when there is one.
    for candidate, item in matching:
        if _variant(candidate) == _variant(wanted):
            return item
    if matching:
        return matching[0][1]
    available = ', '.join(sorted(str(candidate) for candidate, _item in candidates if candidate)) or 'none'
    raise PlatformError('%s has no image for platform %s; available: %s' % (where, wanted, available))


def require_match(actual: t.Optional[Platform], wanted: t.Optional[Platform], where: str) -> None:
    """An explicitly wanted platform must be the image's own, when the image says what its own is."""
    if wanted is not None and actual is not None and not matches(actual, wanted):
        raise PlatformError('%s has no image for platform %s; available: %s' % (where, wanted, actual))
