"""Rollout workers on supervised CARLA servers: the carla factory, its per-process server sessions and the
worker's failure path, against fake server processes (tests/fake_carla_server.py) reached through the carla
API double (tests.fake_carla:SERVER_BACKED). No live CARLA server is involved."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cluster.runtime import envs, experiment
from cluster.runtime.config import ConfigError
from learner.networks import NetworkConfig
from rollout_workers.carla import server as carla_server
from rollout_workers.carla import session as carla_session
from rollout_workers.carla.checks import check_carla_setup, probe_carla_hosts
from rollout_workers.carla.env import CarlaEnvConfig
from rollout_workers.carla.server import ServerConfig, group_members
from rollout_workers.envs.factory import EnvFactory
from rollout_workers.exploration import ExplorationConfig
from rollout_workers.worker import RolloutWorker, WorkerConfig
from tests.fake_carla_server import probe, server_pid
from tests.procs import alive, free_ports

REPO = Path(__file__).resolve().parents[1]
FAKE = str(Path(__file__).with_name("fake_carla_server.py"))
CLIENT = "tests.fake_carla:SERVER_BACKED"
ENV = CarlaEnvConfig(timeout_s=1.0, sensor_timeout_s=1.0, route_length_m=40.0, max_episode_steps=12,
                     warmup_ticks=0)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def _fake_pids(tmp_path: Path) -> list[int]:
    """Every fake server process launched so far (and its --child, if any), in launch order."""
    path = tmp_path / "pids"
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _server_cfg(tmp_path: Path, *args: str, **over: object) -> ServerConfig:
    cfg = ServerConfig(
        command=(sys.executable, FAKE, "--port", "{rpc}", "--pid-file", str(tmp_path / "pids"), "--lifetime", "300",
                 *args),
        client=CLIENT, port_base=random.randrange(20000, 32000, 10), lock_dir=str(tmp_path / "locks"),
        log_dir=str(tmp_path / "logs"), startup_timeout_s=30.0, probe_timeout_s=1.0, probe_interval_s=0.05,
        kill_grace_s=0.5, idle_stop_s=0.3)
    return replace(cfg, **over)


def _worker(server: ServerConfig | EnvFactory, failures: int = 5, index: int = 0) -> RolloutWorker:
    factory = server if isinstance(server, EnvFactory) else EnvFactory("carla", ENV, index, server)
    return RolloutWorker(index, factory, NetworkConfig(), ExplorationConfig(),
                         WorkerConfig(chunk_steps=16, max_consecutive_failures=failures), seed=index)


@pytest.fixture(autouse=True)
def sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CARLA_HOSTS unless a test sets it; every server a test launched is gone after it."""
    monkeypatch.delenv("CARLA_HOSTS", raising=False)
    monkeypatch.setattr(carla_server, "_claims", {})
    yield
    carla_session.stop_servers()
    carla_session._sessions.clear()
    assert _wait_gone(_fake_pids(tmp_path), 5.0) == []


def test_worker_survives_a_server_crash_by_restarting_it(tmp_path: Path) -> None:
    cfg = _server_cfg(tmp_path)
    worker = _worker(cfg)
    chunks: list = []
    first = worker.collect(30, chunks.append)
    assert first.env_steps == 30 and first.env_failures == 0 and len(first.episodes) >= 2
    session = worker.env.session
    [fake] = _fake_pids(tmp_path)
    assert session.server.pid == fake and os.getpgid(fake) == fake != os.getpgid(0)  # its own group
    [watchdog] = [p for p in group_members(fake) if p != fake]  # and a watchdog in it
    assert server_pid(session.server.endpoint.host, session.server.endpoint.port, 1.0) == fake

    held = session.server.endpoint.port  # port_base's block, or a later one when its ports were busy
    os.kill(fake, signal.SIGKILL)  # the server crashes mid-run
    second = worker.collect(30, chunks.append)
    assert second.env_steps == 30 and second.env_failures == 1 and worker.total_failures == 1
    old, new = _fake_pids(tmp_path)
    assert session.server.restarts == 1 and session.server.pid == new
    assert old == fake and not alive(old) and alive(new)
    assert session.server.endpoint.port == held  # restarted on the block it holds
    assert server_pid("127.0.0.1", held, 1.0) == new
    assert len(second.episodes) >= 1  # collection went on on the new server

    worker.close()  # the worker is done: its server is stopped once idle_stop_s passes
    assert _wait_gone([new, *group_members(new)], 5.0) == []
    assert session.server.pid is None and not alive(watchdog)


