"""The structure the code promises (docs/architecture.md), read from the code itself: no import cycles,
imports that point one way only, every module documented, the seams type-checked."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from structure import ROOT, cycles, import_graph, imports_of, modules


def test_no_import_cycle_counting_every_import() -> None:
    """Lazy imports inside functions and those under TYPE_CHECKING count too. There were two:
    learner/graphed.py <-> learner/td3.py and learner/replay/memory.py <-> learner/replay/segments.py."""
    assert cycles(import_graph()) == []


def test_a_cycle_would_be_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package, forbidden", [
    ("learner", ("rollout_workers", "checkpoint_store", "cluster")),
    ("rollout_workers", ("checkpoint_store", "cluster")),
    ("checkpoint_store", ("rollout_workers", "cluster")),
    ("cluster.runtime", ("cluster.cli", "cluster.bench")),
])
def test_imports_point_down_only(package: str, forbidden: tuple[str, ...]) -> None:
    graph = import_graph()
    wrong = sorted((a, b) for a, b in imports_of(graph, package)
                   if any(b == f or b.startswith(f + ".") for f in forbidden))
    assert wrong == []


def test_the_store_takes_only_learner_common_from_learner() -> None:
    graph = import_graph()
    taken = sorted((a, b) for a, b in imports_of(graph, "checkpoint_store")
                   if b.startswith("learner") and not b.startswith("learner.common"))
    assert taken == []


def test_every_module_and_folder_is_named_in_the_architecture_page() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for path in modules().values():
        rel = path.relative_to(ROOT)
        named = f"{rel.parent}/" if rel.name == "__init__.py" else str(rel)
        if named not in page:
            missing.append(named)
    assert missing == []


@pytest.mark.parametrize("concept, folder", [
    ("replay", "learner/replay"), ("CARLA", "rollout_workers/carla"), ("benchmarks", "cluster/bench"),
    ("runtime", "cluster/runtime"), ("CLI", "cluster/cli"), ("store", "checkpoint_store")])
def test_a_newcomer_finds_each_concept_by_its_folder(concept: str, folder: str) -> None:
    assert (ROOT / folder / "__init__.py").is_file()
    table = (ROOT / "docs" / "architecture.md").read_text().split("## Layout")[0]
    assert f"`{folder}/`" in table, f"{concept}: {folder}/ not in the concept table"


def test_mypy_is_clean_on_the_interfaces_and_the_modules_at_their_seams() -> None:
    """What `make lint` runs ([tool.mypy] in pyproject.toml names the files)."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Success" in done.stdout, done.stdout
