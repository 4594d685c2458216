"""Environment factories that travel to Ray actors (picklable, no live objects).

A CARLA factory is plain data; the live part, its CARLA server, sits in a per-process
registry (`_sessions`) in the process using the factory, one server per factory (so a
rollout worker and an inline evaluator in one process never share a synchronous
world). Each env the factory
builds is wrapped so that it tells that server's session what happened: an episode
ended (time to recycle?), a `SimulatorError` (restart before the next env), the env
was closed (stop the server unless a new env takes it soon). The rollout worker
needs no CARLA-specific code: it closes a failed env and calls the factory again.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gymnasium as gym

from cluster.config import ConfigError
from rollout_workers.carla_server import (
    CarlaServer,
    Endpoint,
    ServerConfig,
    client_probe,
    load_client,
    parse_carla_hosts,
)
from rollout_workers.contract import SimulatorError

if TYPE_CHECKING:
    from cluster.experiment import ExperimentConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnvFactory:
    """Builds the configured simulator for one worker; `worker_index` picks its CARLA server."""

    kind: str
    config: Any
    worker_index: int = 0
    server: ServerConfig | None = None
    """CARLA only: how the worker's server is launched (when CARLA_HOSTS is unset) and supervised."""
    session: str = field(default_factory=lambda: uuid.uuid4().hex, compare=False, repr=False)
    """CARLA only: names this factory's server in the process that uses it (copies share it)."""

    def __call__(self, seed: int) -> gym.Env:
        if self.kind == "embedded":
            from rollout_workers.envs.embedded import make_env

            return make_env(self.config, seed=seed)
        if self.kind == "carla":
            return carla_env(self.config, self.server or ServerConfig(), self.worker_index, seed, self.session)
        return import_factory(self.kind)(seed)


def import_factory(spec: str) -> Any:
    """`package.module:function`, a callable seed -> gymnasium.Env obeying the contract."""
    import importlib

    module, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"env {spec!r}: use 'embedded', 'carla' or 'package.module:function'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"env {spec!r}: cannot import {attr} from {module}: {exc}") from exc


_claimed: dict[tuple[str, int | str], tuple[Any, tuple[str, int]]] = {}


def carla_host(worker_index: int, claimant: str = "") -> tuple[str, int] | None:
    """A CARLA server from CARLA_HOSTS that no other worker on this node drives; None if unset.

    Workers land on nodes in an order Ray chooses, so a global index could send two workers
    to one server. Each worker claims a free server with a non-blocking file lock (released
    when the process ends, however it ends), starting from its own index. Two workers in one
    process (`fleet train --local`) claim two servers: flock conflicts between descriptors.
    A `claimant` (a factory's session) keeps its claim; by default the worker index does.
    """
    import fcntl
    import tempfile

    hosts = [h.strip() for h in os.environ.get("CARLA_HOSTS", "").split(",") if h.strip()]
    if not hosts:
        return None
    spec = ",".join(hosts)
    who = claimant or worker_index
    if (spec, who) in _claimed:
        return _claimed[spec, who][1]
    for k in range(len(hosts)):
        entry = hosts[(worker_index + k) % len(hosts)]
        host, _, port = entry.rpartition(":")
        lock = open(os.path.join(tempfile.gettempdir(), f"carla-fleet-{host}-{port}.lock"), "w")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _claimed[spec, who] = (lock, (host, int(port)))
        return host, int(port)
    raise RuntimeError(f"all CARLA servers in CARLA_HOSTS ({spec}) are driven by other workers on this node; "
                       "start more servers or fewer workers (the node's `carla` resource should equal its servers)")


