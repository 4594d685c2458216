"""The CARLA server supervisor against a fake server executable (tests/fake_carla_server.py)."""

from __future__ import annotations

import os
import random
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from rollout_workers.carla.server import (
    CarlaServer,
    Endpoint,
    ServerConfig,
    parse_carla_hosts,
    reserve_block,
    server_command,
    server_for_worker,
)
from rollout_workers.contract import SimulatorError
from tests.fake_carla_server import probe
from tests.procs import alive

FAKE = str(Path(__file__).with_name("fake_carla_server.py"))


def _wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


@pytest.fixture
def cfg(tmp_path: Path) -> ServerConfig:
    return ServerConfig(
        command=(sys.executable, FAKE, "--port", "{rpc}", "--pid-file", str(tmp_path / "pids")),
        port_base=random.randrange(20000, 32000, 10), lock_dir=str(tmp_path / "locks"),
        log_dir=str(tmp_path / "logs"), startup_timeout_s=10.0, probe_timeout_s=0.3, probe_interval_s=0.05,
        kill_grace_s=1.0,
    )


def _pids(tmp_path: Path) -> list[int]:
    return [int(p) for p in (tmp_path / "pids").read_text().split()]


def _with_args(cfg: ServerConfig, *args: str) -> ServerConfig:
    return replace(cfg, command=cfg.command + args)


def test_start_probe_and_stop_kills_the_whole_group(cfg: ServerConfig, tmp_path: Path) -> None:
    server = CarlaServer(_with_args(cfg, "--child"), probe=probe)
    ep = server.start()
    try:
        assert ep == Endpoint("127.0.0.1", cfg.port_base, cfg.port_base + 3)
        assert server.healthy() and probe(ep.host, ep.port, 1.0)
        assert os.getpgid(server.pid) == server.pid != os.getpgid(0)  # its own process group
        pids = _pids(tmp_path)
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        server.stop()
    assert _wait_gone(pids) == []
    assert not probe(ep.host, ep.port, 0.3)


def test_restart_after_crash(cfg: ServerConfig, tmp_path: Path) -> None:
    with CarlaServer(_with_args(cfg, "--die-after", "0.5"), probe=probe) as server:
        first = server.pid
        deadline = time.monotonic() + 5
        while server.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.alive()
        ep = server.ensure_healthy()
        assert server.pid != first and server.restarts == 1
        assert ep.port == cfg.port_base  # same block, kept while the server restarts
    assert _wait_gone(_pids(tmp_path)) == []


def test_restart_after_hang(cfg: ServerConfig, tmp_path: Path) -> None:
    control = tmp_path / "control"
    with CarlaServer(_with_args(cfg, "--control-file", str(control)), probe=probe) as server:
        first = server.pid
        assert server.ensure_healthy() and server.pid == first and server.restarts == 0
        control.write_text("hang")
        time.sleep(0.2)
        assert server.alive() and not server.healthy()  # alive, connects, but does not answer
        control.write_text("")
        server.ensure_healthy()
        assert server.pid != first and server.restarts == 1 and server.healthy()
        assert not alive(first)
    assert _wait_gone(_pids(tmp_path)) == []


def test_sigterm_ignored_escalates_to_sigkill(cfg: ServerConfig, tmp_path: Path) -> None:
    server = CarlaServer(_with_args(cfg, "--ignore-sigterm", "--child"), probe=probe)
    server.start()
    pids = _pids(tmp_path)
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 >= cfg.kill_grace_s * 0.9  # waited the grace period first
    assert _wait_gone(pids) == []


def test_port_blocks_never_shared_while_busy(cfg: ServerConfig, tmp_path: Path) -> None:
    squatter = socket.socket()
    squatter.bind(("0.0.0.0", cfg.port_base + 2 * cfg.port_stride + 1))  # someone else on block 2's ports
    squatter.listen(1)
    a, b = CarlaServer(cfg, probe=probe), CarlaServer(cfg, probe=probe)
    try:
        ea, eb = a.start(), b.start()
        assert {ea.port, eb.port} == {cfg.port_base, cfg.port_base + cfg.port_stride}
        held = reserve_block(cfg)  # a third reservation skips both busy blocks and the squatted one
        assert held.rpc == cfg.port_base + 3 * cfg.port_stride
        a.stop()
        again = reserve_block(cfg)  # a's block is free once a stopped
        assert again.rpc == cfg.port_base
        again.release()
        held.release()
    finally:
        a.stop()
        b.stop()
        squatter.close()
    assert _wait_gone(_pids(tmp_path)) == []


