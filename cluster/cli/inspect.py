"""`fleet inspect`: the critic's Q and the actor's actions of a snapshot, on scripted states."""

from __future__ import annotations

import argparse
import json
import sys

from cluster.cli import Commands
from learner.common.errors import UserError


def register(cli: Commands) -> None:
    p = cli.command("inspect", "what a snapshot's critic prefers and what its actor does, at set speeds "
                    "(embedded simulator)", run)
    p.add_argument("--snapshot", required=True, metavar="URI[@VERSION]", help="store URI and version/tag")
    p.add_argument("--speeds", default="6,8,11,14", help="comma-separated speeds (m/s) the scripted driver holds")
    p.add_argument("--episodes", type=int, default=5, help="validation episodes per speed (20 states each)")
    p.add_argument("--config", help="experiment YAML (default: the packaged one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (YAML value syntax)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args: argparse.Namespace) -> int:
    from cluster.cli.train import overrides
    from cluster.runtime import experiment
    from cluster.runtime.inspection import as_dict, as_text, inspect_snapshot

    try:
        speeds = [float(s) for s in args.speeds.split(",") if s.strip()]
    except ValueError as exc:
        raise UserError(f"--speeds: expected numbers separated by commas, got {args.speeds!r}") from exc
    if not speeds or args.episodes < 1:
        raise UserError("--speeds needs at least one speed and --episodes at least 1")
    over = overrides(args, flags=())
    base = experiment.load(args.config, over)
    label, probes = inspect_snapshot(args.snapshot, speeds, args.episodes, base=base, overrides=over,
                                     say=lambda line: print(line, file=sys.stderr))
    if args.json:
        print(json.dumps(as_dict(label, probes)))
    else:
        print("\n".join(as_text(label, probes)))
    return 0
