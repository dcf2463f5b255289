# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A test server on 127.0.0.1 served from a thread of the test process: start, port, stop."""

from __future__ import annotations

import socketserver
import threading
import typing as t


class LoopbackServer:
    """Subclasses make their socketserver in `_make_server`; `POLL_SECONDS` is how soon stop() is noticed."""

    NAME = 'loopback-server'
    POLL_SECONDS = 0.05

    def __init__(self) -> None:
        self._server: t.Optional[socketserver.BaseServer] = None
        self._thread: t.Optional[threading.Thread] = None

    def _make_server(self) -> socketserver.BaseServer:
        raise NotImplementedError

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError('%s is not running' % self.NAME)
        return int(self._server.server_address[1])  # type: ignore[attr-defined]

    def start(self) -> t.Any:
        self._server = self._make_server()
        self._thread = threading.Thread(target=self._server.serve_forever, args=(self.POLL_SECONDS,), name=self.NAME,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> t.Any:
        return self.start()

    def __exit__(self, *exc_info: t.Any) -> None:
        self.stop()
