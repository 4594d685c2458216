"""`fleet evaluate`: deterministic episodes of a snapshot's policy on parallel workers."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from cluster.cli import Commands
from learner.common.errors import UserError


def register(cli: Commands) -> None:
    p = cli.command("evaluate", "evaluate a snapshot's policy: returns, route completion, driving score", run)
    p.add_argument("--snapshot", required=True, metavar="URI[@VERSION]", help="store URI and version/tag")
    p.add_argument("--workers", type=int, default=2, help="parallel evaluation workers (Ray actors)")
    p.add_argument("--episodes", type=int, default=10, help="episodes in all")
    p.add_argument("--seed", type=int, help="first evaluation seed (default: the config's validation seed, "
                   "eval.seed)")
    p.add_argument("--layouts", metavar="NAMES", help="embedded simulator: evaluate on each of these road layouts "
                   "apart (comma-separated, e.g. racetrack,loop-2; default: the config's embedded.layouts as one)")
    p.add_argument("--final", action="store_true", help="the final evaluation: the test seeds (eval.test_seed), and "
                   "on the embedded simulator every training and held-out layout, reported apart. For reporting "
                   "only, never for choosing: each use is recorded in <runs_dir>/test-set-uses.jsonl")
    p.add_argument("--out", help="report folder (default runs/eval-<version>)")
    p.add_argument("--address", help="Ray cluster to use (default: $RAY_ADDRESS, set inside `ray job submit`; "
                   "else a local Ray instance)")
    p.add_argument("--local", action="store_true", help="evaluate in this process, without Ray")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--video", action="store_true",
                   help="also write episode.gif: one episode from the top, the network's frames and its actions")
    p.add_argument("--config", help="experiment YAML whose env and servers to evaluate on (default: the packaged "
                   "one); the snapshot contributes only its network shape and simulator parameters")
    p.add_argument("--env", help="env to evaluate on: embedded, carla or package.module:function (overrides run.env)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set carla_server.gpus=[0] (YAML value syntax)")


def run(args: argparse.Namespace) -> int:
    from cluster.cli.train import overrides
    from cluster.runtime import experiment
    from cluster.runtime.evaluation import evaluate_snapshot
    from rollout_workers.evaluation import write_report

    if args.episodes < 1 or args.workers < 1:
        raise UserError(f"--episodes and --workers must be at least 1 (got {args.episodes} and {args.workers})")
    if args.final and args.seed is not None:
        raise UserError("--final evaluates on the test seeds (eval.test_seed); it takes no --seed")
    over = overrides(args, flags=(("env", "run.env"),))
    base = experiment.load(args.config, over)
    if not args.local and not (args.address or os.environ.get("RAY_ADDRESS")):
        # One machine: refused before the store is read or Ray starts (a cluster places its own actors).
        base.check_local_evaluators(min(args.workers, args.episodes), os.cpu_count() or 1)
    layouts = _layouts(args, base)
    if layouts is not None:
        _evaluate_layouts(args, base, over, layouts)
        return 0
    if args.final:
        _record_final(base, args.snapshot, [base.run.env])
    report = evaluate_snapshot(args.snapshot, args.workers, args.episodes, seed=args.seed, local=args.local,
                               address=args.address, base=base, overrides=over, final=args.final,
                               say=lambda line: print(line, file=sys.stderr))
    out = Path(args.out or f"runs/eval-{report.snapshot.rsplit('@', 1)[-1]}")
    json_path, png_path = write_report(report, out)
    if args.json:
        print(report.to_json())
    else:
        print(f"snapshot {report.snapshot}: {len(report.episodes)} episodes")
        print(f"  mean return          {report.mean_return:.2f}")
        print(f"  route completion     {report.mean_route_completion:.3f}")
        print(f"  driving score        {report.driving_score:.3f}")
        print(f"  collisions per km    {report.collisions_per_km:.3f}")
        print(f"  off-road rate        {report.off_road_rate:.3f}")
        print(f"  mean speed (m/s)     {report.mean_speed:.2f}")
        print(f"report: {json_path} {png_path}")
    if args.video:
        from cluster.runtime.evaluation import video_of_snapshot

        video = video_of_snapshot(args.snapshot, out / "episode.gif", seed=args.seed, base=base, overrides=over)
        print(f"video: {video['path']} ({video['frames']} frames, {video['size'][0]}x{video['size'][1]}, "
              f"route completion {video['route_completion']:.2f})", file=sys.stderr if args.json else sys.stdout)
    return 0


def _layouts(args: argparse.Namespace, base: Any) -> list[str] | None:
    """The layouts to report apart, or None for one report on the config's env as it is."""
    from rollout_workers.envs.layouts import HELD_OUT_LAYOUTS, TRAINING_LAYOUTS, LayoutError, check_name

    if args.layouts is None and not (args.final and base.run.env == "embedded"):
        return None
    if base.run.env != "embedded":
        raise UserError(f"--layouts: road layouts are the embedded simulator's; env {base.run.env!r} has none")
    if args.layouts is None:
        return list(TRAINING_LAYOUTS + HELD_OUT_LAYOUTS)
    try:
        names = [check_name(n.strip()) for n in args.layouts.split(",") if n.strip()]
    except LayoutError as exc:
        raise UserError(f"--layouts: {exc}") from exc
    held = sorted(set(names) & set(HELD_OUT_LAYOUTS))
    if held and not args.final:
        raise UserError(f"--layouts: {', '.join(held)} {'is' if len(held) == 1 else 'are'} held out for the final "
                        "evaluation only (pass --final: the test seeds, and the use recorded)")
    return names


