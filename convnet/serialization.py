"""The model file format: weights as ``.npz``, architecture as JSON, never pickle.

A model is two files side by side, ``model.npz`` (flat dotted names such as
``layers.0.w``) and ``model.json`` (format version, convnet version, the layers'
constructor arguments, and whatever training details the caller adds). Writes are
atomic, so a crash mid-save leaves the previous model intact; reads check every array
against the architecture. This module reads and writes; building the Network from what it
reads is :func:`convnet.network.load`'s job.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytensor

from convnet import fields
from convnet.config import VERSION
from convnet.errors import ModelFileError
from convnet.fields import Fields
from convnet.files import atomic_write, write_json
from convnet.layers import LAYER_TYPES, ConvPoolLayer, Layer

if TYPE_CHECKING:
    from convnet.network import Network

FORMAT = "convnet-model"
FORMAT_VERSION = 1
SEED_MAX = 2**63 - 1  # seeds are stored as signed 64-bit integers by numpy


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
    arrays: dict[str, Any] = dict(zip(weight_names(net), net.get_weights(), strict=True))
    atomic_write(weights_path, lambda h: np.savez(h, **arrays))
    write_json(json_path, architecture(net) | details)
    return weights_path


def read_architecture(json_path: Path) -> Fields:
    """The model description in ``json_path``, its format and version checked."""
    arch = fields.read_json(
        json_path, "model file", hint=" A model is model.npz with model.json beside it."
    )
    check_format(arch, FORMAT, FORMAT_VERSION, "format_version")
    arch.integer("mini_batch_size", low=1)
    arch.integer("seed", low=0, high=SEED_MAX)
    return arch


def check_format(fields: Fields, name: str, version: int, version_key: str) -> None:
    """``fields`` is a ``name`` record of ``version`` (model files and checkpoints)."""
    found = fields.raw("format", optional=True)
    if found != name:
        fields.fail("format", repr(name) + " (is this a convnet file?)", found)
    found = fields.raw(version_key, optional=True)
    if found != version:
        writer = fields.raw("convnet_version", optional=True)
        fields.fail(
            version_key,
            f"{version}, the version this convnet reads (the file was written by convnet "
            f"{writer if isinstance(writer, str) else 'unknown'})",
            found,
        )


# The kind of each constructor argument a saved layer holds, checked before building it.
_FIELDS = {
    "FullyConnectedLayer": ("n_in", "n_out", "activation_fn", "p_dropout"),
    "SoftmaxLayer": ("n_in", "n_out", "p_dropout"),
    "ConvPoolLayer": ("filter_shape", "image_shape", "poolsize", "activation_fn"),
}
_LENGTHS = {"filter_shape": 4, "image_shape": 4, "poolsize": 2}


def _layer_arguments(spec: Fields, kind: str) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    for name in _FIELDS[kind]:
        if name in ("n_in", "n_out"):
            arguments[name] = spec.integer(name, low=1)
        elif name == "p_dropout":
            arguments[name] = spec.number(name, low=0, high=1)
        elif name == "activation_fn":
            arguments[name] = spec.text(name)
        else:
            arguments[name] = spec.integers(name, _LENGTHS[name])
    unknown = sorted(set(spec.value) - {"type", *_FIELDS[kind]})
    if unknown:
        spec.fail(unknown[0], f"only the fields {', '.join(_FIELDS[kind])}", "an unknown field")
    return arguments


def build_layers(arch: Fields, mini_batch_size: int) -> list[Layer]:
    """The layers ``arch`` describes, each field checked, for ``mini_batch_size``."""
    layers = []
    for index, spec in enumerate(arch.records("layers")):
        kind = spec.text("type", choices=tuple(_FIELDS))
        kwargs = _layer_arguments(spec, kind)
        if LAYER_TYPES[kind] is ConvPoolLayer:
            kwargs["image_shape"] = [mini_batch_size, *kwargs["image_shape"][1:]]
        try:
            layers.append(LAYER_TYPES[kind](**kwargs))
        except (TypeError, ValueError) as exc:
            raise ModelFileError(
                f"{arch.source}: layer {index} ({kind}) cannot be built: {exc}"
            ) from None
    return layers


def read_weights(
    weights_path: Path, json_path: Path, names: list[str], shapes: list[tuple[int, ...]]
) -> list[np.ndarray]:
    """The arrays of ``weights_path``, checked against the architecture's ``names`` and
    ``shapes``: every array present, float32, the right shape, finite."""
    arrays = fields.read_npz(weights_path, "weights file")
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
