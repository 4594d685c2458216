"""Where a resumed run comes from (`--resume URI[@VERSION]`), and what it starts from."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from checkpoint_store.fs import userinfo_end
from checkpoint_store.manifest import VERSION_RE, Manifest
from checkpoint_store.store import SnapshotStore

_REF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""What may follow the '@' of `--resume URI@VERSION`: 'latest', a version id or a tag."""


@dataclass(frozen=True)
class Resume:
    """Where a resumed run comes from."""

    uri: str = field(repr=False)  # may hold credentials
    version: str = "latest"

    @classmethod
    def parse(cls, text: str) -> Resume:
        """`URI[@VERSION]`. The version's '@' is the last one, after the last '/' of the URI's path;
        never the '@' that ends credentials in the URI (`s3://KEY:SECRET@bucket` is a store, not the
        store `s3://KEY:SECRET` at version `bucket`, which was then printed with its secret). At a
        bucket's root, `s3://bucket@VERSION` reads the same as `s3://USER@bucket`: it is taken as a
        version only for `latest` or a version id; write `s3://bucket/@TAG` for a tag."""
        uri, sep, version = text.rpartition("@")
        if not sep:
            return cls(text)
        m = re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", text)
        if m is None:  # a local path holds no credentials: an '@' after its last '/' starts the version, which
            return cls(uri, version) if "/" not in version else cls(text)  # the store then checks
        if not _REF_RE.fullmatch(version):
            return cls(text)
        location = text[m.end():]
        cut = min([i for i in (location.find("?"), location.find("#")) if i >= 0], default=len(location))
        path = location[:cut]
        at = len(uri) - m.end()  # index of the separator candidate in `location`
        end = userinfo_end(path)
        if at >= cut or at > end and "/" not in path[at:]:
            return cls(uri, version)
        if at == end and ":" not in path[:at] and "/" not in path and (version == "latest" or VERSION_RE.match(version)):
            return cls(uri, version)
        return cls(text)



class Restored(NamedTuple):
    """What a resumed run starts from: a snapshot's full state, its files (the replay) and manifest."""

    state: dict[str, Any]
    files: dict[str, bytes]
    manifest: Manifest


def load_resume(resume: Resume) -> Restored:
    store = SnapshotStore(resume.uri, create=False)
    snap = store.get(resume.version)
    files = {name: store.read_file(snap.manifest.version, name) for name in snap.manifest.files}
    return Restored(snap.state, files, snap.manifest)


def best_eval(restored: Restored | None) -> float:
    """The best evaluation score a resumed run must beat before it moves the `best` tag."""
    if restored is None:
        return float("-inf")
    score = restored.state.get("learner", {}).get("best_eval")
    return float("-inf") if score is None else float(score)
