"""The writer's lease on a store: one writer at a time, a dead writer's lease expiring on its own.

`lease.json` at the store's root names the process that writes the store now: its run, host, pid,
an owner token, the claim of this one acquisition, when it took the lease and when it last renewed
it, and how long the lease lives without renewal (`ttl_s`). A writer takes it before its first
save (`StoreLease.acquire`), renews it every `ttl_s / 4` on a thread of its own, checks before
every save that it still holds it (`check`), and deletes it when it closes (`release`).

A second writer is refused (`LeaseHeldError`, one line naming the holder and what to do) while the
lease is live; a lease whose writer died (a lost node, a killed process) expires `ttl_s` after its
last renewal, so `fleet train --resume auto` goes on after at most that long. Sooner when the holder
ran on this machine: a lease naming this host and pid namespace and a pid that no longer runs (or
is a zombie) is taken over at once. A reused pid only makes a taker wait for the TTL; a container
with its own pid namespace on this host, which may share its host name, is never judged this way. The owner token is
the run's, not the process's: the checkpoint actor that Ray restarts on another node after a node
loss carries the same token and takes over its own run's lease at once. The instance it replaces,
should it still run somewhere, then finds another claim in the lease and stops saving.

The lease is advisory. pyarrow.fs has no conditional put, so taking it is a write followed by a
read-back `settle_s` later: of two writers that write it within that time, both read back the
later claim and only its writer goes on. Two writers can still both hold it (one stalled for longer
than the settle time between its read and its write, or a holder silent for longer than `ttl_s`
that then comes back): until one of them next renews or checks it, both write. What keeps that
harmless is in the store itself: every version id carries its writer's own suffix, so neither
overwrites the other's manifests, and cleanup deletes only blobs older than `BLOB_MIN_AGE_S`
(checkpoint_store/store.py). Expiry compares the holder's clock (its `renewed` time) with the
reader's: the machines' clocks must agree to well within `ttl_s` (NTP does, to milliseconds).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from checkpoint_store.fs import Root, TooLargeError, UnsafePathError
from learner.common.errors import StoreError

log = logging.getLogger(__name__)

LEASE_PATH = "lease.json"
FORMAT = "carla-fleet.lease/1"
LEASE_TTL_S = 120.0
"""How long a lease lives without renewal: how long a store stays refused to other writers after its
writer died without releasing it. Renewed every quarter of it, so three renewals in a row may fail
(a store briefly unreachable) before another writer may take it."""
LEASE_SETTLE_S = 1.0
"""Between writing a claim and reading it back: two writers whose claims land within this time of
each other both see the later one, so only one goes on."""
MAX_LEASE_BYTES = 4096


class LeaseHeldError(StoreError, RuntimeError):
    """Another live writer holds the store's lease; the message names it and says how to proceed."""


class LeaseLostError(StoreError, RuntimeError):
    """This writer's lease was taken over or removed: it must not write the store any more."""


def new_owner() -> str:
    """A fresh owner token: one per run (a restarted writer of the run is given the same one)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Holder:
    """What `lease.json` says."""

    owner: str
    claim: str
    run: str
    host: str
    pid: int
    since: float
    renewed: float
    ttl_s: float
    pidns: str = ""
    """The holder's pid namespace (`/proc/self/ns/pid`): its pid means something only in the same one."""

    @property
    def expires(self) -> float:
        return self.renewed + self.ttl_s

    def live(self, now: float) -> bool:
        """Not expired, and not known dead (`gone`)."""
        return now < self.expires and not self.gone()

    def gone(self) -> bool:
        """Whether the holder is known to have died: a process of this host and pid namespace that no
        longer runs. False whenever that cannot be told (another host, another namespace, no /proc)."""
        if self.pid <= 0 or not self.pidns or self.host != socket.gethostname() or self.pidns != _pidns():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # another user's process: it runs
            return False
        try:  # killed but not yet reaped by its parent: dead all the same
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[-1].split()[:1] == [b"Z"]
        except OSError:
            return False

    def describe(self, now: float) -> str:
        return (f"run {self.run or '?'!r} on host {self.host}, pid {self.pid}, holding it since {_utc(self.since)} "
                f"(renewed {max(0.0, now - self.renewed):.0f} s ago)")

    def to_bytes(self) -> bytes:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Holder:
        body = json.loads(data)
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} lease")
        # Printed in the refusal: read as data, control characters (a terminal's escapes) dropped.
        out = cls(owner=str(body["owner"]), claim=str(body["claim"]), run=_printable(body.get("run", "")),
                  host=_printable(body.get("host", "?")), pid=int(body.get("pid", 0)), since=float(body["since"]),
                  renewed=float(body["renewed"]), ttl_s=float(body["ttl_s"]), pidns=str(body.get("pidns", "")))
        if not (out.ttl_s > 0 and out.renewed == out.renewed):  # NaN never expires: not a lease we wrote
            raise ValueError("bad ttl_s or renewed")
        return out


def read_holder(root: Root) -> Holder | None:
    """The store's lease, None when it has none. A file there that is not a lease counts as none
    (logged): the lease is advisory, and whoever can write the store can delete it anyway."""
    try:
        data = root.read(LEASE_PATH, MAX_LEASE_BYTES)
    except FileNotFoundError:
        return None
    except (TooLargeError, UnsafePathError) as exc:
        log.warning("ignoring the store's lease: %s", exc)
        return None
    try:
        return Holder.from_bytes(data)
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        log.warning("ignoring %s/%s, which is not a lease (%s)", root.display, LEASE_PATH, exc)
        return None


