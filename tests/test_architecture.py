"""The layers of regode (docs/architecture.md): dependencies point down only, with no cycle, and
every file and function stays short enough to read.

core (geometry, files, losses, preprocessing, fitting, training, ...) <- methods (odenet, nir,
encoder) <- applications (pipeline, api, bench, cli, demo). Imports are read as text, at module
level and inside functions alike.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "regode"
METHODS = ("regode.odenet", "regode.nir", "regode.encoder")
APPLICATIONS = (
    "regode.pipeline",
    "regode.heads",
    "regode.api",
    "regode.qc",
    "regode.bench",
    "regode.cohort",
    "regode.cli",
    "regode.demo",
)
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def layer(module: str) -> int:
    """0 core, 1 method, 2 application (the package itself, regode/__init__.py, is the public face: 2)."""
    if module == "regode" or module.startswith(APPLICATIONS):
        return 2
    return 1 if module.startswith(METHODS) else 0


def imports(module: str) -> set[str]:
    """The regode modules that ``module`` imports (relative imports resolved)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            head = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            names = [f"{head}.{a.name}" for a in node.names] + [head]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and name != "regode":
                found.add(name)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def test_the_package_has_layers_to_check():
    assert {layer(m) for m in MODULES} == {0, 1, 2}
    assert "regode.fitting" in GRAPH and "regode.odenet.kinds" in GRAPH and "regode.cli.register" in GRAPH


def upward(module: str, dependencies) -> list[str]:
    return sorted(d for d in dependencies if layer(d) > layer(module))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_dependencies_point_down(module):
    """A core module imports only core modules; a method package no application."""
    assert not upward(module, GRAPH[module]), (
        f"{module} (layer {layer(module)}) imports {upward(module, GRAPH[module])}"
    )


def test_no_import_cycle():
    assert not cycles(GRAPH)


def test_the_checks_catch_a_cycle_and_an_upward_import():
    """The rules fail on a bad graph (so they can fail at all), and see the real edges."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert upward("regode.fitting", {"regode.nir.fit", "regode.grid"}) == ["regode.nir.fit"]
    assert upward("regode.nir.fit", {"regode.pipeline", "regode.odenet.kinds"}) == ["regode.pipeline"]
    assert "regode.odenet.kinds" in GRAPH["regode.odenet.model"] and "regode.lattice" in GRAPH["regode.fitting"]
    assert "regode.bench.methods" in GRAPH["regode.bench.config"]  # an import inside a function counts


@pytest.mark.parametrize("module", sorted(MODULES))
def test_files_and_functions_are_short(module):
    path = MODULES[module]
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path}: {node.name} has {length} lines"


def test_torch_free_configs_keep_help_instant():
    """The command line's modules import torch only inside commands: ``regode --help`` stays instant."""
    import subprocess
    import sys

    code = "import sys, regode.cli; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_benchmark_scripts_import_what_exists():
    """Every ``from regode... import name`` of benchmarks/*.py names a module and attribute that exist
    (the scripts are not run by the tests, so a refactor would otherwise break them silently)."""
    import importlib

    scripts = sorted((ROOT.parent / "benchmarks").glob("*.py"))
    assert scripts
    for script in scripts:
        for node in ast.walk(ast.parse(script.read_text(), str(script))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("regode"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
                        f"{script.name}: {node.module} has no {alias.name}"
                    )
