"""Layers (../shared/architecture.md): foundation and the diffusion core import no stage, and a
stage imports only the layers below it and the stages before it in the pipeline. Every import
counts, lazy ones inside functions included, so a cycle cannot hide behind a deferred import."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "opencanvas"

# Lowest first. A part may import parts of its own rank or below; never one above it.
LAYERS: list[set[str]] = [
    {"allocator", "progress", "storage", "workspace", "licenses", "engines", "pixels", "splits", "untrusted",
     "model_license", "tombstones", "dtypes"},
    {"shards", "captions", "cli_common", "marking"},
    {"diffusion", "training"},
    {"catalog"}, {"fetch"}, {"caption"}, {"components"}, {"encode"}, {"train"}, {"sample"}, {"caption_quality"},
    {"provenance"}, {"distill"},
    {"cards"}, {"study"}, {"publish"}, {"demo"}, {"humaneval"},
    {"web"},
    {"cli"},
]


def _parts() -> set[str]:
    return {p.name if p.is_dir() else p.stem for p in PACKAGE.iterdir()
            if (p.is_dir() and (p / "__init__.py").exists())
            or (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))}


def _imports() -> dict[str, set[str]]:
    """part -> the other top-level parts it imports (absolute and relative imports, at any depth)."""
    parts = _parts()
    edges: dict[str, set[str]] = {p: set() for p in parts}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        src = rel[0] if len(rel) > 1 else Path(rel[0]).stem
        if src not in parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = list(rel[:-1])[: max(0, len(rel) - node.level)]
                names = [".".join(["opencanvas", *base, *([node.module] if node.module else [])])]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                bits = name.split(".")
                if bits[0] == "opencanvas" and len(bits) > 1 and bits[1] in parts and bits[1] != src:
                    edges[src].add(bits[1])
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one part (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_packages() -> None:
    assert _cycles(_imports()) == []


def test_every_part_has_a_layer() -> None:
    placed = set().union(*LAYERS)
    assert _parts() - placed == set(), "add the new module or package to LAYERS"


def test_no_part_imports_a_layer_above_it() -> None:
    rank = {part: i for i, layer in enumerate(LAYERS) for part in layer}
    upward = sorted(f"{src} -> {dst}" for src, dsts in _imports().items() for dst in dsts if rank[dst] > rank[src])
    assert upward == []
