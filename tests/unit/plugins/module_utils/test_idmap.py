# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""UID/GID maps: what is accepted, what is refused and why, and how ids are looked up."""

from __future__ import annotations

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError
from ansible_collections.virt.bootstrap.plugins.module_utils._idmap import (
    MAX_ID,
    IdMap,
    IdMapError,
    IdRange,
    parse_id_map,
)


@pytest.mark.parametrize('value, expected', [
    (None, []),
    ([], []),
    ([[0, 1000, 10]], [[0, 1000, 10]]),
    ([[0, 1000, 10], [500, 1500, 10]], [[0, 1000, 10], [500, 1500, 10]]),
    (((0, 100000, 65536),), [[0, 100000, 65536]]),
    (['0:100000:65536'], [[0, 100000, 65536]]),
    (['0:1000:10', [500, 1500, 10]], [[0, 1000, 10], [500, 1500, 10]]),
    # What a Jinja template gives without native types: numbers as strings.
    ([['0', '100000', '65536']], [[0, 100000, 65536]]),
    # Adjacent ranges do not overlap, on either side.
    ([[0, 1000, 10], [10, 1010, 10]], [[0, 1000, 10], [10, 1010, 10]]),
    # The largest ids chown can set: (uid_t)-1 means "leave unchanged".
    ([[MAX_ID, 0, 1], [0, MAX_ID, 1]], [[MAX_ID, 0, 1], [0, MAX_ID, 1]]),
    ([[0, 0, MAX_ID + 1]], [[0, 0, MAX_ID + 1]]),
])
def test_valid_maps_are_accepted(value, expected):
    assert parse_id_map(value).as_lists() == expected


@pytest.mark.parametrize('value, message', [
    # wrong shapes
    ('0:1000:10', 'must be a list'),
    ({'start': 0}, 'must be a list'),
    (0, 'must be a list'),
    ([0, 1000, 10], 'entry 1 must be [start, target, count]'),
    ([[0, 1000]], 'entry 1 must be [start, target, count]'),
    ([[0, 1000, 10, 1]], 'entry 1 must be [start, target, count]'),
    ([[]], 'entry 1 must be [start, target, count]'),
    ([[0, 1000, 10], {'start': 0}], 'entry 2 must be [start, target, count]'),
    (['0:1000'], 'entry 1 must be [start, target, count]'),
    (['0:1000:10:1'], 'entry 1 must be [start, target, count]'),
    # not numbers
    ([['zero', 1000, 10]], 'start must be a number'),
    ([[0, '1000x', 10]], 'target must be a number'),
    ([[0, 1000, '']], 'count must be a number'),
    ([[0, 1000, None]], 'count must be a number'),
    ([[0, [1000], 10]], 'target must be a number'),
    (['a:b:c'], 'start must be a number'),
    ([[0, '0x10', 10]], 'target must be a number'),
    ([[0, '1e3', 10]], 'target must be a number'),
    ([[True, 1000, 10]], 'start must be a number'),
    ([[0, 1000, False]], 'count must be a number'),
    ([[0.5, 1000, 10]], 'start must be an integer'),
    ([[0, 1000.0, 10]], 'target must be an integer'),
    ([[0, float('inf'), 10]], 'target must be an integer'),
    ([[0, float('nan'), 10]], 'target must be an integer'),
    # out of range
    ([[-1, 1000, 10]], 'cannot be negative'),
    ([[0, -1000, 10]], 'cannot be negative'),
    (['-1:1000:10'], 'cannot be negative'),
    ([[0, 1000, 0]], 'count must be at least 1'),
    ([[0, 1000, -5]], 'count must be at least 1'),
    ([[MAX_ID + 1, 0, 1]], 'beyond %d' % MAX_ID),
    ([[0, MAX_ID + 1, 1]], 'beyond %d' % MAX_ID),
    ([[MAX_ID, 0, 2]], 'beyond %d' % MAX_ID),
    ([[0, MAX_ID, 2]], 'beyond %d' % MAX_ID),
    ([[0, 0, 2 ** 64]], 'beyond %d' % MAX_ID),
    # overlapping source ranges
    ([[0, 1000, 10], [5, 2000, 10]], 'overlap'),
    ([[5, 2000, 10], [0, 1000, 10]], 'overlap'),
    ([[0, 1000, 100], [50, 2000, 1]], 'overlap'),
    ([[0, 1000, 10], [9, 2000, 1]], 'overlap'),
    ([[0, 1000, 10], [20, 3000, 5], [100, 4000, 1], [22, 5000, 1]], 'overlap'),
    ([[7, 1000, 1], [7, 2000, 1]], 'overlap'),
    # overlapping targets: two ids of the image would get one owner on the host
    ([[0, 1000, 10], [10, 1000, 10]], 'target ranges [0, 1000, 10] and [10, 1000, 10] overlap'),
    ([[0, 1000, 10], [100, 1009, 1]], 'target ranges'),
    ([[500, 1500, 10], [0, 1495, 10]], 'target ranges'),
])
def test_invalid_maps_are_refused_with_a_reason(value, message):
    with pytest.raises(IdMapError) as caught:
        parse_id_map(value)
    assert message in str(caught.value)


def test_errors_name_the_option_and_are_bootstrap_errors():
    with pytest.raises(BootstrapError, match='^gid_map entry 2'):
        parse_id_map([[0, 1000, 10], [1, 2]], 'gid_map')


def test_error_shows_the_entry_as_given():
    with pytest.raises(IdMapError) as caught:
        parse_id_map(['0:1000'])
    assert "'0:1000'" in str(caught.value)


def test_old_tool_fixture_map_looks_each_id_up_once():
    # [[1000,2000,10],[0,1000,10],[500,500,10]]: chaining would send 0 -> 1000 -> 2000.
    id_map = parse_id_map([[1000, 2000, 10], [0, 1000, 10], [500, 500, 10]])
    assert [id_map(original) for original in (0, 9, 10, 500, 509, 510, 1000, 1009, 1010)] == \
        [1000, 1009, 10, 500, 509, 510, 2000, 2009, 1010]


@pytest.mark.parametrize('original, expected', [
    (0, 1000), (5, 1005), (9, 1009),       # first range, both ends
    (500, 1500), (509, 1509),              # second range, both ends
    (10, 10), (499, 499), (510, 510),      # between and after ranges: unchanged
    (65534, 65534), (MAX_ID, MAX_ID),
])
def test_lookup_uses_the_range_holding_the_id_and_leaves_others(original, expected):
    id_map = parse_id_map([[0, 1000, 10], [500, 1500, 10]])
    assert id_map(original) == expected


def test_lookup_takes_the_first_matching_range():
    # parse_id_map refuses overlaps; an IdMap built directly still has a defined answer.
    id_map = IdMap([IdRange(0, 1000, 10), IdRange(0, 2000, 10)])
    assert id_map(3) == 1003


def test_empty_map_is_false_and_maps_nothing():
    assert not parse_id_map(None)
    assert not parse_id_map([])
    assert parse_id_map([])(1234) == 1234
    assert parse_id_map([[0, 0, 1]])
