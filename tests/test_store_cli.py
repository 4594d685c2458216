"""`fleet snapshots list|show|verify|tag|gc` on a real store."""

from __future__ import annotations

import json

from test_store import small_state

from checkpoint_store.store import SnapshotStore
from cluster.cli import main


def test_snapshot_commands(tmp_path, capsys):
    uri = str(tmp_path / "store")
    store = SnapshotStore(uri)
    v = [None] + [store.put(small_state(i), {"learner_updates": 100 * i, "metrics": {"eval/return": float(i % 3)}})
                  .version for i in range(1, 5)]  # v[1] .. v[4]
    assert main(["snapshots", "list", uri]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["version", "created", "(UTC)", "updates"]
    assert len(out) == 5 and out[-1].split()[0] == v[4] and out[-1].endswith("latest")

    assert main(["snapshots", "show", uri, v[2]]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == v[2] and shown["learner_updates"] == 200

    assert main(["snapshots", "tag", uri, v[2], "best"]) == 0
    assert capsys.readouterr().out.strip() == f"best -> {v[2]}"

    assert main(["snapshots", "verify", uri]) == 0
    bad = store.manifest(v[3]).components["net"].tensors
    store.root.write_atomic(bad.path, b"\x00" + store.root.read(bad.path)[1:])
    assert main(["snapshots", "verify", uri]) == 1
    out = capsys.readouterr().out
    assert bad.path in out and v[3] in out and "1 problem(s)" in out

    assert main(["snapshots", "gc", uri, "--keep-last", "1", "--grace-s", "0"]) == 0
    out = capsys.readouterr().out
    assert f"delete {v[1]}" in out and f"delete {v[3]}" in out
    assert [m.version for m in store.list()] == [v[2], v[4]]
    assert main(["snapshots", "verify", uri]) == 0

    assert main(["snapshots", "list", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
