"""The installed package's structure: no import cycle, every module imports on its own, and every
docstring example runs."""
from __future__ import annotations

import ast
import doctest
import importlib
import multiprocessing as mp
import pkgutil
from pathlib import Path

import pytest

import commcomp

PACKAGE_DIR = Path(commcomp.__file__).parent


def _modules() -> list[str]:
    names = ["commcomp"]
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="commcomp."):
        names.append(info.name)
    return sorted(names)


def _source(module: str) -> Path:
    path = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _module_level_imports(module: str, known: set[str]) -> set[str]:
    """commcomp modules ``module`` imports when it is executed (module level, not in functions)."""
    path = _source(module)
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:  # top-level statements only: function-local imports run later
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [origin] + [f"{origin}.{alias.name}" for alias in node.names]
        for target in targets:
            # An ancestor package is imported before its submodules: importing it is no cycle.
            if target in known and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


def test_no_import_cycle_inside_the_package():
    modules = [m for m in _modules() if _source(m).exists()]  # not the compiled extension
    known = set(modules)
    graph = {m: _module_level_imports(m, known) for m in modules}
    # The parent package of a module is imported before it; only module-to-module edges can cycle.
    visiting, done, cycles = set(), set(), []

    def visit(node: str, path: list[str]) -> None:
        visiting.add(node)
        for nxt in sorted(graph[node]):
            if nxt in visiting:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else path + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        visiting.discard(node)
        done.add(node)

    for m in modules:
        if m not in done:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # Each child is forked from a server process that has imported only torch (the slow part),
    # so it starts with no commcomp module loaded, as a fresh interpreter would. The target is
    # importlib.import_module itself: pickling it loads nothing of this test module.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch"])
    failures = []
    for name in _modules():
        proc = ctx.Process(target=importlib.import_module, args=(name,))
        proc.start()
        proc.join(120)
        if proc.exitcode != 0:
            failures.append((name, proc.exitcode))
    assert not failures, f"modules that fail to import alone (traceback above): {failures}"


def _example_modules() -> list[str]:
    # examples/ is on sys.path (tests/conftest.py), as for a script run from examples/
    examples = PACKAGE_DIR.parent / "examples"
    return sorted(f"{pkg}.{p.stem}" for pkg in ("common", "recipes") for p in (examples / pkg).glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", _modules() + _example_modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):  # globals: a copy of the module's, as pytest's doctests
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (run pytest --doctest-modules {name})"
