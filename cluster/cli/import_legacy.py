"""`fleet import-legacy FILE.pth --store URI`: bring a checkpoint of the replaced system into a store."""

from __future__ import annotations

import argparse

from checkpoint_store.fs import StoreUriError
from checkpoint_store.legacy import LegacyImportError, import_legacy
from cluster.cli import Commands
from learner.errors import UserError


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
