"""The architecture holds: no import cycles (function-level imports included), imports
point one way between layers, and every module imports on its own in a fresh interpreter.

The layer contracts themselves are import-linter's (``[tool.importlinter]`` in
pyproject.toml, run by ``make lint``); this test runs them too, so ``make test`` alone
fails on a wrong-way import.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import grimp
import pytest
from importlinter.cli import lint_imports

PACKAGES = ("p2pinfer", "selector", "zoo", "benchmarks")


def test_no_import_cycles() -> None:
    graph = grimp.build_graph(*PACKAGES)
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.add(" -> ".join((module, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def test_layer_contracts_hold() -> None:
    assert lint_imports(no_cache=True) == 0  # import-linter prints the broken contract above


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("package", ["p2pinfer", "selector", "zoo"])
def test_every_module_imports_alone(package: str) -> None:
    """aiohttp's circular-import check, batched: each module first in a fresh interpreter."""
    root = __import__(package)
    names = [package] + [info.name for info in pkgutil.walk_packages(root.__path__, f"{package}.")
                         if not info.name.endswith("__main__")]
    script = ("import importlib, subprocess, sys\n"
              "failed = []\n"
              "for name in sys.argv[1:]:\n"
              "    done = subprocess.run([sys.executable, '-c', f'import {name}'], capture_output=True, text=True)\n"
              "    if done.returncode:\n"
              "        failed.append(name + ': ' + done.stderr.strip().splitlines()[-1])\n"
              "print('\\n'.join(failed))\n"
              "sys.exit(1 if failed else 0)\n")
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
