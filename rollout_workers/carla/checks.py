"""Before a CARLA run starts: is there a server to attach to or to launch, and do the attached ones answer?
Each problem is a ConfigError in one line that says what to set."""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from learner.common.errors import ConfigError
from rollout_workers.carla.server import Probe, ServerConfig, client_probe, load_client, parse_carla_hosts


def check_carla_setup(server: ServerConfig, workers: int, evaluators: int = 0, environ: Mapping[str, str] | None = None,
                      count_workers: bool = True) -> None:
    """ConfigError saying what to set when a CARLA run has no server to attach to and none to launch.

    `environ` is the environment the workers see: this process's where they run (`--local`, a Ray
    instance started here, or the worker itself). CARLA_HOSTS lists one node's servers, so the
    worker count is checked against it only on one node (`count_workers`): `workers` rollout workers
    and `evaluators` evaluation workers (1 when the run evaluates during training).
    """
    env = os.environ if environ is None else environ
    hosts = _carla_hosts(env)
    if hosts:
        if count_workers and workers + evaluators > len(hosts):
            also = " plus at least 1 for evaluation during training" if evaluators else ""
            raise ConfigError(f"run.workers is {workers}{also} but CARLA_HOSTS lists {len(hosts)} "
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
    _carla_client(server)


def _carla_hosts(env: Mapping[str, str]) -> list[Any]:
    """The servers CARLA_HOSTS lists in `env`; a malformed entry is a ConfigError."""
    try:
        return parse_carla_hosts(env.get("CARLA_HOSTS", ""))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _carla_client(server: ServerConfig) -> Any:
    """The configured CARLA client module; one that cannot be imported is a ConfigError."""
    try:
        return load_client(server.client)
    except ImportError as exc:
        raise ConfigError(str(exc)) from exc


def probe_carla_hosts(server: ServerConfig, environ: Mapping[str, str] | None = None,
                      probe: Probe | None = None) -> None:
    """ConfigError naming every CARLA_HOSTS server that does not answer within carla_server.probe_timeout_s.

    An attached server is not ours to start or restart, so one that does not answer when the run
    starts is a setup error: said in seconds, before any worker spends its retries on it. Call it
    where CARLA_HOSTS is the workers' (a one-node run); the servers are probed in parallel.
    """
    hosts = _carla_hosts(os.environ if environ is None else environ)
    if not hosts:
        return
    if probe is None:
        probe = client_probe(_carla_client(server))
    timeout = server.probe_timeout_s

    def answers(host: str, port: int) -> bool:
        try:
            return probe(host, port, timeout)
        except Exception:  # noqa: BLE001  (any client failure means: it did not answer)
            return False

    with ThreadPoolExecutor(max_workers=min(len(hosts), 16)) as pool:
        answered = list(pool.map(lambda ep: answers(ep.host, ep.port), hosts))
    silent = [ep for ep, ok in zip(hosts, answered) if not ok]
    if silent:
        from rollout_workers.carla.env import unreachable_hint

        names = ", ".join(f"{ep.host}:{ep.port}" for ep in silent)
        raise ConfigError(f"CARLA_HOSTS: {names} did not answer within {timeout:g}s; an attached server is not "
                          f"ours to start. {unreachable_hint(silent[0].host, silent[0].port)}")
