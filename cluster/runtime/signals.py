"""SIGTERM and Ctrl-C: one clean stop of a run."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class StopRequest:
    """A stop asked for by a signal: SIGTERM (`ray job stop`, a scheduler) and Ctrl-C get one clean shutdown.

    The handler raises KeyboardInterrupt in the main thread at once, and also sets `requested`. Python runs a
    handler at whatever bytecode the main thread is at; when that is a finalizer or a callback whose errors
    are only printed ("Exception ignored in ..."), the raise is lost. The run loop checks `requested` on every
    pass, so the stop still happens, one poll later.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested.set()
        raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        previous: dict[int, Any] = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
