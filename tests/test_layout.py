"""The layout's rules, read from the source: what may import what, and no import cycle in app/.

Every import counts, also those inside functions and under ``TYPE_CHECKING``: a deferred import
hides a cycle from the interpreter, not from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "editor_core", "demo_world", "smedit", "bench", "migrations")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            # ``from app.api import edits`` imports the module app.api.edits
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def test_editor_core_imports_only_itself_and_third_party_libraries() -> None:
    offenders = {
        name: sorted(i for i in imports_of(path) if i.split(".")[0] in PACKAGES and i.split(".")[0] != "editor_core")
        for name, path in modules("editor_core").items()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_demo_is_not_part_of_the_library_or_the_client() -> None:
    for package in ("editor_core", "smedit"):
        for name, path in modules(package).items():
            if package == "smedit" and name.startswith("smedit.commands"):
                continue  # CLI commands may build the demo, lazily
            assert not any(i.startswith("demo_world") for i in imports_of(path)), name


def test_app_has_no_import_cycle() -> None:
    graph = {name: {i for i in imports_of(path) if i in modules("app")} - {name}
             for name, path in modules("app").items()}
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    for name in graph:
        graph[name] = {i for i in graph[name] if not (i.startswith(name + ".") and modules("app")[name].name == "__init__.py")}
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_modules_stay_readable() -> None:
    """One concept per file: no module of the service or the library grows past ~400 lines."""
    long = {name: n for package in ("app", "editor_core") for name, path in modules(package).items()
            if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}
