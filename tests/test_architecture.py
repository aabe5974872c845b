"""The import rules of docs/architecture.md: each subpackage imports only the floors below it
(the store nothing above the ground floor, the renderer never the extraction), no import
circles, and no module over 400 lines."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "actextract"
GROUND = {"errors", "core"}

# what each subpackage may import (besides itself); docs/architecture.md draws it
ALLOWED = {
    "core": {"errors"},
    "store": GROUND,
    "data": GROUND,
    "model": GROUND | {"data"},
    "stats": GROUND | {"store"},
    "clusters": GROUND | {"store"},
    "check": GROUND | {"store", "stats", "clusters"},
    "extraction": GROUND | {"store", "data", "model", "stats"},
    "record": GROUND | {"store", "data", "model", "extraction"},
    "report": GROUND | {"store", "data", "model", "stats", "clusters"},
    "cli": GROUND
    | {"store", "data", "model", "stats", "clusters", "check", "extraction", "record", "report"},
}


def _below(package: str) -> set[str]:
    """Every package ``package`` may reach, directly or through the floors it imports."""
    out = set(ALLOWED.get(package, ()))
    for p in list(out):
        out |= _below(p)
    return out


def _package(module: str) -> str:
    """``actextract.store.run`` → ``store``; the facade ``actextract`` is itself."""
    return module.split(".")[1] if "." in module else module


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_packages_are_the_ones_the_rules_name():
    found = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert found == set(ALLOWED)
    flat = {p.stem for p in PACKAGE.glob("*.py")}
    assert flat == {"__init__", "__main__", "errors"}, "a new module belongs in a subpackage"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_floors_below_it(package):
    wrong = {}
    for module, imported in _module_imports().items():
        if _package(module) == package:
            bad = {_package(m) for m in imported} - ALLOWED[package] - {package}
            if bad:
                wrong[module] = sorted(bad)
    assert not wrong, f"{package} may import {sorted(ALLOWED[package])} only: {wrong}"


def test_the_rules_have_no_circle():
    seen: dict[str, int] = {}

    def depth(package: str, path: tuple[str, ...] = ()) -> int:
        assert package not in path, f"import circle: {' -> '.join((*path, package))}"
        if package not in seen:
            below = ALLOWED.get(package, set())
            seen[package] = 1 + max((depth(p, (*path, package)) for p in below), default=0)
        return seen[package]

    for package in ALLOWED:
        depth(package)


@functools.cache
def _module_imports() -> dict[str, set[str]]:
    """{module: the actextract modules it imports} over every import statement (inside
    functions and under TYPE_CHECKING too); a package is its ``__init__``."""
    names = {}
    for path in _modules():
        rel = path.relative_to(PACKAGE).with_suffix("")
        names[".".join(("actextract", *rel.parts)).removesuffix(".__init__")] = path
    out: dict[str, set[str]] = {}
    for name, path in names.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    whole = f"{node.module}.{alias.name}"
                    found.add(whole if whole in names else node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        out[name] = {m for m in found if m in names and m != name}
    return out


def test_no_two_modules_import_each_other_even_through_others():
    graph = _module_imports()
    state: dict[str, str] = {}

    def visit(module: str, path: tuple[str, ...]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import circle: {' -> '.join((*path, module))}"
        state[module] = "open"
        for other in sorted(graph[module]):
            visit(other, (*path, module))
        state[module] = "done"

    for module in sorted(graph):
        visit(module, ())


def test_the_ground_floor_imports_nothing_of_actextract_but_errors():
    assert _module_imports()["actextract.errors"] == set()


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_alone_in_a_fresh_interpreter(package):
    """Importing a package loads only the floors below it (the top-level
    ``actextract/__init__`` is the facade over everything, so it is stood in for here)."""
    script = f"""
import importlib.util, json, sys, types
spec = importlib.util.find_spec("actextract")
facade = types.ModuleType("actextract")
facade.__path__ = list(spec.submodule_search_locations)
sys.modules["actextract"] = facade
importlib.import_module("actextract.{package}")
print(json.dumps(sorted({{m.split(".")[1] for m in sys.modules if m.startswith("actextract.")}})))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    loaded = set(json.loads(res.stdout.strip().splitlines()[-1]))
    assert loaded - {package} <= _below(package), sorted(loaded - _below(package) - {package})


def test_no_module_passes_400_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, long