def test_a_port_taken_after_reservation_moves_the_server_to_a_free_block(cfg: ServerConfig, tmp_path: Path) -> None:
    server = CarlaServer(cfg, probe=probe)
    server._block = reserve_block(cfg)  # reserved while free ...
    squatter = socket.socket()
    squatter.bind(("0.0.0.0", cfg.port_base))  # ... then another process binds its rpc port before the server does
    squatter.listen(1)
    try:
        ep = server.start()  # the first start fails on the taken port; the retry runs on the next block
        assert ep.port == cfg.port_base + cfg.port_stride and server.healthy()
        assert reserve_block(cfg).rpc == cfg.port_base + 2 * cfg.port_stride  # still holds its new block only
    finally:
        server.stop()
        squatter.close()
    assert reserve_block(cfg).rpc == cfg.port_base  # the taken block was released, not leaked
    assert _wait_gone(_pids(tmp_path)) == []


def test_recycle_after_episodes_and_memory(cfg: ServerConfig, tmp_path: Path) -> None:
    with CarlaServer(replace(cfg, recycle_after_episodes=2), probe=probe) as server:
        assert server.episode_done() is False
        assert server.episode_done() is True
        first = server.pid
        server.restart("recycle")
        assert server.pid != first and server.episodes == 0
    with CarlaServer(replace(_with_args(cfg, "--alloc-mb", "64"), max_rss_mb=32), probe=probe) as server:
        assert server.rss_mb() > 60
        assert server.episode_done() is True
    assert _wait_gone(_pids(tmp_path)) == []


def test_server_that_exits_at_startup_reports_its_log(cfg: ServerConfig) -> None:
    bad = replace(cfg, command=(sys.executable, "-c", "import sys; print('boom: no GPU'); sys.exit(7)"),
                  start_attempts=2)
    server = CarlaServer(bad, probe=probe)
    with pytest.raises(SimulatorError, match="code 7.*boom: no GPU"):
        server.start()
    assert server.pid is None