def held_message(display: str, holder: Holder, now: float | None = None) -> str:
    """The one line that refuses a second writer: who holds the store, and how to go on."""
    now = time.time() if now is None else now
    wait = max(0.0, holder.expires - now)
    return (f"the snapshot store {display} is being written by another process: {holder.describe(now)}. Two "
            f"writers on one store would overwrite each other's snapshots, so this one does not start. Stop that "
            f"run first; if it is gone (a lost node, a killed process), its lease expires {holder.ttl_s:.0f} s after "
            f"its last renewal, at {_utc(holder.expires)} (in {wait:.0f} s): run this command again then, or delete "
            f"{display}/{LEASE_PATH} once you are sure that writer is gone")


def check_free(root: Root, owner: str | None = None) -> None:
    """Raise LeaseHeldError when a live writer other than `owner` holds the store (a check only,
    taking nothing: a run's driver calls it before starting the actors that will take the lease)."""
    holder = read_holder(root)
    if holder is not None and holder.owner != owner and holder.live(time.time()):
        raise LeaseHeldError(held_message(root.display, holder))


def release_owner(root: Root, owner: str) -> bool:
    """Delete the store's lease when `owner` holds it (a run's driver, after its writer actor is gone
    without releasing it, e.g. with its node); whether it did. A writer of that run still alive somewhere
    finds the lease gone at its next renewal and stops saving."""
    holder = read_holder(root)
    if holder is None or holder.owner != owner:
        return False
    root.delete(LEASE_PATH)
    return True


class StoreLease:
    """The lease one writer holds on the store at `root`."""

    def __init__(self, root: Root, owner: str | None = None, run: str = "", ttl_s: float = LEASE_TTL_S,
                 settle_s: float = LEASE_SETTLE_S) -> None:
        if not ttl_s > 0:
            raise ValueError("ttl_s must be > 0")
        self.root = root
        self.owner = owner or new_owner()
        self.run = run
        self.ttl_s = float(ttl_s)
        self.settle_s = settle_s
        self._claim: str | None = None
        self._since = 0.0
        self._lost: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._claim is not None and self._lost is None

    def __enter__(self) -> StoreLease:
        """Held for a one-shot command's writes (`import-legacy`, `snapshots gc`): acquired, released after."""
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lease, or raise LeaseHeldError naming the live writer that holds it."""
        now = time.time()
        holder = read_holder(self.root)
        if holder is not None and holder.live(now) and holder.owner != self.owner:
            raise LeaseHeldError(held_message(self.root.display, holder, now))
        if holder is not None and holder.owner == self.owner:
            log.info("taking over this run's own lease on %s (a restarted writer; was %s)", self.root.display,
                     holder.describe(now))
        elif holder is not None:
            why = "whose process no longer runs" if now < holder.expires else "expired"
            log.warning("taking over the lease on %s of %s, %s", self.root.display, holder.describe(now), why)
        self._claim, self._since, self._lost = uuid.uuid4().hex, now, None
        self._write(now)
        time.sleep(self.settle_s)
        back = read_holder(self.root)
        if back is None or back.claim != self._claim:
            self._claim = None
            if back is None:
                raise LeaseHeldError(f"the lease this writer wrote to {self.root.display} was removed at once: "
                                     "another process is taking or releasing it; run this command again")
            raise LeaseHeldError(held_message(self.root.display, back))
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="store-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise LeaseLostError unless this writer still holds the lease (read from the store)."""
        if self._claim is None:
            raise LeaseLostError(f"this writer holds no lease on {self.root.display}")
        if self._lost is None:
            with self._lock:
                current = read_holder(self.root)
                if current is None or current.claim != self._claim:
                    self._lose(current)
        if self._lost is not None:
            raise LeaseLostError(self._lost)

    def renew(self) -> bool:
        """Renew the lease when this writer still holds it; False (and the lease counted lost) otherwise."""
        with self._lock:
            if self._claim is None or self._lost is not None:
                return False
            current = read_holder(self.root)
            if current is None or current.claim != self._claim:
                self._lose(current)
                return False
            self._write(time.time())
            return True

    def release(self) -> None:
        """Stop renewing, and delete the lease when this writer still holds it."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        with self._lock:
            if self._claim is None:
                return
            try:
                current = read_holder(self.root)
                if current is not None and current.claim == self._claim:
                    self.root.delete(LEASE_PATH)
            except (OSError, StoreError) as exc:
                log.warning("could not release the lease on %s (%s): it expires in %.0f s", self.root.display,
                            exc, self.ttl_s)
            self._claim = None

    def stop_renewing(self) -> None:
        """Stop the renewal thread without touching the store (a writer stuck in a store call that does
        not answer): the lease then expires `ttl_s` after its last renewal."""
        self._stop.set()

    def _write(self, now: float) -> None:
        assert self._claim is not None
        holder = Holder(owner=self.owner, claim=self._claim, run=self.run, host=socket.gethostname(),
                        pid=os.getpid(), since=self._since, renewed=now, ttl_s=self.ttl_s, pidns=_pidns())
        self.root.write_atomic(LEASE_PATH, holder.to_bytes())

    def _lose(self, current: Holder | None) -> None:
        who = f"taken over by {current.describe(time.time())}" if current is not None else "removed"
        self._lost = (f"this writer's lease on {self.root.display} was {who}: it stops saving, so that two writers "
                      "never write the store at once")
        log.error("%s", self._lost)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                if not self.renew():
                    return
            except Exception as exc:  # noqa: BLE001 - a store briefly unreachable: try again at the next turn
                log.warning("renewing the lease on %s failed (%s); retrying in %.0f s", self.root.display, exc,
                            self.ttl_s / 4)


def _pidns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _printable(value: object, limit: int = 200) -> str:
    return "".join(c for c in str(value) if c.isprintable())[:limit]


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
