"""The learning benchmark: does the agent learn to drive, how fast in wall time, against its peers.

Each system trains for the same wall-clock budget on the same machine, one after another:
- ours through the real runtime (`cluster.runtime.training.train`, Ray actors as `fleet train` runs them),
  snapshotting every `interval` seconds of training;
- Stable-Baselines3 TD3 and SAC (`MultiInputPolicy`), what a user would pick instead on one machine: the
  class defaults but for the replay's size, the batch, the replay ratio and the warm-up length, which are
  ours, and the seed-shaped networks (`sb3_arguments` lists every one);
- RLlib's SAC on its new API stack, the peer a Ray user would pick (cluster/bench/peers/rllib_sac.py).

Every learner gets the same hardware terms: the torch threads ours updates with (every core by default) and,
on an AMD CPU with AVX-512, MKL's AVX-512 kernels (`peer_threads`). What differs is each library's own design:
ours acts in 2 worker processes while its learner updates; SB3 acts and learns in turn in one process; RLlib
samples in 1 env runner process and updates in this one, also in turn (its training step waits for the sample).

After training, the policy each system had at every mark (interval, 2 x interval, ... minutes of
training wall time) is driven deterministically on the same validation seeds, outside the
timed training, so evaluation never takes CPU from either system while it trains.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cluster.runtime.evaluation import LEVEL_COMPLETION, LEVEL_RETURN_FRACTION, at_level, layout_config
from cluster.runtime.experiment import ExperimentConfig

log = logging.getLogger(__name__)


@dataclass
class Point:
    """One evaluation of one system's policy at one wall-clock mark."""

    minutes: float
    env_steps: int
    updates: int
    route_completion: float
    driving_score: float
    mean_return: float
    mean_speed: float
    off_road_rate: float
    collision_rate: float
    actions: dict[str, float] | None = None
    """What the policy did on those episodes (`ACTION_KEYS`: mean |steer|, mean throttle_brake, the share of
    steps pinned at the action box's edge per action); None in records from before it was measured."""


ACTION_KEYS = ("mean_abs_steer", "mean_throttle", "steer_saturated", "throttle_saturated")


@dataclass
class Curve:
    system: str
    seed: int
    points: list[Point] = field(default_factory=list)
    minutes_to_level: float | None = None
    final: dict[str, dict[str, Any]] = field(default_factory=dict)
    """With --final: the run's last policy on the test seeds, per layout (training and held-out)."""
    other_actor: list[Point] = field(default_factory=list)
    """Ours only: the same snapshots, on the same episodes, driven by the actor `eval.policy` does not name
    (online beside averaged): the paired comparison of the two, from every run."""
    machine: str = ""
    """The machine it trained on (the benchmark's `_machine`): a benchmark resumed in another session may
    continue on another machine, and each run says which."""


def final_layouts() -> tuple[str, ...]:
    from rollout_workers.envs.layouts import HELD_OUT_LAYOUTS, TRAINING_LAYOUTS

    return TRAINING_LAYOUTS + HELD_OUT_LAYOUTS


def final_points(cfg: ExperimentConfig, act: Any, episodes: int) -> dict[str, dict[str, Any]]:
    """A policy (obs -> action) on the test seeds, on every training and held-out layout apart."""
    from cluster.runtime.envs import make_factory
    from rollout_workers.scripted import run_episodes

    out = {}
    for layout in final_layouts():
        c = layout_config(cfg, layout)
        eps = run_episodes(make_factory(c, 0), act, cfg.eval.seeds(episodes, final=True))
        out[layout] = asdict(summarize_point(0.0, 0, 0, eps))
    return out


def final_reference(cfg: ExperimentConfig, episodes: int) -> dict[str, dict[str, float]]:
    """The scripted driver on the test seeds of every layout: each layout's level is held against its own."""
    from cluster.runtime.evaluation import scripted_references

    return scripted_references(cfg, final_layouts(), episodes, final=True)


