# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""Progress: {'status': str, 'value': percent} dicts, driven by bytes actually processed."""

from __future__ import annotations

import json
import time
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError

ProgressCallback = t.Callable[[t.Dict[str, t.Any]], None]


def human_size(size: float) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if size < 1024 or unit == 'GiB':
            return ('%d %s' if unit == 'B' else '%.1f %s') % (size, unit)
        size /= 1024.0
    return '%.1f TiB' % size  # pragma: no cover


class Progress:
    """Turns per-layer byte counts into one value rising from 0 to 100.

    Layers of unknown size count as one unit each, so the value still moves and never goes back.
    """

    def __init__(self, callback: t.Optional[ProgressCallback], min_interval: float = 0.25) -> None:
        self._callback = callback
        self._min_interval = min_interval
        self._value = 0.0  # the latest value, reported or held back by the throttle
        self._last_value = -1.0
        self._last_time = 0.0
        self._status = ''
        self._sizes: t.List[int] = []
        self._layer_index = 0

    def status(self, status: str, value: t.Optional[float] = None) -> None:
        self._status = status
        self._emit(self._value if value is None else value, force=True)

    def start_layers(self, sizes: t.Sequence[t.Optional[int]]) -> None:
        known = [size for size in sizes if size]
        unit = max(sum(known) // max(len(known), 1), 1)
        self._sizes = [size if size else unit for size in sizes]

    def layer(self, index: int, count: int, size: t.Optional[int]) -> t.Callable[[int], None]:
        """Announce layer `index` (0-based) and return the callback for its bytes read."""
        self._layer_index = index
        size_text = ' with size: %s' % human_size(size) if size else ''
        self.status('Extracting layer (%d/%d)%s' % (index + 1, count, size_text), self._value_at(index, 0))
        return lambda done: self._emit(self._value_at(index, done))

    def done(self, status: str) -> None:
        self.status(status, 100.0)

    def _value_at(self, index: int, done: int) -> float:
        total = sum(self._sizes) or 1
        before = sum(self._sizes[:index])
        current = min(done, self._sizes[index]) if index < len(self._sizes) else 0
        # Extraction spans 0..99; 100 is only reported once everything is in place.
        return 99.0 * (before + current) / total

    def _emit(self, value: float, force: bool = False) -> None:
        value = self._value = max(value, self._value)
        if self._callback is None:
            return
        now = time.monotonic()
        if not force and (now - self._last_time < self._min_interval or value == self._last_value):
            return
        self._last_value, self._last_time = value, now
        self._callback({'status': self._status, 'value': round(value, 1)})


class JsonLinesLog:
    """A progress callback appending one JSON object per line to a file, for `tail -f`."""

    def __init__(self, path: str) -> None:
        try:
            self._stream = open(path, 'a', encoding='utf-8')
        except OSError as exc:
            raise BootstrapError('cannot open progress_log %s: %s' % (path, exc.strerror))

    def __call__(self, event: t.Dict[str, t.Any]) -> None:
        record = dict(event, time=round(time.time(), 3))
        self._stream.write(json.dumps(record, sort_keys=True) + '\n')
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()
