"""CARLA server supervision: launch, readiness, restart on crash or hang, recycle, or attach.

A `CarlaServer` either launches a server it owns (CarlaUE4.sh, the
carlasim/carla Docker image, or any command line) in its own process group on
a reserved block of ports, or attaches to one someone else runs (CARLA_HOSTS).
It only ever signals the process group it created (SIGTERM, then SIGKILL after
a grace period); attached servers are never started, restarted or killed.

A launched server has a small watchdog process in its process group: when the
supervising process dies without stopping it (SIGKILL, out of memory, a Ray
actor killed), the watchdog takes the group down, so no CARLA server is left
holding a GPU with nobody driving it.

Port blocks are reserved with flock'd files, which holds across processes and
between servers of one process (locks belong to open file descriptions), and
vanishes with the process that held it, so a crashed run leaves no stale
reservation.

Lock files and server logs live by default in `<tmp>/carla-fleet-<uid>`, a folder
only this user can enter (mode 0700, refused when it is a link, someone else's or
open to others): in a /tmp shared between users, anyone could plant a link where a
shared folder or file would be, and have our logs appended to, or a lock file
truncated, wherever it pointed. Files there are opened with O_NOFOLLOW.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learner.common import procfs
from learner.common.errors import ConfigError, FleetError
from learner.common.procfs import group_members  # also what tests import from here
from rollout_workers.contract import SimulatorError

log = logging.getLogger(__name__)

Probe = Callable[[str, int, float], bool]
"""(host, rpc port, timeout s) -> whether the server answers within the timeout."""

TM_PORT_OFFSET = 6000
"""Traffic Manager port of an attached server: rpc port + 6000 (CARLA's defaults 2000 -> 8000)."""


@dataclass(frozen=True)
class Endpoint:
    """Where an env connects: what `make_carla_env(server=...)` takes."""

    host: str
    port: int
    """RPC port; the streaming port is port + 1."""
    tm_port: int
    """Traffic Manager port (served by the client process that drives this server)."""


@dataclass(frozen=True)
class ServerConfig:
    executable: str = ""
    """Path to CarlaUE4.sh; empty: $CARLA_ROOT/CarlaUE4.sh."""
    docker_image: str = ""
    """Run this image instead (e.g. carlasim/carla:0.9.16); needs Docker with the NVIDIA runtime."""
    command: tuple[str, ...] = ()
    """Full command line replacing both, with {rpc} {streaming} {secondary} {tm} {gpu} placeholders."""
    gpus: tuple[int, ...] = (0,)
    """GPUs to render on; worker i gets gpus[i % len(gpus)]."""
    quality_level: str = "Low"
    """-quality-level of the server (Low or Epic)."""
    extra_args: tuple[str, ...] = ()
    """More server arguments."""
    host: str = "127.0.0.1"
    """Address clients use to reach a launched server."""
    port_base: int = 2000
    """First port of the first block."""
    port_stride: int = 10
    """Distance between blocks; a block uses rpc, rpc+1 (streaming), rpc+2 (secondary), rpc+3 (TM)."""
    max_blocks: int = 64
    """Blocks tried before giving up."""
    lock_dir: str = ""
    """Folder of the port-block lock files; empty: <tmp>/carla-fleet-<uid>/ports (see `private_dir`)."""
    log_dir: str = ""
    """Folder of server logs; empty: <tmp>/carla-fleet-<uid>/logs (see `private_dir`)."""
    startup_timeout_s: float = 120.0
    """Time a server gets to answer the readiness probe after launch."""
    probe_timeout_s: float = 5.0
    """Time one probe may take; a server slower than this counts as hung."""
    probe_interval_s: float = 1.0
    """Pause between probes during startup."""
    kill_grace_s: float = 10.0
    """Time between SIGTERM and SIGKILL of the server's process group."""
    start_attempts: int = 3
    """Launches tried before start() gives up."""
    recycle_after_episodes: int = 0
    """Restart a launched server after this many episodes (0: never); long-lived servers leak memory."""
    max_rss_mb: float = 0.0
    """Restart a launched server whose process group uses more resident memory (0: no limit)."""
    idle_stop_s: float = 10.0
    """Stop a launched server this long after its worker closed its env without building another."""
    client: str = "carla"
    """Module providing the carla client API, or `package.module:attribute` (tests name a test double)."""

    def __post_init__(self) -> None:
        if not self.gpus or any(g < 0 for g in self.gpus):
            raise ValueError(f"gpus must list at least one GPU index >= 0, got {list(self.gpus)}")
        if self.port_stride < 4:
            raise ValueError(f"port_stride must be >= 4 (a block is rpc..rpc+3), got {self.port_stride}")
        last = self.port_base + (self.max_blocks - 1) * self.port_stride + 3
        if self.port_base < 1024 or self.max_blocks < 1 or last > 65535:
            raise ValueError(f"port blocks from {self.port_base} (stride {self.port_stride}, {self.max_blocks} "
                             f"blocks) must lie within 1024-65535")
        for name in ("startup_timeout_s", "probe_timeout_s", "probe_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.start_attempts < 1 or self.recycle_after_episodes < 0 or self.max_rss_mb < 0 \
                or self.kill_grace_s < 0 or self.idle_stop_s < 0:
            raise ValueError("start_attempts must be >= 1; recycle_after_episodes, max_rss_mb, kill_grace_s "
                             "and idle_stop_s must be >= 0")
        if not self.client:
            raise ValueError("client must name a module, e.g. carla")


@dataclass
class PortBlock:
    """Four consecutive ports held for one server while its lock file stays locked."""

    rpc: int
    fd: int

    @property
    def ports(self) -> tuple[int, int, int, int]:
        return self.rpc, self.rpc + 1, self.rpc + 2, self.rpc + 3

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: a port in TIME_WAIT from an earlier server is reusable; a listening one is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class UnsafeFileError(FleetError, PermissionError):
    """A lock or log location that someone else could control (a link, another user's folder, a
    folder open to others); the message names it and what to do."""


def private_dir(sub: str) -> Path:
    """`<tmp>/carla-fleet-<uid>/<sub>`, created with mode 0700; UnsafeFileError when it exists as a link,
    as another user's or as open to others. `<tmp>` honours TMPDIR, so every process of a user on a
    node (Ray workers included, which may not share a login's XDG_RUNTIME_DIR) finds the same one."""
    base = Path(tempfile.gettempdir()) / f"carla-fleet-{os.getuid()}"
    for folder in (base, base / sub):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(folder)
        if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077):
            what = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a folder" if not stat.S_ISDIR(st.st_mode)
                    else f"owned by uid {st.st_uid}" if st.st_uid != os.getuid()
                    else f"open to others (mode {stat.S_IMODE(st.st_mode):o})")
            raise UnsafeFileError(f"{folder} is {what}; carla-fleet keeps its CARLA lock files and logs in a folder "
                                  "only you can use: remove it, or set carla_server.lock_dir and log_dir")
    return base / sub


