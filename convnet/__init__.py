"""convnet: the book's network3 on PyTensor, fast on CPU and GPU.

``import convnet as network3`` and the code of chapter 6 of *Neural Networks and Deep
Learning* runs as written. Importing convnet changes no global state of PyTensor or JAX
(a network's first build does, :mod:`convnet.runtime.patches`) and loads none of the run
machinery: ``sweep`` is imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

with warnings.catch_warnings():
    # PyTensor warns at import when it finds no BLAS flags; the C backend sets them itself.
    warnings.filterwarnings("ignore", message=".*BLAS.*")
    warnings.filterwarnings("ignore", message=".*blas.*")
    import pytensor  # noqa: F401

from convnet import (
    optimizers,  # noqa: F401 - convnet.optimizers.SGD / Adam for fit
)
from convnet.activations import ReLU, linear, sigmoid, tanh
from convnet.config import VERSION
from convnet.data.mnist import load_data_shared, load_mnist
from convnet.ensemble import vote
from convnet.history import History
from convnet.layers import ConvPoolLayer, FullyConnectedLayer, Layer, SoftmaxLayer
from convnet.network import Network, fit_together, load

__version__ = VERSION


def __getattr__(name: str) -> Any:
    if name == "sweep":  # the sweep machinery (convnet.runs) only when asked for
        return importlib.import_module("convnet.runs.sweep").sweep
    raise AttributeError(f"module 'convnet' has no attribute {name!r}")


def size(data) -> int:
    """Number of examples in ``(x, y)``, as network3's ``size`` returned."""
    x = data[0]
    return int((x.get_value(borrow=True) if hasattr(x, "get_value") else x).shape[0])


__all__ = [
    "ConvPoolLayer",
    "FullyConnectedLayer",
    "History",
    "Layer",
    "Network",
    "ReLU",
    "SoftmaxLayer",
    "__version__",
    "fit_together",
    "linear",
    "load",
    "load_data_shared",
    "load_mnist",
    "sigmoid",
    "size",
    "sweep",
    "tanh",
    "vote",
]
