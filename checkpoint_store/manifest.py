"""The per-version manifest: what a version holds, with the sha256 and size of every blob.

A manifest carries a checksum of its own canonical JSON, so a truncated or
edited manifest does not verify and the version does not exist.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from learner.common.errors import StoreError

FORMAT = "carla-fleet.snapshot/1"
VERSION_RE = re.compile(r"^v\d{8}(-[0-9a-f]{8})?$")
"""A version id: `v` + an 8-digit sequence number, then (every id written since the store took
writer-unique ids) `-` + 8 hex digits naming the writer, e.g. v00000042-1f0c9a3e. Ids sort by their
number first; an id without the suffix (v00000042) is an older store's and reads as before."""
VERSION_FILE_RE = re.compile(r"versions/(v\d{8}(?:-[0-9a-f]{8})?)\.json")
"""A manifest's path under the store root (fullmatch); group 1 is its version id."""
WRITER_RE = re.compile(r"[0-9a-f]{8}")


class ManifestError(StoreError, ValueError):
    """A manifest is missing, unreadable or does not verify."""


def version_id(seq: int, writer: str | None = None) -> str:
    """The id of version number `seq` written by `writer` (8 hex digits; None: the old form without it)."""
    if not 0 <= seq <= 99_999_999:  # a longer id matches no pattern: the version would be invisible
        raise ManifestError(f"version number {seq} does not fit the 8-digit version ids")
    if writer is not None and not WRITER_RE.fullmatch(writer):
        raise ManifestError(f"writer suffix {writer!r} is not 8 lowercase hex digits")
    return f"v{seq:08d}" if writer is None else f"v{seq:08d}-{writer}"


def version_seq(version: str) -> int:
    """The sequence number of a version id (v00000042 and v00000042-1f0c9a3e: 42)."""
    if not VERSION_RE.match(version):
        raise ManifestError(f"{version!r} is not a version id")
    return int(version[1:9])


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    size: int

    @property
    def path(self) -> str:
        """Blob path under the store root, derived from the hash only."""
        return blob_path(self.sha256)

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BlobRef:
        sha, size = d["sha256"], d["size"]
        if (not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha))
                or not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ManifestError(f"bad blob reference {d!r}")
        return cls(sha, size)


def blob_path(sha256: str) -> str:
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ComponentRef:
    skeleton: BlobRef
    """JSON tree of the component with its tensors replaced by references."""
    tensors: BlobRef | None
    """The component's tensors in one safetensors file, None when it holds none."""


@dataclass(frozen=True)
class Manifest:
    """One version of the agent's state. Written last; a version exists iff this verifies."""

    version: str
    created: float
    """Wall-clock time of the save, seconds since the epoch."""
    learner_updates: int
    env_steps: int
    components: dict[str, ComponentRef] = field(repr=False)
    files: dict[str, BlobRef] = field(default_factory=dict, repr=False)
    """Extra named blobs (e.g. replay segments)."""
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def blobs(self) -> Iterator[tuple[str, BlobRef]]:
        """(label, blob) for every blob the version references, e.g. ('actor_cnn.tensors', ...)."""
        for name, c in self.components.items():
            yield f"{name}.skeleton", c.skeleton
            if c.tensors is not None:
                yield f"{name}.tensors", c.tensors
        for name, b in self.files.items():
            yield f"file {name}", b

    @property
    def total_bytes(self) -> int:
        return sum(b.size for _, b in self.blobs())

    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "created": self.created,
            "learner_updates": self.learner_updates,
            "env_steps": self.env_steps,
            "components": {n: {"skeleton": c.skeleton.to_json(),
                               "tensors": c.tensors.to_json() if c.tensors else None}
                           for n, c in self.components.items()},
            "files": {n: b.to_json() for n, b in self.files.items()},
            "config": self.config,
            "metrics": self.metrics,
            "notes": self.notes,
        }

    def to_bytes(self) -> bytes:
        body = self.body()
        body["checksum"] = _checksum(body)
        return json.dumps(body, indent=1).encode()  # unsorted: components keep the order they were given

    @classmethod
    def from_bytes(cls, data: bytes, expect_version: str | None = None) -> Manifest:
        """Parse and verify; raises ManifestError saying what is wrong, whatever the bytes are."""
        try:
            return cls._from_bytes(data, expect_version)
        except RecursionError as exc:  # json and the checksum recurse per nesting level
            raise ManifestError("manifest nests too deeply: it is not one this store wrote") from exc

    @classmethod
    def _from_bytes(cls, data: bytes, expect_version: str | None) -> Manifest:
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"manifest is not valid JSON ({exc}); it was probably cut short") from exc
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise ManifestError(f"not a {FORMAT} manifest")
        claimed = body.pop("checksum", None)
        if claimed != _checksum(body):
            raise ManifestError("manifest checksum does not match its content")
        try:
            m = cls(
                version=body["version"], created=float(body["created"]),
                learner_updates=int(body["learner_updates"]), env_steps=int(body["env_steps"]),
                components={n: ComponentRef(BlobRef.from_json(c["skeleton"]),
                                            BlobRef.from_json(c["tensors"]) if c["tensors"] else None)
                            for n, c in body["components"].items()},
                files={n: BlobRef.from_json(b) for n, b in body["files"].items()},
                config=body["config"], metrics=body["metrics"], notes=list(body["notes"]),
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exc:
            raise ManifestError(f"manifest lacks or mistypes field {exc}") from exc
        wrong = [name for name, value, kind in (("version", m.version, str), ("config", m.config, dict),
                                                ("metrics", m.metrics, dict))
                 if not isinstance(value, kind)]
        if wrong or not VERSION_RE.match(m.version):
            raise ManifestError(f"manifest mistypes field(s) {wrong or ['version']}: it is not one this store wrote")
        if expect_version is not None and m.version != expect_version:
            raise ManifestError(f"manifest file of {expect_version} claims version {m.version}")
        return m


def _checksum(body: dict[str, Any]) -> str:
    return sha256_hex(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
