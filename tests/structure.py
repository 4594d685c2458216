"""The package's structure read from its code: modules, every import between them, `Any` at the seams.

Used by tests/test_structure.py, and runnable: `python tests/structure.py` prints the import cycles, the
imports that point the wrong way, and the count of `Any` in public signatures.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("learner", "rollout_workers", "checkpoint_store", "cluster")


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package's `__init__` under the package's name)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imported(tree: ast.AST, here: str, known: set[str]) -> Iterator[str]:
    """The project modules a module imports, anywhere in it: at the top, inside functions, under
    TYPE_CHECKING. `from a.b import c` counts as an import of `a.b.c` when that is a module, else of `a.b`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            for alias in node.names:
                sub = f"{name}.{alias.name}"
                if sub in known:
                    yield sub
                elif name in known:
                    yield name


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: set(_imported(ast.parse(path.read_text()), name, known)) - {name} for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def imports_of(graph: dict[str, set[str]], prefix: str) -> set[tuple[str, str]]:
    """(importer, imported) for every import made by a module under `prefix`."""
    return {(a, b) for a, targets in graph.items() if a == prefix or a.startswith(prefix + ".") for b in targets}


def any_at_boundaries() -> dict[str, int]:
    """`Any` in the signatures (parameters and returns) of public functions and methods, per module:
    what another module sees when it calls in."""
    counts = {}
    for name, path in modules().items():
        n = 0
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                annotations = [a.annotation for a in (*node.args.posonlyargs, *node.args.args,
                                                      *node.args.kwonlyargs) if a.annotation is not None]
                annotations += [a.annotation for a in (node.args.vararg, node.args.kwarg) if a and a.annotation]
                if node.returns is not None:
                    annotations.append(node.returns)
                n += sum(1 for a in annotations for sub in ast.walk(a)
                         if (isinstance(sub, ast.Name) and sub.id == "Any")
                         or (isinstance(sub, ast.Constant) and isinstance(sub.value, str) and "Any" in sub.value))
        if n:
            counts[name] = n
    return counts


def main() -> int:
    graph = import_graph()
    found = cycles(graph)
    print(f"{len(graph)} modules, {sum(len(t) for t in graph.values())} imports between them")
    print(f"import cycles: {len(found)}")
    for c in found:
        print("  " + " <-> ".join(c))
    counts = any_at_boundaries()
    print(f"Any in public signatures: {sum(counts.values())} in {len(counts)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
