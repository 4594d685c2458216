"""A worker's CARLA server session: the live side of a CARLA env factory.

The factory (`rollout_workers.envs.factory.EnvFactory`) is plain data that travels to Ray actors; the live part,
its CARLA server, sits in a per-process registry (`_sessions`) in the process using the factory,
one server per factory (so a rollout worker and an inline evaluator in one process never share a
synchronous world). Which server a worker drives is `carla_server.server_for_worker`: one claimed
from CARLA_HOSTS, or one it launches. Each env the factory builds is wrapped so that it tells that
server's session what happened: an episode ended (time to recycle?), a `SimulatorError` (restart
before the next env), the env was closed (stop the server unless a new env takes it soon). The
rollout worker needs no CARLA-specific code: it closes a failed env and calls the factory again.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from rollout_workers.carla.server import (
    CarlaServer,
    Endpoint,
    ServerConfig,
    client_probe,
    load_client,
    server_for_worker,
)
from rollout_workers.contract import SimulatorError

log = logging.getLogger(__name__)


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
    CARLA_HOSTS entry (`claim_carla_host`), or owning a server it launches on
    gpus[worker_index % len(gpus)]."""
    hosts = os.environ.get("CARLA_HOSTS", "")
    key = (name or f"worker-{worker_index}", hosts)
    with _sessions_lock:
        session = _sessions.get(key)
        if session is not None and session.owner == os.getpid():
            return session
        client = load_client(config.client)
        server = server_for_worker(worker_index, config, client_probe(client), claimant=key[0])
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
    from rollout_workers.carla.env import make_carla_env

    session = carla_session(worker_index, server, session_name)

    def build(ep: Endpoint) -> gym.Env:
        # An attached server as (host, port): its Traffic Manager port follows the carla section's
        # tm_port - port offset, as it did before servers were supervised.
        where = (ep.host, ep.port) if session.server.attached else ep
        return make_carla_env(config, seed=seed, server=where, carla_module=session.client)

    return SupervisedCarlaEnv(session, build)
