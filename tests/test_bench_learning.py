"""`fleet bench learning`: the level, time to level, the report files; SB3 named when missing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cluster.bench import learning_run as lb
from cluster.cli import main


def point(minutes: float, completion: float, ret: float) -> lb.Point:
    return lb.Point(minutes=minutes, env_steps=int(1000 * minutes), updates=int(400 * minutes),
                    route_completion=completion, driving_score=completion, mean_return=ret, mean_speed=7.0,
                    off_road_rate=0.0, collision_rate=0.0)


def test_time_to_level_is_the_first_mark_meeting_both_completion_and_return():
    level_return = 0.8 * 290.0
    curve = lb.Curve("ours", 0, [point(5, 0.95, 100.0), point(10, 0.85, 260.0), point(15, 0.92, 240.0),
                                 point(20, 0.99, 280.0)])
    assert lb.finish_curve(curve, level_return).minutes_to_level == 15
    never = lb.Curve("sb3", 0, [point(5, 0.0, -20.0), point(10, 0.95, 200.0)])
    assert lb.finish_curve(never, level_return).minutes_to_level is None


def test_report_writes_json_markdown_and_plot_with_the_ratio(tmp_path):
    ref = {"mean_return": 290.0, "route_completion": 1.0, "mean_speed": 8.0}
    ours = lb.finish_curve(lb.Curve("ours", 0, [point(5, 0.5, 100.0), point(10, 0.95, 250.0)]), 232.0)
    sb3 = lb.finish_curve(lb.Curve("sb3", 0, [point(5, 0.1, 0.0), point(10, 0.2, 10.0),
                                              point(20, 0.95, 240.0)]), 232.0)
    meta = {"command": "fleet bench learning", "machine": "test", "episodes": 20, "minutes": 20}
    result = lb.report([ours, sb3], ref, meta, tmp_path)
    assert result["peer_over_ours_time_to_level"] == {"sb3": pytest.approx(2.0)}
    assert result["systems"]["ours"]["seeds_reaching_level"] == 1
    saved = json.loads((tmp_path / "learning.json").read_text())
    assert saved["level"]["mean_return"] == pytest.approx(232.0)
    table = (tmp_path / "learning.md").read_text()
    assert "| ours | 0 | 10 |" in table and "| sb3 | 1/1 | 20 |" in table
    # How each run ended: its last mark against its best (a run that peaks and falls back shows it).
    fell = lb.Curve("ours", 1, [point(5, 1.0, 400.0), point(10, 1.0, 300.0)])
    result = lb.report([ours, fell], ref, meta, tmp_path)
    assert result["systems"]["ours"]["endings"]["0"]["last_over_best"] == 1.0
    assert result["systems"]["ours"]["endings"]["1"] == {"last_return": 300.0, "last_speed": 7.0,
                                                         "best_return": 400.0, "best_minutes": 5,
                                                         "last_over_best": 0.75}
    assert "| ours | 1 | 300.0 (7.00) | 400.0 (5) | 75% |" in (tmp_path / "learning.md").read_text()
    assert (tmp_path / "learning.png").stat().st_size > 10_000


def test_ours_other_actor_is_reported_beside_the_evaluated_one_and_kept_by_resume(monkeypatch, tmp_path, capsys):
    # The averaged actor is evaluated; the online one drove the same snapshots: a second table, paired by mark.
    def fake_ours(cfg, seed, minutes, every, out, episodes, final=False):
        return lb.Curve("ours", seed, [point(5, 0.5, 100.0), point(10, 0.95, 250.0)],
                        other_actor=[point(5, 0.6, 120.0), point(10, 1.0, 180.0)])

    monkeypatch.setattr(lb, "train_ours", fake_ours)
    monkeypatch.setattr("cluster.runtime.run.scripted_reference",
                        lambda cfg, n: {"mean_return": 290.0, "route_completion": 1.0, "mean_speed": 8.0})
    argv = ["bench", "learning", "--seeds", "1", "--minutes", "10", "--baselines", "none", "--out", str(tmp_path)]
    assert main(argv) == 0
    table = (tmp_path / "learning.md").read_text()
    assert "driven by the online actor" in table and "| 10 | 10 | 180.0 / 7.00 | 250.0 / 7.00 |" in table
    assert json.loads((tmp_path / "learning.json").read_text())["systems"]["ours"]["seeds_reaching_level"] == 1
    assert main(argv + ["--resume", "--json"]) == 0  # nothing left to train: the saved curves come back whole
    out = capsys.readouterr().out
    curve = json.loads(out[out.index("{"):])["curves"][0]
    assert [p["mean_return"] for p in curve["other_actor"]] == [120.0, 180.0]


def test_marks_cover_the_budget():
    assert lb.marks(45, 5) == [5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert lb.marks(1, 5) == [5]


def test_missing_sb3_is_named_with_the_install_command(monkeypatch, capsys):
    monkeypatch.setattr(lb, "sb3_available", lambda: "stable-baselines3 is not installed; pip install -e '.[bench]'")
    assert main(["bench", "learning", "--minutes", "1"]) == 2
    assert ".[bench]" in capsys.readouterr().err


def test_bad_arguments_are_refused(capsys):
    assert main(["bench", "learning", "--seeds", "0"]) == 2
    assert main(["bench", "learning", "--baselines", "rllib"]) == 2
    assert "unknown ['rllib']" in capsys.readouterr().err
    assert main(["bench", "learning", "--first-seed", "-1"]) == 2
    assert "--first-seed must be >= 0" in capsys.readouterr().err


def test_first_seed_trains_the_seeds_after_it_and_names_itself_in_the_command(monkeypatch, tmp_path, capsys):
    from cluster.bench import learning_run as lb
    from cluster.bench.learning_run import Curve

    trained = []
    monkeypatch.setattr(lb, "train_ours", lambda cfg, seed, *a: trained.append(seed) or Curve("ours", seed))
    monkeypatch.setattr("cluster.runtime.run.scripted_reference", lambda cfg, n: {"mean_return": 100.0})
    monkeypatch.setattr(lb, "report", lambda curves, reference, meta, out: {"meta": meta})
    monkeypatch.setattr(lb, "finish_curve", lambda curve, level: curve)
    assert main(["bench", "learning", "--first-seed", "2", "--seeds", "2", "--baselines", "none", "--json",
                 "--out", str(tmp_path)]) == 0
    assert trained == [2, 3]
    assert "--seeds 2 --first-seed 2 " in json.loads(capsys.readouterr().out)["meta"]["command"]


def test_the_default_invocation_is_the_issues_three_seeds_of_ours_and_two_of_each_peer(monkeypatch, tmp_path, capsys):
    from cluster.bench.learning_run import Curve
    from cluster.bench.peers import rllib_sac

    trained = []
    monkeypatch.setattr(lb, "sb3_available", lambda: None)
    monkeypatch.setattr(lb, "train_ours", lambda cfg, seed, minutes, *a: trained.append(("ours", seed, minutes))
                        or Curve("ours", seed))
    monkeypatch.setattr(lb, "train_sb3", lambda cfg, seed, minutes, i, e, system, final, *rest: trained.append(
        (system, seed, minutes)) or Curve(system, seed))
    monkeypatch.setattr(rllib_sac, "train", lambda cfg, seed, minutes, *a: trained.append(("rllib-sac", seed, minutes))
                        or Curve("rllib-sac", seed))
    monkeypatch.setattr("cluster.runtime.run.scripted_reference", lambda cfg, n: {"mean_return": 100.0})
    monkeypatch.setattr(lb, "report", lambda curves, reference, meta, out: {"meta": meta})
    monkeypatch.setattr(lb, "finish_curve", lambda curve, level: curve)
    assert main(["bench", "learning", "--json", "--out", str(tmp_path)]) == 0
    peers = ["sb3-td3", "sb3-sac", "rllib-sac"]
    assert trained == [(s, seed, 30.0) for seed in (10, 11) for s in ["ours", *peers]] + [("ours", 12, 30.0)]
    assert "--baselines sb3-td3,sb3-sac,rllib-sac --baseline-seeds 2" in json.loads(capsys.readouterr().out)[
        "meta"]["command"]
    # One seed of ours asks for at most one of each peer; `none` trains no peer and names no peer seeds.
    trained.clear()
    assert main(["bench", "learning", "--seeds", "1", "--json", "--out", str(tmp_path)]) == 0
    assert [s for s, _, _ in trained] == ["ours", *peers]
    assert "--baseline-seeds" not in json.loads(capsys.readouterr().out)["meta"]["command"]
    trained.clear()
    assert main(["bench", "learning", "--baselines", "none", "--json", "--out", str(tmp_path)]) == 0
    assert [s for s, _, _ in trained] == ["ours"] * 3
    assert "--baseline-seeds" not in json.loads(capsys.readouterr().out)["meta"]["command"]


@pytest.mark.slow
def test_sb3_baseline_trains_on_the_embedded_env_and_is_evaluated_at_each_mark():
    pytest.importorskip("stable_baselines3")
    from cluster.runtime import experiment

    cfg = experiment.load(None, {"learner.learning_starts": 100, "replay.capacity": 2000})
    curve = lb.train_sb3(cfg, seed=0, minutes=0.4, interval_min=0.2, episodes=1)
    assert [p.minutes for p in curve.points] == [0.2, 0.4]
    assert curve.points[-1].env_steps > curve.points[0].env_steps > 0
    assert curve.points[-1].updates > 0
    assert all(0.0 <= p.route_completion <= 1.0 for p in curve.points)


def test_a_point_summarises_its_episodes_like_fleet_evaluate():
    eps = [{"seed": 1, "return": 300.0, "route_completion": 1.0, "collision": 0.0, "off_road": 0.0,
            "distance_m": 300.0, "mean_speed": 8.0},
           {"seed": 2, "return": 100.0, "route_completion": 0.5, "collision": 1.0, "off_road": 0.0,
            "distance_m": 150.0, "mean_speed": 16.0}]
    p = lb.summarize_point(10, 5000, 2000, eps)
    assert (p.route_completion, p.mean_return, p.mean_speed, p.collision_rate) == (0.75, 200.0, 12.0, 0.5)
    assert p.driving_score == pytest.approx((1.0 + 0.5 * 0.6) / 2)
    # `fleet evaluate` counts crashes, episodes ended by a collision or by leaving the road, for the traffic check.
    from rollout_workers.evaluation import summarize

    off = dict(eps[0], seed=3, off_road=1.0, route_completion=0.2)
    assert summarize(eps).crashes == 1 and summarize([*eps, off]).crashes == 2 and summarize(eps[:1]).crashes == 0


def test_resume_keeps_finished_curves_and_trains_only_what_is_missing(monkeypatch, tmp_path, capsys):
    from cluster.bench.learning_run import Curve

    trained = []

    def fake_ours(cfg, seed, minutes, every, out, episodes, final=False):
        trained.append(("ours", seed))
        if seed == 1 and len(trained) == 2:
            raise KeyboardInterrupt  # the first invocation is interrupted during seed 1
        return Curve("ours", seed, [point(5, 0.5, 100.0), point(10, 0.95, 250.0)])

    monkeypatch.setattr(lb, "train_ours", fake_ours)
    monkeypatch.setattr("cluster.runtime.run.scripted_reference",
                        lambda cfg, n: {"mean_return": 290.0, "route_completion": 1.0, "mean_speed": 8.0})
    argv = ["bench", "learning", "--seeds", "2", "--first-seed", "0", "--minutes", "10", "--baselines", "none", "--json",
            "--out", str(tmp_path)]
    assert main(argv) != 0  # interrupted (the CLI turns ^C into an exit status)
    assert [c["seed"] for c in json.loads((tmp_path / "learning.json").read_text())["curves"]] == [0]
    # A different command does not continue it, and nothing to continue is an error too.
    assert main(argv[:-3] + ["--resume", "--json", "--out", str(tmp_path), "--episodes", "5"]) == 2
    assert "a benchmark continues only with the command that started it" in capsys.readouterr().err
    assert main(argv + ["--resume", "--out", str(tmp_path / "none")]) == 2
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert trained == [("ours", 0), ("ours", 1), ("ours", 1)]  # seed 0 was kept, seed 1 trained again
    assert [c["seed"] for c in result["curves"]] == [0, 1]
    assert result["systems"]["ours"]["seeds_reaching_level"] == 2
    assert len(result["resumed"]) == 1 and result["revisions"]
    assert result["eval_policy"] == "averaged"
    # A benchmark begun before eval.policy existed evaluated the online actor: it is not continued with another.
    saved = json.loads((tmp_path / "learning.json").read_text())
    del saved["eval_policy"]
    (tmp_path / "learning.json").write_text(json.dumps(saved))
    assert main(argv + ["--resume"]) == 2
    assert "evaluated the online actor, this invocation would evaluate the averaged one" in capsys.readouterr().err


def test_an_interruption_during_a_peer_keeps_the_curves_finished_before_it(monkeypatch, tmp_path, capsys):
    """Each system's curve is saved when it ends, not when its seed's last peer does: a benchmark stopped
    during a peer's half hour continues from that peer."""
    from cluster.bench.learning_run import Curve

    trained = []
    curve = [point(5, 0.5, 100.0), point(10, 0.95, 250.0)]

    def fake_sb3(cfg, seed, minutes, every, episodes, system, final, action_noise=None):
        trained.append((system, seed))
        if system == "sb3-sac" and trained.count(("sb3-sac", 0)) == 1:
            raise KeyboardInterrupt  # the first invocation is stopped during seed 0's second peer
        return Curve(system, seed, list(curve))

    monkeypatch.setattr(lb, "sb3_available", lambda: None)
    monkeypatch.setattr(lb, "train_ours", lambda cfg, seed, *a: trained.append(("ours", seed))
                        or Curve("ours", seed, list(curve)))
    monkeypatch.setattr(lb, "train_sb3", fake_sb3)
    monkeypatch.setattr("cluster.runtime.run.scripted_reference",
                        lambda cfg, n: {"mean_return": 290.0, "route_completion": 1.0, "mean_speed": 8.0})
    argv = ["bench", "learning", "--seeds", "1", "--first-seed", "0", "--minutes", "10", "--baselines",
            "sb3-td3,sb3-sac", "--json", "--out", str(tmp_path)]
    assert main(argv) != 0
    saved = json.loads((tmp_path / "learning.json").read_text())["curves"]
    assert [(c["system"], c["seed"]) for c in saved] == [("ours", 0), ("sb3-td3", 0)]
    assert main(argv + ["--resume"]) == 0
    assert trained == [("ours", 0), ("sb3-td3", 0), ("sb3-sac", 0), ("sb3-sac", 0)]  # only the cut one again
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(c["system"], c["seed"]) for c in result["curves"]] == [("ours", 0), ("sb3-td3", 0), ("sb3-sac", 0)]


