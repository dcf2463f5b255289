# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""UID/GID maps: [[start, target, count], ...], validated, and looked up once per id."""

from __future__ import annotations

import re
import typing as t
from dataclasses import dataclass

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError

MAX_ID = 2 ** 32 - 2  # (uid_t)-1 means "no change" to chown
_NUMBER_RE = re.compile(r'\s*-?[0-9]+\s*')


class IdMapError(BootstrapError):
    """A UID/GID map that cannot be applied."""


@dataclass(frozen=True)
class IdRange:
    start: int
    target: int
    count: int


class IdMap:
    """Maps an id through the first range that holds it; ids outside every range stay as they are."""

    def __init__(self, ranges: t.Sequence[IdRange] = ()) -> None:
        self.ranges = tuple(ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __call__(self, original: int) -> int:
        for entry in self.ranges:
            if entry.start <= original < entry.start + entry.count:
                return entry.target + original - entry.start
        return original

    def as_lists(self) -> t.List[t.List[int]]:
        return [[entry.start, entry.target, entry.count] for entry in self.ranges]


def parse_id_map(value: t.Any, name: str = 'uid_map') -> IdMap:
    """Validate a map given as [[start, target, count], ...] (lists, tuples or 'S:T:C' strings)."""
    if value is None:
        return IdMap()
    if not isinstance(value, (list, tuple)):
        raise IdMapError('%s must be a list of [start, target, count], not %r' % (name, value))
    ranges = []
    for position, given in enumerate(value, 1):
        entry = given.split(':') if isinstance(given, str) else given
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise IdMapError('%s entry %d must be [start, target, count], not %r' % (name, position, given))
        start, target, count = [_integer(field, '%s entry %d: %s' % (name, position, field_name))
                                for field_name, field in zip(('start', 'target', 'count'), entry)]
        if start < 0 or target < 0:
            raise IdMapError('%s entry %d: ids cannot be negative (%r)' % (name, position, given))
        if count <= 0:
            raise IdMapError('%s entry %d: count must be at least 1 (%r)' % (name, position, given))
        if start + count - 1 > MAX_ID or target + count - 1 > MAX_ID:
            raise IdMapError('%s entry %d: ids beyond %d (%r)' % (name, position, MAX_ID, given))
        ranges.append(IdRange(start, target, count))
    for first_index, first in enumerate(ranges):
        for second in ranges[first_index + 1:]:
            for side, first_start, second_start in (('source', first.start, second.start),
                                                    ('target', first.target, second.target)):
                # Overlapping targets would give two ids of the image the same owner on the host.
                if first_start < second_start + second.count and second_start < first_start + first.count:
                    raise IdMapError('%s: %s ranges %s and %s overlap' % (
                        name, side, [first.start, first.target, first.count],
                        [second.start, second.target, second.count]))
    return IdMap(ranges)


def _integer(field: t.Any, what: str) -> int:
    """An int, or a string of ASCII digits (templates give strings); never a bool or a float."""
    if isinstance(field, int) and not isinstance(field, bool):
        return field
    if isinstance(field, str) and _NUMBER_RE.fullmatch(field):
        return int(field)
    if isinstance(field, float):
        raise IdMapError('%s must be an integer, not %r' % (what, field))
    raise IdMapError('%s must be a number, not %r' % (what, field))
