"""A store root on any pyarrow filesystem, with the few operations the store needs.

Writes are atomic everywhere: on a local disk a file is written under a temporary
name, fsynced and renamed (then the directory is fsynced), so a killed writer
leaves at worst a stray `<name>.tmp-<8 hex>` file; on S3 and GCS an object appears
only when its single PUT (or completed multipart upload) succeeds.

On a local disk the store never follows a symbolic link inside itself: every read,
write and delete walks the path one folder at a time with O_NOFOLLOW, and a listing
neither descends into a linked folder nor reports a link. Anyone who can plant a link
in the store (a shared folder) could otherwise make cleanup delete files elsewhere.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from learner.common.errors import StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")

TMP_MARK = ".tmp-"
TMP_RE = re.compile(r"(.+)\.tmp-[0-9a-f]{8}")
"""The exact name `write_atomic` gives its temporary file (fullmatch on the file name): the only
temporary files cleanup may delete."""
MAX_SMALL_READ = 8 << 20
"""What `Root.read` reads at most unless told otherwise: manifests, pointers and JSON are far
smaller; blob readers pass the size their manifest gives."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SECRET_KEYS = {"access_key", "secret_key", "session_token"}
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(//)?")  # two letters at least: C:\\ is a path
_STORE_SCHEMES = {"s3", "gs", "gcs", "file", "hdfs", "viewfs", "abfs", "abfss"}
_PARAM_RE = re.compile(r"([?&;])([^=&;#]*)=([^&;#]*)")
_SECRET_PARAM_RE = re.compile(r"([?&;]([^=&;#]*)=)[^&;#]*")
_MIN_SCRUB = 4
"""Shorter credentials are hidden where the URI is shown, not searched for in every message."""
URI_HELP = ("use a local path, file:///abs/path, s3://bucket/prefix (add ?endpoint_override=HOST:PORT&scheme=http "
            "for a non-AWS server; credentials come from ~/.aws/credentials or AWS_SHARED_CREDENTIALS_FILE with "
            "AWS_PROFILE, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or an instance role), "
            "or gs://bucket/prefix")

OPEN_TIMEOUT_S = 20.0
"""How long a command waits for a remote store's first answer (opening it) before it gives up in one
line: against an S3 server that accepts connections and never answers, the AWS SDK inside pyarrow
retried for about 100 s before it failed (and the process then waited as long again to exit)."""
NO_ANSWER_HELP = ("check that its server is up and reachable (for S3 the endpoint_override host:port), and its "
                  "credentials (AWS_* or GOOGLE_APPLICATION_CREDENTIALS in the environment, a credentials file, or "
                  "an instance role)")


class StoreUriError(StoreError, ValueError):
    """The store URI cannot be opened; the message says what is wrong and what to do."""


class TooLargeError(StoreError, ValueError):
    """A file is larger than its reader allows: a blob larger than its manifest says, a huge manifest."""


class UnsafePathError(StoreError, ValueError):
    """A store path that is malformed, or that leads through a symbolic link or to something that
    is not a regular file: the store never reads, writes or deletes through one."""


def redact(uri: str) -> str:
    """The URI with every credential replaced by ***, safe to log, print or store in a manifest:
    the user-info part (`s3://KEY:SECRET@bucket`, also when the secret holds an unencoded '/') and
    secret query parameters. The rest of the URI is kept as written."""
    parts = _split(uri)
    if parts is None:
        return uri
    head, location, tail = parts
    end = userinfo_end(location)
    if end >= 0:
        location = "***" + location[end:]
    return head + location + _SECRET_PARAM_RE.sub(_hide_param, tail)


def _split(uri: str) -> tuple[str, str, str] | None:
    """('scheme://', what follows up to the query, the query and fragment) of a URI; None for a local
    path. A store scheme without '//' (`s3:KEY:SECRET@bucket`, refused by `_open`) counts too."""
    m = _SCHEME_RE.match(uri)
    if m is None or (not m.group(2) and m.group(1).lower() not in _STORE_SCHEMES):
        return None
    rest = uri[m.end():]
    cut = min([i for i in (rest.find("?"), rest.find("#")) if i >= 0], default=len(rest))
    return uri[:m.end()], rest[:cut], rest[cut:]


def userinfo_end(location: str) -> int:
    """Where the user info of `location` (a URI after 'scheme://', before its query) ends: the index
    of its '@', or -1 when it has none.

    Not urlsplit's answer: an AWS secret may hold an unencoded '/' (`s3://KEY:ab/cd@bucket`), and
    urlsplit then ends the host at that '/' and finds no user info, so the secret was printed as is.
    Here the user info runs from the start to the last '@' before the first '/' that follows the
    first '@' (a password with an unencoded '@' is hidden whole). An '@' after a '/' belongs to the
    path (`s3://bucket/run@2`) unless the first segment holds a ':' as KEY:SECRET does."""
    at = location.find("@")
    if at < 0:
        return -1
    if "/" in location[:at] and ":" not in location.split("/", 1)[0]:
        return -1
    slash = location.find("/", at)
    return location.rfind("@", 0, slash if slash >= 0 else len(location))


def _hide_param(m: re.Match[str]) -> str:
    return f"{m.group(1)}***" if unquote_plus(m.group(2)).lower() in _SECRET_KEYS else m.group(0)


def secrets_of(uri: str) -> list[str]:
    """The credentials written in `uri` (user info, its key and secret, secret query values), raw and
    percent-decoded, longest first: what `scrub` removes from a message."""
    parts = _split(uri)
    if parts is None:
        return []
    _, location, tail = parts
    found: list[str] = []
    end = userinfo_end(location)
    if end >= 0:
        found += [location[:end], *location[:end].split(":", 1)]
    found += [m.group(3) for m in _PARAM_RE.finditer(tail) if unquote_plus(m.group(2)).lower() in _SECRET_KEYS]
    out = {v for s in found for v in (s, unquote(s), unquote_plus(s)) if len(v) >= _MIN_SCRUB}
    return sorted(out, key=len, reverse=True)


def scrub(text: str, *uris: str) -> str:
    """`text` (an exception's message, which pyarrow and the AWS SDK fill with the URI they were
    given) with each of `uris` replaced by its redacted form and every credential in them by ***."""
    for uri in uris:
        if uri:
            text = text.replace(uri, redact(uri))
            for secret in secrets_of(uri):
                text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class FileEntry:
    path: str
    """Path relative to the store root, with '/' separators."""
    size: int
    mtime: float | None
    """Seconds since the epoch, when the filesystem reports it."""


class Root:
    """Files under one directory (or bucket prefix) of a pyarrow filesystem."""

    def __init__(self, uri: str, create: bool = True, timeout_s: float | None = OPEN_TIMEOUT_S) -> None:
        """Open the root (creating it when `create`). A remote store must answer within `timeout_s`:
        otherwise StoreUriError, and the stuck call is left to a daemon thread (see `bounded`)."""
        self.uri = uri
        self.display = redact(uri)
        self.bytes_read = 0
        self.reads: list[str] = []  # relative paths read, in order: lets tests prove what a load touched
        if "://" not in uri or uri.lower().startswith("file://"):
            self._open(create)
        else:
            bounded(lambda: self._open(create), timeout_s, lambda: StoreUriError(
                f"snapshot store {self.display!r} did not answer within {timeout_s:.0f} s: {NO_ANSWER_HELP}"))

    def _open(self, create: bool) -> None:
        self.fs, self.base, self.local = _open(self.uri, create)
        if create:
            self._ensure_root()
        else:
            try:
                found = self.fs.get_file_info(self.base).type
            except (OSError, pa.ArrowException) as exc:
                raise StoreUriError(f"cannot read snapshot store {self.display}: {_first_line(exc, self.uri)}. "
                                    f"Check the URI, then {NO_ANSWER_HELP}") from None
            if found != pafs.FileType.Directory:
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
            raise StoreUriError(f"cannot create snapshot store at {self.display}: {_first_line(exc, self.uri)}. "
                                "Check the URI and credentials, or create the bucket yourself.") from None

    def _abs(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def _parts(self, rel: str) -> list[str]:
        parts = rel.split("/") if rel else []
        if any(p in ("", ".", "..") for p in parts) or "\0" in rel:
            raise UnsafePathError(f"bad store path {rel!r}: expected names separated by '/', no '.' or '..'")
        return parts

    def _open_dir(self, parts: list[str], create: bool = False) -> int:
        """A descriptor of the local folder base/parts, reached one step at a time without following a
        link; FileNotFoundError when a step is missing (and `create` is false)."""
        fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, name in enumerate(parts):
                if create:
                    try:
                        os.mkdir(name, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    step = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafePathError(
                            f"{self.display}/{'/'.join(parts[:i + 1])} is a symbolic link or not a folder: the "
                            "store never follows a link out of itself; remove it") from exc
                    raise
                os.close(fd)
                fd = step
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _lstat(self, dfd: int, rel: str, name: str) -> os.stat_result:
        """The entry itself (a link is not followed); UnsafePathError unless it is a regular file."""
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"{self.display}/{rel} is not a regular file (a symbolic link, folder, "
                                  "device or pipe): the store only uses files it wrote; remove it")
        return st

    def read(self, rel: str, max_bytes: int = MAX_SMALL_READ) -> bytes:
        """The whole file; FileNotFoundError when absent, TooLargeError when over `max_bytes` (found
        before reading where the size is known), so a swapped or endless file cannot exhaust memory."""
        if self.local:
            data = self._read_local(rel, max_bytes)
        else:
            try:
                with self.fs.open_input_stream(self._abs(rel)) as f:
                    data = f.read(max_bytes + 1)
            except OSError as exc:  # pyarrow reports a missing object as a generic OSError
                if self.fs.get_file_info(self._abs(rel)).type == pafs.FileType.NotFound:
                    raise FileNotFoundError(f"{self.display}/{rel}") from exc
                raise
        if len(data) > max_bytes:
            raise TooLargeError(f"{self.display}/{rel} holds more than {max_bytes} bytes, more than expected")
        self.bytes_read += len(data)
        self.reads.append(rel)
        return data

    def _read_local(self, rel: str, max_bytes: int) -> bytes:
        parts = self._parts(rel)
        try:
            dfd = self._open_dir(parts[:-1])
            try:
                # Checked before opening: a pipe or device (/dev/zero) is never opened.
                size = self._lstat(dfd, rel, parts[-1]).st_size
                if size > max_bytes:
                    raise TooLargeError(f"{self.display}/{rel} holds {size} bytes, more than the {max_bytes} "
                                        "expected")
                # O_NONBLOCK: should a pipe replace the file after the check, opening it does not wait.
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            finally:
                os.close(dfd)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self.display}/{rel}") from exc
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePathError(f"{self.display}/{rel} is not a regular file; remove it")
            return f.read(max_bytes + 1)  # a file growing meanwhile is caught by the caller's length check

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write `rel` so that readers see either the old content or all of `data`, never a part."""
        if not self.local:
            path = self._abs(rel)
            parent = path.rsplit("/", 1)[0]
            self.fs.create_dir(parent, recursive=True)
            with self.fs.open_output_stream(path) as f:
                f.write(data)
            return
        parts = self._parts(rel)
        name = parts[-1]
        tmp = f"{name}{TMP_MARK}{uuid.uuid4().hex[:8]}"
        dfd = self._open_dir(parts[:-1], create=True)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=dfd)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                # Replaces a link at `name` itself, never what it points to.
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                try:  # a failed write (full disk, read-only, I/O error) leaves no partial file
                    os.unlink(tmp, dir_fd=dfd)
                except FileNotFoundError:
                    pass
                raise
            os.fsync(dfd)  # the rename is durable only once the directory entry is on disk
        finally:
            os.close(dfd)

    def info(self, rel: str) -> FileEntry | None:
        """The regular file `rel`, None when absent or something else (a link, a folder)."""
        if not self.local:
            fi = self.fs.get_file_info(self._abs(rel))
            if fi.type != pafs.FileType.File:
                return None
            return FileEntry(rel, fi.size, fi.mtime.timestamp() if fi.mtime else None)
        parts = self._parts(rel)
        try:
            dfd = self._open_dir(parts[:-1])
        except FileNotFoundError:
            return None
        try:
            st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(dfd)
        return FileEntry(rel, st.st_size, st.st_mtime) if stat.S_ISREG(st.st_mode) else None

    def exists(self, rel: str) -> bool:
        return self.info(rel) is not None

    def list(self, rel_dir: str) -> list[FileEntry]:
        """Files under `rel_dir`, recursively; empty when the directory does not exist. Locally only
        regular files: a symbolic link is neither followed nor reported."""
        if self.local:
            parts = self._parts(rel_dir)
            try:
                dfd = self._open_dir(parts)
            except FileNotFoundError:
                return []
            except UnsafePathError as exc:  # as a link met deeper in the tree: not followed, not listed
                log.warning("store %s: ignoring %s", self.display, exc)
                return []
            out: list[FileEntry] = []
            try:
                self._walk(dfd, "".join(f"{p}/" for p in parts), out)
            finally:
                os.close(dfd)
            return sorted(out, key=lambda e: e.path)
        sel = pafs.FileSelector(self._abs(rel_dir), recursive=True, allow_not_found=True)
        prefix = len(self.base) + 1
        out = []
        for fi in self.fs.get_file_info(sel):
            if fi.type == pafs.FileType.File:
                out.append(FileEntry(fi.path[prefix:], fi.size, fi.mtime.timestamp() if fi.mtime else None))
        return sorted(out, key=lambda e: e.path)

    def _walk(self, dfd: int, prefix: str, out: list[FileEntry]) -> None:
        with os.scandir(dfd) as it:
            entries = list(it)
        for e in entries:
            if e.is_symlink():
                log.warning("store %s: ignoring symbolic link %s%s (the store never follows links)",
                            self.display, prefix, e.name)
            elif e.is_dir(follow_symlinks=False):
                try:
                    sub = os.open(e.name, _DIR_FLAGS, dir_fd=dfd)
                except OSError:  # removed, or replaced by a link, since it was listed
                    continue
                try:
                    self._walk(sub, f"{prefix}{e.name}/", out)
                finally:
                    os.close(sub)
            elif e.is_file(follow_symlinks=False):
                st = e.stat(follow_symlinks=False)
                out.append(FileEntry(f"{prefix}{e.name}", st.st_size, st.st_mtime))

    def delete(self, rel: str) -> None:
        """Delete the file `rel` (absent: nothing to do); locally only a regular file, reached without
        following a link."""
        if not self.local:
            try:
                self.fs.delete_file(self._abs(rel))
            except FileNotFoundError:
                pass
            return
        parts = self._parts(rel)
        try:
            dfd = self._open_dir(parts[:-1])
        except FileNotFoundError:
            return
        try:
            self._lstat(dfd, rel, parts[-1])
            os.unlink(parts[-1], dir_fd=dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)


PROBE_TIMEOUT_S = 20.0
_abandoned: list[threading.Thread] = []


def bounded(fn: Callable[[], T], timeout_s: float | None, error: Callable[[], BaseException]) -> T:
    """`fn()`, run on a daemon thread and waited for at most `timeout_s` seconds (None: no limit);
    raises `error()` after that. A call stuck in the filesystem cannot be interrupted, so it is left
    running: `abandoned()` tells the command line to end the process with os._exit, since pyarrow's
    S3 shutdown waits for such a call (measured: 100 s after the command had failed)."""
    if timeout_s is None:
        return fn()
    outcome: list[tuple[bool, Any]] = []

    def attempt() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread below
            outcome.append((False, exc))

    worker = threading.Thread(target=attempt, name="store-call", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        _abandoned.append(worker)
        raise error()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def abandon(thread: threading.Thread) -> None:
    """Count `thread`, stuck in a store call that was given up on, as `bounded` counts its own."""
    _abandoned.append(thread)


def abandoned() -> bool:
    """Whether a store call given up by `bounded` is still running in this process."""
    return any(t.is_alive() for t in _abandoned)


def probe(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Check at the start of a run that the store answers: open (creating it), write, list and
    delete a probe object, all within `timeout_s`. Raises StoreUriError naming the (redacted) URI and
    what to check, instead of a run that stalls for minutes at its first snapshot (issue 18)."""

    def attempt() -> None:
        root = Root(uri, create=True, timeout_s=None)  # bounded here, as a whole
        name = f"probes/probe{TMP_MARK}{uuid.uuid4().hex}"  # its own folder: listing it stays cheap
        root.write_atomic(name, b"carla-fleet store probe")
        try:
            if not any(e.path == name for e in root.list("probes")):
                raise OSError("a probe object written there was not listed back")
        finally:
            root.delete(name)

    shown = redact(uri)
    try:
        bounded(attempt, timeout_s, lambda: StoreUriError(
            f"snapshot store {shown!r} did not answer within {timeout_s:.0f} s (open, write, list, delete a probe "
            f"object): {NO_ANSWER_HELP}"))
    except StoreUriError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the store, in one line
        raise StoreUriError(f"snapshot store {shown!r} cannot be written: {_first_line(exc, uri)}. Check the location, its "
                            f"permissions and free space, and the store's credentials") from None


def _first_line(exc: BaseException, uri: str) -> str:
    """The first line of an error's message, without the credentials of `uri`."""
    text = scrub(str(exc).strip(), uri)
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _open(uri: str, create: bool) -> tuple[pafs.FileSystem, str, bool]:
    if not uri or not uri.strip():
        raise StoreUriError(f"empty snapshot store URI: {URI_HELP}")
    if "://" not in uri:
        if re.match(r"^(s3|gs|gcs|file|hdfs):", uri, re.IGNORECASE):
            raise StoreUriError(f"snapshot store URI {redact(uri)!r} looks like a URI without '//': {URI_HELP}")
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve()), True
    given = uri
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
        # pyarrow's message quotes the URI it was given, credentials and all.
        raise StoreUriError(f"cannot open snapshot store {redact(uri)!r}: {scrub(str(exc), uri, given)}. "
                            f"Fix: {URI_HELP}") from None
    local = isinstance(fs, pafs.LocalFileSystem)
    return fs, base.rstrip("/"), local
