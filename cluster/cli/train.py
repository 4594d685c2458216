"""`fleet train`: the main job."""

from __future__ import annotations

import argparse
from typing import Any

from cluster.cli import Commands
from learner.common.errors import UserError


def register(cli: Commands) -> None:
    p = cli.command("train", "train a TD3 driving agent (embedded simulator by default)", run)
    p.add_argument("--config", help="experiment YAML (default: the packaged cluster/configs/embedded.yaml)")
    p.add_argument("--env", choices=["embedded", "carla"], help="simulator (overrides run.env)")
    p.add_argument("--workers", type=int, help="rollout workers (overrides run.workers)")
    p.add_argument("--steps", type=int, help="environment steps to collect (overrides run.total_env_steps)")
    p.add_argument("--store", help="snapshot store URI (local path, s3://bucket/prefix?endpoint_override=...)")
    p.add_argument("--name", help="run name (results under runs/<name>/)")
    p.add_argument("--local", action="store_true", help="run every component in this process, without Ray")
    p.add_argument("--resume", metavar="URI[@VERSION]|auto",
                   help="continue from a snapshot (default version: latest); counters continue. 'auto': from the "
                        "latest snapshot in the store this run writes to, or from scratch when it has none yet "
                        "(the same command again after a lost node)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set agent.batch_size=128 (YAML value syntax)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--allow-ray-without-auth", action="store_const", const=True, default=None,
                   help="start a local Ray even when RAY_AUTH_MODE turns its token off (refused otherwise: any local "
                        "user could then run code as you; sets run.allow_ray_without_auth)")


TRAIN_FLAGS = (("env", "run.env"), ("workers", "run.workers"), ("steps", "run.total_env_steps"),
               ("store", "run.store"), ("name", "run.name"), ("allow_ray_without_auth", "run.allow_ray_without_auth"))
"""Command-line flags of `fleet train` that set a config key."""


def overrides(args: argparse.Namespace, flags: tuple[tuple[str, str], ...] = TRAIN_FLAGS) -> dict[str, Any]:
    """The config overrides of `--set KEY=VALUE` and of the `flags` (flag, key) given on the command line."""
    import yaml

    out: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. agent.batch_size=128")
        out[key] = yaml.safe_load(value)
    for flag, key in flags:
        if getattr(args, flag, None) is not None:
            out[key] = getattr(args, flag)
    return out


def run(args: argparse.Namespace) -> int:
    from checkpoint_store.fs import redact
    from cluster.runtime import config, experiment
    from cluster.runtime.resume import Resume
    from cluster.runtime.training import train

    cfg = experiment.load(args.config, overrides(args))
    if args.resume == "auto":
        # Named by the user, not a fresh timestamp: the config as given, before `load` fills in a name.
        given = config.load_yaml(experiment.ExperimentConfig, args.config or experiment.DEFAULT_CONFIG, overrides(args))
        resume = resume_auto(cfg, named=bool(given.run.name))
    else:
        resume = Resume.parse(args.resume) if args.resume else None
    if resume and not args.store and not cfg.run.store:
        # New snapshots go on in the store the run came from.
        from dataclasses import replace

        cfg = replace(cfg, run=replace(cfg.run, store=resume.uri))
    if not cfg.run.ray_address:  # one machine: at most a few processes per core (a cluster places its own)
        import os

        cfg.check_local_capacity(os.cpu_count() or 1)
    print(f"run {cfg.run.name}: env={cfg.run.env} workers={cfg.run.workers} steps={cfg.run.total_env_steps:,} "
          f"store={redact(cfg.store_uri())}" + (" (local, no Ray)" if args.local else ""), flush=True)
    summary = train(cfg, resume=resume, local=args.local, quiet=args.quiet)
    return 130 if summary["interrupted"] else 0


def resume_auto(cfg: Any, named: bool) -> Any:
    """`--resume auto`: the latest complete version of the store this run writes to (--store, run.store,
    or runs/<name>/snapshots), or None when it holds none yet. The same command can then be run again
    after a lost node, as on spot machines, and never restarts a run that has snapshots from scratch."""
    from checkpoint_store.fs import StoreUriError, redact
    from checkpoint_store.store import SnapshotNotFound, SnapshotStore
    from cluster.runtime.resume import Resume

    if not cfg.run.store and not named:
        raise UserError("--resume auto needs the run's store or name to find its snapshots again: add --store "
                        "URI or --name NAME (the default name is a new timestamp each time)")
    uri = cfg.store_uri()
    try:
        manifest = SnapshotStore(uri, create=False).manifest("latest")
    except (SnapshotNotFound, StoreUriError):
        print(f"--resume auto: no snapshot in {redact(uri)} yet: starting from scratch", flush=True)
        return None
    print(f"--resume auto: continuing from {redact(uri)}@{manifest.version} ({manifest.env_steps:,} env steps, "
          f"{manifest.learner_updates:,} updates)", flush=True)
    return Resume(uri, manifest.version)
