"""The watchdog in a CARLA server's process group: stops the group when its supervisor dies first.

Run as `python -I -S watchdog.py SUPERVISOR_PID GRACE_S POLL_S CONTAINER ARGV...` (see
`rollout_workers.carla.server.watched`): it forks a watchdog child, then execs ARGV (the server) in its own place, so
the server keeps this process's pid and group. Isolated (-I -S) so that it starts fast and imports
nothing of the environment it watches; it reads `procfs` from learner/common/ by path.

The watchdog is no child of the supervisor: Ray kills a dead worker's children, which would otherwise
take the watchdog down before it acts. It ignores SIGTERM once it acts, since it sends SIGTERM to its own group, and it polls the
supervisor's pid and start time rather than using PR_SET_PDEATHSIG, which fires when the forking
*thread* exits (a Ray actor's thread may end while the process lives) and reaches only the direct
child, while CarlaUE4.sh runs the server binary as a grandchild. It leaves once it is alone in the
group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

if __package__:  # imported as rollout_workers.carla.watchdog (tests, tools)
    from learner.common import procfs
else:  # run by file path in an isolated interpreter: procfs is read as a file of learner/common/
    _root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.join(_root, "learner", "common"))
    import procfs  # type: ignore[no-redef]


def _supervisor_alive(parent: int, birth: str | None) -> bool:
    fields = procfs.stat_fields(parent)
    return birth is not None and fields is not None and fields[19] == birth


def _others() -> list[int]:
    return procfs.group_members(os.getpgid(0), exclude=os.getpid())


def watch(parent: int, birth: str | None, grace_s: float, poll_s: float, container: str) -> None:
    while _supervisor_alive(parent, birth):
        if not _others():
            return
        time.sleep(poll_s)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stderr.write(f"carla-fleet watchdog: supervisor {parent} is gone; stopping the server\n")
    sys.stderr.flush()
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _others() and time.monotonic() < deadline:
        time.sleep(0.05)
    if container:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)
    os.killpg(0, signal.SIGKILL)


def main(argv: list[str]) -> None:
    parent, grace_s, poll_s, container, command = int(argv[0]), float(argv[1]), float(argv[2]), argv[3], argv[4:]
    birth = (procfs.stat_fields(parent) or [None] * 20)[19]
    if os.fork() == 0:
        try:
            watch(parent, birth, grace_s, poll_s, container)
        finally:
            os._exit(0)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.stderr.write(f"cannot start {command[0]}: {exc}\n")
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
