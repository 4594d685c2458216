"""SnapshotStore on a local directory and on a real S3 server: round trips, integrity, retention."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from checkpoint_store import codec
from checkpoint_store.fs import StoreUriError, UnsafePathError
from checkpoint_store.manifest import VERSION_RE, blob_path, version_seq
from checkpoint_store.retention import RetentionPolicy
from checkpoint_store.store import IntegrityError, SnapshotNotFound, SnapshotStore
from learner.common.errors import StoreError
from learner.td3 import Batch, TD3Agent, TD3Config


def trained_agent(seed: int = 0, updates: int = 2, **cfg: Any) -> TD3Agent:
    agent = TD3Agent(TD3Config(device="cpu", seed=seed, **cfg))
    g = torch.Generator().manual_seed(seed)
    v = agent.net_cfg.vector_dim
    for _ in range(updates):
        img = lambda: torch.randint(0, 256, (2, 4, 84, 84), generator=g, dtype=torch.uint8)  # noqa: E731
        agent.update(Batch(img(), torch.rand(2, v, generator=g), torch.rand(2, 2, generator=g) * 2 - 1,
                           torch.rand(2, generator=g), torch.full((2,), 0.99), img(), torch.rand(2, v, generator=g)))
    return agent


def assert_same(a: Any, b: Any, path: str = "") -> int:
    """Bitwise equality of two state trees (tensor dtype, shape, bits; JSON value and type); leaves compared."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a.view(torch.uint8) if a.dim() else a, b.view(torch.uint8) if b.dim() else b), path
        return 1
    if isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        return sum(assert_same(a[k], b[k], f"{path}.{k}") for k in a)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        return sum(assert_same(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"
    return 1


@pytest.fixture(scope="module")
def agent() -> TD3Agent:
    return trained_agent()


def small_state(i: int) -> dict[str, Any]:
    return {"net": {"w": torch.full((3, 4), float(i)), "b": torch.arange(4, dtype=torch.int64) + i},
            "opt": {"state": {"0": {"step": torch.tensor(float(i))}}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
            "total_it": i}


def test_codec_keeps_big_ints_tuples_string_ids_and_odd_keys():
    value = {"rng": {"state": 2**127 + 12345, "inc": -(2**100)}, "betas": (0.9, 0.999), "ids": {"0": 1, "10": 2},
             "int_keys": {1: "a", 2: torch.tensor([1, 2])}, "f": 0.1 + 0.2, "nan": float("inf"), "none": None,
             "bf16": torch.randn(3).to(torch.bfloat16), "scalar": torch.tensor(7.0), "np": np.arange(3)}
    skel, tensors = codec.encode(value)
    out = codec.decode(skel, tensors)
    expected = dict(value, np=torch.arange(3))
    assert assert_same(expected, out) == 14
    assert isinstance(out["rng"]["state"], int) and out["rng"]["state"] == 2**127 + 12345
    with pytest.raises(codec.CodecError, match="x.y"):
        codec.encode({"x": {"y": object()}})


def test_full_agent_state_round_trips_bitwise(store_uri: str, agent: TD3Agent):
    store = SnapshotStore(store_uri)
    state = agent.state()
    m = store.put(state, {"learner_updates": agent.total_it.value, "env_steps": 1000,
                          "metrics": {"eval/return": 1.5}, "config": {"agent": {"gamma": 0.99}}})
    assert VERSION_RE.match(m.version) and version_seq(m.version) == 1 and m.learner_updates == 2
    fresh = TD3Agent(TD3Config(device="cpu", seed=7))
    snap = SnapshotStore(store_uri, create=False).get("latest")
    assert snap.manifest == m
    fresh.load_state(snap.state)
    leaves = assert_same(state, fresh.state())
    assert leaves > 100
    # Every Adam moment made it: the restored agent continues exactly like the original.
    assert_same(snap.state["critic_optimizer"]["state"]["0"]["exp_avg_sq"],
                state["critic_optimizer"]["state"]["0"]["exp_avg_sq"])
    assert set(snap.state["act_rng"]["state"]) == {"state", "inc"}


def test_policy_only_load_reads_only_policy_blobs(store_uri: str, agent: TD3Agent):
    store = SnapshotStore(store_uri)
    m = store.put(agent.state(), {"learner_updates": 2})
    # Corrupt every blob outside the policy: a policy-only load must not notice.
    policy_blobs = {b.path for name in ("actor_cnn", "actor")
                    for b in (m.components[name].skeleton, m.components[name].tensors)}
    others = {b.path for _, b in m.blobs()} - policy_blobs
    assert len(others) >= 8
    for path in others:
        store.root.write_atomic(path, b"garbage")
    reader = SnapshotStore(store_uri, create=False)
    snap = reader.get("latest", components=["actor_cnn", "actor"])
    assert set(snap.state) == {"actor_cnn", "actor"}
    assert {p for p in reader.root.reads if p.startswith("blobs/")} == policy_blobs
    fresh = TD3Agent(TD3Config(device="cpu", seed=3))
    fresh.actor_cnn.load_state_dict(snap.state["actor_cnn"])
    fresh.actor.load_state_dict(snap.state["actor"])
    for name in ("actor_cnn", "actor"):
        assert_same(getattr(agent, name).state_dict(), getattr(fresh, name).state_dict())
    with pytest.raises(IntegrityError):
        reader.get("latest")


def test_flipped_byte_fails_get_and_verify_naming_the_blob(store_uri: str):
    store = SnapshotStore(store_uri)
    v1 = store.put(small_state(1), {"learner_updates": 1}).version
    m = store.put(small_state(2), {"learner_updates": 2})
    target = m.components["net"].tensors
    data = bytearray(store.root.read(target.path))
    data[len(data) // 2] ^= 0x01
    store.root.write_atomic(target.path, bytes(data))
    with pytest.raises(IntegrityError, match=rf"net\.tensors \({target.path}\) of version {m.version}"):
        SnapshotStore(store_uri).get(m.version)
    problems = store.verify()
    assert len(problems) == 1 and target.path in problems[0] and m.version in problems[0]
    assert store.verify(v1) == []
    assert store.get(v1).state["total_it"] == 1


def test_files_are_stored_and_referenced_by_hash(store_uri: str):
    store = SnapshotStore(store_uri)
    segment = b"replay segment" * 1000
    m1 = store.put(small_state(1), files={"replay/000": segment})
    sha = m1.files["replay/000"].sha256
    m2 = store.put(small_state(2), files={"replay/000": f"sha256:{sha}", "replay/001": b"more"})
    assert m2.files["replay/000"] == m1.files["replay/000"]
    assert store.read_file("latest", "replay/000") == segment
    assert store.read_file(m2.version, "replay/001") == b"more"
    with pytest.raises(IntegrityError, match="not in"):
        store.put(small_state(3), files={"x": "sha256:" + "0" * 64})
    with pytest.raises(KeyError, match="replay/002"):
        store.read_file("latest", "replay/002")


def test_latest_tags_and_resolution(store_uri: str):
    store = SnapshotStore(store_uri)
    with pytest.raises(SnapshotNotFound, match="no versions"):
        store.resolve("latest")
    v1 = store.put(small_state(1), tags=["best"]).version
    v2 = store.put(small_state(2)).version
    assert store.resolve("latest") == v2 and store.resolve("best") == v1
    assert store.tag("latest", "release") == v2
    assert store.tags() == {"best": v1, "release": v2}
    with pytest.raises(SnapshotNotFound, match="no tag 'nope'"):
        store.get("nope")
    with pytest.raises(ValueError, match="bad tag name"):
        store.tag("latest", "v00000009")
    with pytest.raises(ValueError, match="unknown snapshot meta"):
        store.put(small_state(3), {"learner_step": 1})


def test_retention_keeps_exactly_what_the_policy_says(store_uri: str):
    store = SnapshotStore(store_uri)
    scores = [0.1, 0.9, 0.3, 0.8, 0.2, 0.5, 0.4, 0.7, 0.6, 0.0]
    ids = [store.put(small_state(i), {"learner_updates": 1000 * (i + 1), "metrics": {"eval/return": s}}).version
           for i, s in enumerate(scores)]
    assert [version_seq(v) for v in ids] == list(range(1, 11)) and ids == sorted(ids)
    store.tag(ids[2], "pinned")
    policy = RetentionPolicy(keep_last=2, keep_best=2, best_metric="eval/return", keep_every=4000)
    report = store.apply_retention(policy, min_age_s=0)  # this test's store has no other writer
    # last: v9, v10; best: v2 (0.9), v4 (0.8); every 4000 updates: v1 (1000), v4 (4000), v8 (8000); tag: v3.
    expected = [ids[n - 1] for n in (1, 2, 3, 4, 8, 9, 10)]
    assert [m.version for m in store.list()] == expected == report.kept
    assert report.deleted == [ids[n - 1] for n in (5, 6, 7)]
    referenced = {b.path for m in store.list() for _, b in m.blobs()}
    assert {e.path for e in store.root.list("blobs")} == referenced
    assert report.blobs_deleted > 0 and store.verify() == []
    assert store.resolve("latest") == ids[-1]


def test_bad_uris_say_what_to_do(tmp_path):
    with pytest.raises(StoreUriError, match="s3://BUCKET/prefix"):
        SnapshotStore("s3:///prefix-only")
    with pytest.raises(StoreUriError, match="local path"):
        SnapshotStore("s4://bucket/x")
    with pytest.raises(StoreUriError, match="without '//'"):
        SnapshotStore("s3:bucket/x")
    with pytest.raises(StoreUriError, match="does not exist"):
        SnapshotStore(str(tmp_path / "missing"), create=False)
    store = SnapshotStore(f"file://{tmp_path}/ok")
    assert version_seq(store.put(small_state(1)).version) == 1
    assert blob_path("ab" * 32).startswith("blobs/sha256/ab/")


def test_encode_holds_no_reference_to_the_leaves_once_it_returns():
    """The checkpoint writer's leaves view Ray's shared memory: a leftover reference (a reference
    cycle freed only by a full GC) kept one snapshot-sized object pinned per save."""
    import gc
    import weakref

    leaf = np.arange(1000, dtype=np.float32)
    alive = weakref.ref(leaf)
    gc.disable()
    try:
        codec.encode({"critic": {"w": leaf, "steps": 3}})
        del leaf
        assert alive() is None
    finally:
        gc.enable()


def test_a_version_id_is_never_reused_after_its_manifest_is_deleted_by_hand(store_uri: str):
    store = SnapshotStore(store_uri)
    store.put(small_state(1))
    v2 = store.put(small_state(2), tags=["mine"]).version
    store.root.delete(f"versions/{v2}.json")  # as someone cleaning up by hand would
    store.root.delete("refs/tags/mine")
    store.root.delete("refs/latest")
    v3 = SnapshotStore(store_uri).put(small_state(3)).version
    assert v3 > v2  # a report or tag that named v2 never comes to mean other content


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_gc_never_follows_a_link_out_of_the_store_nor_deletes_what_it_did_not_write(tmp_path: Path):
    """The reported case: links blobs/evil and refs/a.tmp-1 to another folder made gc delete its files."""
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "id_rsa").write_bytes(b"private key")
    (victim / ".bashrc").write_bytes(b"alias ls='ls -F'")
    (victim / "notes.tmp-0123abcd").write_bytes(b"named like a temp file")
    (victim / "ab").mkdir()
    (victim / "ab" / ("ab" * 32)).write_bytes(b"named like a blob")
    old = time.time() - 7200
    for p in victim.rglob("*"):
        os.utime(p, (old, old))
    before = _tree(victim)

    root = tmp_path / "store"
    store = SnapshotStore(str(root))
    m = store.put(small_state(1))
    os.symlink(victim, root / "blobs" / "evil")
    os.symlink(victim, root / "refs" / "a.tmp-1")
    os.symlink(victim, root / "blobs" / "sha256" / "cd")  # a linked blob folder, as the store names them
    (root / "blobs" / "sha256" / "ab").mkdir(exist_ok=True)
    os.symlink(victim / ".bashrc", root / "blobs" / "sha256" / "ab" / ("ab" * 32))  # an unreferenced blob name
    # Files the store did not write, in its folders: not its to delete.
    (root / "blobs" / "README").write_bytes(b"mine")
    (root / "refs" / "b.tmp-1").write_bytes(b"mine")
    for p in (root / "blobs" / "README", root / "refs" / "b.tmp-1"):
        os.utime(p, (old, old))
    # What the store did write: an unreferenced blob and an old and a fresh temp file of write_atomic.
    stray = store._put_blob(b"unreferenced")
    stale, fresh = root / "versions" / "v00000009.json.tmp-0badcafe", root / "refs" / "latest.tmp-12345678"
    stale.write_bytes(b"{")
    fresh.write_bytes(b"v0")
    os.utime(stale, (old, old))

    n, _ = store.gc(min_age_s=0)  # the blob just written too: this store has no other writer

    assert _tree(victim) == before
    assert not (root / stray.path).exists() and not stale.exists() and n == 2
    assert fresh.exists() and (root / "blobs" / "README").exists() and (root / "refs" / "b.tmp-1").exists()
    assert (root / "blobs" / "evil").is_symlink() and (root / "refs" / "a.tmp-1").is_symlink()
    assert not any(e.path.startswith(("blobs/evil", "refs/a.tmp-1", "blobs/sha256/cd"))
                   for e in store.root.list(""))
    assert store.verify() == [] and store.get(m.version).state["total_it"] == 1


def test_reads_writes_and_deletes_never_go_through_a_link(tmp_path: Path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret").write_bytes(b"v00000001")
    root = tmp_path / "store"
    store = SnapshotStore(str(root))
    m = store.put(small_state(1))
    os.symlink(victim, root / "refs" / "tags")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        store.tag("latest", "secret")  # would overwrite victim/secret
    with pytest.raises(UnsafePathError, match="symbolic link"):
        store.root.read("refs/tags/secret")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        store.root.delete("refs/tags/secret")
    assert (victim / "secret").read_bytes() == b"v00000001" and store.tags() == {}
    # A blob replaced by a link to a file elsewhere is reported, not read.
    blob = root / m.components["net"].tensors.path
    blob.unlink()
    os.symlink(victim / "secret", blob)
    with pytest.raises(IntegrityError, match="not a regular file"):
        store.get(m.version)
    assert any("not a regular file" in p for p in store.verify())
    with pytest.raises(UnsafePathError, match="bad store path"):
        store.root.read("refs/../../victim/secret")


def test_no_version_id_past_the_8_digit_space_and_a_corrupt_high_water_mark_is_an_error(store_uri: str):
    store = SnapshotStore(store_uri)
    m = store.put(small_state(1))
    store.root.write_atomic("refs/high-water", b"v99999999")
    with pytest.raises(StoreError, match="v99999999, the last 8-digit id"):
        store.put(small_state(2))
    store.root.write_atomic("refs/high-water", b"v1")
    with pytest.raises(StoreError, match="not a version id: it is corrupt"):
        store.put(small_state(2))
    assert [e.path for e in store.root.list("versions")] == [f"versions/{m.version}.json"]
    store.gc()
    assert [v.version for v in store.list()] == [m.version] and store.verify() == []


def test_a_tag_named_like_a_temporary_file_is_refused(store_uri: str):
    store = SnapshotStore(store_uri)
    with pytest.raises(StoreError, match="holds no '.tmp-'"):
        store.put(small_state(1), tags=["best.tmp-0123abcd"])
    store.put(small_state(1))
    with pytest.raises(StoreError, match="holds no '.tmp-'"):
        store.tag("latest", "a.tmp-1")
    assert store.tags() == {} and store.root.list("refs/tags") == []


def _finishes(fn: Any, timeout_s: float = 120.0) -> BaseException | None:
    """What `fn` raised (None if nothing), run in a thread: a read that hangs (on a pipe) or
    grows without end (/dev/zero) fails the test instead of hanging it."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s)
    assert outcome, f"still running after {timeout_s:.0f} s"
    return outcome[0]


def test_a_blob_or_pointer_swapped_for_dev_zero_a_pipe_or_a_huge_file_is_refused_without_reading_it(tmp_path):
    root = tmp_path / "store"
    store = SnapshotStore(str(root))
    m = store.put(small_state(1))
    blob = root / m.components["net"].tensors.path
    for swap in ("/dev/zero", "pipe", "64 GB sparse file"):
        blob.unlink()
        if swap == "pipe":
            os.mkfifo(blob)
        elif swap == "/dev/zero":
            os.symlink("/dev/zero", blob)
        else:
            with open(blob, "wb") as f:
                f.truncate(64 << 30)
        raised = _finishes(lambda: SnapshotStore(str(root)).get(m.version))
        assert isinstance(raised, IntegrityError) and m.components["net"].tensors.path in str(raised), (swap, raised)
        problems: list[str] = []
        assert _finishes(lambda: problems.extend(SnapshotStore(str(root)).verify())) is None  # noqa: B023
        assert len(problems) == 1 and m.components["net"].tensors.path in problems[0], (swap, problems)
    (root / "refs" / "latest").unlink()
    os.mkfifo(root / "refs" / "latest")
    assert _finishes(lambda: SnapshotStore(str(root)).resolve("latest")) is None  # ignored, as a corrupt pointer
    assert SnapshotStore(str(root)).resolve("latest") == m.version
    with open(root / "versions" / "v00000002.json", "wb") as f:
        f.truncate(64 << 30)
    assert _finishes(lambda: SnapshotStore(str(root)).list()) is None  # skipped with a warning, never read
    assert any("v00000002" in p for p in SnapshotStore(str(root)).verify())


def test_a_blob_larger_than_its_manifest_says_is_not_read_whole(store_uri: str):
    store = SnapshotStore(store_uri)
    m = store.put(small_state(1))
    ref = m.components["net"].tensors
    store.root.write_atomic(ref.path, store.root.read(ref.path) + bytes(1 << 20))
    reader = SnapshotStore(store_uri)
    with pytest.raises(IntegrityError, match=f"larger than the {ref.size} bytes the manifest says"):
        reader.get(m.version)
    assert reader.root.bytes_read < (1 << 20)


def test_a_deeply_nested_or_mistyped_manifest_or_skeleton_is_a_store_error(tmp_path):
    import dataclasses

    from checkpoint_store.manifest import ComponentRef, Manifest, _checksum

    root = tmp_path / "store"
    store = SnapshotStore(str(root))
    m = store.put(small_state(1))
    deep = b"[" * 100_000 + b"]" * 100_000
    (root / "versions" / "v00000002.json").write_bytes(b'{"format": "carla-fleet.snapshot/1", "x": ' + deep + b"}")
    mistyped = [("learner_updates", "many"), ("env_steps", float("inf")), ("config", ["not", "a", "dict"])]
    for i, (key, value) in enumerate(mistyped, start=3):
        body = {**json.loads(m.to_bytes()), "version": f"v{i:08d}", key: value}
        body.pop("checksum")
        body["checksum"] = _checksum(body)
        (root / "versions" / f"v{i:08d}.json").write_bytes(json.dumps(body).encode())
    reader = SnapshotStore(str(root))
    assert [v.version for v in reader.list()] == [m.version]
    problems = reader.verify()
    assert len(problems) == 4 and all("manifest" in p for p in problems), problems
    with pytest.raises(StoreError, match="nests too deeply"):
        reader.get("v00000002")
    with pytest.raises(StoreError, match="mistypes field"):
        reader.get("v00000005")
    # Skeletons that nest too deeply for the decoder, or put the wrong type under a tag.
    for i, skeleton in enumerate([deep, b"[" * 3000 + b"]" * 3000, b'{"$tuple": 5}', b'{"$tensor": [1]}',
                                  b'{"$items": [1]}'], start=6):
        bad = dataclasses.replace(m, version=f"v{i:08d}", components={"net": ComponentRef(store._put_blob(skeleton),
                                                                                          None)})
        (root / "versions" / f"{bad.version}.json").write_bytes(bad.to_bytes())
        with pytest.raises(IntegrityError, match=f"component net of version {bad.version}: .*does not decode"):
            SnapshotStore(str(root)).get(bad.version)
    assert Manifest.from_bytes((root / "versions" / f"{m.version}.json").read_bytes()) == m