class ServerSession:
    """One factory's CARLA server in this process, and what that factory's envs reported about it."""

    def __init__(self, server: CarlaServer, client: Any) -> None:
        self.server = server
        self.client = client
        self.owner = os.getpid()
        self._lock = threading.RLock()
        self._failure = ""
        self._idle: threading.Timer | None = None
        self._idle_generation = 0
        self._open = 0

    def acquire(self) -> Endpoint:
        """A server that answers, for a new env: restarted (launched) or re-probed (attached) after a
        SimulatorError, else restarted only if it crashed or hangs. Pair with `released()`."""
        with self._lock:
            self._cancel_idle()
            failure, self._failure = self._failure, ""
            if failure and not self.server.attached and self.server.pid is not None:
                endpoint = self.server.restart(f"the last env failed: {failure}")
            else:
                endpoint = self.server.ensure_healthy()
            self._open += 1
            return endpoint

    def env_failed(self, exc: SimulatorError) -> None:
        self._failure = str(exc) or type(exc).__name__

    def episode_done(self) -> str:
        """Count a finished episode; the reason to recycle the server now, or ''."""
        if not self.server.episode_done():
            return ""
        limit = self.server.config.recycle_after_episodes
        if limit and self.server.episodes >= limit:
            return f"recycled after {self.server.episodes} episodes"
        return f"recycled at {self.server.rss_mb():.0f} MB > max_rss_mb {self.server.config.max_rss_mb:.0f}"

    def recycle(self, reason: str) -> Endpoint:
        with self._lock:
            return self.server.restart(reason)

    def released(self) -> None:
        """An env was closed: once none is open, stop the server unless a new env takes it within
        idle_stop_s.

        Evaluation builds and closes an env per episode, and a failed env is closed just before
        the next is built: neither should cost a server start. A worker that is done frees it.
        """
        with self._lock:
            self._open = max(self._open - 1, 0)
            if self._open or self.server.attached:
                return
            self._cancel_idle()
            delay = self.server.config.idle_stop_s
            if delay <= 0:
                self.stop()
                return
            self._idle = threading.Timer(delay, self._idle_stop, (self._idle_generation,))
            self._idle.daemon = True
            self._idle.start()

    def _idle_stop(self, generation: int) -> None:
        with self._lock:
            # A timer that fired while a new env was taking the server must not stop it.
            if generation == self._idle_generation:
                self.stop()

    def _cancel_idle(self) -> None:
        self._idle_generation += 1
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def stop(self) -> None:
        """Stop a launched server (attached ones are never touched); the next env starts it again."""
        with self._lock:
            self._cancel_idle()
            if os.getpid() == self.owner:  # a forked child must not kill its parent's server
                self.server.stop()


_sessions: dict[tuple[str, str], ServerSession] = {}
_sessions_lock = threading.Lock()


def carla_session(worker_index: int, config: ServerConfig, name: str = "") -> ServerSession:
    """This process's session `name` (a factory's) for worker `worker_index`: attached to a claimed
    CARLA_HOSTS entry, or owning a server it launches on gpus[worker_index % len(gpus)]."""
    hosts = os.environ.get("CARLA_HOSTS", "")
    key = (name or f"worker-{worker_index}", hosts)
    with _sessions_lock:
        session = _sessions.get(key)
        if session is not None and session.owner == os.getpid():
            return session
        client = load_client(config.client)
        probe = client_probe(client)
        claimed = carla_host(worker_index, key[0])
        if claimed is not None:
            host, port = claimed
            server = CarlaServer.attach(host, port, probe=probe, probe_timeout_s=config.probe_timeout_s)
        else:
            server = CarlaServer(config, probe=probe, gpu=config.gpus[worker_index % len(config.gpus)])
        if not _sessions:
            atexit.register(stop_servers)
        session = _sessions[key] = ServerSession(server, client)
        return session


def stop_servers() -> None:
    """Stop every server this process launched (at exit, and for tests)."""
    with _sessions_lock:
        sessions = list(_sessions.values())
    for session in sessions:
        try:
            session.stop()
        except Exception as exc:  # one server failing to stop must not keep the others running
            log.error("stopping CARLA server %s failed: %r", session.server.pid, exc)


