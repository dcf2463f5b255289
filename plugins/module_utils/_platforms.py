# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""Platform names (os/arch[/variant]), normalised and matched as containerd does, and picking one by platform."""

from __future__ import annotations

import platform as _host
import re
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import PlatformError
from ansible_collections.virt.bootstrap.plugins.module_utils._image import Platform

# Architecture spellings and the variant they imply (None: keep the variant given). As containerd's
# normalizeArch, plus the kernel's machine names (uname -m) that host_platform() meets.
_ARCH_ALIASES: t.Dict[str, t.Tuple[str, t.Optional[str]]] = {
    'x86_64': ('amd64', None), 'x86-64': ('amd64', None),
    'aarch64': ('arm64', None),
    'armhf': ('arm', 'v7'), 'armel': ('arm', 'v6'),
    'armv7l': ('arm', 'v7'), 'armv7': ('arm', 'v7'), 'armv6l': ('arm', 'v6'), 'armv5l': ('arm', 'v5'),
    'armv5tel': ('arm', 'v5'), 'armv8l': ('arm', 'v8'),
    'i386': ('386', ''), 'i486': ('386', ''), 'i586': ('386', ''), 'i686': ('386', ''),
}
# Variants that name an architecture's baseline: containerd writes them as no variant at all (arm64/v8 is
# arm64, amd64/v1 is amd64), except for arm, whose baseline is written v7.
_VARIANT_ALIASES = {
    'amd64': {'v1': ''},
    'arm64': {'8': '', 'v8': '', 'v8.0': '', '9': 'v9', '9.0': 'v9', 'v9.0': 'v9'},
    'arm': {'': 'v7', '5': 'v5', '6': 'v6', '7': 'v7', '8': 'v8'},
}
_LEVEL_RE = re.compile(r'^v(\d+)(?:\.(\d+))?$')
# Lowest variant each architecture's ladder goes down to (containerd's platformVector).
_LOWEST_LEVEL = {'amd64': 1, 'arm': 5}
# arm64/v9.N runs what arm64/v8.(N+5) does (capped at v8.9), as containerd's arm64variantToVersion has it.
_ARM64_V9_TO_V8 = 5


def normalize(platform: Platform) -> Platform:
    """The canonical spelling of `platform` (containerd's Normalize): lower case, aliases resolved."""
    os_name = platform.os.lower() or 'linux'
    arch, variant = platform.architecture.lower(), platform.variant.lower()
    arch, implied = _ARCH_ALIASES.get(arch, (arch, None))
    if implied is not None:
        variant = implied
    variant = _VARIANT_ALIASES.get(arch, {}).get(variant, variant)
    return Platform(os_name, arch, variant)


def parse_platform(text: str) -> Platform:
    """'linux/arm64', 'linux/arm/v7', 'arm64' (os defaults to linux), normalised."""
    fields = [field.strip() for field in text.strip().split('/')]
    if len(fields) == 1:
        fields.insert(0, 'linux')
    if not 2 <= len(fields) <= 3 or not all(fields):
        raise PlatformError('platform %r is not of the form os/arch[/variant] (e.g. linux/arm64)' % text)
    return normalize(Platform(fields[0], fields[1], fields[2] if len(fields) == 3 else ''))


def host_platform() -> Platform:
    return normalize(Platform('linux', _host.machine()))


def compatible(wanted: Platform) -> t.List[Platform]:
    """The platforms an image may have to run where `wanted` does, best first (containerd's platformVector).

    A lower variant of the same architecture runs: arm/v7 takes arm/v6 then arm/v5, amd64/v3 takes
    amd64/v2 then amd64, arm64/v8.2 takes arm64/v8.1 then arm64. A higher one never does, so a plain
    amd64 never takes amd64/v2. Unlike containerd, no other architecture is offered (amd64 never takes
    386, arm64 never takes arm): a rootfs of another architecture is not what anyone asking for this one
    wants built.
    """
    wanted = normalize(wanted)
    if wanted.architecture == 'arm64':
        return [Platform(wanted.os, 'arm64', variant) for variant in _arm64_ladder(wanted.variant)]
    level = _LEVEL_RE.match(wanted.variant)
    lowest = _LOWEST_LEVEL.get(wanted.architecture)
    if lowest is None or level is None or level.group(2) is not None:
        return [wanted]
    return [normalize(Platform(wanted.os, wanted.architecture, 'v%d' % number))
            for number in range(int(level.group(1)), lowest - 1, -1)]


def _arm64_ladder(variant: str) -> t.List[str]:
    level = _LEVEL_RE.match(variant or 'v8')
    if level is None:
        return [variant]
    major, minor = int(level.group(1)), int(level.group(2) or 0)
    if major == 9:
        ladders = [(9, minor), (8, min(minor + _ARM64_V9_TO_V8, 9))]
    elif major == 8:
        ladders = [(8, minor)]
    else:
        return [variant]
    return [_arm64_variant(number, step) for number, top in ladders for step in range(top, -1, -1)]


def _arm64_variant(major: int, minor: int) -> str:
    if major == 8 and minor == 0:
        return ''
    return 'v%d' % major if minor == 0 else 'v%d.%d' % (major, minor)


def rank(candidate: Platform, wanted: Platform) -> t.Optional[int]:
    """How well `candidate` suits `wanted`: 0 is exactly it, higher is a lesser fallback, None does not run."""
    try:
        return compatible(wanted).index(normalize(candidate))
    except ValueError:
        return None


def matches(candidate: Platform, wanted: Platform) -> bool:
    return rank(candidate, wanted) is not None


T = t.TypeVar('T')


def choose(candidates: t.Sequence[t.Tuple[t.Optional[Platform], T]], wanted: Platform, where: str) -> T:
    """The entry that suits `wanted` best (the first listed among equals); the error names every one that exists."""
    ranked = [(rank(candidate, wanted), number) for number, (candidate, _item) in enumerate(candidates)
              if candidate is not None]
    suitable = sorted((level, number) for level, number in ranked if level is not None)
    if suitable:
        return candidates[suitable[0][1]][1]
    available = ', '.join(sorted(str(candidate) for candidate, _item in candidates if candidate)) or 'none'
    raise PlatformError('%s has no image for platform %s; available: %s' % (where, normalize(wanted), available))


def check_image_platform(actual: t.Optional[Platform], wanted: t.Optional[Platform], where: str) -> t.List[str]:
    """Warnings about the platform of the image a source chose, once its own platform is known.

    A platform asked for must suit the image's own (when the image says what its own is); with none
    asked for, an image for another platform than the host's is used, but the user hears of it.
    """
    if actual is None:
        return []
    if wanted is not None:
        if not matches(actual, wanted):
            raise PlatformError('%s has no image for platform %s; available: %s' % (where, normalize(wanted), actual))
        return []
    host = host_platform()
    if matches(actual, host):
        return []
    return ["%s: the image is for platform %s, not this host's (%s); it is used as no platform was asked for "
            "(set platform: %s to say this is intended)" % (where, actual, host, normalize(actual))]
