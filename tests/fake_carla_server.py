"""A stand-in CARLA server process for supervisor tests.

Listens on --port and answers the line "ping" with "pong <its pid>" (see `probe`
and `server_pid`; a restarted server answers with a new pid). It can
die after N seconds, hang (keep the socket but stop answering) after N
seconds, ignore SIGTERM, start a child in its process group, hold memory, or
obey a control file whose content is "die" or "hang". It exits by itself after
--lifetime seconds so a broken test can never leave it behind for long.

Usage: python tests/fake_carla_server.py --port 2000 [--die-after 1] [--hang-after 1] ...
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def server_pid(host: str, port: int, timeout_s: float) -> int | None:
    """The pid of the server answering a ping within the timeout; None if none does (dead or hung)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            s.sendall(b"ping\n")
            words = s.recv(32).split()
    except OSError:
        return None
    return int(words[1]) if len(words) == 2 and words[0] == b"pong" else None


def probe(host: str, port: int, timeout_s: float) -> bool:
    """The supervisor's readiness probe for this server: a ping answered within the timeout."""
    return server_pid(host, port, timeout_s) is not None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--startup-delay", type=float, default=0.0)
    p.add_argument("--die-after", type=float, default=0.0)
    p.add_argument("--hang-after", type=float, default=0.0)
    p.add_argument("--control-file", default="")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--child", action="store_true", help="start a sleeping child in our process group")
    p.add_argument("--alloc-mb", type=int, default=0)
    p.add_argument("--pid-file", default="", help="append our pid (and the child's) to this file")
    p.add_argument("--lifetime", type=float, default=60.0)
    args = p.parse_args(argv)

    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pids = [os.getpid()]
    if args.child:
        child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({args.lifetime})"])
        pids.append(child.pid)
    if args.pid_file:
        with open(args.pid_file, "a") as f:
            f.write(" ".join(map(str, pids)) + "\n")
    ballast = bytearray(args.alloc_mb * 1024 * 1024)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1  # touch every page so it counts as resident
    time.sleep(args.startup_delay)

    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", args.port))
    srv.listen(16)
    start = time.monotonic()
    hung = False
    while time.monotonic() - start < args.lifetime:
        age = time.monotonic() - start
        command = Path(args.control_file).read_text().strip() if args.control_file and os.path.exists(
            args.control_file) else ""
        if (args.die_after and age >= args.die_after) or command == "die":
            return 3
        hung = hung or bool(args.hang_after and age >= args.hang_after) or command == "hang"
        if hung:
            time.sleep(0.05)  # the socket stays open: connects succeed, nothing answers
            continue
        ready, _, _ = select.select([srv], [], [], 0.05)
        if ready:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(1.0)
                try:
                    if conn.recv(16).startswith(b"ping"):
                        conn.sendall(b"pong %d\n" % os.getpid())
                except OSError:
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
