"""The shape of the library: no import cycles in lib/, and lib/ never imports tests.

Every import counts, also those inside functions (a lazy import still ties two
modules together; it only hides the cycle until that function runs).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.helpers import REPO_ROOT

LIB = REPO_ROOT / "lib"
PACKAGE = "tracker_deployer"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path) -> Iterator[tuple[str, str]]:
    """Every import of ``path`` as (module, name): ``from X import y`` gives (X, y),
    ``import X`` gives (X, "")."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, "") for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield from ((base, alias.name) for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in (LIB / PACKAGE).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # ``from package import submodule`` depends on the submodule, not on the
        # package's __init__ (as import-linter and pydeps count it).
        targets = {
            f"{base}.{item}" if f"{base}.{item}" in modules else base
            for base, item in imported_names(path)
        }
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y2"}, "y2": {"y"}}) == ["y", "y2", "y"]


def test_the_graph_sees_absolute_relative_and_lazy_imports() -> None:
    graph = import_graph()
    assert "tracker_deployer.config.model" in graph["tracker_deployer.topology"]
    assert "tracker_deployer.render.tree" in graph["tracker_deployer.render"]
    # lifecycle imports the lxd provider inside functions only.
    assert "tracker_deployer.providers.lxd" in graph["tracker_deployer.lifecycle"]


def test_lib_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_lib_never_imports_from_tests() -> None:
    offenders = [
        f"{path.relative_to(REPO_ROOT)}: {name}"
        for path in (LIB / PACKAGE).rglob("*.py")
        for name, _ in imported_names(path)
        if name.split(".")[0] in ("tests", "conftest")
    ]
    assert offenders == []
