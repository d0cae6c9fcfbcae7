"""The house's import rules: layers only import downwards (import-linter's contract in
pyproject.toml, run by .ci/run as ``lint-imports``), and no convnet module hides an import
of another inside a function to dodge a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import convnet

PACKAGE = Path(convnet.__file__).parent


def _imports_inside_functions(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("convnet")
            ):
                found.append((node.lineno, node.module or "." * node.level))
            elif isinstance(node, ast.Import):
                found += [(node.lineno, a.name) for a in node.names if a.name.startswith("convnet")]
    return found


def test_no_convnet_module_imports_another_inside_a_function():
    hidden = {
        str(path.relative_to(PACKAGE)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if (found := _imports_inside_functions(ast.parse(path.read_text())))
    }
    assert not hidden, hidden


def test_the_check_finds_a_hidden_import():
    tree = ast.parse("def f():\n    from convnet import network\n    import os\n")
    assert _imports_inside_functions(tree) == [(2, "convnet")]
