"""Starting or joining Ray: the one place this package does it, with its logs, system settings and auth mode."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from learner.common.errors import ConfigError

log = logging.getLogger(__name__)


# Ray's GCS keeps an event record (about 2.5 KB) for each of the last N tasks, N = 100,000 by
# default: a run's polling calls fill that in about half an hour, a 250 MB heap. Instances fleet
# starts keep the last 20,000 (`ray list tasks` still shows minutes of history). Each record pushed
# out is then remembered as a "dropped task attempt" (about 100 bytes) up to 1,000,000 per job by
# default: at ~2,600 calls a minute, 16 MB/h more for six hours (docs/benchmarks.md, "Soak"); fleet
# remembers the last 20,000. Cluster heads get both through RAY_task_events_* in cluster/*.yaml.
RAY_SYSTEM_CONFIG = {"task_events_max_num_task_in_gcs": 20_000,
                     "task_events_max_dropped_task_attempts_tracked_per_job_in_gcs": 20_000}


def route_ray_logs(log_file: Path | None) -> None:
    """Send the INFO and WARNING lines of Ray's Python side (start-up chatter such as "Started a local
    Ray instance" and the token-authentication notice) to `log_file`; the terminal keeps Ray's errors."""
    import ray  # noqa: F401 - importing ray installs the handlers of its "ray" logger

    logger = logging.getLogger("ray")
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)
    if log_file is not None and not any(isinstance(h, logging.FileHandler) and h.baseFilename == str(log_file)
                                        for h in logger.handlers):
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(file_handler)


def init_ray(address: str | None = None, num_cpus: int | None = None, resources: dict[str, float] | None = None,
             log_to_driver: bool = True, log_file: Path | None = None, object_store_mb: int | None = None,
             system_config: dict[str, Any] | None = None, allow_without_auth: bool = False) -> None:
    """The one place this package starts or joins Ray. Ray's start-up chatter goes to `log_file` (see
    `route_ray_logs`).

    With `address`: join that cluster (its own settings hold; the other arguments are ignored).
    Without: a one-node instance for this process, without the dashboard, with `num_cpus` logical
    CPUs (default: the machine's), the custom `resources` it should advertise, and Ray's system
    settings `RAY_SYSTEM_CONFIG` plus `system_config`.

    A local instance's node IP is 127.0.0.1, so every service it starts listens on loopback only
    (cluster/runtime/loopback_ray.py keeps Ray from swapping in the machine's address). Ray also starts it
    with token authentication unless `RAY_AUTH_MODE` says otherwise; another mode is refused (a
    ConfigError) unless `allow_without_auth` (`--allow-ray-without-auth`, docs/security.md). The
    mode is not set here: Ray reads it when it is imported, and a value set afterwards leaves this
    process without the token while the services it starts require one."""
    import ray

    from cluster.runtime import loopback_ray

    route_ray_logs(log_file)
    # Also for a cluster's address: a head on 127.0.0.1 listens there only, and Ray would otherwise dial
    # the machine's address instead (a `fleet train --set run.ray_address=127.0.0.1:PORT` hung in ray.init).
    loopback = loopback_ray.install()
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        return
    check_ray_auth_mode(allow_without_auth, warn=True)
    ray.init(num_cpus=num_cpus or os.cpu_count() or 1, resources=resources or None, include_dashboard=False,
             log_to_driver=log_to_driver, _system_config={**RAY_SYSTEM_CONFIG, **(system_config or {})},
             object_store_memory=object_store_mb * 1024 * 1024 if object_store_mb else None,
             _node_ip_address="127.0.0.1" if loopback else None)


def check_ray_auth_mode(allow_without_auth: bool, warn: bool = False) -> None:
    """Refuse (a ConfigError) to start a local Ray whose token `RAY_AUTH_MODE` turns off, unless allowed."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is None or mode.lower() == "token":
        return
    if not allow_without_auth:
        raise ConfigError(f"RAY_AUTH_MODE={mode} would start this run's Ray services without a token, so any "
                          "local user could run code as you: unset RAY_AUTH_MODE (Ray then makes a token), or "
                          "pass --allow-ray-without-auth (run.allow_ray_without_auth=true) to accept that")
    if warn:
        log.warning("RAY_AUTH_MODE=%s and --allow-ray-without-auth: this run's Ray services accept any local "
                    "client without a token (see docs/security.md)", mode)