class SupervisedCarlaEnv(gym.Wrapper):
    """A CARLA env reporting to its worker's `ServerSession`.

    An episode end counts towards recycling (done at the next reset: close the CARLA env,
    restart the server, build a new one); a SimulatorError marks the server for a restart
    before the next env; close() releases the server.
    """

    def __init__(self, session: ServerSession, build: Callable[[Endpoint], gym.Env]) -> None:
        self.session = session
        self._build = build
        self._recycle = ""
        self._closed = True
        endpoint = session.acquire()
        try:
            env = build(endpoint)
        except BaseException:
            session.released()
            raise
        self._closed = False
        super().__init__(env)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        if self._recycle:
            reason, self._recycle = self._recycle, ""
            self.env.close()
            self.env = self._watch(lambda: self._build(self.session.recycle(reason)))
        return self._watch(lambda: self.env.reset(seed=seed, options=options))

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        result = self._watch(lambda: self.env.step(action))
        if result[2] or result[3]:
            self._recycle = self.session.episode_done()
        return result

    def _watch(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except SimulatorError as exc:
            self.session.env_failed(exc)
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.env.close()
        finally:
            self.session.released()


def carla_env(config: Any, server: ServerConfig, worker_index: int, seed: int, session_name: str = ""
              ) -> SupervisedCarlaEnv:
    """Worker `worker_index`'s CARLA env, on a server that answers (launched, restarted or attached)."""
    from rollout_workers.envs.carla_env import make_carla_env

    session = carla_session(worker_index, server, session_name)

    def build(ep: Endpoint) -> gym.Env:
        # An attached server as (host, port): its Traffic Manager port follows the carla section's
        # tm_port - port offset, as it did before servers were supervised.
        where = (ep.host, ep.port) if session.server.attached else ep
        return make_carla_env(config, seed=seed, server=where, carla_module=session.client)

    return SupervisedCarlaEnv(session, build)


def check_carla_setup(cfg: ExperimentConfig, environ: dict[str, str] | None = None, count_workers: bool = True) -> None:
    """ConfigError saying what to set when a CARLA run has no server to attach to and none to launch.

    `environ` is the environment the workers see: this process's where they run (`--local`, a Ray
    instance started here, or the worker itself). CARLA_HOSTS lists one node's servers, so the
    worker count is checked against it only on one node (`count_workers`).
    """
    env = os.environ if environ is None else environ
    server = cfg.carla_server
    try:
        hosts = parse_carla_hosts(env.get("CARLA_HOSTS", ""))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if hosts:
        evaluators = 1 if cfg.eval.every_updates > 0 else 0
        if count_workers and cfg.run.workers + evaluators > len(hosts):
            also = " plus at least 1 for evaluation during training" if evaluators else ""
            raise ConfigError(f"run.workers is {cfg.run.workers}{also} but CARLA_HOSTS lists {len(hosts)} "
                              "server(s); each worker drives its own: list more servers or use fewer workers")
    elif server.docker_image and not server.command:
        import shutil

        if shutil.which("docker") is None:
            raise ConfigError(f"carla_server.docker_image is {server.docker_image} but there is no `docker` "
                              "command here: install Docker with the NVIDIA container runtime, or use CARLA_ROOT")
    elif not server.command:
        exe = server.executable or (os.path.join(env["CARLA_ROOT"], "CarlaUE4.sh") if env.get("CARLA_ROOT") else "")
        if not exe:
            raise ConfigError(
                "run.env is carla but there is no CARLA server to use: set CARLA_HOSTS=host:port[,host:port...] "
                "to attach to running servers, or let each worker launch its own with CARLA_ROOT=<folder holding "
                "CarlaUE4.sh>, --set carla_server.executable=/path/to/CarlaUE4.sh or --set "
                "carla_server.docker_image=carlasim/carla:0.9.16 (see docs/carla.md)")
        if not os.path.isfile(exe):
            raise ConfigError(f"CARLA server executable {exe} does not exist: check CARLA_ROOT or "
                              "carla_server.executable (the path of CarlaUE4.sh)")
    try:
        load_client(server.client)
    except ImportError as exc:
        raise ConfigError(str(exc)) from exc


def make_factory(cfg: ExperimentConfig, worker_index: int = 0) -> EnvFactory:
    """From an ExperimentConfig; a CARLA run without servers to use is a ConfigError here."""
    if cfg.run.env == "carla":
        check_carla_setup(cfg, count_workers=not cfg.run.ray_address)
        return EnvFactory("carla", cfg.carla, worker_index, cfg.carla_server)
    return EnvFactory(cfg.run.env, cfg.embedded, worker_index)
