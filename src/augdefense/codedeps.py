"""The package sources a job's results depend on: the import closure of the module holding its
function, read from the sources (every ``import augdefense...`` at any depth, with the packages
they pass through), plus package data the closure opens through ``importlib.resources``. Rules list
these as inputs, so editing one reruns exactly the jobs whose code ran it. Torch-free.

``augdefense.runner``, ``augdefense.execution``, ``augdefense.forkserver``, ``augdefense.provenance``
and ``augdefense.timing`` are left out of the closures they are imported into, on purpose: they run
every job, write its sidecar and time its phases, but no number depends on them, and listing them
would rerun the whole grid for a change in how provenance or time is recorded. So is
``augdefense.kernels``: the kernels it pins are the config's ``runtime.cpu_isa``, a param that reruns
what it changes. (A rule whose own function lives in one of them, such as the manifest's, lists it.)
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

PACKAGE = "augdefense"
SRC = Path(__file__).resolve().parent
RUNNER_MODULES = frozenset(
    {
        "augdefense.runner",
        "augdefense.execution",
        "augdefense.kernels",
        "augdefense.provenance",
        "augdefense.timing",
        "augdefense.forkserver",
    }
)
_PACKAGE_DATA = re.compile(r"""files\(["']augdefense["']\)\.joinpath\(["']([\w.\-/]+)["']\)""")


def module_file(module: str) -> Path | None:
    """The source file of an ``augdefense`` module (a package's ``__init__.py``), or None."""
    parts = module.split(".")[1:]
    base = SRC.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(module: str) -> set[str]:
    tree = ast.parse(module_file(module).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    return found


@cache
def closure(module: str) -> frozenset[str]:
    """Every ``augdefense`` module that importing ``module`` and running its code can execute."""
    seen, todo = {module}, [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts)):  # a module runs the packages it sits in
            parent = ".".join(parts[:i])
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
        for imported in _imported(name):
            if imported not in seen and module_file(imported) and imported not in RUNNER_MODULES:
                seen.add(imported)
                todo.append(imported)
    return frozenset(seen)


def code_files(module: str) -> list[str]:
    """The files a rule whose function lives in ``module`` lists as code inputs."""
    files = {module_file(m) for m in closure(module)}
    for m in closure(module):
        files |= {SRC / name for name in _PACKAGE_DATA.findall(module_file(m).read_text())}
    return sorted(str(f) for f in files)