def test_attached_server_is_never_killed(cfg: ServerConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import tempfile

    from rollout_workers.carla import server as carla_server

    monkeypatch.setattr(carla_server, "_claims", {})  # its lock file is closed with the claim
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # and lies in this test's folder

    port = cfg.port_base + 5
    theirs = subprocess.Popen([sys.executable, FAKE, "--port", str(port), "--lifetime", "20"])
    try:
        deadline = time.monotonic() + 5
        while not probe("127.0.0.1", port, 0.2) and time.monotonic() < deadline:
            time.sleep(0.05)
        server = server_for_worker(1, cfg, probe=probe,
                                   environ={"CARLA_HOSTS": f"10.9.9.9:2000, 127.0.0.1:{port}"})
        assert server.attached and server.endpoint == Endpoint("127.0.0.1", port, port + 6000)
        assert server.start() == server.endpoint
        server.stop()
        server.restart("should do nothing to it")
        assert server.episode_done() is False
        assert theirs.poll() is None and probe("127.0.0.1", port, 0.5)
    finally:
        theirs.terminate()
        theirs.wait(5)
    t0 = time.monotonic()
    with pytest.raises(SimulatorError, match=rf"127.0.0.1:{port}.*not ours to restart.*CARLA_HOSTS"):
        server.ensure_healthy()
    assert time.monotonic() - t0 < cfg.probe_timeout_s + 1.0


def test_carla_hosts_parsing_and_worker_assignment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from rollout_workers.carla import server as carla_server

    assert parse_carla_hosts(" a:2000, b:2010 ,") == [Endpoint("a", 2000, 8000), Endpoint("b", 2010, 8010)]
    with pytest.raises(ValueError, match="'b:x'"):
        parse_carla_hosts("a:2000,b:x")
    # One policy: each worker claims a server no one else on the node drives, its own index first.
    monkeypatch.setattr(carla_server, "_claims", {})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    hosts = {"CARLA_HOSTS": "a:2000,b:2000"}
    first = server_for_worker(1, environ=hosts)
    assert first.attached and first.endpoint == Endpoint("b", 2000, 8000)
    assert server_for_worker(0, environ=hosts).endpoint == Endpoint("a", 2000, 8000)
    assert server_for_worker(1, environ=hosts).endpoint == first.endpoint  # a claim is kept
    with pytest.raises(RuntimeError, match="driven by other workers"):
        server_for_worker(2, environ=hosts)
    carla_server.release_carla_hosts()  # every claim of this process given up: worker 2 gets one now
    assert server_for_worker(2, environ=hosts).endpoint == Endpoint("a", 2000, 8000)
    carla_server.release_carla_hosts()
    launched = server_for_worker(3, ServerConfig(gpus=(0, 1)), environ={})
    assert not launched.attached and launched.gpu == 1


def test_command_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rollout_workers.carla.server import PortBlock

    block = PortBlock(2010, -1)
    exe = tmp_path / "CarlaUE4.sh"
    exe.write_text("#!/bin/sh\n")
    monkeypatch.setenv("CARLA_ROOT", str(tmp_path))
    argv = server_command(ServerConfig(), block, gpu=2, name="n")
    assert argv[0] == str(exe)
    for flag in ("-RenderOffScreen", "-carla-rpc-port=2010", "-carla-streaming-port=2011",
                 "-carla-secondary-port=2012", "-quality-level=Low",
                 "-ini:[/Script/Engine.RendererSettings]:r.GraphicsAdapter=2"):
        assert flag in argv
    docker = server_command(ServerConfig(docker_image="carlasim/carla:0.9.16"), block, gpu=1, name="n")
    assert docker[:8] == ["docker", "run", "--rm", "--name", "n", "--net=host", "--gpus", "device=1"]
    assert "carlasim/carla:0.9.16" in docker and "-carla-rpc-port=2010" in docker
    monkeypatch.delenv("CARLA_ROOT")
    with pytest.raises(FileNotFoundError, match="CARLA_ROOT"):
        server_command(ServerConfig(), block, gpu=0, name="n")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_default_lock_and_log_files_never_follow_links_planted_in_a_shared_tmp(
        cfg: ServerConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stat
    import tempfile

    from rollout_workers.carla import server as carla_server

    shared, victim = tmp_path / "tmp", tmp_path / "victim"
    shared.mkdir()
    victim.mkdir()
    (victim / ".bashrc").write_bytes(b"keep me")
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    monkeypatch.setattr(carla_server, "_claims", {})
    # What another user of the machine could plant where the old shared names were.
    os.symlink(victim, shared / "carla-fleet-ports")
    os.symlink(victim, shared / "carla-fleet-logs")
    os.symlink(victim / ".bashrc", shared / "carla-fleet-127.0.0.1-2000.lock")
    before = _tree(victim)
    with CarlaServer(replace(cfg, lock_dir="", log_dir=""), probe=probe) as server:
        assert probe("127.0.0.1", server.endpoint.port, 1.0)
    assert carla_server.claim_carla_host(0, environ={"CARLA_HOSTS": "127.0.0.1:2000"}) == Endpoint(
        "127.0.0.1", 2000, 8000)
    carla_server.release_carla_hosts()
    assert _tree(victim) == before
    private = shared / f"carla-fleet-{os.getuid()}"
    assert stat.S_IMODE(private.lstat().st_mode) == 0o700 and private.lstat().st_uid == os.getuid()
    assert list((private / "logs").glob("carla-*.log")) and list((private / "ports").glob("*.lock"))
    # A lock folder the user names is theirs, yet a link planted in it is not written through either.
    (tmp_path / "locks").mkdir()
    os.symlink(victim / ".bashrc", tmp_path / "locks" / f"{cfg.port_base}.lock")
    with pytest.raises(PermissionError, match="symbolic link"):
        reserve_block(cfg)
    assert _tree(victim) == before


@pytest.mark.parametrize("planted", ["link", "open to others", "someone else's"])
def test_a_private_folder_that_is_a_link_open_to_others_or_not_ours_is_refused(
        planted: str, cfg: ServerConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from rollout_workers.carla import server as carla_server

    shared, victim = tmp_path / "tmp", tmp_path / "victim"
    shared.mkdir()
    victim.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    monkeypatch.setattr(carla_server, "_claims", {})
    private = shared / f"carla-fleet-{os.getuid()}"
    if planted == "link":
        os.symlink(victim, private)
    else:
        private.mkdir(mode=0o700)
        if planted == "open to others":
            private.chmod(0o777)
        else:
            os.chown(private, 65534, 65534)
    with pytest.raises(PermissionError, match=f"carla-fleet-{os.getuid()} is .*only you can use"):
        reserve_block(replace(cfg, lock_dir=""))
    with pytest.raises(PermissionError, match=f"carla-fleet-{os.getuid()} is "):
        carla_server.claim_carla_host(0, environ={"CARLA_HOSTS": "127.0.0.1:2000"})
    assert list(victim.iterdir()) == []
