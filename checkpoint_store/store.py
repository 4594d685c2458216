"""Versioned, content-addressed snapshots of an agent's state on any pyarrow filesystem.

Layout under the root URI:

    blobs/sha256/ab/abcdef...     immutable blobs, named by the sha256 of their bytes
    versions/v00000042.json       one manifest per version, written after all its blobs
    refs/latest, refs/tags/NAME   pointer files holding a version id, moved after the manifest

A version exists iff its manifest exists and verifies, so a writer killed at
any point leaves the previous versions intact and `latest` pointing at one of
them. One writer at a time (the checkpoint actor, holding the store's lease:
checkpoint_store/lease.py); any number of readers.

Two writers at once (a lease that failed, being advisory, or a library caller that
takes none) do not overwrite each other: every version id ends in its writer's own
suffix (v00000042-1f0c9a3e), so they may share a number but never an id, and
cleanup deletes only blobs older than BLOB_MIN_AGE_S (see `gc`). Ids without the
suffix (v00000042), written before, read as before.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from checkpoint_store import codec
from checkpoint_store.fs import TMP_MARK, TMP_RE, Root, TooLargeError, UnsafePathError
from checkpoint_store.manifest import (
    VERSION_FILE_RE,
    VERSION_RE,
    WRITER_RE,
    BlobRef,
    ComponentRef,
    Manifest,
    ManifestError,
    blob_path,
    sha256_hex,
    version_id,
    version_seq,
)
from checkpoint_store.retention import RetentionPolicy, RetentionReport, select
from learner.common.errors import StoreError
from learner.common.interfaces import FileValue

log = logging.getLogger(__name__)

META_KEYS = {"learner_updates", "env_steps", "config", "metrics", "notes", "created"}
TAG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
"""Bytes to store, or 'sha256:<hex>' naming a blob already in the store."""


HIGH_WATER = "refs/high-water"
"""The last version id handed out (numbers are never reused by one writer; ids never by any two)."""

BLOB_RE = re.compile(r"blobs/sha256/([0-9a-f]{2})/(\1[0-9a-f]{62})")
"""The path of a blob the store writes (`blob_path`): the only blobs cleanup may delete."""

MAX_SEQ = 99_999_999
"""The last version id (v99999999): a longer one would match no pattern, so it would be listed as
nothing and cleanup would delete its blobs."""

MAX_POINTER_BYTES = 4096
"""A pointer (refs/latest, a tag, refs/high-water) holds one version id."""

TMP_MIN_AGE_S = 600.0
"""Cleanup deletes a temporary file only once it is this old: younger, it may be a write in progress
(another process's fsync of a large blob to a slow disk can take minutes)."""

BLOB_MIN_AGE_S = 600.0
"""Cleanup (`gc`, `apply_retention`) deletes an unreferenced blob only once it is this old, unless its
caller asks for less: younger, it may belong to a version another writer has not committed yet. A put
rewrites a blob it reuses that is older than half of this, so that every blob a put needs is younger
than half of it when the put starts (the argument is in `gc`)."""


class SnapshotNotFound(StoreError, LookupError):
    """No version matches the reference; the message lists what the store has."""


class BadRefError(StoreError, ValueError):
    """A tag name or version reference that is malformed; the message says what a good one looks like."""


class IntegrityError(StoreError, ValueError):
    """A blob is missing or its size or sha256 differs from the manifest; names blob and version."""


@dataclass(frozen=True)
class Snapshot:
    state: dict[str, Any]
    manifest: Manifest


class SnapshotStore:
    """Snapshots under one URI: a local path, file://, s3://bucket/prefix?endpoint_override=..., gs://."""

    def __init__(self, uri: str, create: bool = True, writer: str | None = None) -> None:
        """Open the store; `create=False` refuses a location that does not exist (readers, the CLI).

        `writer`: the 8 hex digits every version id this instance writes ends in (default: random, so
        unique to this instance: two instances never write the same id, even given the same number)."""
        self.writer = writer if writer is not None else uuid.uuid4().hex[:8]
        if not WRITER_RE.fullmatch(self.writer):
            raise ValueError(f"writer {writer!r}: expected 8 lowercase hex digits")
        self.root = Root(uri, create=create)
        self._manifests: dict[str, Manifest] = {}  # manifests are immutable, so caching is safe
        self.last_put_bytes = 0
        """Bytes actually written by the last put (blobs that already existed are skipped)."""
        self._after_write: Callable[[str], None] | None = None  # test hook: crash-point injection

    @property
    def uri(self) -> str:
        """The URI with credentials redacted."""
        return self.root.display

    def put(self, state: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
            files: Mapping[str, FileValue] | None = None, tags: Sequence[str] = ()) -> Manifest:
        """Store `state` ({component: value}) as a new version; move `latest` and `tags` to it."""
        meta = dict(meta or {})
        unknown = sorted(set(meta) - META_KEYS)
        if unknown:
            raise ValueError(f"unknown snapshot meta key(s) {unknown}; allowed: {sorted(META_KEYS)}")
        for name in tags:
            _check_tag(name)
        # First: a store with no id left refuses before writing blobs.
        version = version_id(self._next_seq(), self.writer)
        self.last_put_bytes = 0
        components = {}
        for name, value in state.items():
            try:
                skel, tensors = codec.encode(value)
            except codec.CodecError as exc:
                raise codec.CodecError(f"component {name!r}: {exc}") from exc
            components[name] = ComponentRef(self._put_blob(skel), self._put_blob(tensors) if tensors else None)
        stored_files = {name: self._put_file(name, v) for name, v in (files or {}).items()}
        notes = meta.get("notes", [])
        manifest = Manifest(
            version=version, created=float(meta.get("created", time.time())),
            learner_updates=int(meta.get("learner_updates", 0)), env_steps=int(meta.get("env_steps", 0)),
            components=components, files=stored_files, config=dict(meta.get("config", {})),
            metrics=dict(meta.get("metrics", {})), notes=[notes] if isinstance(notes, str) else list(notes),
        )
        data = manifest.to_bytes()
        self.root.write_atomic(HIGH_WATER, manifest.version.encode())  # before the id can be seen anywhere
        self.root.write_atomic(_manifest_path(manifest.version), data)  # the commit point
        self._hook(_manifest_path(manifest.version))
        self.last_put_bytes += len(data)
        self._manifests[manifest.version] = manifest
        self.root.write_atomic("refs/latest", manifest.version.encode())
        self._hook("refs/latest")
        for name in tags:
            self.root.write_atomic(f"refs/tags/{name}", manifest.version.encode())
            self._hook(f"refs/tags/{name}")
        log.info("stored %s (%d updates, %.1f MB new) in %s", manifest.version, manifest.learner_updates,
                 self.last_put_bytes / 1e6, self.uri)
        return manifest

    def _put_blob(self, data: bytes) -> BlobRef:
        ref = BlobRef(sha256_hex(data), len(data))
        existing = self.root.info(ref.path)
        # A blob already there is reused unless it is older than half of BLOB_MIN_AGE_S: then it is
        # written again (same bytes, atomically), so that another writer's cleanup, which deletes only
        # unreferenced blobs older than BLOB_MIN_AGE_S, cannot delete it before this put's manifest
        # references it. No mtime reported: cleanup never deletes it by age, nothing to refresh.
        stale = (existing is not None and existing.mtime is not None
                 and time.time() - existing.mtime > BLOB_MIN_AGE_S / 2)
        if existing is None or existing.size != ref.size or stale:
            self.root.write_atomic(ref.path, data)
            self.last_put_bytes += len(data)
            self._hook(ref.path)
        return ref

    def _hook(self, path: str) -> None:
        if self._after_write is not None:
            self._after_write(path)

    def _put_file(self, name: str, value: FileValue) -> BlobRef:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self._put_blob(bytes(value))
        m = re.fullmatch(r"sha256:([0-9a-f]{64})", value) if isinstance(value, str) else None
        if m is None:
            raise ValueError(f"file {name!r}: expected bytes or 'sha256:<64 hex digits>', got {value!r:.80}")
        entry = self.root.info(blob_path(m.group(1)))
        if entry is None:
            raise IntegrityError(f"file {name!r} references blob sha256:{m.group(1)}, which is not in {self.uri}")
        return BlobRef(m.group(1), entry.size)

    def _next_seq(self) -> int:
        """One more than any version id this store ever handed out: manifests, pointers and the
        high-water mark, so an id is never reused even when a manifest was deleted by hand (a tag
        or an old report naming it must never come to mean other content)."""
        seqs = [version_seq(m.group(1)) for e in self.root.list("versions")
                if (m := VERSION_FILE_RE.fullmatch(e.path)) is not None]
        for ref in [HIGH_WATER, "refs/latest", *(f"refs/tags/{e.path.rsplit('/', 1)[-1]}"
                                                 for e in self.root.list("refs/tags"))]:
            try:
                text = self.root.read(ref, MAX_POINTER_BYTES).decode().strip()
            except FileNotFoundError:
                continue
            except UnicodeDecodeError:
                text = "<binary>"
            except (TooLargeError, UnsafePathError):
                text = "<not a small regular file>"
            if VERSION_RE.match(text):
                seqs.append(version_seq(text))
            elif ref == HIGH_WATER:  # ignoring it could hand out an id already used
                raise StoreError(f"{self.uri}/{HIGH_WATER} holds {text[:40]!r}, not a version id: it is corrupt. "
                                 "Write the highest version id the store ever held (e.g. v00000042) into it")
        seq = max(seqs, default=0) + 1
        if seq > MAX_SEQ:
            raise StoreError(f"{self.uri} has handed out version v{MAX_SEQ:08d}, the last 8-digit id: no version "
                             f"can be added (check {HIGH_WATER} and the tags; start a new store)")
        return seq

    def get(self, ref: str = "latest", components: Iterable[str] | None = None) -> Snapshot:
        """Load a version, or only `components` of it; every blob read is verified."""
        try:
            return self._get(ref, components)
        except IntegrityError:
            if VERSION_RE.match(ref):
                raise
            # `latest` or a tag may have moved and retention removed the old target mid-read.
            log.warning("reading %s failed; resolving it again once", ref)
            return self._get(ref, components)

    def _get(self, ref: str, components: Iterable[str] | None) -> Snapshot:
        manifest = self.manifest(ref)
        names = list(manifest.components) if components is None else list(components)
        missing = [n for n in names if n not in manifest.components]
        if missing:
            raise KeyError(f"version {manifest.version} has no component(s) {missing}; "
                           f"it has {sorted(manifest.components)}")
        state = {}
        for name in names:
            c = manifest.components[name]
            skel = self._read_blob(c.skeleton, f"{name}.skeleton", manifest.version)
            tensors = self._read_blob(c.tensors, f"{name}.tensors", manifest.version) if c.tensors else None
            try:
                state[name] = codec.decode(skel, tensors)
            except codec.CodecError as exc:
                raise IntegrityError(f"component {name} of version {manifest.version}: {exc}") from exc
        return Snapshot(state, manifest)

    def read_file(self, ref: str, name: str) -> bytes:
        """The verified bytes of extra file `name` stored with version `ref`."""
        manifest = self.manifest(ref)
        if name not in manifest.files:
            raise KeyError(f"version {manifest.version} has no file {name!r}; it has {sorted(manifest.files)}")
        return self._read_blob(manifest.files[name], f"file {name}", manifest.version)

    def _read_blob(self, ref: BlobRef, label: str, version: str) -> bytes:
        where = f"blob {label} ({ref.path}) of version {version}"
        try:
            data = self.root.read(ref.path, max_bytes=ref.size)
        except FileNotFoundError as exc:
            raise IntegrityError(f"{where} is missing") from exc
        except TooLargeError as exc:
            raise IntegrityError(f"{where} is larger than the {ref.size} bytes the manifest says") from exc
        except UnsafePathError as exc:
            raise IntegrityError(f"{where} cannot be read: {exc}") from exc
        if len(data) != ref.size:
            raise IntegrityError(f"{where} has {len(data)} bytes, the manifest says {ref.size}")
        if sha256_hex(data) != ref.sha256:
            raise IntegrityError(f"{where} does not match its sha256 {ref.sha256}: it is corrupt")
        return data

    def manifest(self, ref: str = "latest") -> Manifest:
        """The verified manifest of `ref` (a version id, 'latest', or a tag)."""
        return self._load_manifest(self.resolve(ref))

    def _load_manifest(self, version: str, cached: bool = True) -> Manifest:
        if cached and version in self._manifests:
            return self._manifests[version]
        try:
            data = self.root.read(_manifest_path(version))
        except FileNotFoundError as exc:
            raise SnapshotNotFound(f"version {version} does not exist in {self.uri}") from exc
        except (TooLargeError, UnsafePathError) as exc:
            raise ManifestError(str(exc)) from exc
        m = Manifest.from_bytes(data, expect_version=version)
        self._manifests[version] = m
        return m

    def resolve(self, ref: str = "latest") -> str:
        """The version id that `ref` ('latest', a version id such as v00000042, or a tag) names now."""
        if VERSION_RE.match(ref):
            if not self.root.exists(_manifest_path(ref)):
                raise SnapshotNotFound(f"version {ref} does not exist in {self.uri}")
            return ref
        if ref == "latest":
            target = self._pointer("refs/latest")
            if target is not None:
                try:
                    self._load_manifest(target)
                    return target
                except (SnapshotNotFound, ManifestError) as exc:
                    log.warning("latest points to %s, which is unusable (%s); using the newest valid version",
                                target, exc)
            versions = self.list()
            if not versions:
                raise SnapshotNotFound(f"{self.uri} holds no versions yet")
            return versions[-1].version
        _check_tag(ref)
        target = self._pointer(f"refs/tags/{ref}")
        if target is None:
            raise SnapshotNotFound(f"no tag {ref!r} in {self.uri}; tags: {sorted(self.tags()) or 'none'}")
        return target

    def _pointer(self, rel: str) -> str | None:
        try:
            value = self.root.read(rel, MAX_POINTER_BYTES).decode(errors="replace").strip()
        except FileNotFoundError:
            return None
        except (TooLargeError, UnsafePathError) as exc:  # as a pointer holding no version id
            log.warning("ignoring pointer %s: %s", rel, exc)
            return None
        return value if VERSION_RE.match(value) else None

    def tags(self) -> dict[str, str]:
        """{tag: version}, `latest` excluded."""
        out = {}
        for e in self.root.list("refs/tags"):
            name = e.path[len("refs/tags/"):]
            target = None if TMP_MARK in name else self._pointer(e.path)
            if target is not None:
                out[name] = target
        return out

    def tag(self, ref: str, name: str) -> str:
        """Point tag `name` at the version `ref` names; returns that version id."""
        _check_tag(name)
        version = self.manifest(ref).version
        self.root.write_atomic(f"refs/tags/{name}", version.encode())
        return version

    def list(self) -> list[Manifest]:
        """Every version whose manifest verifies, oldest first. Unverifiable manifests are skipped."""
        out = []
        for e in self.root.list("versions"):
            m = VERSION_FILE_RE.fullmatch(e.path)
            if m is None:
                continue
            try:
                out.append(self._load_manifest(m.group(1)))
            except (SnapshotNotFound, ManifestError) as exc:
                log.warning("skipping %s: %s", e.path, exc)
        # By id, not path: v00000042.json sorts after v00000042-1f0c9a3e.json, its id before.
        return sorted(out, key=lambda m: m.version)

    def verify(self, ref: str | None = None) -> list[str]:
        """Problems found in one version (`ref`) or, when None, in every version and pointer."""
        problems: list[str] = []
        if ref is not None:
            versions = [self.resolve(ref)]
        else:
            versions = []
            for e in self.root.list("versions"):
                m = VERSION_FILE_RE.fullmatch(e.path)
                if m is not None:
                    versions.append(m.group(1))
                elif TMP_MARK not in e.path:
                    problems.append(f"unexpected file {e.path}")
            pointers = {"latest": self._pointer("refs/latest"), **self.tags()}
            for name, target in pointers.items():
                if target is not None and target not in versions:
                    problems.append(f"pointer {name} names {target}, which does not exist")
        checked: dict[str, str | None] = {}  # sha256 -> problem; blobs shared by versions are read once
        for version in versions:
            try:
                manifest = self._load_manifest(version, cached=False)
            except (SnapshotNotFound, ManifestError) as exc:
                problems.append(f"version {version}: manifest {_manifest_path(version)}: {exc}")
                continue
            for label, blob in manifest.blobs():
                if blob.sha256 not in checked:
                    try:
                        self._read_blob(blob, label, version)
                        checked[blob.sha256] = None
                    except IntegrityError as exc:
                        checked[blob.sha256] = str(exc)
                if checked[blob.sha256] is not None:
                    problems.append(f"version {version}: blob {label} ({blob.path}) failed: "
                                    f"{checked[blob.sha256]}")
        return problems

    def apply_retention(self, policy: RetentionPolicy, gc: bool = True, dry_run: bool = False,
                        min_age_s: float = BLOB_MIN_AGE_S) -> RetentionReport:
        """Delete the versions `policy` does not keep (never the newest or a tagged one), then their blobs
        older than `min_age_s` (see `gc`)."""
        manifests = self.list()
        if not manifests:
            return RetentionReport([], [])
        # Delete only once the newest manifest is durable: read it back from storage, not the cache.
        self._load_manifest(manifests[-1].version, cached=False)
        pinned = [v for v in [self._pointer("refs/latest"), *self.tags().values()] if v]
        reasons = select(manifests, policy, pinned)
        doomed = [m.version for m in manifests if m.version not in reasons]
        report = RetentionReport(sorted(reasons), doomed, reasons)
        if dry_run:
            return report
        for version in doomed:
            self.root.delete(_manifest_path(version))
            self._manifests.pop(version, None)
        if doomed:
            log.info("retention deleted %d version(s): %s", len(doomed), ", ".join(doomed))
        if gc:
            n, freed = self.gc(min_age_s)
            report = RetentionReport(report.kept, doomed, reasons, n, freed)
        return report

    def gc(self, min_age_s: float = BLOB_MIN_AGE_S) -> tuple[int, int]:
        """Delete blobs no version references, and stray temp files; returns (files, bytes) deleted.

        Only names the store itself writes are deleted: blobs at `blob_path` of a sha256 digest and
        temporary files named as `write_atomic` names them, the latter once `TMP_MIN_AGE_S` old.
        Anything else someone put in the store stays. `min_age_s` spares files younger than that
        (0: none, for a store no other process writes), so that a gc beside another live writer does
        not remove the blobs of a version whose manifest is not written yet:

        Let P be a put not committed yet and X a blob its manifest will reference. P wrote X after it
        started, or found X younger than BLOB_MIN_AGE_S / 2 (`_put_blob` writes an older one again),
        so mtime(X) >= start(P) - BLOB_MIN_AGE_S / 2. This gc lists the files first, at `now`, reads the
        manifests after that, and deletes X only if no manifest it read references X and X's mtime,
        read again just before the delete (P may have written it again since the listing), is
        `min_age_s` before `now`. With min_age_s = BLOB_MIN_AGE_S that needs now >= start(P) +
        BLOB_MIN_AGE_S / 2: P would have been running for 300 s when this gc began and still not
        have written its manifest. Measured (docs/benchmarks.md, first table, `fleet bench store`): a
        put of the full learner state, 63.7 MB, takes 0.12-0.30 s to a local disk and 0.8-1.1 s to an
        S3 server on loopback: the margin, 300 s less any skew between this machine's clock and the
        store's (mtimes are the store's), is hundreds of times that; a put ten times larger to a store
        twenty times slower than that server (about 220 s) would still fit. Left open: a put that
        writes X again in the milliseconds between this gc's second read of X and its delete, which
        needs X unreferenced and older than 300 s at that moment; and blobs a put is given as
        'sha256:<hex>' (the replay segments of the writer's own last version), which stay only while a
        manifest references them: retention keeps the newest version, and only the lease holder
        runs it.
        """
        now, n, freed = time.time(), 0, 0
        entries = self.root.list("")  # before the manifests: a manifest written meanwhile is then read
        referenced = {b.sha256 for m in self.list() for _, b in m.blobs()}
        for e in entries:
            is_tmp = TMP_RE.fullmatch(e.path.rsplit("/", 1)[-1]) is not None
            blob = BLOB_RE.fullmatch(e.path)
            if not is_tmp and (blob is None or blob.group(2) in referenced):
                continue
            min_age = max(min_age_s, TMP_MIN_AGE_S) if is_tmp else min_age_s
            if min_age > 0:
                try:
                    current = self.root.info(e.path)  # written again since the listing: young again
                except UnsafePathError:
                    current = None
                if current is None or current.mtime is None or now - current.mtime < min_age:
                    continue
            try:
                self.root.delete(e.path)
            except UnsafePathError as exc:  # replaced by a link or a folder since it was listed
                log.warning("gc skipped %s: %s", e.path, exc)
                continue
            n, freed = n + 1, freed + e.size
        if n:
            log.info("gc deleted %d file(s), %.1f MB", n, freed / 1e6)
        return n, freed


def _manifest_path(version: str) -> str:
    return f"versions/{version}.json"


def _check_tag(name: str) -> None:
    # TMP_MARK: a name like a temporary file's is hidden from tags() and may be removed by cleanup.
    if name == "latest" or VERSION_RE.match(name) or not TAG_RE.match(name) or TMP_MARK in name:
        raise BadRefError(f"bad tag name or version {name!r}: a version id is v + 8 digits, then - + 8 hex digits "
                          "in a newer store (v00000042, v00000042-1f0c9a3e); a tag "
                          f"uses letters, digits, '_', '.', '-', starts with a letter, holds no {TMP_MARK!r}, "
                          "and is not 'latest'")
