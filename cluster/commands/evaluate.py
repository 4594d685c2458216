"""`fleet evaluate`: deterministic episodes of a snapshot's policy on parallel workers."""

from __future__ import annotations

import argparse
from pathlib import Path

from cluster.cli import Commands


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


def run(args: argparse.Namespace) -> int:
    from cluster.evaluate import evaluate_snapshot
    from rollout_workers.evaluation import write_report

    report = evaluate_snapshot(args.snapshot, args.workers, args.episodes, seed=args.seed, local=args.local,
                               address=args.address)
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
    return 0
