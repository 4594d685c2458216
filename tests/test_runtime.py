"""The runtime: local topology, a real local Ray cluster, resume and failures."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from checkpoint_store.store import SnapshotStore
from cluster.runtime import experiment
from cluster.runtime.resume import Resume
from cluster.runtime.training import train
from learner.learner import Learner

REPO = Path(__file__).resolve().parents[1]


def make_cfg(tmp_path: Path, **over):
    base = {
        "run.name": "t", "run.runs_dir": str(tmp_path / "runs"), "run.workers": 2,
        "run.total_env_steps": 1200, "run.collect_steps": 50, "run.progress_every_s": 1.0,
        "run.env": "tests.env_double:make", "run.store": str(tmp_path / "store"),
        "agent.batch_size": 16, "learner.learning_starts": 400, "learner.replay_ratio": 0.25,
        "learner.snapshot_every": 40, "learner.publish_every": 10, "replay.capacity": 5000,
        "eval.every_updates": 0,
    }
    return experiment.load(None, {**base, **over})


def owed_updates(cfg, env_steps: int) -> int:
    return int(cfg.learner.replay_ratio * (env_steps - cfg.learner.learning_starts + 1))


def test_local_run_holds_the_ratio_and_its_final_snapshot_restores_exactly(tmp_path):
    cfg = make_cfg(tmp_path)
    summary = train(cfg, local=True, quiet=True)
    assert summary["env_steps"] >= 1200
    assert summary["learner_updates"] == owed_updates(cfg, summary["env_steps"])
    store = SnapshotStore(cfg.store_uri())
    versions = store.list()
    assert len(versions) >= 3
    snap = store.get("latest")
    assert snap.manifest.learner_updates == summary["learner_updates"]
    assert snap.manifest.env_steps == summary["env_steps"]
    fresh = Learner(cfg.agent, cfg.network, cfg.replay, cfg.learner)
    fresh.restore(snap.state)
    restored = fresh.agent.state()
    for part in ("actor_cnn", "critic_cnn", "actor", "critic_target"):
        for key, value in snap.state[part].items():
            assert torch.equal(restored[part][key], value), (part, key)
    assert fresh.updates == summary["learner_updates"]
    assert 0 < summary["snapshot_block_ms_median"] < 60_000  # measured on the learner's side
    assert (tmp_path / "runs" / "t" / "summary.json").exists()
    assert list((tmp_path / "runs" / "t" / "metrics").glob("part-*.parquet"))


def test_local_resume_continues_counters_and_keeps_the_replay(tmp_path):
    cfg = make_cfg(tmp_path)
    first = train(cfg, local=True, quiet=True)
    cfg2 = make_cfg(tmp_path, **{"run.name": "t2", "run.total_env_steps": 1800})
    second = train(cfg2, resume=Resume.parse(cfg.store_uri()), local=True, quiet=True)
    assert second["env_steps"] >= 1800 > first["env_steps"]
    # The same schedule as an uninterrupted run: no burst of updates on resume (issue 18, item 5).
    assert first["learner_updates"] == owed_updates(cfg, first["env_steps"])
    assert abs(second["learner_updates"] - owed_updates(cfg2, second["env_steps"])) <= 1
    latest = SnapshotStore(cfg.store_uri()).get("latest")
    assert latest.manifest.env_steps == second["env_steps"]
    assert latest.manifest.learner_updates == second["learner_updates"]


@pytest.mark.integration
def test_ray_run_on_the_embedded_env_then_evaluate(tmp_path, ray_cluster):
    from cluster.runtime.evaluation import evaluate_snapshot

    cfg = make_cfg(tmp_path, **{"run.env": "embedded", "run.total_env_steps": 2000,
                                "learner.learning_starts": 1000, "learner.snapshot_every": 50,
                                "eval.every_updates": 100, "eval.workers": 1, "eval.episodes": 1})
    summary = train(cfg, quiet=True)
    # Collection stops near the budget: workers report what they collected, not what the learner pulled.
    assert summary["env_steps"] <= 2000 + cfg.run.workers * cfg.run.collect_steps + 400, summary["env_steps"]
    # Periodic evaluation on an evaluation actor: the final version at least, and `best` tagged.
    assert SnapshotStore(cfg.store_uri()).tags()["best"] == summary["best"]["version"]
    assert summary["last_eval"].startswith(summary["final_snapshot"])
    assert summary["env_steps"] >= 2000 and summary["episodes"] >= 1
    assert summary["learner_updates"] == owed_updates(cfg, summary["env_steps"])
    store = SnapshotStore(cfg.store_uri())
    assert len(store.list()) >= 2
    # The replay saved is the learner's own memory, cut where its state was taken (issue 16).
    latest = store.get("latest")
    header = json.loads(store.read_file(latest.manifest.version, "replay/header.json"))
    assert header["counters"]["steps_added"] == latest.state["learner"]["env_steps"] == latest.manifest.env_steps
    report = evaluate_snapshot(f"{cfg.store_uri()}@latest", workers=2, episodes=2)
    assert len(report.episodes) == 2
    assert 0.0 <= report.mean_route_completion <= 1.0
    assert report.driving_score <= report.mean_route_completion + 1e-9


def test_chunks_arriving_while_a_snapshot_encodes_the_replay_wait_and_the_saved_replay_matches_the_state(tmp_path):
    from test_replay_support import episode_chunks

    cfg = make_cfg(tmp_path, **{"run.env": "embedded", "learner.learning_starts": 10**6})
    learner = Learner(cfg.agent, cfg.network, cfg.replay, cfg.learner)
    vdim = cfg.network.vector_dim
    chunks = episode_chunks(300, chunk_steps=50, p_end=0.0, vector_dim=vdim)
    learner.ingest(chunks[:4])
    taken: list = []
    learner.snapshot(lambda state, meta: taken.append((state, learner.export_replay_later())))
    state, export = taken[0]
    assert learner.ingest(chunks[4:]) == 0 and learner.holding == 2  # the rings are being read: held
    assert learner.env_steps == 200 and len(learner.memory) == 200
    with pytest.raises(RuntimeError, match="still encoding"):
        learner.export_replay_later()
    files = export.encode({})
    header = json.loads(files["replay/header.json"])
    assert header["counters"]["steps_added"] == state["learner"]["env_steps"] == 200
    assert learner.ingest([]) == 100 and learner.holding == 0 and learner.env_steps == 300
    # The next snapshot waits for a running export, then adds what it held back before its cut.
    learner.snapshot(lambda state, meta: taken.append((state, learner.export_replay_later())))
    learner.ingest(episode_chunks(50, chunk_steps=50, p_end=0.0, vector_dim=vdim, seed=5))
    threading.Timer(0.2, taken[1][1].encode).start()
    learner.snapshot(lambda state, meta: taken.append((state, learner.export_replay_later())))
    assert taken[2][0]["learner"]["env_steps"] == 350 == learner.memory.steps_added
    taken[2][1].encode()


@pytest.mark.integration
def test_env_that_raises_is_recreated_and_counted(tmp_path, ray_cluster):
    cfg = make_cfg(tmp_path, **{"run.name": "flaky", "run.env": "tests.env_double:make_flaky"})
    summary = train(cfg, quiet=True)
    assert summary["env_failures"] >= 5  # 2% of ~1200 steps
    assert summary["env_steps"] >= 1200



def test_local_run_evaluates_periodically_and_tags_best(tmp_path):
    from cluster.runtime.progress import read_metrics

    cfg = make_cfg(tmp_path, **{"run.name": "ev", "eval.every_updates": 60, "eval.episodes": 2})
    summary = train(cfg, local=True, quiet=True)
    store = SnapshotStore(cfg.store_uri())
    rows = [r for r in read_metrics(cfg.run_dir()).to_pylist() if r["kind"] == "eval"]
    # ~200 updates: evaluations near 60, 120, 180 updates, then the final version.
    assert len(rows) >= 3
    assert summary["best"]["driving_score"] == max(r["driving_score"] for r in rows)
    assert store.tags()["best"] == summary["best"]["version"]
    assert summary["last_eval"].startswith(summary["final_snapshot"])
    # The final evaluation's figures; the scripted reference only on the embedded env (not this double).
    assert summary["final_eval"]["route_completion"] == pytest.approx(rows[-1]["route_completion"], abs=1e-3)
    assert summary["final_eval"]["episodes"] == 2
    assert "scripted_reference" not in summary


def test_scripted_reference_runs_the_scripted_driver_on_the_evaluation_seeds(tmp_path):
    from cluster.runtime.run import scripted_reference

    cfg = experiment.load(None, {"eval.episodes": 2, "run.runs_dir": str(tmp_path)})
    ref = scripted_reference(cfg)
    assert ref["episodes"] == 2 and ref["route_completion"] == 1.0 and 7.0 < ref["mean_speed"] < 9.0
    assert ref["mean_return"] > 250


class PresetBackend:
    """Evaluation backend whose episodes have preset route completions, one list per evaluation."""

    def __init__(self, completions):
        self.completions = list(completions)

    def start(self, weights, seeds):
        assert set(weights) == {"actor_cnn", "actor"}
        rc = self.completions.pop(0)
        return [{"seed": s, "return": rc, "route_completion": rc, "collision": 0.0, "off_road": 0.0,
                 "distance_m": 100.0, "mean_speed": 5.0} for s in seeds]

    def result(self, handle):
        return handle

    wait = result

    def close(self):
        pass


def test_best_tag_moves_only_when_the_score_beats_the_best_so_far(tmp_path):
    from cluster.runtime.periodic_eval import PeriodicEval
    from cluster.runtime.progress import MetricsLog, Status

    cfg = make_cfg(tmp_path, **{"run.name": "pe", "eval.every_updates": 1, "eval.episodes": 2})
    train(cfg, local=True, quiet=True)
    # The run's TensorBoard folder, read by TensorBoard's own reader: learner, episode and evaluation scalars.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(cfg.run_dir() / "tb"))
    tb.Reload()
    tags = tb.Tags()["scalars"]
    for wanted in ("learner/critic_loss", "learner/dq_dthrottle", "episode/return", "eval/driving_score"):
        assert wanted in tags, (wanted, tags)
    assert len(tb.Scalars("learner/critic_loss")) >= 2
    versions = [m.version for m in SnapshotStore(cfg.store_uri()).list()][:4]
    calls = []
    ev = PeriodicEval(cfg, PresetBackend([0.5, 0.3, 0.8, 0.8]), lambda v, s: calls.append((v, s)), 0.4)
    status, metrics = Status(total_env_steps=1), MetricsLog(tmp_path / "pe-metrics")
    for i, version in enumerate(versions):
        status.last_snapshot, status.updates = version, 10**6 + i
        ev.poll(status, metrics)  # starts (inline backend: already done)
        ev.poll(status, metrics)  # collects
    metrics.close()
    assert calls == [(versions[0], 0.5), (versions[2], 0.8)]  # 0.3 and a tie do not move it
    assert ev.best_version == versions[2] and len(ev.reports) == 4
    assert status.last_eval == f"{versions[3]} score 0.80"


def test_learner_snapshot_carries_the_best_evaluation_score(tmp_path):
    cfg = make_cfg(tmp_path)
    lrn = Learner(cfg.agent, cfg.network, cfg.replay, cfg.learner)
    lrn.best_eval = 0.625
    saved = {}
    lrn.snapshot(lambda state, meta: saved.update(state))
    fresh = Learner(cfg.agent, cfg.network, cfg.replay, cfg.learner)
    fresh.restore(saved)
    assert fresh.best_eval == 0.625


def test_a_restored_learner_keeps_the_schedule_and_paces_workers_from_where_it_was(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, **{"learner.learning_starts": 100, "learner.replay_ratio": 0.5})
    lrn = Learner(cfg.agent, cfg.network, cfg.replay, cfg.learner)
    assert lrn.steps_ahead(300) == 300 - 99  # nothing consumed yet past the warm-up
    lrn.env_steps, lrn.agent.total_it.value = 1000, 450  # on schedule: int(0.5 * (1000 - 100 + 1)) = 450
    assert lrn.steps_ahead(1000) <= 1  # the ratio's rounding
    saved = {}
    lrn.snapshot(lambda state, meta: saved.update(state))
    fresh = Learner(cfg.agent, cfg.network, cfg.replay, cfg.learner)
    fresh.restore(saved)
    assert (fresh.env_steps, fresh.updates) == (1000, 450)
    assert fresh.steps_ahead(1000) <= 1 and fresh.steps_ahead(1100) <= 101  # not the whole run again (~900)
    fresh.env_steps = 1100
    monkeypatch.setattr(type(fresh.memory), "__len__", lambda self: 10**6)  # a full memory, as if restored
    assert fresh.updates_allowed() == 50  # 0.5 per new step, no burst (issue 18, item 5)


def test_a_mid_run_snapshot_restores_the_updates_it_still_owed_under_the_same_schedule(tmp_path, monkeypatch):
    """A snapshot taken while the learner lagged (the node lost, `--resume auto`): the resumed run owes the
    same updates the lost one did; with another ratio it starts its schedule at the snapshot instead."""
    cfg = make_cfg(tmp_path, **{"learner.learning_starts": 100, "learner.replay_ratio": 0.5})
    lrn = Learner(cfg.agent, cfg.network, cfg.replay, cfg.learner)
    lrn.env_steps, lrn.agent.total_it.value = 1000, 400  # 50 updates behind int(0.5 * (1000 - 100 + 1))
    saved = {}
    lrn.snapshot(lambda state, meta: saved.update(state))
    monkeypatch.setattr(type(lrn.memory), "__len__", lambda self: 10**6)  # a full memory, as if restored
    same = Learner(cfg.agent, cfg.network, cfg.replay, cfg.learner)
    same.restore(dict(saved))
    assert same.updates_allowed() == 50 and same.steps_ahead(1000) == 1000 - (99 + 400 / 0.5)
    other = make_cfg(tmp_path, **{"learner.learning_starts": 100, "learner.replay_ratio": 0.25})
    changed = Learner(other.agent, other.network, other.replay, other.learner)
    changed.restore(dict(saved))
    assert changed.updates_allowed() == 0 and changed.steps_ahead(1000) == 0


def test_carla_run_on_a_ray_it_starts_fails_fast_naming_what_to_set(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("CARLA_HOSTS", "CARLA_ROOT")}
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "train", "--env", "carla", "--quiet",
                           "--set", f"run.runs_dir={tmp_path}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "CARLA_HOSTS" in proc.stderr and "CARLA_ROOT" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr  # checked before Ray starts


def test_evaluation_report_is_strict_json_with_integer_seeds():
    import json

    from rollout_workers.evaluation import summarize

    ep = {"seed": 7.0, "return": 1.0, "route_completion": 0.0, "collision": 1.0, "off_road": 0.0,
          "distance_m": 0.0, "mean_speed": 0.0}
    report = summarize([ep], "store@v00000001")
    assert report.collisions_per_km == float("inf")  # a collision before moving at all
    data = json.loads(report.to_json())  # Python's json accepts Infinity; allow_nan=False would raise
    assert data["collisions_per_km"] is None and data["episodes"][0]["seed"] == 7
    assert isinstance(data["episodes"][0]["seed"], int)


@pytest.mark.integration
def test_a_ray_instance_fleet_starts_caps_the_task_events_the_gcs_keeps():
    """Ray's defaults (100,000 task records, ~2.5 KB each; then 1,000,000 dropped attempts, ~100 bytes
    each) let a run grow the GCS heap by ~250 MB, then by 16 MB/h for six hours."""
    import subprocess
    import sys

    probe = ("import ray\n"
             "from cluster.runtime.ray_setup import RAY_SYSTEM_CONFIG, init_ray\n"
             "init_ray(num_cpus=1)\n"
             "seen = ray.get(ray.remote(lambda: (ray._config.task_events_max_num_task_in_gcs(),\n"
             "    ray._config.task_events_max_dropped_task_attempts_tracked_per_job_in_gcs())).remote())\n"
             "print(*seen, RAY_SYSTEM_CONFIG['task_events_max_num_task_in_gcs'],\n"
             "      RAY_SYSTEM_CONFIG['task_events_max_dropped_task_attempts_tracked_per_job_in_gcs'])\n"
             "ray.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    tasks, dropped, want_tasks, want_dropped = map(int, out.stdout.split()[-4:])
    assert tasks == want_tasks <= 20_000 and dropped == want_dropped <= 20_000


def test_metrics_are_written_out_during_a_run_not_only_at_the_end(tmp_path):
    from cluster.runtime.progress import MetricsLog, read_metrics

    metrics = MetricsLog(tmp_path, flush_rows=10)
    for step in range(25):
        metrics.record("learner", step, {"critic_loss": float(step)})
    # Two parts already on disk before close, five rows still in memory.
    assert len(list((tmp_path / "metrics").glob("part-*.parquet"))) == 2
    assert len(metrics._rows) == 5
    metrics.close()
    assert [r["step"] for r in read_metrics(tmp_path).to_pylist()] == list(range(25))


def test_progress_eta_follows_the_recent_env_step_rate():
    from cluster.runtime.progress import Status

    s = Status(total_env_steps=10_000, started=0.0)
    assert s.eta_s(now=0.0) is None  # no rate yet
    s.env_steps = 2_000  # a fast warm-up ...
    s.eta_s(now=60.0)
    for t in range(1, 11):  # ... then 10 steps/s for 10 minutes
        s.env_steps = 2_000 + 600 * t
        eta = s.eta_s(now=60.0 + 60 * t)
    # 2,000 steps left at the last two minutes' 10 steps/s, not at the run's average.
    assert eta == pytest.approx(200.0)
    s.env_steps = 10_000
    assert s.eta_s(now=800.0) == 0.0
    assert "(100%) eta 0:00 |" in Status(total_env_steps=5, env_steps=5).line()


def test_resuming_an_own_encoder_snapshot_with_the_shared_encoder_is_refused_before_anything_starts(tmp_path, capsys):
    from checkpoint_store.store import SnapshotStore
    from cluster.cli import main
    from learner.td3 import TD3Agent, TD3Config

    store = tmp_path / "seed-store"
    own = TD3Agent(TD3Config(device="cpu", actor_encoder="own"))
    SnapshotStore(str(store)).put({**own.state(), "learner": {"env_steps": 0, "policy_version": 0}},
                                  {"learner_updates": 0, "env_steps": 0})
    code = main(["train", "--local", "--steps", "100", "--name", "x", "--set", f"run.runs_dir={tmp_path}",
                 "--resume", str(store)])
    err = capsys.readouterr().err
    assert code == 2 and "--set agent.actor_encoder=own" in err and "Traceback" not in err
    assert not (tmp_path / "x" / "snapshots").exists()  # nothing was started or written


@pytest.mark.integration
def test_the_driver_keeps_reporting_while_it_waits_on_the_learners_catch_up(ray_cluster):
    """The catch-up after the last env step runs a minute or more in one actor call: the progress display's
    counters must move during it, not freeze until it returns."""
    import ray

    from cluster.runtime.run import get_reporting

    @ray.remote
    def slow_catch_up() -> dict:
        time.sleep(3.5)
        return {"learner_updates": 600}

    reports: list[float] = []
    started = time.monotonic()
    result = get_reporting(slow_catch_up.remote(), lambda: reports.append(time.monotonic() - started), every_s=0.5)
    assert result == {"learner_updates": 600}
    assert len(reports) >= 4 and max(b - a for a, b in zip([0.0] + reports, reports)) < 2.0, reports


def test_steps_the_memory_drops_do_not_hold_the_workers_back_forever(tmp_path):
    """Workers count what they collected; steps the memory then drops (non-finite, orphaned) are never
    consumed by the schedule. Counted as owed, they left the workers paused for good once they added
    up to max_ahead_steps (a fast-collecting run stalled at 1,101 steps "ahead")."""
    from test_replay_support import episode_chunks

    cfg = make_cfg(tmp_path, **{"run.env": "embedded", "learner.learning_starts": 100})
    learner = Learner(cfg.agent, cfg.network, cfg.replay, cfg.learner)
    chunks = episode_chunks(300, chunk_steps=50, p_end=0.0, vector_dim=cfg.network.vector_dim)
    chunks[2].reward[:30] = float("nan")
    assert learner.ingest(chunks) == 270 and learner.dropped_steps == 30
    assert learner.steps_ahead(300) == learner.steps_ahead(270) == 270 - 99
    assert learner.stats().dropped_steps == 30


def test_a_sigterm_whose_raise_is_swallowed_still_stops_the_run(tmp_path, monkeypatch):
    """Python runs a signal handler at whatever bytecode the main thread is at; in a finalizer the handler's
    KeyboardInterrupt is only printed ("Exception ignored in ..."), so a bare raise is lost and the run went
    on until `ray job stop`'s SIGKILL. The SIGTERM here lands inside a `__del__`, in the middle of a poll."""
    import gc
    import os
    import signal

    import cluster.runtime.training as runtime

    class Swallows:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, and its raise goes nowhere

    polls = {"n": 0, "stopped_at": None}
    real_phase = runtime.phase

    def phase(status, cfg):  # called once per pass of the run loop
        polls["n"] += 1
        if status.updates >= 5 and polls["stopped_at"] is None:
            polls["stopped_at"] = status.env_steps
            obj = Swallows()
            del obj
            gc.collect()
        return real_phase(status, cfg)

    monkeypatch.setattr(runtime, "phase", phase)
    cfg = make_cfg(tmp_path, **{"run.total_env_steps": 100_000})
    summary = train(cfg, local=True, quiet=True)
    assert polls["stopped_at"] is not None
    # One poll later: the workers' steps in flight then, not the rest of the budget.
    print(f"\nSIGTERM at {polls['stopped_at']} env steps, the run stopped at {summary['env_steps']}")
    assert summary["interrupted"] is True and summary["env_steps"] <= polls["stopped_at"] + 1000
    assert SnapshotStore(cfg.store_uri()).get("latest").manifest.version == summary["final_snapshot"]
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handlers are back