def test_worker_survives_a_hung_server(tmp_path: Path) -> None:
    worker = _worker(_server_cfg(tmp_path))
    assert worker.collect(10, lambda c: None).env_failures == 0
    [fake] = _fake_pids(tmp_path)
    os.kill(fake, signal.SIGSTOP)  # alive, port open, answers nothing
    t0 = time.monotonic()
    report = worker.collect(20, lambda c: None)
    assert report.env_failures == 1 and report.env_steps == 20
    assert worker.env.session.server.restarts == 1
    assert _wait_gone([fake], 5.0) == []  # SIGTERM stays pending on a stopped process: SIGKILL took it
    assert time.monotonic() - t0 < 30
    worker.close()


def test_simulator_error_from_a_server_that_still_answers_restarts_it(tmp_path: Path) -> None:
    from tests.fake_carla import SERVER_BACKED

    cfg = _server_cfg(tmp_path)
    worker = _worker(cfg)
    assert worker.collect(10, lambda c: None).env_failures == 0
    [fake] = _fake_pids(tmp_path)
    # The server answers its probe but its camera stops delivering: the env's SimulatorError alone
    # must make the session restart it before the next env.
    SERVER_BACKED.worlds["127.0.0.1", cfg.port_base, fake].camera_deliveries = lambda frame: []
    report = worker.collect(20, lambda c: None)
    assert report.env_failures == 1 and report.env_steps == 20
    assert worker.env.session.server.restarts == 1 and not alive(fake)
    worker.close()


def test_failure_outside_the_simulator_keeps_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = _worker(_server_cfg(tmp_path))
    assert worker.collect(10, lambda c: None).env_failures == 0
    session, pid = worker.env.session, worker.env.session.server.pid
    act = worker._action
    calls = iter(range(1000))

    def flaky() -> object:
        if next(calls) == 3:
            raise ValueError("policy bug")
        return act()

    monkeypatch.setattr(worker, "_action", flaky)
    report = worker.collect(20, lambda c: None)
    assert report.env_failures == 1  # the env was closed and rebuilt ...
    assert session.server.restarts == 0 and session.server.pid == pid  # ... on the same server
    assert len(_fake_pids(tmp_path)) == 1
    worker.close()


def test_server_recycled_after_n_episodes(tmp_path: Path) -> None:
    worker = _worker(_server_cfg(tmp_path, recycle_after_episodes=2))
    report = worker.collect(70, lambda c: None)
    episodes = len(report.episodes)
    assert report.env_failures == 0 and episodes >= 5
    # A recycle happens at the reset after every second episode; none yet if the last step ended one.
    expected = episodes // 2 if worker.obs is not None else (episodes - 1) // 2
    server = worker.env.session.server
    assert server.restarts == expected >= 2
    pids = _fake_pids(tmp_path)
    assert len(pids) == expected + 1
    assert [alive(p) for p in pids] == [False] * expected + [True]
    worker.close()