def open_private(path: Path, flags: int, mode: int = 0o600) -> int:
    """os.open with O_NOFOLLOW|O_CLOEXEC (never through a link someone planted), never truncating."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(f"{path} is a symbolic link; carla-fleet never writes through one: "
                                  "remove it") from exc
        raise


def reserve_block(cfg: ServerConfig) -> PortBlock:
    """The first block that no supervisor holds and whose ports nobody listens on."""
    if cfg.lock_dir:
        lock_dir = Path(cfg.lock_dir)
        lock_dir.mkdir(parents=True, exist_ok=True)
    else:
        lock_dir = private_dir("ports")
    for k in range(cfg.max_blocks):
        rpc = cfg.port_base + k * cfg.port_stride
        fd = open_private(lock_dir / f"{rpc}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        block = PortBlock(rpc, fd)
        if all(_port_free(p) for p in block.ports):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return block
        block.release()
    raise SimulatorError(f"no free CARLA port block among {cfg.max_blocks} from port {cfg.port_base} "
                         f"(stride {cfg.port_stride}); stop other servers or raise max_blocks")


def server_command(cfg: ServerConfig, block: PortBlock, gpu: int, name: str) -> list[str]:
    rpc, streaming, secondary, tm = block.ports
    if cfg.command:
        return [a.format(rpc=rpc, streaming=streaming, secondary=secondary, tm=tm, gpu=gpu) for a in cfg.command]
    args = ["-RenderOffScreen", "-nosound", f"-carla-rpc-port={rpc}", f"-carla-streaming-port={streaming}",
            f"-carla-secondary-port={secondary}", f"-quality-level={cfg.quality_level}", *cfg.extra_args]
    if cfg.docker_image:
        # Inside the container the one visible GPU is adapter 0; --gpus picks which one it is.
        return ["docker", "run", "--rm", "--name", name, "--net=host", "--gpus", f"device={gpu}",
                cfg.docker_image, "bash", "CarlaUE4.sh", *args]
    exe = cfg.executable or (os.path.join(os.environ["CARLA_ROOT"], "CarlaUE4.sh") if "CARLA_ROOT" in os.environ
                             else "")
    if not exe or not os.path.exists(exe):
        raise FileNotFoundError(f"CARLA server executable {exe or '(none)'} not found: set carla_server.executable, "
                                "CARLA_ROOT (the folder holding CarlaUE4.sh), docker_image, or CARLA_HOSTS")
    return [exe, *args, f"-ini:[/Script/Engine.RendererSettings]:r.GraphicsAdapter={gpu}"]


def load_client(spec: str = "carla") -> Any:
    """The carla client API: the module `spec`, or attribute `attr` of `package.module:attr`."""
    import importlib

    module, _, attr = spec.partition(":")
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:
        hint = "pip install carla==0.9.16" if module == "carla" else f"check carla_server.client ({spec!r})"
        raise ImportError(f"the CARLA client {module!r} cannot be imported ({exc}): {hint}") from exc
    if not attr:
        return loaded
    try:
        return getattr(loaded, attr)
    except AttributeError as exc:
        raise ImportError(f"carla_server.client {spec!r}: {module} has no attribute {attr!r}") from exc


def client_probe(client: Any) -> Probe:
    """Readiness through a carla client API: the server answers get_server_version within the timeout."""

    def probe(host: str, port: int, timeout_s: float) -> bool:
        c = client.Client(host, port, 1)
        c.set_timeout(timeout_s)
        try:
            c.get_server_version()
        except RuntimeError:
            return False
        return True

    return probe


def carla_probe(host: str, port: int, timeout_s: float) -> bool:
    """Readiness of a real server: it answers get_server_version within the timeout."""
    return client_probe(load_client("carla"))(host, port, timeout_s)


WATCHDOG_POLL_S = 0.2
"""How often a server's watchdog checks that its supervisor lives."""


