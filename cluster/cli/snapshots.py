"""`fleet snapshots list|show|verify|tag|gc URI`: inspect and maintain a snapshot store."""

from __future__ import annotations

import argparse
import datetime as dt
import json

from checkpoint_store.fs import StoreUriError
from checkpoint_store.lease import StoreLease
from checkpoint_store.manifest import ManifestError
from checkpoint_store.retention import RetentionPolicy, RetentionReport
from checkpoint_store.store import SnapshotNotFound, SnapshotStore
from cluster.cli import Commands
from learner.common.errors import UserError


def _open(uri: str) -> SnapshotStore:
    try:
        return SnapshotStore(uri, create=False)
    except StoreUriError as exc:
        raise UserError(str(exc)) from exc


def _list(args: argparse.Namespace) -> int:
    store = _open(args.uri)
    versions = store.list()
    if not versions:
        print(f"{store.uri}: no versions")
        return 0
    pointers: dict[str, list[str]] = {}
    latest = store.resolve("latest")
    for name, v in {"latest": latest, **store.tags()}.items():
        pointers.setdefault(v, []).append(name)
    metric_names = sorted({k for m in versions for k in m.metrics})[:3]
    head = ["version", "created (UTC)", "updates", "env_steps", "MB", *metric_names, "tags"]
    rows = [head]
    for m in versions:
        created = dt.datetime.fromtimestamp(m.created, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        metrics = [_fmt(m.metrics.get(k)) for k in metric_names]
        rows.append([m.version, created, str(m.learner_updates), str(m.env_steps), f"{m.total_bytes / 1e6:.1f}",
                     *metrics, ",".join(pointers.get(m.version, []))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _show(args: argparse.Namespace) -> int:
    store = _open(args.uri)
    try:
        manifest = store.manifest(args.version)
    except (SnapshotNotFound, ManifestError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    body = manifest.body()
    body["total_bytes"] = manifest.total_bytes
    print(json.dumps(body, indent=2, sort_keys=False))
    return 0


def _verify(args: argparse.Namespace) -> int:
    store = _open(args.uri)
    try:
        problems = store.verify(args.version)
    except (SnapshotNotFound, ValueError) as exc:
        raise UserError(str(exc)) from exc
    for p in problems:
        print(f"BAD {p}")
    n = len(store.list()) if args.version is None else 1
    print(f"{store.uri}: {n} version(s) checked, {len(problems)} problem(s)")
    return 1 if problems else 0


def _tag(args: argparse.Namespace) -> int:
    store = _open(args.uri)
    try:
        version = store.tag(args.version, args.name)
    except (SnapshotNotFound, ManifestError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    print(f"{args.name} -> {version}")
    return 0


def _gc(args: argparse.Namespace) -> int:
    store = _open(args.uri)
    try:
        policy = RetentionPolicy(keep_last=args.keep_last, keep_best=args.keep_best, best_metric=args.best_metric,
                                 best_mode=args.best_mode, keep_every=args.keep_every)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if args.dry_run:
        return _gc_report(store.apply_retention(policy, gc=False, dry_run=True), dry_run=True)
    # Deleting is writing: refused (LeaseHeldError) while a live run writes the store and cleans it itself.
    with StoreLease(store.root, run="fleet snapshots gc"):
        report = store.apply_retention(policy, gc=False)
        _gc_report(report, dry_run=False)
        n, freed = store.gc(min_age_s=args.grace_s)
        print(f"removed {len(report.deleted)} version(s), {n} unreferenced file(s), {freed / 1e6:.1f} MB")
    return 0


def _gc_report(report: RetentionReport, dry_run: bool) -> int:
    for v in report.kept:
        print(f"keep   {v}  ({', '.join(report.reasons[v])})")
    for v in report.deleted:
        print(f"{'would delete' if dry_run else 'delete'} {v}")
    return 0


def register(cli: Commands) -> None:
    sub = cli.group("snapshots", "inspect, verify, tag and prune a snapshot store")
    uri_help = "store URI: a path, file://, s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http, gs://"

    p = sub.add_parser("list", help="table of the versions in the store")
    p.add_argument("uri", help=uri_help)
    p.set_defaults(func=_list)

    p = sub.add_parser("show", help="print a version's manifest as JSON")
    p.add_argument("uri", help=uri_help)
    p.add_argument("version", nargs="?", default="latest", help="version id, tag or 'latest' (default)")
    p.set_defaults(func=_show)

    p = sub.add_parser("verify", help="check the size and sha256 of every blob; exit 1 naming each bad one")
    p.add_argument("uri", help=uri_help)
    p.add_argument("version", nargs="?", default=None, help="one version, tag or 'latest' (default: all)")
    p.set_defaults(func=_verify)

    p = sub.add_parser("tag", help="point a tag (e.g. best) at a version")
    p.add_argument("uri", help=uri_help)
    p.add_argument("version", help="version id, tag or 'latest'")
    p.add_argument("name", help="tag name")
    p.set_defaults(func=_tag)

    p = sub.add_parser("gc", help="apply a retention policy, then delete unreferenced blobs")
    p.add_argument("uri", help=uri_help)
    p.add_argument("--keep-last", type=int, default=5, help="keep the newest N versions (default 5)")
    p.add_argument("--keep-best", type=int, default=0, help="keep the K best by --best-metric")
    p.add_argument("--best-metric", default=None, help="metric name to rank versions by")
    p.add_argument("--best-mode", choices=("max", "min"), default="max", help="larger or smaller is better")
    p.add_argument("--keep-every", type=int, default=0, help="keep one version per this many learner updates")
    p.add_argument("--grace-s", type=float, default=3600.0,
                   help="spare unreferenced blobs younger than this, which a live writer may be about to use")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p.set_defaults(func=_gc)