def test_attached_server_is_reprobed_never_restarted_or_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    (port,) = free_ports(1)  # a random pick once collided with a port in use (CI, 2026-11-29)
    monkeypatch.setenv("CARLA_HOSTS", f"127.0.0.1:{port}")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the claim's lock file
    cfg = _server_cfg(tmp_path)

    def theirs() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, FAKE, "--port", str(port), "--lifetime", "120"])
        deadline = time.monotonic() + 20
        while not probe("127.0.0.1", port, 0.2) and time.monotonic() < deadline:
            time.sleep(0.05)
        return proc

    server = theirs()
    factory = EnvFactory("carla", ENV, 0, cfg)
    try:
        worker = _worker(factory, failures=2)
        assert worker.collect(15, lambda c: None).env_failures == 0
        session = worker.env.session
        assert session.server.attached and session.server.pid is None
        server.kill()
        server.wait(10)
        with pytest.raises(RuntimeError, match="3 env failures in a row.*not ours to restart"):
            worker.collect(15, lambda c: None)
        server = theirs()  # someone restarts it: the worker (restarted too) goes on with the new world
        worker = _worker(factory, failures=2)
        report = worker.collect(15, lambda c: None)
        assert report.env_failures == 0 and worker.env.session is session
        with pytest.raises(RuntimeError, match="driven by other workers"):  # its one server is taken
            EnvFactory("carla", ENV, 0, cfg)(0)
        worker.close()
        time.sleep(cfg.idle_stop_s + 0.5)
        assert server.poll() is None and probe("127.0.0.1", port, 1.0)  # released, not stopped
        assert _fake_pids(tmp_path) == []  # nothing was launched
    finally:
        server.kill()
        server.wait(10)


def test_one_server_per_factory_in_a_process(tmp_path: Path) -> None:
    # A rollout worker and an inline evaluator (both worker index 0) in one process must not share a
    # synchronous world; copies of one factory (what a Ray actor unpickles) do share its server.
    cfg = _server_cfg(tmp_path)
    rollout, evaluator = EnvFactory("carla", ENV, 0, cfg), EnvFactory("carla", ENV, 0, cfg)
    a, b = rollout(1), evaluator(2)
    try:
        assert a.session is not b.session and a.session.server.endpoint.port != b.session.server.endpoint.port
        c = pickle.loads(pickle.dumps(rollout))(3)
        assert c.session is a.session and rollout == evaluator  # equal as configs, distinct as servers
        a.reset()
        b.reset()  # both worlds tick on their own servers
        assert len(_fake_pids(tmp_path)) == 2
        c.close()
        time.sleep(cfg.idle_stop_s + 0.5)
        assert a.session.server.healthy()  # a's env is still open on it: not stopped
    finally:
        a.close()
        b.close()
    assert _wait_gone(_fake_pids(tmp_path), 5.0) == []  # the last env of each closed: both stopped