def watched(argv: list[str], grace_s: float, container: str = "") -> list[str]:
    """`argv` with a watchdog in its process group that stops the group if this process dies first
    (rollout_workers/carla/watchdog.py, run isolated by file path)."""
    return [sys.executable, "-I", "-S", str(Path(__file__).with_name("watchdog.py")), str(os.getpid()),
            str(grace_s), str(WATCHDOG_POLL_S), container, *argv]


def group_rss_mb(pgid: int) -> float:
    """Resident memory of a process group's live members, MB."""
    return sum((procfs.rss_mb(pid) or (0.0, 0.0))[0] for pid in group_members(pgid))


class CarlaServer:
    """One CARLA server: launched and owned (restartable), or attached (someone else's).

    A rollout worker drives exactly one. On `SimulatorError` it closes its env,
    calls `ensure_healthy()` (restarts an owned server that died or stopped
    answering) and builds a new env on `endpoint`; after each episode it calls
    `episode_done()` and, when that says so, closes the env and `restart()`s.
    """

    def __init__(self, config: ServerConfig | None = None, probe: Probe | None = None, gpu: int | None = None,
                 attach: Endpoint | None = None) -> None:
        self.config = config or ServerConfig()
        self.probe = probe or carla_probe
        self.gpu = self.config.gpus[0] if gpu is None else gpu
        self._attached = attach
        self._block: PortBlock | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.episodes = 0
        self.restarts = 0

    @classmethod
    def attach(cls, host: str, port: int, tm_port: int | None = None, probe: Probe | None = None,
               probe_timeout_s: float = 5.0) -> CarlaServer:
        """A server run by someone else: probed, never started or killed."""
        ep = Endpoint(host, port, port + TM_PORT_OFFSET if tm_port is None else tm_port)
        return cls(ServerConfig(probe_timeout_s=probe_timeout_s), probe=probe, attach=ep)

    @property
    def attached(self) -> bool:
        return self._attached is not None

    @property
    def endpoint(self) -> Endpoint:
        if self._attached is not None:
            return self._attached
        if self._block is None:
            raise RuntimeError("server not started: call start()")
        return Endpoint(self.config.host, self._block.rpc, self._block.rpc + 3)

    @property
    def pid(self) -> int | None:
        """Process (and process-group) id of the launched server; None if attached or stopped."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        rpc = self._block.rpc if self._block else 0
        folder = self.config.log_dir or Path(tempfile.gettempdir()) / f"carla-fleet-{os.getuid()}" / "logs"
        return Path(folder) / f"carla-{rpc}.log"

    def start(self) -> Endpoint:
        """Launch (or, attached, check) the server and wait until it answers; SimulatorError if it never does."""
        if self._attached is not None:
            return self.ensure_healthy()
        if self._block is None:
            self._block = reserve_block(self.config)
        last: Exception | None = None
        for attempt in range(1, self.config.start_attempts + 1):
            try:
                self._launch()
                return self.endpoint
            except SimulatorError as exc:
                last = exc
                log.warning("CARLA server start %d/%d failed: %s", attempt, self.config.start_attempts, exc)
                self._kill()
                self._move_if_taken()
        self.stop()
        raise SimulatorError(f"CARLA server did not start after {self.config.start_attempts} attempts: {last}")

    def _move_if_taken(self) -> None:
        """After a failed start: if another process took one of the block's ports meanwhile, take a new block.

        The ports were free when reserved, but anything on the host (an outgoing connection on an ephemeral
        port, another program) may bind one before the server does; retrying on the same block would fail
        the same way every time.
        """
        block = self._block
        if block is None or all(_port_free(p) for p in block.ports):
            return
        try:
            fresh = reserve_block(self.config)  # before releasing, so the taken block is not handed back
        except SimulatorError:
            return  # no other block free: retry on this one
        block.release()
        self._block = fresh
        log.warning("CARLA ports %s were taken by another process; moving to %s", block.ports, fresh.ports)

    def _launch(self) -> None:
        cfg, block = self.config, self._block
        assert block is not None
        name = f"carla-fleet-{block.rpc}-{os.getpid()}"
        argv = server_command(cfg, block, self.gpu, name=name)
        container = name if cfg.docker_image and not cfg.command else ""
        if cfg.log_dir:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            private_dir("logs")
        with open(open_private(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as out:
            # Own session = own process group: the only thing we will ever signal.
            self._proc = subprocess.Popen(watched(argv, cfg.kill_grace_s, container), stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.info("launched CARLA server pid %d on ports %s: %s", self._proc.pid, block.ports, " ".join(argv))
        deadline = time.monotonic() + cfg.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SimulatorError(f"CARLA server exited with code {self._proc.returncode} during startup; "
                                     f"log {self.log_path}: {self._log_tail()}")
            if self.probe(cfg.host, block.rpc, min(cfg.probe_timeout_s, max(deadline - time.monotonic(), 0.1))):
                self.episodes = 0
                return
            time.sleep(cfg.probe_interval_s)
        raise SimulatorError(f"CARLA server at {cfg.host}:{block.rpc} did not answer within "
                             f"{cfg.startup_timeout_s:.0f}s of launch; log {self.log_path}")

    def _log_tail(self, chars: int = 800) -> str:
        try:
            with open(os.open(self.log_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
                f.seek(max(os.fstat(f.fileno()).st_size - chars, 0))
                return f.read(chars).decode(errors="replace")
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self._attached is not None or (self._proc is not None and self._proc.poll() is None)

    def healthy(self) -> bool:
        """Running and answering the probe within probe_timeout_s (a hung server fails this)."""
        if not self.alive():
            return False
        ep = self.endpoint
        return self.probe(ep.host, ep.port, self.config.probe_timeout_s)

    def ensure_healthy(self) -> Endpoint:
        """Restart an owned server that crashed or hangs; an attached one that does not answer is an error."""
        if self._attached is not None:
            ep = self._attached
            if not self.probe(ep.host, ep.port, self.config.probe_timeout_s):
                from rollout_workers.carla.env import unreachable_hint

                raise SimulatorError(f"CARLA server {ep.host}:{ep.port} (attached, e.g. from CARLA_HOSTS) does not "
                                     f"answer; it is not ours to restart. " + unreachable_hint(ep.host, ep.port))
            return ep
        if self._proc is None:
            return self.start()
        if not self.healthy():
            state = "crashed" if not self.alive() else "stopped answering"
            return self.restart(f"server {state}")
        return self.endpoint

    def restart(self, reason: str = "") -> Endpoint:
        """Stop the owned server and start it again on the same ports (attached: just check it)."""
        if self._attached is not None:
            return self.ensure_healthy()
        log.warning("restarting CARLA server pid %s on port %s: %s", self.pid, self.endpoint.port, reason)
        self._kill()
        self.restarts += 1
        return self.start()

    def episode_done(self) -> bool:
        """Count an episode; True when an owned server is due for recycling (episodes or memory)."""
        self.episodes += 1
        if self._attached is not None or self._proc is None:
            return False
        cfg = self.config
        if cfg.recycle_after_episodes and self.episodes >= cfg.recycle_after_episodes:
            return True
        return bool(cfg.max_rss_mb and self.rss_mb() > cfg.max_rss_mb)

    def rss_mb(self) -> float:
        """Resident memory of the server's process group, watchdog included (a few MB); a Docker server's
        memory is the daemon's, not counted here."""
        return group_rss_mb(self._proc.pid) if self._proc is not None else 0.0

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session made the server its group's leader
        grace = self.config.kill_grace_s
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not group_members(pgid) and proc.poll() is not None:
                break
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 10.0)
            while time.monotonic() < deadline and (proc.poll() is None or group_members(pgid)):
                time.sleep(0.05)
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            log.error("CARLA server pid %d survived SIGKILL", proc.pid)
        if self.config.docker_image and not self.config.command and self._block is not None:
            # SIGKILL is not forwarded into a container; remove the container we named.
            name = f"carla-fleet-{self._block.rpc}-{os.getpid()}"
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60, check=False)

    def stop(self) -> None:
        """Kill an owned server's process group and free its ports; attached servers are left alone."""
        if self._attached is not None:
            return
        self._kill()
        if self._block is not None:
            self._block.release()
            self._block = None

    def __enter__(self) -> CarlaServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_carla_hosts(value: str) -> list[Endpoint]:
    """CARLA_HOSTS: comma-separated host:port (RPC port); ValueError naming a malformed entry."""
    out = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"CARLA_HOSTS entry {entry!r} is not host:port (e.g. 10.0.0.5:2000)")
        out.append(Endpoint(host, int(port), int(port) + TM_PORT_OFFSET))
    return out


