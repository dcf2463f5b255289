# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress: one value from 0 to 100 driven by bytes, readable statuses, and the JSON lines log."""

from __future__ import annotations

import functools
import json
import os
import re
import typing as t

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import bootstrap as bootstrap_module
from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import bootstrap
from ansible_collections.virt.bootstrap.plugins.module_utils._progress import JsonLinesLog, Progress, human_size
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import OciLayoutBuilder
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import TarBuilder

MIB = 1 << 20
BIG_FILES = 10
BIG_FILE_SIZE = int(24.5 * MIB) // BIG_FILES - 1024  # with headers, the layer is 24.5 MiB to one decimal


@pytest.mark.parametrize('size, text', [
    (0, '0 B'),
    (1023, '1023 B'),
    (1024, '1.0 KiB'),
    (1536, '1.5 KiB'),
    (int(24.5 * MIB), '24.5 MiB'),
    (3 * (1 << 30) // 2, '1.5 GiB'),
    (2048 * (1 << 30), '2048.0 GiB'),
])
def test_human_size(size, text):
    assert human_size(size) == text


class Recorder:
    def __init__(self) -> None:
        self.events: t.List[t.Dict[str, t.Any]] = []

    def __call__(self, event: t.Dict[str, t.Any]) -> None:
        assert set(event) == {'status', 'value'}
        assert isinstance(event['status'], str) and isinstance(event['value'], float)
        self.events.append(dict(event))

    @property
    def values(self) -> t.List[float]:
        return [event['value'] for event in self.events]

    def first_value_of(self, status_start: str) -> float:
        return next(event['value'] for event in self.events if event['status'].startswith(status_start))


# -- Progress on its own ---------------------------------------------------------------------------


def test_value_follows_bytes_across_layers_of_different_sizes():
    recorder = Recorder()
    progress = Progress(recorder, min_interval=0)
    progress.start_layers([100, 300])
    first = progress.layer(0, 2, 100)
    first(50)
    first(100)
    second = progress.layer(1, 2, 300)
    second(150)
    second(300)
    progress.done('Extraction completed successfully!')
    assert recorder.events == [
        {'status': 'Extracting layer (1/2) with size: 100 B', 'value': 0.0},
        {'status': 'Extracting layer (1/2) with size: 100 B', 'value': 12.4},
        {'status': 'Extracting layer (1/2) with size: 100 B', 'value': 24.8},
        {'status': 'Extracting layer (2/2) with size: 300 B', 'value': 24.8},
        {'status': 'Extracting layer (2/2) with size: 300 B', 'value': 61.9},
        {'status': 'Extracting layer (2/2) with size: 300 B', 'value': 99.0},
        {'status': 'Extraction completed successfully!', 'value': 100.0},
    ]


def test_value_never_goes_back_and_bytes_beyond_the_size_do_not_overshoot():
    recorder = Recorder()
    progress = Progress(recorder, min_interval=0)
    progress.start_layers([100, 100])
    layer = progress.layer(0, 2, 100)
    layer(80)
    layer(40)              # a reader reporting less must not move the value back
    layer(10 ** 6)         # more bytes than announced: capped at the layer's share
    progress.status('Setting the root password', 10.0)
    assert recorder.events[-1] == {'status': 'Setting the root password', 'value': 49.5}
    progress.layer(1, 2, 100)(50)
    values = recorder.values
    assert values == sorted(values)
    assert max(values) < 100


def test_layers_of_unknown_size_still_move_the_value():
    recorder = Recorder()
    progress = Progress(recorder, min_interval=0)
    progress.start_layers([None, None, None])
    for index in range(3):
        progress.layer(index, 3, None)
    assert [event['status'] for event in recorder.events] == [
        'Extracting layer (1/3)', 'Extracting layer (2/3)', 'Extracting layer (3/3)']
    assert recorder.values == [0.0, 33.0, 66.0]


def test_byte_updates_are_throttled_but_status_changes_are_not():
    recorder = Recorder()
    progress = Progress(recorder, min_interval=3600)
    progress.start_layers([1000, 1000])
    layer = progress.layer(0, 2, 1000)
    for done in range(1, 1001):
        layer(done)
    progress.layer(1, 2, 1000)
    progress.done('Extraction completed successfully!')
    assert [event['status'] for event in recorder.events] == [
        'Extracting layer (1/2) with size: 1000 B', 'Extracting layer (2/2) with size: 1000 B',
        'Extraction completed successfully!']


def test_a_status_after_held_back_byte_updates_carries_the_latest_value():
    # A small last layer is read within the throttle interval; the next status must not show 0%.
    recorder = Recorder()
    progress = Progress(recorder, min_interval=3600)
    progress.start_layers([100])
    layer = progress.layer(0, 1, 100)
    layer(60)
    layer(100)
    progress.status('Setting the root password')
    assert recorder.events == [
        {'status': 'Extracting layer (1/1) with size: 100 B', 'value': 0.0},
        {'status': 'Setting the root password', 'value': 99.0},
    ]


def test_no_callback_is_fine():
    progress = Progress(None)
    progress.start_layers([10])
    progress.layer(0, 1, 10)(5)
    progress.done('done')


# -- through a real bootstrap() ----------------------------------------------------------------------


@pytest.fixture(scope='module')
def three_layer_image(tmp_path_factory) -> str:
    """An OCI layout with a small layer, a 24.5 MiB one and another small one, uncompressed."""
    layout = str(tmp_path_factory.mktemp('progress') / 'layout')
    small = TarBuilder().dir('etc').file('etc/os-release', b'ID=test\n').tar()
    big = TarBuilder().dir('data')
    for index in range(BIG_FILES):
        big.file('data/blob-%d' % index, bytes([index]) * BIG_FILE_SIZE)
    other = TarBuilder().dir('etc').file('etc/hostname', b'guest\n').tar()
    builder = OciLayoutBuilder(layout)
    manifest = builder.image([small, big.tar(), other], compression='none')
    builder.write_index([(manifest, 'latest')])
    return 'oci:%s:latest' % layout


@pytest.fixture
def every_byte_update(monkeypatch):
    # The engine throttles updates to four a second; a test extracts faster than that.
    monkeypatch.setattr(bootstrap_module, 'Progress', functools.partial(Progress, min_interval=0))


def test_progress_rises_from_0_to_100_with_layer_statuses(three_layer_image, tmp_path):
    recorder = Recorder()
    result = bootstrap(three_layer_image, str(tmp_path / 'guest'), progress_cb=recorder)
    assert result.changed
    statuses = [event['status'] for event in recorder.events]
    assert recorder.events[0] == {'status': statuses[0], 'value': 0.0}
    assert recorder.events[-1] == {'status': 'Extraction completed successfully!', 'value': 100.0}
    assert recorder.values == sorted(recorder.values)
    assert 100.0 not in recorder.values[:-1]
    assert [status for index, status in enumerate(statuses) if status not in statuses[:index]][:3] == [
        statuses[0], 'Extracting layer (2/3) with size: 24.5 MiB', statuses[-2]]
    assert re.fullmatch(r'Extracting layer \(1/3\) with size: \d+(\.\d)? (B|KiB)', statuses[0])
    assert re.fullmatch(r'Extracting layer \(3/3\) with size: \d+(\.\d)? (B|KiB)', statuses[-2])


def test_a_big_layer_moves_the_value_more_than_a_small_one(three_layer_image, tmp_path):
    recorder = Recorder()
    bootstrap(three_layer_image, str(tmp_path / 'guest'), progress_cb=recorder)
    start_1 = recorder.first_value_of('Extracting layer (1/3)')
    start_2 = recorder.first_value_of('Extracting layer (2/3)')
    start_3 = recorder.first_value_of('Extracting layer (3/3)')
    assert start_2 - start_1 < 1
    assert start_3 - start_2 > 95


def test_values_move_within_a_layer_as_its_bytes_are_read(three_layer_image, tmp_path, every_byte_update):
    recorder = Recorder()
    bootstrap(three_layer_image, str(tmp_path / 'guest'), progress_cb=recorder)
    big_layer = [event['value'] for event in recorder.events
                 if event['status'] == 'Extracting layer (2/3) with size: 24.5 MiB']
    # One update per file of the big layer, each about a tenth of the way further.
    assert len(set(big_layer)) >= BIG_FILES
    assert big_layer == sorted(big_layer)
    steps = [later - earlier for earlier, later in zip(big_layer, big_layer[1:]) if later > earlier]
    assert max(steps) < 25


def test_an_unchanged_rerun_reports_no_extraction(three_layer_image, tmp_path):
    dest = str(tmp_path / 'guest')
    bootstrap(three_layer_image, dest)
    recorder = Recorder()
    assert not bootstrap(three_layer_image, dest, progress_cb=recorder).changed
    assert not [event for event in recorder.events if event['status'].startswith('Extracting')]


# -- JSON lines ----------------------------------------------------------------------------------------


def test_json_lines_log_writes_one_object_per_line_as_it_goes(tmp_path):
    path = str(tmp_path / 'progress.jsonl')
    log = JsonLinesLog(path)
    try:
        log({'status': 'Extracting layer (1/2) with size: 1.0 KiB', 'value': 0.0})
        with open(path, encoding='utf-8') as stream:
            assert len(stream.read().splitlines()) == 1  # flushed: `tail -f` sees it now
        log({'status': 'Extraction completed successfully!', 'value': 100.0})
    finally:
        log.close()
    with open(path, encoding='utf-8') as stream:
        text = stream.read()
    assert text.endswith('\n')
    records = [json.loads(line) for line in text.splitlines()]
    assert [(record['status'], record['value']) for record in records] == [
        ('Extracting layer (1/2) with size: 1.0 KiB', 0.0), ('Extraction completed successfully!', 100.0)]
    assert all(set(record) == {'status', 'value', 'time'} and isinstance(record['time'], float) for record in records)


def test_json_lines_log_appends_to_an_existing_file(tmp_path):
    path = str(tmp_path / 'progress.jsonl')
    for value in (1.0, 2.0):
        log = JsonLinesLog(path)
        log({'status': 's', 'value': value})
        log.close()
    with open(path, encoding='utf-8') as stream:
        assert [json.loads(line)['value'] for line in stream] == [1.0, 2.0]


def test_json_lines_log_in_a_real_bootstrap(three_layer_image, tmp_path):
    path = str(tmp_path / 'progress.jsonl')
    log = JsonLinesLog(path)
    try:
        bootstrap(three_layer_image, str(tmp_path / 'guest'), progress_cb=log)
    finally:
        log.close()
    with open(path, encoding='utf-8') as stream:
        records = [json.loads(line) for line in stream]
    assert records[-1]['status'] == 'Extraction completed successfully!' and records[-1]['value'] == 100
    assert [record['value'] for record in records] == sorted(record['value'] for record in records)


def test_json_lines_log_that_cannot_be_opened_is_a_clear_error(tmp_path):
    from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError
    missing = os.path.join(str(tmp_path), 'no-such-dir', 'progress.jsonl')
    with pytest.raises(BootstrapError, match='progress_log'):
        JsonLinesLog(missing)


def test_a_password_only_change_still_reports_progress_to_100(tmp_path):
    # The rootfs is kept and only /etc/shadow changes: a watcher must still see the run finish.
    src = str(tmp_path / 'rootfs.tar')
    with open(src, 'wb') as stream:
        stream.write(TarBuilder().dir('etc').file('etc/shadow', b'root:*:1::\n').tar())
    dest = str(tmp_path / 'guest')
    bootstrap(src, dest, root_password='first')
    recorder = Recorder()
    result = bootstrap(src, dest, root_password='second', progress_cb=recorder)
    assert result.changed
    assert recorder.events and recorder.events[-1]['value'] == 100.0
    assert recorder.values == sorted(recorder.values)