def _helper(factory: EnvFactory, then: str) -> subprocess.Popen:
    code = ("import pickle, sys, time\n"
            "env = pickle.loads(bytes.fromhex(sys.argv[1]))(0)\n"
            "env.reset()\n"
            "print(env.session.server.pid, flush=True)\n" + then)
    return subprocess.Popen([sys.executable, "-c", code, pickle.dumps(factory).hex()], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_no_orphan_server_when_the_worker_is_killed(tmp_path: Path) -> None:
    # A server that ignores SIGTERM and has a child of its own: the watchdog must escalate to SIGKILL.
    cfg = replace(experiment.load(None, {"run.env": "carla"}), carla=ENV,
                  carla_server=_server_cfg(tmp_path, "--ignore-sigterm", "--child"))
    factory = envs.make_factory(cfg, 0)
    assert carla_session._sessions == {}  # the factory is plain data: nothing started, and it pickles
    helper = _helper(factory, "time.sleep(120)\n")
    try:
        server = int(helper.stdout.readline())
        pids = _fake_pids(tmp_path)
        group = group_members(server)
        assert pids[0] == server and len(pids) == 2 and len(group) == 3  # server, its child, watchdog
        helper.send_signal(signal.SIGKILL)  # no atexit, no close: only the watchdog is left to act
        helper.wait(10)
        assert _wait_gone(group, 5.0) == []
        (log_path,) = (tmp_path / "logs").glob("carla-*.log")
        log = log_path.read_text()
        assert f"supervisor {helper.pid} is gone" in log
    finally:
        helper.kill()
        helper.wait(10)


def test_servers_stopped_at_exit_without_close(tmp_path: Path) -> None:
    cfg = _server_cfg(tmp_path, idle_stop_s=60.0)
    helper = _helper(EnvFactory("carla", ENV, 3, cfg), "sys.stdin.readline()\n")
    server = int(helper.stdout.readline())
    group = group_members(server)  # read while the helper still runs, then let it exit
    helper.stdin.write("\n")
    helper.stdin.flush()
    assert helper.wait(60) == 0
    assert len(group) == 2 and _wait_gone(group, 5.0) == []
    (log_path,) = (tmp_path / "logs").glob("carla-*.log")
    log = log_path.read_text()
    assert "is gone" not in log  # stopped by the exiting process (atexit), not by its watchdog


def test_fleet_train_local_on_launched_servers(tmp_path: Path) -> None:
    from cluster.runtime.training import train

    server = _server_cfg(tmp_path)
    cfg = experiment.load(None, {
        "run.name": "carla", "run.runs_dir": str(tmp_path / "runs"), "run.env": "carla", "run.workers": 2,
        "run.total_env_steps": 160, "run.collect_steps": 40, "run.store": str(tmp_path / "store"),
        "agent.batch_size": 16, "learner.learning_starts": 100, "learner.replay_ratio": 0.25,
        "learner.snapshot_every": 1000, "replay.capacity": 2000, "eval.every_updates": 0,
        "carla": {"timeout_s": 1.0, "sensor_timeout_s": 1.0, "route_length_m": 40.0, "max_episode_steps": 12,
                  "warmup_ticks": 0},
        "carla_server": {**server.__dict__, "gpus": [0, 1]}})
    summary = train(cfg, local=True, quiet=True)
    assert summary["env_steps"] >= 160 and summary["env_failures"] == 0 and summary["episodes"] >= 10
    assert summary["learner_updates"] > 0
    # One server per worker, each on its own block of ports, rendering on gpus[i % 2].
    # (A block whose ports another process holds is skipped, so only the spacing is asserted.)
    ports = sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "logs").iterdir())
    assert len(ports) == 2 and ports[0] >= server.port_base
    assert (ports[1] - ports[0]) % server.port_stride == 0 and ports[1] > ports[0]
    gpus = sorted(s.server.gpu for s in carla_session._sessions.values())
    assert gpus == [0, 1]
    pids = _fake_pids(tmp_path)
    assert len(pids) == 2 and _wait_gone(pids, 5.0) == []  # workers closed: servers stopped when idle


def test_fleet_train_cli_attached_to_carla_hosts(tmp_path: Path) -> None:
    """The command of tests/test_carla_live.py, on a fake server listed in CARLA_HOSTS."""
    import json

    (port,) = free_ports(1)  # a random pick once collided with a port in use (CI, 2026-11-29)
    theirs = subprocess.Popen([sys.executable, FAKE, "--port", str(port), "--lifetime", "300"])
    try:
        fleet = str(Path(sys.executable).parent / "fleet")
        args = [fleet, "train", "--env", "carla", "--local", "--workers", "1", "--steps", "120", "--name", "cli",
                "--quiet", "--store", str(tmp_path / "store"), "--set", f"run.runs_dir={tmp_path / 'runs'}",
                "--set", "learner.learning_starts=60", "--set", "learner.replay_ratio=0.25",
                "--set", "eval.every_updates=0",
                "--set", "agent.batch_size=16", "--set", "carla.max_episode_steps=12", "--set", "carla.timeout_s=2",
                "--set", "carla.route_length_m=40", "--set", f"carla_server.client={CLIENT}"]
        env = dict(os.environ, CARLA_HOSTS=f"127.0.0.1:{port}", TMPDIR=str(tmp_path), PYTHONPATH=str(REPO))
        done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads((tmp_path / "runs" / "cli" / "summary.json").read_text())
        assert summary["env_steps"] >= 120 and summary["episodes"] >= 8 and summary["env_failures"] == 0
        assert summary["learner_updates"] > 0
        assert theirs.poll() is None and probe("127.0.0.1", port, 1.0)  # attached: never stopped
        assert not (tmp_path / f"carla-fleet-{os.getuid()}" / "logs").exists()  # and nothing launched
    finally:
        theirs.kill()
        theirs.wait(10)


