"""A disk cache of PyTensor's rewritten graphs, so a new process skips the rewriting.

PyTensor spends ~1.7 s rewriting net C's training graph and does it again in every new
process; XLA's compiled programs are already cached on disk (see backend.py). This cache
keys a graph by its structure (ops with their parameters, constants by value, input types,
wiring; never by object identity or auto-generated names) and stores the rewritten graph
with its inputs left out, to be rewired to the new process's inputs (weights and data are
never written). Graphs holding an op whose parameters it can't read are simply not cached.

Entries are pickles that convnet writes and reads itself under ``CONVNET_CACHE`` (like
Python's own ``__pycache__``); an entry that fails to load is ignored and rewritten.
``CONVNET_GRAPH_CACHE=0`` turns the cache off. Bump ``FORMAT`` if convnet registers
rewrites for the JAX mode (they would change what a key's graph rewrites to); its only
rewrite so far, in linkers.py, is for the C and Numba modes, which this cache never serves.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytensor
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.rewriting.basic import GraphRewriter

from convnet import config
from convnet.files import write_bytes

FORMAT = 1  # bump when the key or the stored form changes
MAX_ENTRIES = 256  # beyond this, the least recently used entries are removed (~0.5 MB each)


class UncacheableError(Exception):
    """The graph holds something whose identity the key can't capture."""


def _value_key(value: Any) -> str:
    if isinstance(value, FunctionGraph):
        return graph_key(value)
    if getattr(type(value), "__props__", None) is not None:  # an op as a parameter
        return _op_key(value)
    if isinstance(value, np.ndarray | np.generic):
        if value.dtype.hasobject:  # its bytes would be pointers
            raise UncacheableError(f"an object array {value!r}")
        value = np.asarray(value)
        return f"array{value.dtype}{value.shape}:{hashlib.sha256(value.tobytes()).hexdigest()}"
    if isinstance(value, tuple | list):
        return "(" + ",".join(_value_key(v) for v in value) + ")"
    text = repr(value)
    if " at 0x" in text:  # a repr with an address says nothing about the content
        raise UncacheableError(text)
    return f"{type(value).__qualname__}:{text}"


def _op_key(op: Any) -> str:
    cls = type(op)
    name = f"{cls.__module__}.{cls.__qualname__}"
    props = getattr(cls, "__props__", None)
    if props is not None:
        return name + _value_key(tuple(getattr(op, p) for p in props))
    fgraph = getattr(op, "fgraph", None)
    if name == "pytensor.scan.op.Scan" and isinstance(fgraph, FunctionGraph):
        # The fields Scan.__eq__ compares.
        fields = (op.info, op.profile, op.truncate_gradient, op.name, op.allow_gc)
        return name + _value_key(fields) + graph_key(fgraph)
    raise UncacheableError(name)


def graph_key(fgraph: FunctionGraph) -> str:
    """A digest of everything that makes the graph what it is, stable across processes."""
    refs: dict[Variable, str] = {}
    digest = hashlib.sha256()
    for index, variable in enumerate(fgraph.inputs):
        refs[variable] = f"i{index}"
        digest.update(f"input {variable.type}\n".encode())

    def ref(variable: Variable) -> str:
        if variable in refs:
            return refs[variable]
        if isinstance(variable, Constant):
            return f"const {variable.type} {_value_key(variable.data)}"
        raise UncacheableError(f"a free variable {variable}")

    for number, node in enumerate(fgraph.toposort()):
        inputs = ",".join(ref(v) for v in node.inputs)
        outputs = ",".join(str(v.type) for v in node.outputs)
        digest.update(f"{_op_key(node.op)}({inputs})->{outputs}\n".encode())
        for k, output in enumerate(node.outputs):
            refs[output] = f"n{number}.{k}"
    digest.update(("outputs " + ",".join(ref(v) for v in fgraph.outputs)).encode())
    return digest.hexdigest()


class _Pickler(pickle.Pickler):
    """Pickles a graph with its inputs replaced by their positions."""

    def __init__(self, file: io.BytesIO, inputs: list[Variable]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._positions = {id(v): i for i, v in enumerate(inputs)}

    def persistent_id(self, obj: Any) -> int | None:
        return self._positions.get(id(obj)) if isinstance(obj, Variable) else None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, inputs: list[Variable]) -> None:
        super().__init__(file)
        self._inputs = inputs

    def persistent_load(self, position: Any) -> Variable:
        return self._inputs[position]


class CachedRewriter(GraphRewriter):
    """Wraps a mode's rewriter: a graph seen before gets its stored rewritten form."""

    def __init__(self, inner: GraphRewriter, folder: Path, label: str) -> None:
        self.inner = inner
        self.folder = folder
        self.label = label  # names the rewrites inner applies (e.g. the mode)

    def add_requirements(self, fgraph: FunctionGraph) -> None:
        self.inner.add_requirements(fgraph)

    def apply(self, fgraph: FunctionGraph) -> Any:
        try:
            key = graph_key(fgraph)
        except UncacheableError:
            return self.inner.rewrite(fgraph)
        flags = pytensor.config
        versions = (
            f"{FORMAT} {pytensor.__version__} {config.VERSION} {self.label} "
            f"{flags.floatX} {flags.optimizer_including} {flags.optimizer_excluding} "
            f"{flags.optimizer_requiring}"
        )
        path = self.folder / f"{hashlib.sha256(f'{versions} {key}'.encode()).hexdigest()}.pkl"
        if self._load(path, fgraph):
            return None
        result = self.inner.rewrite(fgraph)
        self._store(path, fgraph)
        return result

    def _load(self, path: Path, fgraph: FunctionGraph) -> bool:
        try:
            data = path.read_bytes()
            outputs = _Unpickler(io.BytesIO(data), fgraph.inputs).load()
            if len(outputs) != len(fgraph.outputs):
                return False
            fgraph.replace_all(
                list(zip(fgraph.outputs, outputs, strict=True)),
                reason="convnet graph cache",
                import_missing=True,
            )
            with contextlib.suppress(OSError):  # a read-only cache still serves
                os.utime(path)  # recently used: kept longest
            return True
        except Exception:  # missing, stale or damaged: rewrite as if it were not there
            return False

    def _store(self, path: Path, fgraph: FunctionGraph) -> None:
        buffer = io.BytesIO()
        try:
            _Pickler(buffer, fgraph.inputs).dump(list(fgraph.outputs))
            write_bytes(path, buffer.getvalue())
            _prune(self.folder, MAX_ENTRIES)
        except Exception:  # an unpicklable op or a read-only cache: just don't cache
            return


def _prune(folder: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently used entries."""
    entries = sorted(folder.glob("*.pkl"), key=lambda entry: entry.stat().st_mtime)
    for entry in entries[: max(0, len(entries) - keep)]:
        entry.unlink(missing_ok=True)


def folder() -> Path:
    return config.cache_root() / "graphs"