def test_resume_with_a_peers_corrected_arguments_keeps_the_earlier_ones_in_the_record(monkeypatch, tmp_path, capsys):
    """A peer's setting fixed mid-benchmark (RLlib's training_intensity): the record names the arguments the
    runs from the resume on use, and keeps those the earlier revisions gave."""
    from cluster.bench.learning_run import Curve

    calls = []

    def fake_sb3(cfg, seed, minutes, every, episodes, system, final, *rest):
        calls.append(seed)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return Curve(system, seed, [point(5, 0.5, 100.0), point(10, 0.95, 250.0)])

    monkeypatch.setattr(lb, "sb3_available", lambda: None)
    monkeypatch.setattr(lb, "train_ours", lambda cfg, seed, *a: Curve("ours", seed, [point(10, 0.95, 250.0)]))
    monkeypatch.setattr(lb, "train_sb3", fake_sb3)
    monkeypatch.setattr("cluster.runtime.run.scripted_reference",
                        lambda cfg, n: {"mean_return": 290.0, "route_completion": 1.0, "mean_speed": 8.0})
    argv = ["bench", "learning", "--seeds", "1", "--first-seed", "0", "--minutes", "10", "--baselines", "sb3-td3",
            "--json", "--out", str(tmp_path)]
    monkeypatch.setattr(lb, "sb3_arguments", lambda cfg, *a: {"train_freq": (2, "step"), "gradient_steps": 2})
    assert main(argv) != 0
    monkeypatch.setattr(lb, "sb3_arguments", lambda cfg, *a: {"train_freq": (2, "step"), "gradient_steps": 1})
    assert main(argv + ["--resume"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["peer_arguments"] == {"sb3-td3": {"train_freq": [2, "step"], "gradient_steps": 1}}
    assert [b["peer_arguments"] for b in result["peer_arguments_before"]] == [
        {"sb3-td3": {"train_freq": [2, "step"], "gradient_steps": 2}}]
    # The same arguments again (a tuple read back from JSON as a list included) add nothing to the record.
    saved = json.loads((tmp_path / "learning.json").read_text())
    saved["curves"] = saved["curves"][:1]
    (tmp_path / "learning.json").write_text(json.dumps(saved))
    assert main(argv + ["--resume"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(again["peer_arguments_before"]) == 1 and again["peer_arguments"] == result["peer_arguments"]


def test_a_peer_learns_on_our_learners_threads_not_on_the_one_an_evaluation_left(monkeypatch):
    import os

    import torch

    from cluster.runtime import experiment
    from rollout_workers.evaluation import EvaluationWorker

    cfg = experiment.load(None, {"learner.torch_threads": 2})
    before = torch.get_num_threads()
    try:
        EvaluationWorker(lambda seed: None, cfg.network)  # what ours' evaluation leaves in this process
        assert torch.get_num_threads() == 1
        assert lb.peer_threads(cfg) == 2 == torch.get_num_threads()
        # By default every core, as our learner: learner.torch_threads 0.
        assert lb.peer_threads(experiment.load(None, {})) == (os.cpu_count() or 1)
    finally:
        torch.set_num_threads(before)


def test_the_machine_names_its_cpu_its_vector_instructions_and_our_mkl_kernels(monkeypatch):
    from cluster.bench.learning import _machine

    monkeypatch.delenv("FLEET_MKL_AVX512", raising=False)
    zen4 = ("vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx2 fma avx512f "
            "avx512dq avx512cd avx512bw avx512vl\n")
    assert "(AMD EPYC 9R14, AVX-512, the learners on MKL's AVX-512 kernels)" in _machine(zen4)
    zen3 = "vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx2 fma\n"
    assert "(AMD EPYC 7B13, AVX2 only)" in _machine(zen3)
    monkeypatch.setenv("FLEET_MKL_AVX512", "0")  # turned off: the learners keep MKL's own kernels, and it says so
    assert "(AMD EPYC 9R14, AVX-512)" in _machine(zen4)


def test_a_benchmark_resumed_on_another_machine_names_each_runs_machine(monkeypatch, tmp_path, capsys):
    from cluster.bench import learning as bench
    from cluster.bench.learning_run import Curve

    machines = iter(["machine A", "machine B"])
    monkeypatch.setattr(bench, "_machine", lambda: next(machines))

    def fake_ours(cfg, seed, *a):
        if seed == 1 and not (tmp_path / "stopped").exists():
            (tmp_path / "stopped").touch()
            raise KeyboardInterrupt
        return Curve("ours", seed, [point(5, 0.5, 100.0), point(10, 0.95, 250.0)])

    monkeypatch.setattr(lb, "train_ours", fake_ours)
    monkeypatch.setattr("cluster.runtime.run.scripted_reference",
                        lambda cfg, n: {"mean_return": 290.0, "route_completion": 1.0, "mean_speed": 8.0})
    argv = ["bench", "learning", "--seeds", "2", "--first-seed", "0", "--minutes", "10", "--baselines", "none",
            "--json", "--out", str(tmp_path)]
    assert main(argv) != 0
    assert main(argv + ["--resume"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [c["machine"] for c in result["curves"]] == ["machine A", "machine B"]
    assert result["machine"] == "machine A"  # where it began; each run names its own
    assert "| ours | 1 | machine B |" in (tmp_path / "learning.md").read_text()


def test_an_interrupted_training_stops_the_benchmark_instead_of_becoming_a_curve(monkeypatch, tmp_path):
    # train() turns ^C and SIGTERM into a clean stop and returns; the benchmark must not evaluate the cut
    # training as if it were finished (--resume would keep it) nor go on to the next seed.
    from cluster.runtime import experiment

    cfg = experiment.load(None, {})
    ran = []
    monkeypatch.setattr("cluster.runtime.training.train",
                        lambda run_cfg, quiet: ran.append(run_cfg.run.name) or
                        {"interrupted": True, "env_steps": 900, "learner_updates": 100})
    monkeypatch.setattr("rollout_workers.evaluation.EvaluationWorker",
                        lambda *a: pytest.fail("a cut training was evaluated"))
    with pytest.raises(KeyboardInterrupt):
        lb.train_ours(cfg, 3, 10, 5, tmp_path, 2)
    assert ran == ["ours-seed3"]


def test_the_final_report_holds_each_layout_against_its_own_scripted_return(tmp_path):
    from dataclasses import asdict

    ref = {"mean_return": 290.0, "route_completion": 1.0, "mean_speed": 8.0}
    final_ref = {name: {"mean_return": 400.0 if name == "loop-22" else 300.0} for name in lb.final_layouts()}

    def final(returns: dict[str, float]) -> dict:
        return {name: asdict(point(0, 0.95, returns.get(name, 290.0))) for name in lb.final_layouts()}

    good = lb.Curve("ours", 3, [point(5, 0.95, 250.0)], final=final({"loop-22": 350.0}))
    short = lb.Curve("ours", 4, [point(5, 0.95, 250.0)], final=final({"loop-22": 310.0}))  # 310 < 0.8 * 400
    meta = {"command": "fleet bench learning --final", "machine": "test", "episodes": 20, "minutes": 5,
            "final_reference": final_ref}
    result = lb.report([good, short], ref, meta, tmp_path)
    ours = result["final"]["ours"]
    assert ours["seeds"] == 2 and ours["at_level_on_every_training_layout"] == 2
    assert ours["at_level_on_every_held_out_layout"] == 1 and ours["per_seed"]["4"]["loop-22"] is False
    table = (tmp_path / "learning.md").read_text()
    assert "| ours | 4 | loop-22 | held-out | 0.950 | 310.0 | 400.0 | no |" in table


def test_a_point_says_what_the_policy_did_and_a_pinned_actor_shows(tmp_path):
    """A saturated tanh actor (steer pinned at the box's edge) is told apart from a driver by the actions the
    evaluation records, per episode and per point, in the log line and the report."""
    from rollout_workers.envs.embedded import make_env
    from rollout_workers.scripted import ScriptedDriver, run_episodes

    pinned = run_episodes(lambda s: make_env(seed=s), lambda obs: np.float32([1.0, -0.5]), [3])[0]
    assert (pinned["steer_saturated"], pinned["throttle_saturated"]) == (1.0, 0.0)
    assert (pinned["mean_abs_steer"], pinned["mean_throttle"]) == (1.0, -0.5)
    driven = run_episodes(lambda s: make_env(seed=s), ScriptedDriver.for_env(), [3])
    p = lb.summarize_point(5, 1000, 400, driven)
    assert p.actions is not None and p.actions["steer_saturated"] < 0.05 and p.actions["mean_abs_steer"] < 0.5
    stuck = lb.summarize_point(5, 1000, 400, [pinned])
    assert "at the box's edge: steer 100%, throttle 0%" in lb._brief(stuck)
    ref = {"mean_return": 290.0, "route_completion": 1.0, "mean_speed": 8.0}
    lb.report([lb.Curve("ours", 0, [p]), lb.Curve("sb3-td3", 0, [stuck])], ref,
              {"command": "c", "machine": "m", "episodes": 1, "minutes": 5}, tmp_path)
    table = (tmp_path / "learning.md").read_text()
    assert "| sb3-td3 | 0 | 5 | 1.00 | -0.50 | 100% | 0% |" in table
    # A record from before the actions were measured still loads and reports.
    assert lb.summarize_point(5, 1, 1, [{k: v for k, v in pinned.items() if k != "mean_throttle"}]).actions is None


def test_td3_action_noise_is_listed_and_given_as_sb3s_noise_object():
    from stable_baselines3.common.noise import NormalActionNoise

    from cluster.runtime import experiment

    cfg = experiment.load(None, {})
    assert "action_noise" not in lb.sb3_arguments(cfg)  # the comparison: TD3's class default, no noise
    arguments = lb.sb3_arguments(cfg, 0.1)
    assert arguments["action_noise"] == {"NormalActionNoise": {"mean": 0.0, "sigma": 0.1}}
    json.dumps(arguments)  # listed in learning.json as it is
    noise = lb._sb3_kwargs(arguments, 2)["action_noise"]
    assert isinstance(noise, NormalActionNoise) and noise._sigma.tolist() == [0.1, 0.1]


def test_peers_only_trains_no_ours_and_td3_noise_goes_to_td3_alone(monkeypatch, tmp_path, capsys):
    from cluster.bench.learning_run import Curve

    trained = []

    def fake_sb3(cfg, seed, minutes, every, episodes, system, final, action_noise=None):
        trained.append((system, seed, action_noise))
        return Curve(system, seed, [point(5, 0.5, 100.0)])

    monkeypatch.setattr(lb, "sb3_available", lambda: None)
    monkeypatch.setattr(lb, "train_ours", lambda *a, **k: pytest.fail("ours trained under --peers-only"))
    monkeypatch.setattr(lb, "train_sb3", fake_sb3)
    monkeypatch.setattr("cluster.runtime.run.scripted_reference",
                        lambda cfg, n: {"mean_return": 290.0, "route_completion": 1.0, "mean_speed": 8.0})
    argv = ["bench", "learning", "--seeds", "1", "--first-seed", "11", "--minutes", "5", "--baselines",
            "sb3-td3,sb3-sac", "--peers-only", "--td3-action-noise", "0.1", "--json", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert trained == [("sb3-td3", 11, 0.1), ("sb3-sac", 11, None)]
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["command"].endswith("--peers-only --td3-action-noise 0.1")
    assert "action_noise" in result["peer_arguments"]["sb3-td3"]
    assert "action_noise" not in result["peer_arguments"]["sb3-sac"]
    # Noise for a TD3 that is not trained is a mistake, said before anything trains.
    assert main(argv[:9] + ["sb3-sac", "--td3-action-noise", "0.1", "--out", str(tmp_path / "x")]) == 2
    assert "--td3-action-noise needs" in capsys.readouterr().err

