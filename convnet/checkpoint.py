"""Checkpoints: everything a run needs to continue exactly where it stopped.

One file, ``checkpoint.npz``, written atomically (temporary file in the same folder,
fsync, ``os.replace``), so a run killed at any moment leaves either the previous or the
new checkpoint, never half of one. It holds the weights, the optimizer's state, the
best weights (for early stopping), and a JSON record: epoch, eta, each stateful
callback's ``state_dict``, the shuffling RNG's state, the
dropout step counter (the only state of convnet's counter-based dropout), the history,
the architecture and the caller's arguments. Resuming from it reproduces an
uninterrupted run bit for bit on the CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from convnet import fields, files, serialization
from convnet.callbacks import Callback
from convnet.errors import ModelFileError, check_number
from convnet.fields import Fields
from convnet.history import History
from convnet.network import Network, from_architecture
from convnet.trainer import TrainingState

FILENAME = "checkpoint.npz"
FORMAT = "convnet-checkpoint"
VERSION = 1


def path_in(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / FILENAME


def save(
    run_dir: str | os.PathLike[str],
    net: Network,
    state: TrainingState,
    arguments: dict[str, Any] | None = None,
) -> Path:
    names = serialization.weight_names(net)
    arrays: dict[str, Any] = {
        f"weights.{n}": w for n, w in zip(names, net.get_weights(), strict=True)
    }
    for name, value in zip(names, state.best_weights or [], strict=False):
        arrays[f"best.{name}"] = value
    for index, value in enumerate(state.optimizer_state or []):
        arrays[f"optimizer.{index}"] = value
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": serialization.architecture(net),
        "arguments": arguments or {},
        "epoch": state.epoch,
        "eta": state.eta,
        "callbacks": state.callbacks,
        "shuffle_rng": state.shuffle_rng,
        "step": state.step,
        "history": state.history.as_dict(),
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    target = path_in(run_dir)
    files.atomic_write(target, lambda handle: np.savez(handle, **arrays))
    return target


def _read(target: Path) -> tuple[dict[str, np.ndarray], Fields]:
    """(the checkpoint's arrays, its JSON record), the record's format checked."""
    arrays = fields.read_npz(
        target, "checkpoint file", hint=" Only a run that wrote a checkpoint can resume."
    )
    if "meta" not in arrays or arrays["meta"].dtype != np.uint8 or arrays["meta"].ndim != 1:
        raise ModelFileError(f"{target}: not a convnet checkpoint (its 'meta' record is missing).")
    meta = fields.parse_json(arrays.pop("meta").tobytes(), target, "checkpoint record")
    serialization.check_format(meta, FORMAT, VERSION, "version")
    return arrays, meta


def progress(run_dir: str | os.PathLike[str]) -> History:
    """The history of the epochs a checkpoint holds, read without building its network
    (how far an unfinished run has got)."""
    return fields.history(_read(path_in(run_dir))[1].record("history"))


def _optimizer_state(
    arrays: dict[str, np.ndarray], group: Any, target: Path
) -> list[np.ndarray] | None:
    """The optimizer's arrays in order, each finite float32 (the trainer checks their
    shapes against the optimizer's); a checkpoint of an older convnet kept SGD's momentum
    velocities as ``velocity.<weight>``."""
    count = sum(name.startswith("optimizer.") for name in arrays)
    if not count:
        return group("velocity")
    keys = [f"optimizer.{k}" for k in range(count)]
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ModelFileError(f"{target}: missing arrays {missing}.")
    values = [arrays[k] for k in keys]
    shapes = [v.shape for v in values]
    return serialization.check_weights(values, keys, shapes, target)


class ModelCheckpoint(Callback):
    """Writes ``run_dir/checkpoint.npz`` every ``every`` epochs and after the last one,
    with the run's ``arguments`` (what ``convnet train --resume`` restarts from)."""

    def __init__(
        self, run_dir: str | os.PathLike[str], every: int = 1, arguments: dict | None = None
    ):
        check_number(every, "ModelCheckpoint: every", integer=True)
        self.run_dir, self.every, self.arguments = Path(run_dir), every, arguments

    def on_epoch_done(self, trainer, epoch, logs):
        done = trainer.state.epoch
        if done % self.every == 0 or done == trainer.epochs or trainer.stopping:
            save(self.run_dir, trainer.net, trainer.state, self.arguments)


def load(
    run_dir: str | os.PathLike[str], *, backend: str | None = None, device: str | None = None
) -> tuple[Network, TrainingState, Fields]:
    """(network with its weights, training state, the arguments the run was started with),
    every field and array checked first."""
    target = path_in(run_dir)
    arrays, meta = _read(target)
    arch = meta.record("architecture")
    serialization.check_format(
        arch, serialization.FORMAT, serialization.FORMAT_VERSION, "format_version"
    )
    net = from_architecture(
        arch, arch.integer("mini_batch_size", low=1), backend=backend, device=device
    )
    names = serialization.weight_names(net)
    shapes = [tuple(p.type.shape) for p in net.params]

    def group(prefix: str) -> list[np.ndarray] | None:
        keys = [f"{prefix}.{n}" for n in names]
        if not any(k in arrays for k in keys):
            return None
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise ModelFileError(f"{target}: missing arrays {missing}.")
        return serialization.check_weights([arrays[k] for k in keys], keys, shapes, target)

    weights = group("weights")
    if weights is None:
        raise ModelFileError(f"{target}: holds no weights.")
    net.set_weights(weights)
    history = fields.history(meta.record("history"))
    epoch = meta.integer("epoch", low=0)
    if len(history.epoch) != epoch:
        meta.fail("epoch", f"{len(history.epoch)}, the epochs in its history", epoch)
    state = TrainingState(
        epoch=epoch,
        eta=meta.number("eta", low=0, above=True, high=float(np.finfo(np.float32).max)),
        callbacks=_callback_states(meta),
        shuffle_rng=_shuffle_state(meta),
        history=history,
        best_weights=group("best"),
        optimizer_state=_optimizer_state(arrays, group, target),
        step=meta.integer("step", low=0, high=2**62),
    )
    return net, state, meta.record("arguments")


def _callback_states(meta: Fields) -> dict[str, dict[str, Any]]:
    """Each stateful callback's ``state_dict`` by its key; a checkpoint of an older
    convnet kept the one counter there was (``EtaSchedule``'s) as ``schedule_stalled``."""
    if "callbacks" not in meta:
        return {"EtaSchedule": {"stalled": meta.integer("schedule_stalled", low=0)}}
    states = meta.raw("callbacks")
    if not isinstance(states, dict) or not all(isinstance(v, dict) for v in states.values()):
        meta.fail("callbacks", "a JSON object of each callback's state (JSON objects)", states)
    return states


def _shuffle_state(meta: Fields) -> dict[str, Any] | None:
    """The shuffling generator's state, checked by giving it to a generator of its kind."""
    state = meta.raw("shuffle_rng", optional=True)
    if state is None:
        return None
    try:
        np.random.default_rng().bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError):
        meta.fail("shuffle_rng", "the state of numpy's PCG64 generator", state)
    return state