def _record_final(base: Any, snapshot: str, layouts: list[str]) -> None:
    from cluster.runtime.evaluation import TEST_SET_LOG, record_test_use

    runs = Path(base.run.runs_dir)
    uses = record_test_use(runs, {"command": "fleet evaluate --final", "snapshot": snapshot.split("@")[-1],
                                  "layouts": layouts, "first_seed": base.eval.test_seed})
    print(f"final evaluation: test seeds from {base.eval.test_seed:,} on {', '.join(layouts)}; use {uses} of the "
          f"test set, recorded in {runs / TEST_SET_LOG}", file=sys.stderr)


def _evaluate_layouts(args: argparse.Namespace, base: Any, over: dict[str, Any], layouts: list[str]) -> None:
    import json

    from cluster.runtime.evaluation import (
        LEVEL_RETURN_FRACTION,
        at_level,
        evaluate_layouts,
    )
    from rollout_workers.envs.layouts import HELD_OUT_LAYOUTS
    from rollout_workers.evaluation import write_report

    if args.final:
        _record_final(base, args.snapshot, layouts)
    reports, scripted = evaluate_layouts(args.snapshot, layouts, args.workers, args.episodes, seed=args.seed,
                                         local=args.local, address=args.address, base=base, overrides=over,
                                         final=args.final, say=lambda line: print(line, file=sys.stderr))
    label = next(iter(reports.values())).snapshot.rsplit(" on ", 1)[0]
    out = Path(args.out or f"runs/eval-{label.rsplit('@', 1)[-1]}")
    rows = []
    for name, report in reports.items():
        ref = scripted[name]
        write_report(report, out / name)
        rows.append({"layout": name, "set": "held-out" if name in HELD_OUT_LAYOUTS else "training",
                     "episodes": len(report.episodes), "route_completion": round(report.mean_route_completion, 3),
                     "driving_score": round(report.driving_score, 3), "mean_return": round(report.mean_return, 1),
                     "mean_speed": round(report.mean_speed, 2), "off_road_rate": round(report.off_road_rate, 3),
                     "collisions_per_km": round(report.collisions_per_km, 3), "crashes": report.crashes,
                     "scripted_return": ref["mean_return"], "scripted_crashes": ref["crashes"],
                     "of_scripted_return": (round(report.mean_return / ref["mean_return"], 3)
                                            if ref["mean_return"] > 0 else None),
                     "at_level": at_level(report.mean_route_completion, report.mean_return, ref["mean_return"])})
    seeds = "test" if args.final else "validation"
    summary = {"snapshot": label, "seeds": seeds, "layouts": rows}
    (out / "layouts.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "layouts.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
        return
    print(f"snapshot {label}: {args.episodes} episodes per layout, {seeds} seeds")
    print(f"  {'layout':<10} {'set':<9} {'route':>6} {'score':>6} {'return':>7} {'scripted':>8} {'of it':>6} "
          f"{'speed':>6} {'off-road':>8} {'crashes':>9} at level")
    for r in rows:
        share = f"{r['of_scripted_return']:.0%}" if r["of_scripted_return"] is not None else "-"
        crashed = f"{r['crashes']} ({r['scripted_crashes']})"
        print(f"  {r['layout']:<10} {r['set']:<9} {r['route_completion']:>6.3f} {r['driving_score']:>6.3f} "
              f"{r['mean_return']:>7.1f} {r['scripted_return']:>8.1f} {share:>6} {r['mean_speed']:>6.2f} "
              f"{r['off_road_rate']:>8.3f} {crashed:>9} {'yes' if r['at_level'] else 'no'}")
    print(f"  (scripted: the scripted driver's mean return on the same episodes; crashes: episodes ended by a "
          f"collision or off the road, the scripted driver's in brackets; at level: route completion >= 0.9 "
          f"and {LEVEL_RETURN_FRACTION:.0%} of it)")
    print(f"reports: {out}/<layout>/report.json, {out / 'layouts.json'}")
