# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""Driving libguestfs's guestfish as a program: its messages, ending it with us, and one session over a pipe.

The Python binding is importable only by Debian's own interpreter, so the program it is. A Session
is one guestfish process (one appliance launch) fed commands on stdin, with the host free to work
between them: `wait()` returns once every command sent so far has run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils import _occupancy as occupancy
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import ToolError
from ansible_collections.virt.bootstrap.plugins.module_utils._rootpath import libc
from ansible_collections.virt.bootstrap.plugins.module_utils._sources import without_userinfo

MAX_STDERR_SHOWN = 4000
_PR_SET_PDEATHSIG = 1
# Bytes a guestfish argument may hold as they are; every other one is written \xHH inside double quotes.
_PLAIN = frozenset(b'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:=,')
_STOP_TIMEOUT = 30


def stderr_text(data: bytes, urls: t.Iterable[t.Optional[str]] = ()) -> str:
    """A tool's stderr as it may be shown: `urls` without their user:password@, without libguestfs's
    how-to-report-bugs footer, and not too long."""
    text = data.decode('utf-8', 'replace').split('\nIf reporting bugs, run', 1)[0].strip()
    for url in urls:
        if url:
            text = text.replace(url, without_userinfo(url))
    return text if len(text) <= MAX_STDERR_SHOWN else '...' + text[-MAX_STDERR_SHOWN:]


def die_with_parent() -> None:
    """In the child, before exec: end with us. A killed run must not leave a tool going on beside dest
    (libguestfs ends its appliance when the tool ends)."""
    libc().prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def quote(argument: t.Union[str, bytes]) -> str:
    """`argument` as one guestfish word, whatever bytes it holds (a hostile image's names included)."""
    data = argument.encode('utf-8', 'surrogateescape') if isinstance(argument, str) else argument
    return '"%s"' % ''.join(chr(byte) if byte in _PLAIN else '\\x%02x' % byte for byte in data)


class ApplianceError(ToolError):
    """A command failed inside the appliance (not on the host)."""


def _end_group(group: int, kill: bool) -> None:
    """Wait until nothing of guestfish's process group is left (its qemu outlives it by seconds): a failed run
    must not return while the appliance still holds its disk. `kill`: end them at once instead."""
    deadline = time.monotonic() + _STOP_TIMEOUT
    while occupancy.group_running(group):
        if kill or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        time.sleep(0.05)


class Session:
    """One guestfish process; commands go to its stdin, and guestfish stops at the first that fails."""

    def __init__(self, program: str, scratch_dir: str) -> None:
        self._stderr = tempfile.TemporaryFile(dir=scratch_dir)
        self._marks = 0
        self._process: t.Optional[subprocess.Popen] = subprocess.Popen(
            [program], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, close_fds=True,
            preexec_fn=die_with_parent, start_new_session=True)  # a group of its own: its qemu ends with it

    def __enter__(self) -> 'Session':
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close(done=exc_info[0] is None)

    @property
    def pid(self) -> t.Optional[int]:
        return self._process.pid if self._process is not None else None

    def send(self, command: str, *arguments: t.Union[str, bytes], options: t.Sequence[str] = ()) -> None:
        """Queue `command`; `options` are guestfish's own name:value words, passed as they are."""
        line = ' '.join([command] + [quote(argument) for argument in arguments] + list(options)) + '\n'
        process = self._running()
        try:
            t.cast(t.IO[bytes], process.stdin).write(line.encode('ascii'))
            t.cast(t.IO[bytes], process.stdin).flush()
        except BrokenPipeError:
            self._failed('guestfish stopped')

    def wait(self, what: str) -> t.List[str]:
        """Wait until every command sent has run; what they printed, by line. A failure is a ToolError
        that says `what` was being done and quotes guestfish."""
        self._marks += 1
        mark = 'virt-bootstrap-mark-%d' % self._marks
        self.send('echo', mark)
        lines = []
        stdout = t.cast(t.IO[bytes], self._running().stdout)
        while True:
            line = stdout.readline()
            if not line:
                self._failed(what)
            text = line.decode('utf-8', 'surrogateescape').rstrip('\n')
            if text == mark:
                return lines
            lines.append(text)

    def close(self, done: bool = False) -> None:
        """End guestfish (and with it its appliance): `done`, by the end of its commands, which lets the
        appliance shut down cleanly; else at once."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(OSError):
                t.cast(t.IO[bytes], process.stdin).close()
            if not done and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            _end_group(process.pid, kill=not done)
            t.cast(t.IO[bytes], process.stdout).close()
        if not self._stderr.closed:
            self._stderr.close()

    def _running(self) -> subprocess.Popen:
        if self._process is None:
            raise ToolError('internal error: guestfish was already stopped')
        return self._process

    def _failed(self, what: str) -> t.NoReturn:
        process = self._running()
        returncode = process.wait()
        self._stderr.seek(0)
        message = stderr_text(self._stderr.read())
        raise ApplianceError('%s: guestfish failed (exit %d)%s' % (what, returncode, ': ' + message if message else ''))
