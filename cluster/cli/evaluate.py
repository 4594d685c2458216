"""`fleet evaluate`: deterministic episodes of a snapshot's policy on parallel workers."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cluster.cli import Commands
from learner.common.errors import UserError


def register(cli: Commands) -> None:
    p = cli.command("evaluate", "evaluate a snapshot's policy: returns, route completion, driving score", run)
    p.add_argument("--snapshot", required=True, metavar="URI[@VERSION]", help="store URI and version/tag")
    p.add_argument("--workers", type=int, default=2, help="parallel evaluation workers (Ray actors)")
    p.add_argument("--episodes", type=int, default=10, help="episodes in all")
    p.add_argument("--seed", type=int, help="first evaluation seed (default: the config's held-out seed)")
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
    over = overrides(args, flags=(("env", "run.env"),))
    base = experiment.load(args.config, over)
    if not args.local and not (args.address or os.environ.get("RAY_ADDRESS")):
        # One machine: refused before the store is read or Ray starts (a cluster places its own actors).
        base.check_local_evaluators(min(args.workers, args.episodes), os.cpu_count() or 1)
    report = evaluate_snapshot(args.snapshot, args.workers, args.episodes, seed=args.seed, local=args.local,
                               address=args.address, base=base, overrides=over,
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