def test_fleet_train_with_a_silent_carla_host_exits_2_in_seconds(tmp_path: Path) -> None:
    """Under the Ray runtime (the reported case took 141 s and 21 retries, then a Ray traceback)."""
    port, closed = free_ports(2)  # `closed`: nobody listens there
    theirs = subprocess.Popen([sys.executable, FAKE, "--port", str(port), "--lifetime", "120"])
    try:
        deadline = time.monotonic() + 20
        while not probe("127.0.0.1", port, 0.2) and time.monotonic() < deadline:
            time.sleep(0.05)
        fleet = str(Path(sys.executable).parent / "fleet")
        args = [fleet, "train", "--env", "carla", "--workers", "1", "--steps", "100", "--name", "silent",
                "--store", str(tmp_path / "store"), "--set", f"run.runs_dir={tmp_path / 'runs'}",
                "--set", "eval.every_updates=0", "--set", f"carla_server.client={CLIENT}",
                "--set", "carla_server.probe_timeout_s=2"]
        env = dict(os.environ, CARLA_HOSTS=f"127.0.0.1:{port},127.0.0.1:{closed}", TMPDIR=str(tmp_path),
                   PYTHONPATH=str(REPO))
        t0 = time.monotonic()
        done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
        took = time.monotonic() - t0
    finally:
        theirs.kill()
        theirs.wait(10)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"fleet: error: CARLA_HOSTS: 127.0.0.1:{closed} did not answer within 2s; "
                                "an attached server is not ours to start. Check that a CARLA server is running")
    assert "Traceback" not in done.stderr and f":{port}" not in lines[-1]  # only the silent one is named
    assert took < 30  # the interpreter and imports; the probe itself waits 2 s
    assert not list((tmp_path / "store").rglob("*.json"))  # no snapshot was written


