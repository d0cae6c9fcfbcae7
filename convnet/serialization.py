"""The model file format: weights as ``.npz``, architecture as JSON, never pickle.

A model is two files side by side, ``model.npz`` (flat dotted names such as
``layers.0.w``) and ``model.json`` (format version, convnet version, the layers'
constructor arguments, and whatever training details the caller adds). Writes are
atomic, so a crash mid-save leaves the previous model intact; reads check every array
against the architecture. This module reads and writes; building the Network from what it
reads is :func:`convnet.network.load`'s job.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytensor

from convnet.config import VERSION
from convnet.errors import ModelFileError
from convnet.files import atomic_write, write_json
from convnet.layers import LAYER_TYPES, ConvPoolLayer, Layer

if TYPE_CHECKING:
    from convnet.network import Network

FORMAT = "convnet-model"
FORMAT_VERSION = 1


def model_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(weights.npz, architecture.json) for a run folder or either file of a model."""
    path = Path(path)
    if path.suffix in (".npz", ".json"):
        return path.with_suffix(".npz"), path.with_suffix(".json")
    return path / "model.npz", path / "model.json"


def weight_names(net: Network) -> list[str]:
    return [f"layers.{i}.{p.name}" for i, layer in enumerate(net.layers) for p in layer.params]


def _versions() -> dict[str, str]:
    found = {
        "convnet": VERSION,
        "pytensor": pytensor.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        import jax

        found["jax"] = jax.__version__
    except ImportError:
        pass
    return found


def architecture(net: Network) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "convnet_version": VERSION,
        "versions": _versions(),
        "backend": {"name": net.backend.name, "device": net.backend.device},
        "mini_batch_size": net.mini_batch_size,
        "seed": net.seed,
        "layers": [layer.describe() for layer in net.layers],
    }


def save(net: Network, path: str | os.PathLike[str], **details: Any) -> Path:
    """Save ``net`` to a run folder or ``something.npz``; returns the weights path.

    ``details`` (hyper-parameters, data, history summary) go into the JSON.
    """
    weights_path, json_path = model_paths(path)
    arrays = dict(zip(weight_names(net), net.get_weights(), strict=True))
    atomic_write(weights_path, lambda h: np.savez(h, **arrays))
    write_json(json_path, architecture(net) | details)
    return weights_path


def read_architecture(json_path: Path) -> dict[str, Any]:
    try:
        arch = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise ModelFileError(
            f"{json_path}: no such model file (expected model.json beside the weights)."
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelFileError(
            f"{json_path}: not a readable JSON model description ({exc})."
        ) from None
    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        raise ModelFileError(f"{json_path}: not a convnet model (format {arch.get('format')!r}).")
    if arch.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{json_path}: model format version {arch.get('format_version')!r} written by convnet "
            f"{arch.get('convnet_version')}; this convnet reads version {FORMAT_VERSION}."
        )
    return arch


def build_layers(arch: dict[str, Any], mini_batch_size: int, source: Path) -> list[Layer]:
    layers = []
    for index, spec in enumerate(arch.get("layers", [])):
        kwargs = dict(spec)
        kind = kwargs.pop("type", None)
        if kind not in LAYER_TYPES:
            raise ModelFileError(f"{source}: layer {index} has unknown type {kind!r}.")
        if LAYER_TYPES[kind] is ConvPoolLayer:
            kwargs["image_shape"] = [mini_batch_size, *kwargs["image_shape"][1:]]
        try:
            layers.append(LAYER_TYPES[kind](**kwargs))
        except (TypeError, ValueError) as exc:
            raise ModelFileError(
                f"{source}: layer {index} ({kind}) cannot be built: {exc}"
            ) from None
    return layers


def read_weights(
    weights_path: Path, json_path: Path, names: list[str], shapes: list[tuple[int, ...]]
) -> list[np.ndarray]:
    """The arrays of ``weights_path``, checked against the architecture's ``names`` and
    ``shapes``: every array present, float32, the right shape, finite."""
    try:
        with np.load(weights_path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except FileNotFoundError:
        raise ModelFileError(f"{weights_path}: no such weights file.") from None
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{weights_path}: not a readable .npz of arrays ({exc}).") from None
    if sorted(arrays) != sorted(names):
        raise ModelFileError(
            f"{weights_path}: arrays don't match the architecture in {json_path.name}: "
            f"expected {names}. Received: {sorted(arrays)}."
        )
    return check_weights([arrays[name] for name in names], names, shapes, weights_path)


def check_weights(
    values: list[np.ndarray], names: list[str], shapes: list[tuple[int, ...]], source: Path
) -> list[np.ndarray]:
    """``values`` if each is a finite float32 array of its parameter's shape; else a
    ModelFileError naming ``source`` and the array (model files and checkpoints alike)."""
    for name, shape, value in zip(names, shapes, values, strict=True):
        if value.shape != tuple(shape) or value.dtype != np.float32:
            raise ModelFileError(
                f"{source}: {name} expected float32 {tuple(shape)}. "
                f"Received: {value.dtype} {value.shape}."
            )
        if not np.isfinite(value).all():
            raise ModelFileError(f"{source}: {name} contains NaN or inf.")
    return values
