# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The deadline of one exchange with a registry: its clock, and the sockets it shuts down when time is up."""

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


def test_a_deadline_kept_extended_never_expires_and_arms_a_timer_per_timeout_not_per_call(monkeypatch):
    timers = []
    real_timer = threading.Timer

    def counted_timer(*args, **kwargs):
        timers.append(real_timer(*args, **kwargs))
        return timers[-1]

    monkeypatch.setattr(client.threading, 'Timer', counted_timer)
    with _Deadline(0.3) as deadline:
        ours, theirs = watched_pair(deadline)
        calls = 0
        started = time.monotonic()
        while time.monotonic() - started < 1.0:  # more than three timeouts, extended all along
            deadline.extend()
            calls += 1
            time.sleep(0.001)
        assert not deadline.expired
        assert not is_shut_down(ours)
    assert calls > 200
    assert len(timers) <= 6  # the first, and one more at each due time it found moved on
    for timer in timers:
        timer.join(1.0)
    assert not any(timer.is_alive() for timer in timers)  # leaving it stopped the last one
    ours.close()
    theirs.close()


def test_a_deadline_no_longer_extended_expires_its_time_after_the_last_extension():
    with _Deadline(0.3) as deadline:
        ours, theirs = watched_pair(deadline)
        for _ in range(20):
            deadline.extend()
            time.sleep(0.02)
        last = time.monotonic()
        while not deadline.expired and time.monotonic() - last < 5.0:
            time.sleep(0.01)
        waited = time.monotonic() - last
        assert deadline.expired
        assert 0.25 <= waited < 2.0
        assert is_shut_down(ours)
    ours.close()
    theirs.close()


def test_a_paused_clock_does_not_run_and_resumes_with_the_time_that_was_left():
    with _Deadline(0.4) as deadline:
        time.sleep(0.2)
        deadline.pause()
        time.sleep(0.6)  # longer than the whole timeout
        assert not deadline.expired
        resumed = time.monotonic()
        deadline.resume()
        while not deadline.expired and time.monotonic() - resumed < 5.0:
            time.sleep(0.01)
        assert deadline.expired
        assert 0.1 <= time.monotonic() - resumed < 0.35  # about the 0.2 s that was left, not 0.4 s


def test_a_deadline_left_before_its_time_stops_its_timer():
    with _Deadline(0.2) as deadline:
        ours, theirs = watched_pair(deadline)
    time.sleep(0.4)
    assert not deadline.expired
    assert not is_shut_down(ours)
    ours.close()
    theirs.close()
