"""The house's import rules: layers only import downwards (import-linter's contract in
pyproject.toml, run by .ci/run as ``lint-imports``), and no convnet module hides an import
of another inside a function to dodge a circle."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


_PROBE = """
import json, sys
from pytensor.compile import optdb
from pytensor.link.numba.dispatch.basic import numba_funcify

def state():
    from convnet import ops
    jax = sys.modules.get("jax")
    return {
        "rewrites": sorted(n for n in optdb._names if n.startswith("convnet")),
        "numba_ops": ops.Im2Col in numba_funcify.registry,
        "xla_cache": jax.config.jax_compilation_cache_dir if jax else None,
        "run_machinery": sorted(
            m for m in sys.modules if m.startswith(("convnet.runs", "convnet.cli"))
        ),
    }

import convnet
imported = state()
convnet.Network(
    [convnet.FullyConnectedLayer(n_in=4, n_out=3), convnet.SoftmaxLayer(n_in=3, n_out=2)], 2,
    backend=sys.argv[1],
)
built = state()
convnet.sweep  # noqa: B018 - the lazy attribute
print(json.dumps({"imported": imported, "built": built, "after_sweep": state()}))
"""


@pytest.mark.parametrize("backend", ["jax", "c"])
def test_import_convnet_changes_nothing_global_until_a_network_is_built(backend, tmp_path):
    """``import convnet`` registers no rewrite or Op implementation with PyTensor, sets no
    JAX option, and loads no module of runs/ or cli/; building a network does the first
    three (so the probe can see them), ``convnet.sweep`` the last."""
    env = {**os.environ, "CONVNET_CACHE": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, backend], capture_output=True, text=True, env=env,
        check=True, timeout=300,
    )  # fmt: skip
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["imported"] == {
        "rewrites": [], "numba_ops": False, "xla_cache": None, "run_machinery": []
    }  # fmt: skip
    built = seen["built"]
    assert "convnet_lower_to_im2col_c" in built["rewrites"] and built["numba_ops"]
    assert built["run_machinery"] == []
    if backend == "jax":
        assert built["xla_cache"] == str(tmp_path / "xla")
    assert "convnet.runs.sweep" in seen["after_sweep"]["run_machinery"]
    assert not any(m.startswith("convnet.cli") for m in seen["after_sweep"]["run_machinery"])
