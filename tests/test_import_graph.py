"""The import graph: every module imports, data flows one way, and no two modules import each other.

Read from the source with `ast` (imports inside functions count too: a lazy import is
still a dependency), plus `importlib.import_module("latentsight...")` calls with a
literal name, so a dependency cannot hide behind importlib either.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"latentsight": "latentsight", "embedder": "latentsight.embedder",
           "index": "latentsight.index", "training": "latentsight.training",
           "dashboard": "latentsight.dashboard"}
# component -> components it must never import (STYLE.md: files -> embedder -> index -> dashboard)
FORBIDDEN = {
    "embedder": {"index", "training", "dashboard", "cli"},
    "index": {"training", "dashboard", "cli"},
    "training": {"dashboard", "cli"},
    "dashboard": {"cli"},
}
# Known, deliberate exceptions, each with its reason.
ALLOWED = {
    # deprecated alias: `from latentsight.embedder.errors import StoreError` keeps working for
    # old callers, resolved on first use only (a DeprecationWarning says where it moved)
    ("latentsight.embedder.errors", "latentsight.index.errors"),
    # the scorer registry's one plug-in: `detector` builds on the scorers and registers itself;
    # scoring.py imports it last, once SCORERS holds every class it builds on
    ("latentsight.embedder.scoring", "latentsight.embedder.detector"),
}
# scripts, not modules: Streamlit pages, `python -m latentsight`, Alembic's env
PAGES = ("latentsight.dashboard.app", "latentsight.dashboard.views.", "latentsight.__main__",
         "latentsight.index.migrations.env")


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module a dotted import name refers to (longest known prefix)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            names |= {f"{base}.{a.name}" for a in node.names} | {base}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", None)) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    out = {m for n in names if n.startswith("latentsight") and (m := _resolve(n))}
    return out - {module}


GRAPH = {m: _imports(m) for m in MODULES}


def _component(module: str) -> str:
    parts = module.split(".")
    return "cli" if parts[1:2] == ["cli"] else parts[1] if len(parts) > 1 and parts[1] in FOLDERS \
        else "latentsight"


@pytest.mark.parametrize("module", [m for m in MODULES if not m.startswith(PAGES)])
def test_every_module_imports(module):
    importlib.import_module(module)


def test_components_import_only_those_to_their_left():
    bad = sorted(
        (m, dep) for m, deps in GRAPH.items() for dep in deps
        if _component(dep) in FORBIDDEN.get(_component(m), set()) and (m, dep) not in ALLOWED
    )
    assert not bad, "\n".join(f"{m} imports {dep}" for m, dep in bad)


def test_no_import_cycles():
    graph = {m: {d for d in deps if (m, d) not in ALLOWED} for m, deps in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                cycles.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_graph_sees_lazy_and_importlib_imports():
    # the checks above only mean something if the reader finds the imports that matter
    assert "latentsight.index.report" in GRAPH["latentsight.index.scan"]
    assert "latentsight.index.errors" in GRAPH["latentsight.embedder.errors"]  # via importlib
    assert "latentsight.index.manager" in GRAPH["latentsight.training.anomaly"]
