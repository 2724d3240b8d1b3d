"""The repository's modules import on their own, and their module-level imports form no circle.

The static graph is read from the source (ast): an edge A -> B for every `import B` / `from B import ...` that runs
when A is imported (module level, `if` / `try` blocks included; function bodies and `if TYPE_CHECKING:` left out),
where B is a module of this repository. Importing `a.b.c` also imports the packages `a` and `a.b`, except those that
contain A (they are already being imported when A runs).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_THE_TREE = ("tests", "bench", "notebooks", ".venv", "build")


def repository_modules() -> dict[str, Path]:
    """Dotted name -> file of every importable module of the tree (packages by their __init__.py)."""
    modules = {}
    for path in sorted(REPO.rglob("*.py")):
        relative = path.relative_to(REPO)
        if relative.parts[0] in NOT_THE_TREE or relative.parts[0].startswith("."):
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        elif parts[-1] == "__main__":
            continue
        if all(part.isidentifier() for part in parts) and _in_packages(relative):
            modules[".".join(parts)] = path
    return modules


def _in_packages(relative: Path) -> bool:
    """True when every folder above the file is a package (so the file is importable by its dotted name)."""
    folder = REPO
    for part in relative.parts[:-1]:
        folder = folder / part
        if not (folder / "__init__.py").is_file():
            return False
    return True


def _runtime_statements(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from _runtime_statements(node.body)
                yield from _runtime_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(handler.body for handler in node.handlers)):
                yield from _runtime_statements(block)


def _imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[:len(package) - (node.level - 1)]
        base = ".".join([*anchor, *([base] if base else [])])
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph() -> dict[str, set[str]]:
    modules = repository_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _runtime_statements(tree.body):
            for imported in _imported_names(node, name, path.name == "__init__.py"):
                parts = imported.split(".")
                for end in range(1, len(parts) + 1):
                    target = ".".join(parts[:end])
                    if target in modules and target != name and not name.startswith(f"{target}."):
                        graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (its modules, the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once every path from it is explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_circle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_the_imports_that_matter():
    graph = import_graph()
    assert "models.checkpoints" in graph["training.checkpoints"]
    assert "nets.spec" in graph["models.loading"] and "models" in graph["training.checkpoints"]
    assert "train_nets" not in graph["training.checkpoints"]


def test_no_import_circle_among_the_repository_s_modules():
    assert find_cycle(import_graph()) is None


# The modules of the circle this test was written against, imported first in a fresh process (fast); every module
# of the tree with the slow tests.
CORE = ("training.checkpoints", "models", "nets.seed_checkpoint", "train_nets")


@pytest.mark.parametrize("module", [pytest.param(name, marks=[] if name in CORE else [pytest.mark.slow])
                                    for name in sorted(repository_modules())])
def test_every_module_imports_first_in_a_fresh_process(module):
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
