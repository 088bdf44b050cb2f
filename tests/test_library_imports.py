"""The installed library needs only torch and numpy: importing any module under commcomp/ imports
no other third-party package. Imports inside functions (optional features) are allowed; the
examples, benchmarks and tests carry their own dependencies (requirements/examples.txt, test.txt)."""
import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY_DEPS = {"torch", "numpy"}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_statements(body: list[ast.stmt]):
    """The statements of ``body`` that run when the module is imported: everything outside
    function bodies (class bodies and ``if``/``try``/``with`` blocks included), except the body of
    ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_time_statements(node.orelse)
            continue
        yield node
        for field in ("body", "orelse", "finalbody"):
            yield from _import_time_statements(getattr(node, field, []))
        for part in getattr(node, "handlers", []) + getattr(node, "cases", []):
            yield from _import_time_statements(part.body)


def module_level_imports(source: str) -> set[str]:
    """Top-level package names of the absolute imports a module with ``source`` runs on import."""
    found: set[str] = set()
    for node in _import_time_statements(ast.parse(source).body):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def third_party(names: set[str]) -> set[str]:
    return {n for n in names if n not in sys.stdlib_module_names and n != "commcomp"}


def test_checker_sees_exactly_the_imports_that_run_at_import_time():
    source = """
import os, scipy.stats
from sklearn import datasets
from . import ops
from .hooks import spec
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import pandas
else:
    import tqdm
try:
    import lightning
except ImportError:
    import accelerate
finally:
    import yaml
class Plot:
    import matplotlib
    def draw(self):
        import seaborn
def lazy():
    import mnist1d
async def later():
    import aiohttp
"""
    found = module_level_imports(source)
    assert found == {"os", "scipy", "sklearn", "typing", "tqdm", "lightning", "accelerate", "yaml", "matplotlib"}
    assert third_party(found) == {"scipy", "sklearn", "tqdm", "lightning", "accelerate", "yaml", "matplotlib"}


def test_library_modules_import_only_torch_and_numpy():
    modules = sorted((ROOT / "commcomp").rglob("*.py"))
    assert len(modules) > 20  # the whole package is walked, not an empty directory
    offenders = {}
    for path in modules:
        extra = third_party(module_level_imports(path.read_text())) - LIBRARY_DEPS
        if extra:
            offenders[str(path.relative_to(ROOT))] = sorted(extra)
    assert offenders == {}, "library modules import packages that only examples/tests install"


@pytest.mark.parametrize("name", ["recipes", "runtime", "data"])
def test_example_harness_is_not_in_the_library(name):
    assert not (ROOT / "commcomp" / name).exists() and not (ROOT / "commcomp" / f"{name}.py").exists()


def test_declared_library_requirements_are_torch_and_numpy():
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / "requirements" / "library.txt").read_text().splitlines()]
    pins = dict(re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups() for line in lines if line)
    assert set(pins) == LIBRARY_DEPS
    assert pins["torch"] == "2.13.0"
