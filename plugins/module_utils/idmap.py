# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""UID/GID maps: [[start, target, count], ...], validated, and looked up once per id."""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError

MAX_ID = 2 ** 32 - 2  # (uid_t)-1 means "no change" to chown


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
    for position, entry in enumerate(value, 1):
        if isinstance(entry, str):
            entry = entry.split(':')
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise IdMapError('%s entry %d must be [start, target, count], not %r' % (name, position, entry))
        numbers = []
        for field_name, field in zip(('start', 'target', 'count'), entry):
            if isinstance(field, bool):
                raise IdMapError('%s entry %d: %s must be a number, not %r' % (name, position, field_name, field))
            try:
                number = int(field)
            except (TypeError, ValueError):
                raise IdMapError('%s entry %d: %s must be a number, not %r' % (name, position, field_name, field))
            if isinstance(field, float) and number != field:
                raise IdMapError('%s entry %d: %s must be a whole number, not %r' % (name, position, field_name, field))
            numbers.append(number)
        start, target, count = numbers
        if start < 0 or target < 0:
            raise IdMapError('%s entry %d: ids cannot be negative (%r)' % (name, position, list(entry)))
        if count <= 0:
            raise IdMapError('%s entry %d: count must be at least 1 (%r)' % (name, position, list(entry)))
        if start + count - 1 > MAX_ID or target + count - 1 > MAX_ID:
            raise IdMapError('%s entry %d: ids beyond %d (%r)' % (name, position, MAX_ID, list(entry)))
        ranges.append(IdRange(start, target, count))
    for first_index, first in enumerate(ranges):
        for second in ranges[first_index + 1:]:
            if first.start < second.start + second.count and second.start < first.start + first.count:
                raise IdMapError('%s: source ranges %s and %s overlap' % (
                    name, [first.start, first.target, first.count], [second.start, second.target, second.count]))
    return IdMap(ranges)
