"""A snapshot is data: nothing its manifest names is run (issue 18, item 1)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from checkpoint_store.manifest import Manifest
from cluster.runtime import experiment

REPO = Path(__file__).resolve().parents[1]
FLEET = str(Path(sys.executable).parent / "fleet")
ENV = dict(os.environ, PYTHONPATH=str(REPO))  # runs import the env double from tests/


def _tamper(store: Path, marker: Path) -> None:
    """Rewrite every manifest as someone with write access to the store could, checksum included."""
    for path in (store / "versions").glob("v*.json"):
        m = Manifest.from_bytes(path.read_bytes())
        cfg = dict(m.config)
        cfg["run"] = {**cfg["run"], "env": "os:_exit"}
        cfg["carla_server"] = {**cfg["carla_server"], "command": ["sh", "-c", f"touch {marker}"],
                               "client": "os:_exit"}
        cfg["carla"] = {**cfg["carla"], "host": "203.0.113.9"}
        path.write_bytes(dataclasses.replace(m, config=cfg).to_bytes())


def test_for_evaluation_takes_only_shapes_and_simulator_parameters_from_a_manifest() -> None:
    trained = experiment.load(None, {"network.waypoints": 4, "embedded.waypoints": 4, "carla.waypoints": 4,
                                     "embedded.route_length_m": 123.0, "carla.town": "Town03"})
    manifest = experiment.ExperimentConfig.public_dict(trained)
    manifest["run"]["env"] = "os:_exit"
    manifest["carla_server"]["command"] = ["sh", "-c", "echo pwned"]
    manifest["carla"]["host"] = "203.0.113.9"
    mine = experiment.load(None, {"run.env": "carla"})
    cfg, notes = experiment.for_evaluation(manifest, mine)
    assert cfg.network.waypoints == 4 and cfg.embedded.route_length_m == 123.0 and cfg.carla.town == "Town03"
    assert cfg.run == mine.run and cfg.carla_server == mine.carla_server
    assert cfg.carla.host == mine.carla.host and cfg.carla.port == mine.carla.port
    assert len(notes) == 1 and "os:_exit" in notes[0] and "nothing a manifest names is run" in notes[0]
    # The user's own --set wins over the manifest's simulator parameters (evaluating under other conditions).
    longer, _ = experiment.for_evaluation(manifest, mine, {"embedded.route_length_m": 600.0})
    assert longer.embedded.route_length_m == 600.0 and longer.embedded.max_speed == trained.embedded.max_speed
    assert manifest["embedded"]["route_length_m"] == 123.0  # the manifest itself is left as it was
    # A legacy import records only the vector size.
    legacy, _ = experiment.for_evaluation({"vector_dim": 11, "hyperparameters": {}, "legacy": True}, mine)
    assert legacy.network.waypoints == 4 == legacy.embedded.waypoints


def test_fleet_evaluate_never_runs_what_a_rewritten_manifest_names(tmp_path: Path) -> None:
    store, marker = tmp_path / "store", tmp_path / "pwned"
    train = subprocess.run(
        [FLEET, "train", "--local", "--steps", "200", "--name", "m", "--store", str(store), "--quiet",
         "--set", f"run.runs_dir={tmp_path / 'runs'}", "--set", "run.env=tests.env_double:make",
         "--set", "learner.learning_starts=100", "--set", "agent.batch_size=16", "--set", "eval.every_updates=0"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=ENV)
    assert train.returncode == 0, train.stderr[-2000:]
    _tamper(store, marker)
    verify = subprocess.run([FLEET, "snapshots", "verify", str(store)], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr  # a checksum is not authentication

    args = [FLEET, "evaluate", "--snapshot", f"{store}@latest", "--local", "--episodes", "1",
            "--out", str(tmp_path / "eval")]
    ev = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert ev.returncode == 0, ev.stderr[-2000:]  # os:_exit would have ended it with another status
    assert "os:_exit" in ev.stderr and "route completion" in ev.stdout
    # On CARLA the servers come from the user's setup (none here): refused, and the manifest's command never ran.
    carla = subprocess.run([*args, "--env", "carla"], capture_output=True, text=True, timeout=300, cwd=REPO,
                           env={k: v for k, v in os.environ.items()
                                if k not in ("CARLA_HOSTS", "CARLA_ROOT")})
    assert carla.returncode == 2, carla.stderr[-2000:]
    assert "CARLA_HOSTS" in carla.stderr and "Traceback" not in carla.stderr
    assert not marker.exists()


def test_evaluate_and_resume_of_what_is_not_there_exit_2_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a store")
    cases = [
        [FLEET, "evaluate", "--local", "--snapshot", f"{tmp_path / 'missing'}@latest"],
        [FLEET, "evaluate", "--local", "--snapshot", f"{tmp_path / 'empty'}@v99999999"],
        [FLEET, "evaluate", "--local", "--snapshot", f"{tmp_path / 'a-file'}@latest"],
        [FLEET, "train", "--local", "--resume", f"{tmp_path / 'empty'}@v99999999",
         "--set", f"run.runs_dir={tmp_path / 'runs'}"],
    ]
    for args in cases:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "missing").exists()  # a reader never creates the location


def test_fleet_evaluate_video_writes_an_animated_gif_of_one_episode(tmp_path: Path) -> None:
    from PIL import Image

    store = tmp_path / "store"
    train = subprocess.run(
        [FLEET, "train", "--local", "--steps", "150", "--name", "v", "--store", str(store), "--quiet",
         "--set", f"run.runs_dir={tmp_path / 'runs'}", "--set", "learner.learning_starts=100",
         "--set", "agent.batch_size=16", "--set", "eval.every_updates=0", "--set", "embedded.max_episode_steps=40"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert train.returncode == 0, train.stderr[-2000:]
    out = tmp_path / "eval"
    ev = subprocess.run([FLEET, "evaluate", "--snapshot", f"{store}@latest", "--local", "--episodes", "1",
                         "--video", "--out", str(out), "--set", "embedded.max_episode_steps=40"],
                        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert ev.returncode == 0, ev.stderr[-2000:]
    gif = Image.open(out / "episode.gif")
    # The video drives the first evaluation seed: one frame per step plus the final state.
    steps = json.loads((out / "report.json").read_text())["episodes"][0]["steps"]
    assert gif.n_frames == steps + 1 and 2 <= gif.n_frames <= 41
    assert f"{gif.n_frames} frames" in ev.stdout
    assert gif.size == (256 + 8 + 2 * 84 + 4, 272)  # overview, then the network's four frames and its actions


def test_evaluate_with_a_bad_version_or_no_episodes_and_a_temp_like_tag_exit_2_in_one_line(tmp_path: Path) -> None:
    from checkpoint_store.store import SnapshotStore
    from learner.td3 import TD3Agent, TD3Config

    store = tmp_path / "store"
    SnapshotStore(str(store)).put(TD3Agent(TD3Config(device="cpu")).state(),
                                  {"config": experiment.ExperimentConfig.public_dict(experiment.load(None, {}))})
    cases = [
        (["evaluate", "--local", "--snapshot", f"{store}@bad!name"], "bad tag name or version 'bad!name'"),
        (["evaluate", "--local", "--snapshot", f"{store}@latest", "--episodes", "0"], "--episodes"),
        # A tag named like a temporary file would be hidden from the tag list and deleted by cleanup.
        (["snapshots", "tag", str(store), "latest", "best.tmp-0123abcd"], "holds no '.tmp-'"),
    ]
    for args, said in cases:
        proc = subprocess.run([FLEET, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=ENV)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        assert said in proc.stderr, proc.stderr
    assert not (store / "refs" / "tags").exists() and not (tmp_path / "runs").exists()
