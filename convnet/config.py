"""Every ``CONVNET_*`` environment variable in one table, read through one parser, and
the folders convnet keeps its files in.

Variables are read when a choice is made (not frozen at import), so a script or a test
may set one before building a network; a value outside a variable's choices raises an
ArgumentError naming the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from convnet.errors import ArgumentError

VERSION = "0.1.0"


@dataclass(frozen=True)
class Variable:
    name: str
    meaning: str
    choices: tuple[str, ...] = ()  # empty: any text (a path, a list)


VARIABLES = {
    v.name: v
    for v in (
        Variable("CONVNET_BACKEND", "the backend", ("c", "numba", "jax", "auto")),
        Variable("CONVNET_DEVICE", "the device", ("cpu", "gpu", "auto")),
        Variable("CONVNET_PRECISION", "float32 products on GPUs", ("float32", "tf32", "auto")),
        Variable(
            "CONVNET_CONV",
            "the convolution's form, for measuring",
            ("im2col", "patches", "native", "fused"),
        ),
        Variable(
            "CONVNET_DENSE",
            "large dense layers' product (and SGD's step), for measuring",
            ("kernel", "dot"),
        ),
        Variable(
            "CONVNET_KERNEL",
            "convnet's hand-written CPU kernels (conv-pool, dense, the book's sigmoid nets): 0 off",
            ("0", "1"),
        ),
        Variable("CONVNET_GRAPH_CACHE", "the cache of rewritten graphs: 0 off", ("0", "1")),
        Variable("CONVNET_CACHE", "the cache folder (default ~/.cache/convnet)"),
        Variable("CONVNET_DATA", "a folder (or file) with MNIST"),
        Variable("CONVNET_MNIST_MIRRORS", "comma-separated MNIST mirror URLs"),
    )
}


def setting(name: str) -> str:
    """The variable's value (choices lower-cased), or "" when it is unset or empty."""
    variable = VARIABLES[name]
    value = os.environ.get(name, "").strip()
    if not variable.choices or not value:
        return value
    value = value.lower()
    if value not in variable.choices:
        raise ArgumentError(
            f"environment variable {name} ({variable.meaning}): expected one of "
            f"{', '.join(variable.choices)}. Received: {value!r}."
        )
    return value


def cache_root() -> Path:
    """convnet's cache folder: ``$CONVNET_CACHE``, else ``~/.cache/convnet``."""
    return Path(setting("CONVNET_CACHE") or Path.home() / ".cache" / "convnet").expanduser()


def markdown_table() -> str:
    """The variables as the README's table (``tests/test_config.py`` keeps them in step)."""
    rows = ["| variable | meaning | values |", "|---|---|---|"]
    for v in VARIABLES.values():
        values = ", ".join(f"`{c}`" for c in v.choices) if v.choices else "text"
        rows.append(f"| `{v.name}` | {v.meaning} | {values} |")
    return "\n".join(rows)
