# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The deadline of one exchange with a registry: its clock, and the sockets it shuts down when time is up.

The bounds are one-sided where a loaded machine could stretch a sleep: a deadline may expire late, never
early, since it expires only once the monotonic clock has passed its due time.
"""

from __future__ import annotations

import socket
import threading
import time

from ansible_collections.virt.bootstrap.plugins.module_utils._registry import client
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.client import _Deadline


def watched_pair(deadline: _Deadline):
    ours, theirs = socket.socketpair()
    deadline.watch(ours)
    return ours, theirs


def is_shut_down(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b''
    except socket.timeout:
        return False


def wait_for_expiry(deadline: _Deadline, at_most: float = 10.0) -> None:
    started = time.monotonic()
    while not deadline.expired and time.monotonic() - started < at_most:
        time.sleep(0.005)


def counting_timers(monkeypatch):
    timers = []
    real_timer = threading.Timer

    def counted_timer(*args, **kwargs):
        timers.append(real_timer(*args, **kwargs))
        return timers[-1]

    monkeypatch.setattr(client.threading, 'Timer', counted_timer)
    return timers


def test_a_deadline_kept_extended_never_expires_and_arms_a_timer_per_timeout_not_per_call(monkeypatch):
    timers = counting_timers(monkeypatch)
    with _Deadline(1.0) as deadline:
        ours, theirs = watched_pair(deadline)
        calls = 0
        started = time.monotonic()
        while time.monotonic() - started < 3.0:  # three timeouts, extended all along
            deadline.extend()
            calls += 1
            time.sleep(0.002)
        assert not deadline.expired
        assert not is_shut_down(ours)
    assert calls > 20
    assert len(timers) <= 6  # the first, and one more at each due time it found moved on
    assert timers[-1].finished.is_set()  # leaving the deadline stopped the last one
    ours.close()
    theirs.close()


def test_a_deadline_no_longer_extended_expires_a_timeout_after_the_last_extension():
    with _Deadline(0.3) as deadline:
        ours, theirs = watched_pair(deadline)
        for _extension in range(10):
            deadline.extend()
            time.sleep(0.02)
        last = time.monotonic()
        deadline.extend()
        wait_for_expiry(deadline)
        assert deadline.expired
        assert time.monotonic() - last >= 0.3
        assert is_shut_down(ours)
    ours.close()
    theirs.close()


def test_a_paused_clock_does_not_run_and_resumes_with_the_time_that_was_left():
    entered = time.monotonic()
    with _Deadline(2.0) as deadline:
        time.sleep(0.5)
        deadline.pause()
        used = time.monotonic() - entered  # at least what ran before the pause
        time.sleep(2.5)  # longer than the whole timeout
        assert not deadline.expired
        resumed = time.monotonic()
        deadline.resume()
        wait_for_expiry(deadline)
        waited = time.monotonic() - resumed
        assert deadline.expired
        assert waited < 1.9  # the time that was left (about 1.5 s), not a fresh 2 s
        assert waited >= 2.0 - used - 0.01


def test_leaving_a_deadline_before_its_time_stops_its_timer(monkeypatch):
    timers = counting_timers(monkeypatch)
    with _Deadline(0.2) as deadline:
        ours, theirs = watched_pair(deadline)
    assert timers and all(timer.finished.is_set() for timer in timers)
    time.sleep(0.4)
    assert not deadline.expired
    assert not is_shut_down(ours)
    ours.close()
    theirs.close()