_claims: dict[tuple[str, int | str], tuple[Any, Endpoint]] = {}
"""This process's claims: (CARLA_HOSTS, claimant) -> (the open lock file, the server)."""


def claim_carla_host(worker_index: int, claimant: str = "", environ: Mapping[str, str] | None = None
                     ) -> Endpoint | None:
    """The one policy for CARLA_HOSTS: a server from it that no other worker on this node drives,
    None when it is unset or empty.

    Workers land on nodes in an order Ray chooses, so assigning entry `worker_index` could send two
    workers to one server. Each worker claims a free server with a non-blocking file lock (released
    when the process ends, however it ends), trying its own index first. Two workers in one process
    (`fleet train --local`) claim two servers: flock conflicts between open files. A `claimant` (a
    factory's session) keeps its claim; by default the worker index does. RuntimeError when every
    listed server is taken; ValueError naming a malformed entry.
    """
    hosts = parse_carla_hosts((os.environ if environ is None else environ).get("CARLA_HOSTS", ""))
    if not hosts:
        return None
    spec = ",".join(f"{h.host}:{h.port}" for h in hosts)
    who = claimant or worker_index
    if (spec, who) in _claims:
        return _claims[spec, who][1]
    for k in range(len(hosts)):
        ep = hosts[(worker_index + k) % len(hosts)]
        path = private_dir("claims") / f"{ep.host}-{ep.port}.lock"
        lock = open(open_private(path, os.O_CREAT | os.O_RDWR), "rb+", buffering=0)  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _claims[spec, who] = (lock, ep)
        return ep
    raise RuntimeError(f"all CARLA servers in CARLA_HOSTS ({spec}) are driven by other workers on this node; "
                       "start more servers or fewer workers (the node's `carla` resource should equal its servers)")


def release_carla_hosts() -> None:
    """Give up every CARLA_HOSTS claim of this process (its lock files close), so that other workers
    on the node may take those servers. A worker process never needs this: its claims end with it."""
    while _claims:
        lock, _ep = _claims.pop(next(iter(_claims)))
        lock.close()


def server_for_worker(worker_index: int, config: ServerConfig | None = None, probe: Probe | None = None,
                      environ: Mapping[str, str] | None = None, claimant: str = "") -> CarlaServer:
    """Worker i's server: one claimed from CARLA_HOSTS (attached; `claim_carla_host`) if it is set,
    else one to launch on gpus[i % n]."""
    cfg = config or ServerConfig()
    ep = claim_carla_host(worker_index, claimant, environ)
    if ep is not None:
        return CarlaServer.attach(ep.host, ep.port, ep.tm_port, probe, cfg.probe_timeout_s)
    return CarlaServer(cfg, probe=probe, gpu=cfg.gpus[worker_index % len(cfg.gpus)])
