"""Process and port helpers shared by tests that start servers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from checkpoint_store.local_s3 import free_ports

__all__ = ["alive", "free_ports", "silent_server"]


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not count: PID 1 here may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@contextmanager
def silent_server(max_s: float = 600.0) -> Iterator[int]:
    """The port of a loopback TCP server that accepts every connection and never answers: a store
    that hangs (a refused port fails at once, so it tests no deadline). Its thread stops on exit, or
    after `max_s` at the latest; closing the held connections then ends any client still waiting."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()
    until = time.monotonic() + max_s

    def serve() -> None:
        while not stop.is_set() and time.monotonic() < until:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=serve, name="silent-server", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in held:
            conn.close()
