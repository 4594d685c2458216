"""A store root on any pyarrow filesystem, with the few operations the store needs.

Writes are atomic everywhere: on a local disk a file is written under a temporary
name, fsynced and renamed (then the directory is fsynced), so a killed writer
leaves at worst a stray `*.tmp-*` file; on S3 and GCS an object appears only when
its single PUT (or completed multipart upload) succeeds.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from learner.errors import StoreError

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"
_SECRET_KEYS = {"access_key", "secret_key", "session_token"}
URI_HELP = ("use a local path, file:///abs/path, s3://bucket/prefix (add ?endpoint_override=HOST:PORT&scheme=http "
            "for a non-AWS server; credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), "
            "or gs://bucket/prefix")


class StoreUriError(StoreError, ValueError):
    """The store URI cannot be opened; the message says what is wrong and what to do."""


def redact(uri: str) -> str:
    """The URI with every credential replaced by ***, safe to log, print or store in a manifest:
    the user-info part (`s3://KEY:SECRET@bucket`) and secret query parameters."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    if "@" in parts.netloc:
        parts = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2])
    if parts.query:
        query = [(k, "***" if k.lower() in _SECRET_KEYS else v)
                 for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        parts = parts._replace(query=urlencode(query, safe=":/*"))
    return urlunsplit(parts)


@dataclass(frozen=True)
class FileEntry:
    path: str
    """Path relative to the store root, with '/' separators."""
    size: int
    mtime: float | None
    """Seconds since the epoch, when the filesystem reports it."""


class Root:
    """Files under one directory (or bucket prefix) of a pyarrow filesystem."""

    def __init__(self, uri: str, create: bool = True) -> None:
        self.uri = uri
        self.display = redact(uri)
        self.fs, self.base, self.local = _open(uri, create)
        self.bytes_read = 0
        self.reads: list[str] = []  # relative paths read, in order: lets tests prove what a load touched
        if create:
            self._ensure_root()
        elif self.fs.get_file_info(self.base).type != pafs.FileType.Directory:
            raise StoreUriError(f"no snapshot store at {self.display}: the location does not exist "
                                "(check the URI, or write a snapshot there first)")

    def _ensure_root(self) -> None:
        try:
            if self.local:
                Path(self.base).mkdir(parents=True, exist_ok=True)
            elif self.fs.get_file_info(self.base).type == pafs.FileType.NotFound:
                bucket = self.base.split("/", 1)[0]
                if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                    log.info("creating bucket %s", bucket)
                self.fs.create_dir(self.base, recursive=True)
        except (OSError, pa.ArrowException) as exc:
            raise StoreUriError(f"cannot create snapshot store at {self.display}: {exc}. "
                                "Check the URI and credentials, or create the bucket yourself.") from exc

    def _abs(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def read(self, rel: str) -> bytes:
        """The whole file; FileNotFoundError when absent."""
        if self.local:
            data = Path(self._abs(rel)).read_bytes()
        else:
            try:
                with self.fs.open_input_stream(self._abs(rel)) as f:
                    data = f.read()
            except OSError as exc:  # pyarrow reports a missing object as a generic OSError
                if self.fs.get_file_info(self._abs(rel)).type == pafs.FileType.NotFound:
                    raise FileNotFoundError(f"{self.display}/{rel}") from exc
                raise
        self.bytes_read += len(data)
        self.reads.append(rel)
        return data

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write `rel` so that readers see either the old content or all of `data`, never a part."""
        path = self._abs(rel)
        if not self.local:
            parent = path.rsplit("/", 1)[0]
            self.fs.create_dir(parent, recursive=True)
            with self.fs.open_output_stream(path) as f:
                f.write(data)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a failed write (full disk, read-only, I/O error) leaves no partial file
            raise
        # The rename is durable only once the directory entry is on disk.
        dfd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def info(self, rel: str) -> FileEntry | None:
        fi = self.fs.get_file_info(self._abs(rel))
        if fi.type != pafs.FileType.File:
            return None
        return FileEntry(rel, fi.size, fi.mtime.timestamp() if fi.mtime else None)

    def exists(self, rel: str) -> bool:
        return self.info(rel) is not None

    def list(self, rel_dir: str) -> list[FileEntry]:
        """Files under `rel_dir`, recursively; empty when the directory does not exist."""
        sel = pafs.FileSelector(self._abs(rel_dir), recursive=True, allow_not_found=True)
        prefix = len(self.base) + 1
        out = []
        for fi in self.fs.get_file_info(sel):
            if fi.type == pafs.FileType.File:
                out.append(FileEntry(fi.path[prefix:], fi.size, fi.mtime.timestamp() if fi.mtime else None))
        return sorted(out, key=lambda e: e.path)

    def delete(self, rel: str) -> None:
        try:
            self.fs.delete_file(self._abs(rel))
        except FileNotFoundError:
            pass


PROBE_TIMEOUT_S = 20.0


def probe(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Check at the start of a run that the store answers: open (creating it), write, list and
    delete a probe object, all within `timeout_s`. Raises StoreUriError naming the (redacted) URI and
    what to check, instead of a run that stalls for minutes at its first snapshot (issue 18)."""
    import threading

    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            root = Root(uri, create=True)
            name = f"probes/probe{TMP_MARK}{uuid.uuid4().hex}"  # its own folder: listing it stays cheap
            root.write_atomic(name, b"carla-fleet store probe")
            try:
                if not any(e.path == name for e in root.list("probes")):
                    raise OSError("a probe object written there was not listed back")
            finally:
                root.delete(name)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            outcome.append(exc)

    worker = threading.Thread(target=attempt, name="store-probe", daemon=True)
    worker.start()
    worker.join(timeout_s)
    shown = redact(uri)
    if not outcome:
        raise StoreUriError(
            f"snapshot store {shown!r} did not answer within {timeout_s:.0f} s (open, write, list, delete a probe "
            f"object): check that its server is up and reachable (for S3 the endpoint_override host:port), and "
            f"its credentials (AWS_* or GOOGLE_APPLICATION_CREDENTIALS in the environment, or an instance role)")
    exc = outcome[0]
    if isinstance(exc, StoreUriError):
        raise exc
    if exc is not None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreUriError(f"snapshot store {shown!r} cannot be written: {first[:300]}. Check the location, its "
                            f"permissions and free space, and the store's credentials") from exc


def _open(uri: str, create: bool) -> tuple[pafs.FileSystem, str, bool]:
    if not uri or not uri.strip():
        raise StoreUriError(f"empty snapshot store URI: {URI_HELP}")
    if "://" not in uri:
        if re.match(r"^(s3|gs|gcs|file|hdfs):", uri, re.IGNORECASE):
            raise StoreUriError(f"snapshot store URI {redact(uri)!r} looks like a URI without '//': {URI_HELP}")
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve()), True
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("s3", "gs", "gcs") and not parts.netloc:
        raise StoreUriError(f"snapshot store URI {redact(uri)!r} names no bucket: write {scheme}://BUCKET/prefix")
    if scheme == "s3" and create and "allow_bucket_creation" not in parts.query:
        # A writer may create its bucket; pyarrow refuses unless told so in the URI.
        query = f"{parts.query}&allow_bucket_creation=true" if parts.query else "allow_bucket_creation=true"
        uri = urlunsplit(parts._replace(query=query))
    try:
        fs, base = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StoreUriError(f"cannot open snapshot store {redact(uri)!r}: {exc}. Fix: {URI_HELP}") from exc
    local = isinstance(fs, pafs.LocalFileSystem)
    return fs, base.rstrip("/"), local
