"""Every Python block of README.md and docs/*.md compiles, and every name it imports exists.

The blocks talk to a server with a real key or load the small demo, so they are not run here
(the bash commands are, in test_docs_commands.py); what drifts silently is the API they name:
a renamed module, class or function. Each ``import`` / ``from ... import`` is resolved, and
each ``Name.attribute`` used on an imported class or module must exist too.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks() -> list[tuple[str, int, str]]:
    out = []
    for path in DOCS:
        text = path.read_text()
        for match in re.finditer(r"```python\n(.*?)```", text, re.S):
            out.append((path.name, text[: match.start()].count("\n") + 1, match.group(1)))
    return out


BLOCKS = python_blocks()


def test_the_docs_have_python_blocks() -> None:
    assert len(BLOCKS) >= 10, len(BLOCKS)


@pytest.mark.parametrize("doc,line,code", BLOCKS, ids=[f"{d}:{n}" for d, n, _ in BLOCKS])
def test_python_block_compiles_and_its_imports_resolve(doc: str, line: int, code: str) -> None:
    tree = ast.parse(code, filename=f"{doc}:{line}")
    compile(tree, f"{doc}:{line}", "exec")
    bound: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module = importlib.import_module(alias.name)
                top = alias.name.split(".")[0]
                bound[alias.asname or top] = module if alias.asname else importlib.import_module(top)
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                if hasattr(module, alias.name):
                    bound[alias.asname or alias.name] = getattr(module, alias.name)
                else:  # a submodule, or ImportError
                    bound[alias.asname or alias.name] = importlib.import_module(f"{node.module}.{alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
            owner = bound[node.value.id]
            if isinstance(owner, type) or type(owner).__name__ == "module":
                assert hasattr(owner, node.attr), f"{doc}:{line}: {node.value.id}.{node.attr} does not exist"