@pytest.mark.integration
def test_a_workers_loop_ends_on_a_stop_that_came_first_and_when_the_learner_ends_collection(tmp_path, ray_cluster):
    """Ray retries a lost node's worker calls on the restarted actor, `run` and `stop` in either order. The
    loop cleared a stop that came first and collected on, through the final catch-up (a 1,800-step run
    reached 13,978 env steps and owed 3,400 updates). Now a stop is kept, and the learner's
    `end_collection` ends any loop, a restarted one's too, at its next ask."""
    import ray

    from cluster.runtime.actors import LearnerActor, WorkerActor

    @ray.remote
    class Learner:  # the learner's side of a worker's loop: pacing, weights, registration
        def __init__(self) -> None:
            self.over = False

        def ahead_steps(self, collected: int = 0) -> int | None:
            return None if self.over else 0

        def end_collection(self) -> None:
            self.over = True

        def register_worker(self, worker_id: int, node_id: str = "") -> None:
            pass

        def weights_if_newer(self, version: int) -> None:
            return None

    @ray.remote
    class Replay:
        def add(self, chunk) -> None:
            pass

    cfg = make_cfg(tmp_path)
    learner = Learner.options(name="stop-learner").remote()
    replay = Replay.options(name="stop-replay").remote()
    worker_cls = ray.remote(num_cpus=0, max_concurrency=2)(WorkerActor)
    try:
        first = worker_cls.remote(0, cfg, "stop-replay", "stop-learner")
        ray.get(first.stop.remote())
        assert "env_steps" in ray.get(first.run.remote(), timeout=60)  # the stop that came first holds

        second = worker_cls.remote(1, cfg, "stop-replay", "stop-learner")
        run = second.run.remote()
        assert not ray.wait([run], timeout=3)[0]  # collecting
        ray.get(learner.end_collection.remote())
        assert "env_steps" in ray.get(run, timeout=60)  # ended by the learner, with no stop call
    finally:
        for actor in (learner, replay):
            ray.kill(actor)

    real = LearnerActor(cfg, replay=None, writer=None)  # the real learner's answer, in this process
    assert real.ahead_steps(100) == 0 and real.collected == 100
    real.end_collection()
    assert real.ahead_steps(50) is None and real.collected == 150
