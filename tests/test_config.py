"""Strict configs: unknown keys and wrong types name the dotted key; YAML round trip; CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.runtime import experiment
from cluster.runtime.config import ConfigError, describe, field_docs, to_dict
from learner.td3 import TD3Config

REPO = Path(__file__).resolve().parents[1]
FLEET = [sys.executable, "-m", "cluster.cli"]
"""`fleet` from this checkout (run from REPO): the installed script may import another checkout."""


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_unknown_key_is_named_with_its_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) in agent: agent\.gama"):
        experiment.load(write(tmp_path, {"agent": {"gama": 0.9}}))
    with pytest.raises(ConfigError, match=r"unknown config key\(s\): learnr"):
        experiment.load(write(tmp_path, {"learnr": {}}))


def test_wrong_types_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"agent\.batch_size: expected an integer, got '256'"):
        experiment.load(write(tmp_path, {"agent": {"batch_size": "256"}}))
    with pytest.raises(ConfigError, match=r"learner\.replay_ratio: expected a number"):
        experiment.load(write(tmp_path, {"learner": {"replay_ratio": True}}))
    with pytest.raises(ConfigError, match=r"run\.env"):
        experiment.load(write(tmp_path, {"run": {"env": "gta"}}))


def test_invalid_values_and_mismatched_sections_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="tau"):
        experiment.load(write(tmp_path, {"agent": {"tau": 2.0}}))
    with pytest.raises(ConfigError, match="embedded.waypoints"):
        experiment.load(write(tmp_path, {"network": {"waypoints": 5}}))


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = experiment.load(None, {"agent.gamma": 0.98, "run.name": "x"})
    assert cfg.agent.gamma == 0.98 and cfg.run.name == "x"
    again = experiment.load(write(tmp_path, to_dict(cfg)))
    assert again == cfg
    assert experiment.from_manifest(to_dict(cfg)) == cfg


def test_every_field_is_documented():
    assert field_docs(TD3Config)["tau"].startswith("Polyak rate")
    undocumented = [key for key, _, _, doc in describe(experiment.ExperimentConfig) if not doc]
    assert undocumented == []


def test_fleet_config_show_and_help():
    shown = subprocess.run([*FLEET, "config", "--show"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["agent"]["gamma"] == TD3Config().gamma
    helped = subprocess.run([*FLEET, "--help"], capture_output=True, text=True, timeout=120, cwd=REPO)
    for cmd in ("train", "evaluate", "snapshots", "config", "bench"):
        assert cmd in helped.stdout
    bad = subprocess.run([*FLEET, "train", "--set", "agent.gama=1"], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert bad.returncode == 2 and "agent.gama" in bad.stderr


@pytest.mark.parametrize("workers, needle", [("0", "run.workers must be >= 1"), ("-3", "run.workers must be >= 1"),
                                             ("1000", "cores can run")])
def test_fleet_train_refuses_impossible_worker_counts_in_seconds(tmp_path: Path, workers: str, needle: str) -> None:
    # Issue 18: --workers 0 looped forever at `env 0/500`; --workers 1000 spawned 114 processes on 2 cores.
    proc = subprocess.run([*FLEET, "train", "--workers", workers, "--set", f"run.runs_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # refused before a run folder or Ray existed


def test_fleet_evaluate_refuses_more_local_workers_than_cores_before_reading_the_store_or_starting_ray(
        tmp_path: Path) -> None:
    # Issue 18, item 8: --workers 1000 started Ray with 1,000 logical CPUs and 1,000 evaluation actors.
    args = [*FLEET, "evaluate", "--snapshot", str(tmp_path / "no-store"),
            "--workers", "1000", "--episodes", "1000", "--out", str(tmp_path / "eval")]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--workers 1000" in proc.stderr and "cores can run" in proc.stderr, proc.stderr  # not the store's error
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "eval").exists()
    # On a cluster Ray places them: the check is not made, and the missing store is what fails.
    clustered = subprocess.run([*args, "--address", "127.0.0.1:1"], capture_output=True, text=True, timeout=60,
                               cwd=REPO, env=env)
    assert clustered.returncode == 2 and "no snapshot store" in clustered.stderr, clustered.stderr[-2000:]
    # Only as many workers as episodes are started: 1,000 workers for 2 episodes is 2.
    few = subprocess.run([*args[:-4], "--episodes", "2", "--out", str(tmp_path / "eval")], capture_output=True,
                         text=True, timeout=60, cwd=REPO, env=env)
    assert few.returncode == 2 and "no snapshot store" in few.stderr, few.stderr[-2000:]


def test_evaluate_starts_no_more_workers_than_episodes(monkeypatch) -> None:
    from cluster.runtime import evaluation as evaluate

    cfg = experiment.load(None)
    monkeypatch.setattr(evaluate, "load_for_evaluation", lambda *a, **k: (cfg, {}, "store@v00000001"))
    started = []

    def on_ray(cfg, weights, seeds, workers, address=None):
        started.append(workers)
        raise KeyboardInterrupt  # what it would run is all this test needs

    monkeypatch.setattr(evaluate, "_on_ray", on_ray)
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate_snapshot("store", workers=1000, episodes=3)
    assert started == [3]  # Ray was started with as many logical CPUs as workers: 1,000 for 3 episodes


def test_local_capacity_counts_rollout_and_evaluation_workers() -> None:
    per_core = experiment.LOCAL_PROCESSES_PER_CORE
    cfg = experiment.load(None, {"run.workers": 4 * per_core, "eval.every_updates": 0})
    cfg.check_local_capacity(4)  # exactly at the limit
    with pytest.raises(ConfigError, match="cores can run"):
        experiment.load(None, {"run.workers": 4 * per_core, "eval.every_updates": 100,
                               "eval.workers": 1}).check_local_capacity(4)


def test_chunk_size_and_age_are_checked() -> None:
    from cluster.runtime import experiment

    with pytest.raises(ConfigError, match=r"worker\.chunk_steps must be >= 1 and worker\.chunk_max_age_s > 0"):
        experiment.load(None, {"worker.chunk_max_age_s": 0})
    with pytest.raises(ConfigError, match=r"worker\.chunk_steps must be >= 1"):
        experiment.load(None, {"worker.chunk_steps": 0})
