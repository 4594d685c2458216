"""`fleet import-legacy FILE.pth --store URI`: bring a checkpoint of the replaced system into a store."""

from __future__ import annotations

import argparse
from pathlib import Path

from checkpoint_store.fs import StoreUriError
from checkpoint_store.lease import StoreLease
from checkpoint_store.manifest import Manifest
from checkpoint_store.store import SnapshotStore
from cluster.cli import Commands
from learner.common.errors import UserError
from learner.legacy import LegacyImportError, load_legacy


def import_legacy(path: str | Path, store_uri: str, allow_missing_cnn: bool = False,
                  tags: tuple[str, ...] = ()) -> Manifest:
    """Write the legacy checkpoint at `path` as a new version of the store at `store_uri`."""
    imported = load_legacy(path, allow_missing_cnn)
    meta = {"learner_updates": imported.agent.total_it.value, "config": imported.config, "notes": imported.notes}
    store = SnapshotStore(store_uri)
    # A writer like any other: refused (LeaseHeldError) while a live run writes the store.
    with StoreLease(store.root, run=f"fleet import-legacy {Path(path).name}"):
        return store.put(imported.agent.state(), meta, tags=tags)


def _run(args: argparse.Namespace) -> int:
    try:
        manifest = import_legacy(args.file, args.store, allow_missing_cnn=args.allow_missing_cnn,
                                 tags=tuple(args.tag))
    except (LegacyImportError, StoreUriError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    print(f"imported {args.file} as {manifest.version} ({manifest.learner_updates} updates, "
          f"{manifest.total_bytes / 1e6:.1f} MB)")
    for note in manifest.notes:
        print(f"  note: {note}")
    return 0


def register(cli: Commands) -> None:
    p = cli.command("import-legacy", "import a .pth checkpoint of the replaced system as a snapshot version", _run)
    p.add_argument("file", help="legacy checkpoint (.pth), read with torch.load(weights_only=True)")
    p.add_argument("--store", required=True, help="snapshot store URI to write the version to")
    p.add_argument("--allow-missing-cnn", action="store_true",
                   help="import even when the file lacks CNN weights (they are freshly initialised)")
    p.add_argument("--tag", action="append", default=[], help="also point this tag at the new version")