def test_fleet_train_carla_without_servers_says_what_to_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CARLA_HOSTS", "CARLA_ROOT")}
    fleet = str(Path(sys.executable).parent / "fleet")
    done = subprocess.run([fleet, "train", "--env", "carla", "--local", "--steps", "10", "--name", "x",
                           "--set", f"run.runs_dir={tmp_path}"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("fleet: error: run.env is carla but there is no CARLA server")
    for what in ("CARLA_HOSTS=host:port", "CARLA_ROOT=", "carla_server.executable", "carla_server.docker_image"):
        assert what in message


def check(cfg: experiment.ExperimentConfig, environ: dict[str, str], count_workers: bool = True) -> None:
    """The runtime's call of the check (cluster/runtime/ray_run.py), for a config."""
    check_carla_setup(cfg.carla_server, cfg.run.workers, envs.carla_evaluators(cfg), environ, count_workers)


def test_carla_setup_checks() -> None:
    cfg = experiment.load(None, {"run.env": "carla", "run.workers": 3, "eval.every_updates": 0})
    with pytest.raises(ConfigError, match="no CARLA server to use.*CARLA_HOSTS"):
        check(cfg, {})
    with pytest.raises(ConfigError, match="/nowhere/CarlaUE4.sh does not exist"):
        check(cfg, {"CARLA_ROOT": "/nowhere"})
    with pytest.raises(ConfigError, match="run.workers is 3 but CARLA_HOSTS lists 2"):
        check(cfg, {"CARLA_HOSTS": "a:2000,b:2000"})
    evaluating = replace(cfg, eval=replace(cfg.eval, every_updates=100))
    with pytest.raises(ConfigError, match="is 3 plus at least 1 for evaluation during training but CARLA_HOSTS"):
        check(evaluating, {"CARLA_HOSTS": "a:1,a:2,a:3"})
    check(evaluating, {"CARLA_HOSTS": "a:1,a:2,a:3,a:4"})
    check(cfg, {"CARLA_HOSTS": "a:2000,b:2000"}, count_workers=False)  # per node on a cluster
    with pytest.raises(ConfigError, match="'a:x' is not host:port"):
        check(cfg, {"CARLA_HOSTS": "a:x"})
    docker = experiment.load(None, {"run.env": "carla", "carla_server.docker_image": "carlasim/carla:0.9.16"})
    if shutil.which("docker"):
        check(docker, {})
    else:
        with pytest.raises(ConfigError, match="no `docker` command"):
            check(docker, {})
    missing = experiment.load(None, {"run.env": "carla", "carla_server.command": ["x"],
                                     "carla_server.client": "no_such_carla_client"})
    with pytest.raises(ConfigError, match="no_such_carla_client.*cannot be imported"):
        check(missing, {})


def test_carla_server_section_in_the_experiment_config() -> None:
    from cluster.runtime.config import describe, to_dict

    cfg = experiment.load(None, {"carla_server.gpus": [0, 2], "carla_server.extra_args": ["-benchmark"],
                                 "carla_server.recycle_after_episodes": 50})
    assert cfg.carla_server.gpus == (0, 2) and cfg.carla_server.extra_args == ("-benchmark",)
    assert cfg.carla_server.recycle_after_episodes == 50
    assert experiment.from_manifest(to_dict(cfg)) == cfg
    keys = {row[0] for row in describe(experiment.ExperimentConfig)}
    assert {"carla_server.gpus", "carla_server.recycle_after_episodes", "carla_server.client"} <= keys
    for over, match in (({"carla_server.gpus": []}, "carla_server.*gpus"),
                        ({"carla_server.port_stride": 2}, "carla_server.*port_stride"),
                        ({"carla_server.port_base": 65530}, "carla_server.*1024-65535"),
                        ({"carla_server.gpus": ["0"]}, r"carla_server\.gpus\[0\]: expected an integer")):
        with pytest.raises(ConfigError, match=match):
            experiment.load(None, over)


def test_probe_carla_hosts_names_each_silent_server_and_probes_them_at_once() -> None:
    import threading

    cfg = experiment.load(None, {"run.env": "carla", "carla_server": {"probe_timeout_s": 0.5}})
    calls: list[tuple[str, int, float]] = []
    lock, inflight, most = threading.Lock(), [0], [0]

    def probe(host: str, port: int, timeout_s: float) -> bool:
        with lock:
            calls.append((host, port, timeout_s))
            inflight[0] += 1
            most[0] = max(most[0], inflight[0])
        time.sleep(0.3)  # long enough for the others to start, if they run at once
        with lock:
            inflight[0] -= 1
        if port == 2020:
            raise RuntimeError("resolve failed")  # a client error counts as no answer
        return port == 2000

    hosts = {"CARLA_HOSTS": "10.0.0.1:2000,10.0.0.2:2010,10.0.0.3:2020,10.0.0.4:2030"}
    with pytest.raises(ConfigError, match=r"^CARLA_HOSTS: 10.0.0.2:2010, 10.0.0.3:2020, 10.0.0.4:2030 did not "
                                          r"answer within 0.5s; .*10.0.0.2:2010"):
        probe_carla_hosts(cfg.carla_server, hosts, probe)
    assert most[0] == 4  # in parallel: a start waits one probe timeout, not one per server
    assert sorted(calls) == [("10.0.0.1", 2000, 0.5), ("10.0.0.2", 2010, 0.5), ("10.0.0.3", 2020, 0.5),
                             ("10.0.0.4", 2030, 0.5)]
    probe_carla_hosts(cfg.carla_server, {"CARLA_HOSTS": "10.0.0.1:2000"}, probe)  # every server answers
    calls.clear()
    probe_carla_hosts(cfg.carla_server, {}, probe)  # none listed: launched servers are checked as they start
    assert calls == []
    with pytest.raises(ConfigError, match="not host:port"):
        probe_carla_hosts(cfg.carla_server, {"CARLA_HOSTS": "10.0.0.1"}, probe)
