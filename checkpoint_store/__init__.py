"""Versioned snapshots of the agent's state on any pyarrow filesystem, and the checkpoint actor."""

from checkpoint_store.manifest import Manifest
from checkpoint_store.retention import RetentionPolicy, RetentionReport
from checkpoint_store.store import IntegrityError, Snapshot, SnapshotNotFound, SnapshotStore
from checkpoint_store.writer import (
    CheckpointWriter,
    SnapshotStager,
    live_state,
    snapshot_state,
    submit_snapshot,
)

__all__ = ["CheckpointWriter", "IntegrityError", "Manifest", "RetentionPolicy", "RetentionReport", "Snapshot",
           "SnapshotNotFound", "SnapshotStager", "SnapshotStore", "live_state", "snapshot_state", "submit_snapshot"]
