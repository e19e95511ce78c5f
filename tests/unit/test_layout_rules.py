"""The package's structure rules, checked on the source.

* Layers point one way: library <- methods <- config/data/optim <- trainer <- sweep/report
  <- launch. A module imports only from its own layer or lower ones (function-level imports
  included).
* No file outside ``dreg_dist/methods/`` (and the DReg library it builds on) names a method
  or inspects a method's model type: everything method-specific comes from the Method class.
* No import cycle among ``dreg_dist`` modules (function-level and ``TYPE_CHECKING`` imports
  included): a cycle dodged with an import inside a function is still a cycle.
* Tests drive the trainer through its public interface: no test touches a Trainer member
  whose name starts with an underscore.


* No file outside ``dreg_dist/methods/`` (and the DReg library it builds on, and the run
  records) names a method or inspects a method's model type: everything method-specific comes
  from the Method class or its description.
* The sweep and the report never import torch, the methods, the config loader or the trainer
  (they read run records, :mod:`dreg_dist.records`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from dreg_dist.methods import BUILTIN

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "dreg_dist"

LAYERS: dict[str, int] = {
    "errors": 0, "io": 0, "run_layout": 0, "distributed": 0, "models": 0,
    "records": 0, "dotted": 0, "stop_signals": 0, "noise_scale": 0,  # torch-free: what sweep and report read runs with
    "provenance": 0,                 # the code a launch ran (git), torch-free
    "dreg": 1,                       # the DReg library: surgery, objective, export, cost
    "methods": 2,                    # one folder per method, the registry
    "config": 3, "data": 3, "optim": 3,
    "train": 4,                      # the trainer loop, pre-flight, end of run, export CLI
    "sweep": 5, "report": 5,
    "cli": 6,
}
"""Top-level part of ``dreg_dist`` -> layer; ``launch/`` scripts are above all of them."""


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("dreg_dist")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dreg_dist"):
            if node.module == "dreg_dist":  # 'from dreg_dist import methods'
                found += [f"dreg_dist.{a.name}" for a in node.names]
            else:
                found.append(node.module)
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_component_has_a_layer() -> None:
    components = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _modules()}
    assert components <= set(LAYERS), components - set(LAYERS)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_from_a_layer_above(path: Path) -> None:
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    upward = [m for m in _imports(path) if LAYERS.get(_component(m), -1) > LAYERS[own]]
    assert not upward, f"{path.relative_to(REPO)} (layer {LAYERS[own]}, {own}) imports from above: {upward}"


# Where a method may be named: its own folder, the registry, the DReg library, and the run records
# (the frozen descriptions of earlier releases in compat, and the baseline the report compares with).
_ALLOWED = ("dreg_dist/methods/", "dreg_dist/dreg/", "dreg_dist/records/")
_SCANNED = [p for p in sorted(PACKAGE.rglob("*.py")) + sorted((REPO / "launch").glob("*.py"))
            if not str(p.relative_to(REPO)).startswith(_ALLOWED)]
_NAMES = re.compile(r"(?<![A-Za-z0-9_-])(" + "|".join(sorted(BUILTIN, key=len, reverse=True)) + r")(?![A-Za-z0-9_-])",
                    re.IGNORECASE)


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of string constants that document (module/class/function docstrings, attribute docs)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        for stmt in getattr(node, "body", []) if isinstance(getattr(node, "body", None), list) else []:
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
                out.add(id(stmt.value))
    return out


def _code_mentions(path: Path) -> list[str]:
    """Method names in code: identifiers, attributes and string literals (not docs or comments)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docs = _docstrings(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        else:
            continue
        if _NAMES.search(text) or "DualPath" in text:
            hits.append(f"{getattr(node, 'lineno', '?')}: {text[:80]!r}")
    return hits


@pytest.mark.parametrize("path", _SCANNED, ids=lambda p: str(p.relative_to(REPO)))
def test_no_code_outside_methods_names_a_method(path: Path) -> None:
    hits = _code_mentions(path)
    assert not hits, f"{path.relative_to(REPO)} names a method in code:\n" + "\n".join(hits)


# ---------------------------------------------------------------------------- file sizes
MAX_LINES = 400
"""Longest source file in ``dreg_dist/``, ``bench/`` and ``launch/``: a module one reads
whole before changing it. Past this, a file holds more than one job (device_check.py held
six) and the split shows where one ends."""

MAX_TEST_LINES = 700
"""Test files get a higher limit, not an exemption: a test file is a list of independent
cases read one at a time (plus short fixtures), so its length costs less to read than a
module's; but past 700 lines it tests more than one module and should follow their split."""

def _sources() -> list[Path]:
    return sorted(p for part in ("dreg_dist", "bench", "launch", "tests") for p in (REPO / part).rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_source_file_over_the_line_limit(path: Path) -> None:
    rel = str(path.relative_to(REPO))
    limit = MAX_TEST_LINES if rel.startswith("tests/") else MAX_LINES
    lines = len(path.read_text().splitlines())
    assert lines <= limit, f"{rel} has {lines} lines, over the limit of {limit}: split it where one job ends"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """dreg_dist module -> the dreg_dist modules it imports, anywhere in the file.

    ``from pkg import name`` points at the submodule ``pkg.name`` when there is one, else at
    ``pkg`` (its ``__init__``); a relative import is resolved against the importing module.
    """
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle (its modules in import order, the first repeated at the end), or []."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str]:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return []
        path.append(node)
        for nxt in sorted(graph[node]):
            if cycle := visit(nxt):
                return cycle
        path.pop()
        done.add(node)
        return []

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_import_graph_sees_function_level_imports() -> None:
    graph = _import_graph()
    assert "dreg_dist.train.trainer" in graph["dreg_dist.train.run"]  # imported inside _main
    assert "dreg_dist.train.finish" in graph["dreg_dist.train.trainer"]


def test_no_import_cycle() -> None:
    cycle = _find_cycle(_import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


# ------------------------------------------------------------------ tests use the trainer's public interface
def _private_trainer_members() -> set[str]:
    """Names starting with '_' (not dunders) that the Trainer class defines or sets on self."""
    tree = ast.parse((PACKAGE / "train" / "trainer.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer"]
    names = set()
    for node in ast.walk(cls):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


_TESTS = sorted((REPO / "tests").rglob("*.py"))


def test_the_trainer_has_private_members_to_look_for() -> None:
    assert {"_say", "_resume", "_update"} <= _private_trainer_members()


@pytest.mark.parametrize("path", _TESTS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_test_touches_a_private_trainer_member(path: Path) -> None:
    members = sorted(_private_trainer_members(), key=len, reverse=True)
    pattern = re.compile(r"\btrainer\._[A-Za-z]|\.(" + "|".join(map(re.escape, members)) + r")\b")
    hits = [f"{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, f"{path.relative_to(REPO)} uses private trainer members:\n" + "\n".join(hits)


_TORCH_FREE = ("sweep", "report", "records", "dotted", "stop_signals", "noise_scale")
_HEAVY = ("torch", "dreg_dist.methods", "dreg_dist.config", "dreg_dist.train", "dreg_dist.models", "dreg_dist.dreg",
          "dreg_dist.data", "dreg_dist.optim", "dreg_dist.distributed")


@pytest.mark.parametrize("path", [p for p in _modules() if p.relative_to(PACKAGE).parts[0].removesuffix(".py")
                                  in _TORCH_FREE], ids=lambda p: str(p.relative_to(REPO)))
def test_record_readers_import_no_training_code(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    names += [f"dreg_dist.{a.name}" for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module == "dreg_dist" for a in n.names]
    heavy = [m for m in names if m == "torch" or m.startswith(tuple(h + "." for h in _HEAVY) + _HEAVY)]
    # config.resolve is the one door: the sweep runs it as a subprocess, never imports it.
    assert not heavy, f"{path.relative_to(REPO)} imports training code: {heavy}"