def say(msg: str) -> None:
    print(f"[bench learning {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def summarize_point(minutes: float, env_steps: int, updates: int, episodes: list[dict[str, float]]) -> Point:
    from rollout_workers.evaluation import summarize

    r = summarize(episodes)
    return Point(minutes=round(minutes, 2), env_steps=int(env_steps), updates=int(updates),
                 route_completion=r.mean_route_completion, driving_score=r.driving_score,
                 mean_return=r.mean_return, mean_speed=r.mean_speed, off_road_rate=r.off_road_rate,
                 collision_rate=float(np.mean([e["collision"] for e in episodes])),
                 actions={k: round(float(np.mean([e[k] for e in episodes])), 4) for k in ACTION_KEYS}
                 if all(k in e for e in episodes for k in ACTION_KEYS) else None)


def reached(p: Point, level_return: float) -> bool:
    return p.route_completion >= LEVEL_COMPLETION and p.mean_return >= level_return


def marks(minutes: float, interval_min: float) -> list[float]:
    n = max(int(round(minutes / interval_min)), 1)
    return [round(interval_min * (i + 1), 4) for i in range(n)]


def train_ours(cfg: ExperimentConfig, seed: int, minutes: float, interval_min: float, out: Path,
               episodes: int, final: bool = False) -> Curve:
    """Train through the Ray runtime for `minutes`, then evaluate the snapshot held at each mark."""
    from checkpoint_store.retention import RetentionPolicy
    from checkpoint_store.store import SnapshotStore
    from cluster.runtime.envs import make_factory
    from cluster.runtime.training import train
    from learner.networks import other_policy_source, policy_components, policy_weights
    from rollout_workers.evaluation import EvaluationWorker

    run_cfg = replace(
        cfg,
        run=replace(cfg.run, name=f"ours-seed{seed}", runs_dir=str(out), seed=seed, max_minutes=minutes,
                    total_env_steps=10**9, store=""),
        # Snapshots at a finer grain than the marks, every one kept, no replay in them (not needed here).
        learner=replace(cfg.learner, snapshot_every=0, snapshot_every_s=min(60.0, 60 * interval_min / 2),
                        save_replay=False),
        retention=RetentionPolicy(keep_last=100_000),
        eval=replace(cfg.eval, every_updates=0),
    )
    say(f"ours, seed {seed}: training {minutes:g} min with the Ray runtime ({run_cfg.run.workers} workers)")
    started = time.time()
    summary = train(run_cfg, quiet=True)
    if summary.get("interrupted"):
        # train() turned ^C or SIGTERM into a clean stop with a final snapshot; the benchmark stops too, so
        # a cut training is never evaluated and kept as a finished curve (--resume trains this seed again).
        raise KeyboardInterrupt
    say(f"ours, seed {seed}: {summary['env_steps']:,} env steps, {summary['learner_updates']:,} updates; "
        "evaluating its snapshots")
    store = SnapshotStore(run_cfg.store_uri())
    manifests = sorted(store.list(), key=lambda m: m.created)
    worker = EvaluationWorker(make_factory(run_cfg, 0), run_cfg.network)
    curve = Curve("ours", seed)
    other = other_policy_source(cfg.eval.policy)
    for mark in marks(minutes, interval_min):
        # Only this training's snapshots: a retrained seed (--resume) writes where a cut one had.
        held = [m for m in manifests if 0 <= m.created - started <= 60 * mark]
        if not held:
            continue
        m = held[-1]
        for source in (other, cfg.eval.policy):  # the evaluated actor last: the worker keeps it for --final
            snap = store.get(m.version, components=list(policy_components(source)))
            worker.load(policy_weights(snap.state, source))
            point = summarize_point(mark, m.env_steps, m.learner_updates, worker.run(cfg.eval.seeds(episodes)))
            (curve.points if source == cfg.eval.policy else curve.other_actor).append(point)
        say(f"ours, seed {seed}, {mark:g} min: {_brief(curve.points[-1])} ({other} actor: return "
            f"{curve.other_actor[-1].mean_return:.1f}, speed {curve.other_actor[-1].mean_speed:.1f} m/s)")
    if final and curve.points:  # the worker holds the last mark's policy
        curve.final = final_points(cfg, lambda obs: worker.policy.act(obs["image"], obs["vector"]), episodes)
    return curve


def peer_threads(cfg: ExperimentConfig) -> int:
    """Give a peer's learner what ours has: the torch threads our learner updates with (`learner.threads()`,
    every core by default), set in this process, where the SB3 peers and RLlib's learner run (an evaluation
    worker before them leaves it on one). The MKL kernels are alike too: `fleet bench learning` loads
    learner/common/mkl_amd.py's library into this process where our learner gets it on its node."""
    import torch

    torch.set_num_threads(cfg.learner.threads())
    return torch.get_num_threads()


def sb3_available() -> str | None:
    """None when Stable-Baselines3 can be imported, else why not."""
    try:
        import stable_baselines3  # noqa: F401
    except ImportError as exc:
        return f"stable-baselines3 is not installed ({exc}); install it with: pip install -e '.[bench]'"
    return None


PEERS = {"sb3-td3": "TD3", "sb3-sac": "SAC"}
"""The single-process peers a user would pick instead: Stable-Baselines3's TD3 and SAC."""


def sb3_arguments(cfg: ExperimentConfig, action_noise: float | None = None) -> dict[str, Any]:
    """Every argument the peers get that is not the class default: the replay's size, the batch, the replay
    ratio and the warm-up length, as ours; the seed-shaped networks (separate Nature CNNs of
    `network.feature_dim` features, heads of 256 x 256). Nothing else: SB3's own learning rate, gamma, tau,
    noise and uniform warm-up over the whole action box. `action_noise` (TD3 only, `--td3-action-noise`): the
    standard deviation of a `NormalActionNoise` after the warm-up, where TD3's class default has none."""
    t = cfg.learner
    # One gradient step every 1/ratio env steps: SB3's train_freq is in whole steps.
    every = max(int(round(1 / t.replay_ratio)), 1)
    steps_per = max(int(round(t.replay_ratio)), 1)
    arguments: dict[str, Any] = {
        "buffer_size": min(cfg.replay.capacity, 200_000), "batch_size": cfg.agent.batch_size,
        "learning_starts": t.learning_starts, "train_freq": (every, "step"), "gradient_steps": steps_per,
        "policy_kwargs": {"net_arch": [256, 256], "share_features_extractor": False,
                          "features_extractor_kwargs": {"cnn_output_dim": cfg.network.feature_dim}}}
    if action_noise is not None:
        arguments["action_noise"] = {"NormalActionNoise": {"mean": 0.0, "sigma": action_noise}}
    return arguments


def _sb3_kwargs(arguments: dict[str, Any], n_actions: int) -> dict[str, Any]:
    """`sb3_arguments` as the SB3 constructor takes them: the action noise as its object."""
    from stable_baselines3.common.noise import NormalActionNoise

    kwargs = dict(arguments)
    if "action_noise" in kwargs:
        sigma = kwargs["action_noise"]["NormalActionNoise"]["sigma"]
        kwargs["action_noise"] = NormalActionNoise(np.zeros(n_actions), np.full(n_actions, sigma))
    return kwargs


def train_sb3(cfg: ExperimentConfig, seed: int, minutes: float, interval_min: float, episodes: int,
              system: str = "sb3-td3", final: bool = False, action_noise: float | None = None) -> Curve:
    """A Stable-Baselines3 peer (`MultiInputPolicy`) on the same env for `minutes` of wall time, with the class
    defaults but for `sb3_arguments`."""
    import stable_baselines3
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    from cluster.runtime.envs import make_factory
    from rollout_workers.scripted import run_episodes

    algo = getattr(stable_baselines3, PEERS[system])
    factory = make_factory(cfg, 0)
    arguments = sb3_arguments(cfg, action_noise)
    env = factory(seed)
    model = algo("MultiInputPolicy", env, seed=seed, device="cpu", verbose=0,
                 **_sb3_kwargs(arguments, env.action_space.shape[0]))
    todo = marks(minutes, interval_min)
    held: list[tuple[float, int, int, dict[str, torch.Tensor]]] = []
    started = time.monotonic()

    class Marks(BaseCallback):
        def _on_step(self) -> bool:
            elapsed = (time.monotonic() - started) / 60
            while todo and elapsed >= todo[0]:
                state = {k: v.detach().clone() for k, v in self.model.actor.state_dict().items()}
                held.append((todo.pop(0), self.model.num_timesteps, self.model._n_updates, state))
            return bool(todo)

    threads = peer_threads(cfg)
    say(f"{system}, seed {seed}: training {minutes:g} min ({PEERS[system]} MultiInputPolicy, one process, "
        f"{threads} torch threads{mkl_note()}; not SB3's defaults: {json.dumps(arguments, default=str)})")
    model.learn(total_timesteps=10**9, callback=Marks())
    curve = Curve(system, seed)
    for mark, steps, updates, state in held:
        model.actor.load_state_dict(state)
        eps = run_episodes(factory, lambda obs: model.predict(obs, deterministic=True)[0],
                           cfg.eval.seeds(episodes))
        curve.points.append(summarize_point(mark, steps, updates, eps))
        say(f"{system}, seed {seed}, {mark:g} min: {_brief(curve.points[-1])}")
    if final and held:  # the actor holds the last mark's state
        curve.final = final_points(cfg, lambda obs: model.predict(obs, deterministic=True)[0], episodes)
    return curve


def mkl_note() -> str:
    from learner.common import mkl_amd

    return ", MKL's AVX-512 kernels" if mkl_amd.active() else ""


def _brief(p: Point) -> str:
    acted = "" if p.actions is None else (
        f"; mean |steer| {p.actions['mean_abs_steer']:.2f}, throttle {p.actions['mean_throttle']:+.2f}, "
        f"at the box's edge: steer {p.actions['steer_saturated']:.0%}, throttle {p.actions['throttle_saturated']:.0%}")
    return (f"completion {p.route_completion:.2f}, return {p.mean_return:.1f}, speed {p.mean_speed:.1f} m/s, "
            f"{p.env_steps:,} env steps, {p.updates:,} updates{acted}")


def finish_curve(curve: Curve, level_return: float) -> Curve:
    hit = [p.minutes for p in curve.points if reached(p, level_return)]
    curve.minutes_to_level = hit[0] if hit else None
    return curve


def report(curves: list[Curve], reference: dict[str, float], meta: dict[str, Any], out: Path) -> dict[str, Any]:
    level_return = LEVEL_RETURN_FRACTION * reference["mean_return"]
    systems: dict[str, Any] = {}
    for name in sorted({c.system for c in curves}):
        cs = [c for c in curves if c.system == name]
        times = [c.minutes_to_level for c in cs]
        best = max((p for c in cs for p in c.points), key=lambda p: (p.route_completion, p.mean_return),
                   default=None)
        systems[name] = {
            "seeds_reaching_level": sum(t is not None for t in times),
            "seeds": len(cs),
            "median_minutes_to_level": statistics.median(times) if all(t is not None for t in times) else None,
            "best_point": asdict(best) if best else None,
            "endings": {str(c.seed): ending([asdict(p) for p in c.points]) for c in cs},
        }
    ours = systems.get("ours", {})
    # Each peer's median time to the level over ours (above 1: ours is faster); None where either never got there.
    ratios = {name: (peer["median_minutes_to_level"] / ours["median_minutes_to_level"]
                     if ours.get("median_minutes_to_level") and peer.get("median_minutes_to_level") else None)
              for name, peer in systems.items() if name != "ours"}
    final = _final_summary(curves, meta.get("final_reference"))
    result = {
        **meta,
        **({"final": final} if final else {}),
        "level": {"route_completion": LEVEL_COMPLETION, "mean_return": level_return,
                  "fraction_of_scripted_return": LEVEL_RETURN_FRACTION},
        "scripted_reference": reference,
        "systems": systems,
        "peer_over_ours_time_to_level": ratios,
        "curves": [asdict(c) for c in curves],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.json").write_text(json.dumps(result, indent=2))
    (out / "learning.md").write_text(markdown(result))
    plot(result, out / "learning.png")
    return result


def _final_summary(curves: list[Curve], reference: dict[str, dict[str, float]] | None) -> dict[str, Any]:
    """Per system: the runs whose last policy reached the level on the test seeds of each layout (its own
    scripted return), counted over the held-out layouts and over the training layouts."""
    from rollout_workers.envs.layouts import HELD_OUT_LAYOUTS

    if not reference:
        return {}
    out: dict[str, Any] = {}
    for c in curves:
        if not c.final:
            continue
        reached_on = {layout: at_level(p["route_completion"], p["mean_return"], reference[layout]["mean_return"])
                      for layout, p in c.final.items()}
        s = out.setdefault(c.system, {"seeds": 0, "at_level_on_every_held_out_layout": 0,
                                      "at_level_on_every_training_layout": 0, "per_seed": {}})
        s["seeds"] += 1
        held = [v for k, v in reached_on.items() if k in HELD_OUT_LAYOUTS]
        trained = [v for k, v in reached_on.items() if k not in HELD_OUT_LAYOUTS]
        s["at_level_on_every_held_out_layout"] += int(bool(held) and all(held))
        s["at_level_on_every_training_layout"] += int(bool(trained) and all(trained))
        s["per_seed"][str(c.seed)] = reached_on
    return out


def ending(points: list[dict[str, Any]]) -> dict[str, float] | None:
    """How a run ended: its last mark's return and speed against its best mark's return (issue 28: a default
    run's product is its last policy, which should hold 95% of its best). None for a run with no point."""
    if not points:
        return None
    last, best = points[-1], max(points, key=lambda p: p["mean_return"])
    share = last["mean_return"] / best["mean_return"] if best["mean_return"] > 0 else 0.0
    return {"last_return": last["mean_return"], "last_speed": last["mean_speed"], "best_return": best["mean_return"],
            "best_minutes": best["minutes"], "last_over_best": share}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Level: route completion >= {LEVEL_COMPLETION} and mean return >= "
             f"{result['level']['mean_return']:.1f} ({LEVEL_RETURN_FRACTION:.0%} of the scripted driver's "
             f"{result['scripted_reference']['mean_return']:.1f}) over {result['episodes']} validation episodes"
             + (f"; ours drives its {result['eval_policy']} actor (eval.policy)." if "eval_policy" in result else "."),
             "", "| system | seed | minutes | env steps | updates | route completion | driving score | return "
             "| mean speed m/s | off-road |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in result["curves"]:
        for p in c["points"]:
            lines.append(f"| {c['system']} | {c['seed']} | {p['minutes']:g} | {p['env_steps']:,} | {p['updates']:,} "
                         f"| {p['route_completion']:.3f} | {p['driving_score']:.3f} | {p['mean_return']:.1f} "
                         f"| {p['mean_speed']:.2f} | {p['off_road_rate']:.2f} |")
    acted = [(c, p) for c in result["curves"] for p in c["points"] if p.get("actions")]
    if acted:
        lines += ["", "What each policy did on those episodes (the share of steps pinned at the action box's edge, "
                  "|a| >= 0.99, tells a saturated actor):", "",
                  "| system | seed | minutes | mean abs steer | mean throttle_brake | steer at the edge "
                  "| throttle_brake at the edge |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {c['system']} | {c['seed']} | {p['minutes']:g} | {p['actions']['mean_abs_steer']:.2f} | "
                  f"{p['actions']['mean_throttle']:+.2f} | {p['actions']['steer_saturated']:.0%} | "
                  f"{p['actions']['throttle_saturated']:.0%} |" for c, p in acted]
    lines += ["", "| system | seeds at level | time to level (min), per seed |", "|---|---|---|"]
    for c_sys, s in result["systems"].items():
        per = ", ".join("not reached" if c["minutes_to_level"] is None else f"{c['minutes_to_level']:g}"
                        for c in result["curves"] if c["system"] == c_sys)
        lines.append(f"| {c_sys} | {s['seeds_reaching_level']}/{s['seeds']} | {per} |")
    if len({c.get("machine", "") for c in result["curves"]}) > 1:
        lines += ["", "The runs were made on more than one machine (compare a peer with ours on the same one):", "",
                  "| system | seed | machine |", "|---|---|---|"]
        lines += [f"| {c['system']} | {c['seed']} | {c.get('machine') or 'not recorded'} |" for c in result["curves"]]
    ended = [(c, e) for c in result["curves"]
             if (e := result["systems"][c["system"]]["endings"].get(str(c["seed"])))]
    if ended:
        lines += ["", "How each run ended (its last mark against its best, on the validation episodes):", "",
                  "| system | seed | last mark: return (speed m/s) | best: return (minute) | last / best |",
                  "|---|---|---|---|---|"]
        for c, e in ended:
            lines.append(f"| {c['system']} | {c['seed']} | {e['last_return']:.1f} ({e['last_speed']:.2f}) | "
                         f"{e['best_return']:.1f} ({e['best_minutes']:g}) | {e['last_over_best']:.0%} |")
    if result.get("final"):
        from rollout_workers.envs.layouts import HELD_OUT_LAYOUTS

        ref = result["final_reference"]
        lines += ["", "Final (test seeds; each run's last policy; level against each layout's own scripted return):",
                  "", "| system | seed | layout | set | route completion | return | scripted return | at level |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in result["curves"]:
            for layout, p in c.get("final", {}).items():
                ok = result["final"][c["system"]]["per_seed"][str(c["seed"])][layout]
                lines.append(f"| {c['system']} | {c['seed']} | {layout} | "
                             f"{'held-out' if layout in HELD_OUT_LAYOUTS else 'training'} | "
                             f"{p['route_completion']:.3f} | {p['mean_return']:.1f} | "
                             f"{ref[layout]['mean_return']:.1f} | {'yes' if ok else 'no'} |")
        for name, f in result["final"].items():
            lines.append(f"{name}: {f['at_level_on_every_held_out_layout']}/{f['seeds']} seeds at the level on every "
                         f"held-out layout, {f['at_level_on_every_training_layout']}/{f['seeds']} on every training one")
    paired = [c for c in result["curves"] if c.get("other_actor")]
    if paired:
        from learner.networks import other_policy_source

        other = other_policy_source(result.get("eval_policy", "online"))
        lines += ["", f"Ours, the same snapshots on the same episodes driven by the {other} actor (return / speed m/s; "
                  "the evaluated actor's beside it):", "", "| seed | minutes | " + f"{other} | "
                  + f"{result.get('eval_policy', 'online')} |", "|---|---|---|---|"]
        for c in paired:
            for p, q in zip(c["other_actor"], c["points"], strict=True):
                lines.append(f"| {c['seed']} | {p['minutes']:g} | {p['mean_return']:.1f} / {p['mean_speed']:.2f} | "
                             f"{q['mean_return']:.1f} / {q['mean_speed']:.2f} |")
    ratios = result.get("peer_over_ours_time_to_level", {})
    lines += [""] if ratios else []
    for name, ratio in ratios.items():
        lines.append(f"{name} / ours, median time to level: "
                     f"{'n/a (one never reached it)' if ratio is None else f'{ratio:.2f}'}")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = {"ours": "tab:blue", "sb3": "tab:orange", "sb3-td3": "tab:orange", "sb3-sac": "tab:green",
               "rllib-sac": "tab:red"}
    for c in result["curves"]:
        xs = [p["minutes"] for p in c["points"]]
        for ax, key in zip(axes, ("route_completion", "mean_return", "mean_speed")):
            ax.plot(xs, [p[key] for p in c["points"]], marker="o", color=colours.get(c["system"]),
                    alpha=0.8, label=f"{c['system']} seed {c['seed']}")
    ref = result["scripted_reference"]
    axes[0].axhline(LEVEL_COMPLETION, ls="--", color="grey", label="level")
    axes[1].axhline(result["level"]["mean_return"], ls="--", color="grey", label="level")
    axes[1].axhline(ref["mean_return"], ls=":", color="black", label="scripted driver")
    axes[2].axhline(ref["mean_speed"], ls=":", color="black", label="scripted driver")
    for ax, title in zip(axes, ("route completion", "mean return", "mean speed (m/s)")):
        ax.set_title(title)
        ax.set_xlabel("training wall time (min)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"deterministic policy on {result['episodes']} validation episodes ({result['machine']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
