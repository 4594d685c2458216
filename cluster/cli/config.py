"""`fleet config --show [FILE]`: the effective config, and every key with its documentation."""

from __future__ import annotations

import argparse

import yaml

from cluster.cli import Commands


def register(cli: Commands) -> None:
    p = cli.command("config", "show the effective experiment config or document every key", run)
    p.add_argument("--show", nargs="?", const="", metavar="FILE",
                   help="print the effective config (of FILE, else the packaged default) as YAML")
    p.add_argument("--keys", action="store_true", help="list every key with its type, default and meaning")


def run(args: argparse.Namespace) -> int:
    from cluster.runtime import experiment
    from cluster.runtime.config import describe, to_dict

    if args.keys or args.show is None:
        for key, tp, default, doc in describe(experiment.ExperimentConfig):
            print(f"{key:<36} {tp:<18} {default!r:<14} {doc}")
        return 0
    cfg = experiment.load(args.show or None)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0
