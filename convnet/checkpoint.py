"""Checkpoints: everything a run needs to continue exactly where it stopped.

One file, ``checkpoint.npz``, written atomically (temporary file in the same folder,
fsync, ``os.replace``), so a run killed at any moment leaves either the previous or the
new checkpoint, never half of one. It holds the weights, the optimizer's state, the
best weights (for early stopping), and a JSON record: epoch, eta, early-stopping
counters, the shuffling RNG's state, the dropout step counter (the only state of
convnet's counter-based dropout), the history, the architecture and the caller's
arguments. Resuming from it reproduces an uninterrupted run bit for bit on the CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from convnet import files, serialization
from convnet.callbacks import Callback
from convnet.errors import ModelFileError, check_number
from convnet.history import History
from convnet.network import Network
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
    arrays = {f"weights.{n}": w for n, w in zip(names, net.get_weights(), strict=True)}
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
        "best_score": state.best_score if np.isfinite(state.best_score) else None,
        "stalled": state.stalled,
        "schedule_stalled": state.schedule_stalled,
        "shuffle_rng": state.shuffle_rng,
        "step": state.step,
        "history": state.history.as_dict(),
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    target = path_in(run_dir)
    files.atomic_write(target, lambda handle: np.savez(handle, **arrays))
    return target


def _optimizer_state(
    arrays: dict[str, np.ndarray], group: Any, target: Path
) -> list[np.ndarray] | None:
    """The optimizer's arrays in order; a checkpoint of an older convnet kept SGD's
    momentum velocities as ``velocity.<weight>``."""
    count = sum(name.startswith("optimizer.") for name in arrays)
    if not count:
        return group("velocity")
    missing = [f"optimizer.{k}" for k in range(count) if f"optimizer.{k}" not in arrays]
    if missing:
        raise ModelFileError(f"{target}: missing arrays {missing}.")
    return [arrays[f"optimizer.{k}"] for k in range(count)]


class ModelCheckpoint(Callback):
    """Writes ``run_dir/checkpoint.npz`` every ``every`` epochs and after the last one,
    with the run's ``arguments`` (what ``convnet train --resume`` restarts from)."""

    def __init__(
        self, run_dir: str | os.PathLike[str], every: int = 1, arguments: dict | None = None
    ):
        check_number(every, "ModelCheckpoint: every", integer=True)
        self.run_dir, self.every, self.arguments = Path(run_dir), every, arguments

    def on_epoch_end(self, trainer, epoch, logs):
        done = trainer.state.epoch
        if done % self.every == 0 or done == trainer.epochs or trainer.stopping:
            save(self.run_dir, trainer.net, trainer.state, self.arguments)


def load(
    run_dir: str | os.PathLike[str], *, backend: str | None = None, device: str | None = None
) -> tuple[Network, TrainingState, dict[str, Any]]:
    """(network with its weights, training state, the arguments the run was started with)."""
    target = path_in(run_dir)
    try:
        with np.load(target, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        meta = json.loads(arrays.pop("meta").tobytes())
    except FileNotFoundError:
        raise ModelFileError(f"{target}: no checkpoint here to resume from.") from None
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{target}: not a readable convnet checkpoint ({exc}).") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ModelFileError(
            f"{target}: checkpoint format {meta.get('format')!r} version {meta.get('version')!r}; "
            f"this convnet reads {FORMAT!r} version {VERSION}."
        )
    arch = meta["architecture"]
    mbs = int(arch["mini_batch_size"])
    net = Network(
        serialization.build_layers(arch, mbs, target),
        mbs,
        backend=backend,
        device=device,
        seed=arch["seed"],
    )
    names = serialization.weight_names(net)

    def group(prefix: str) -> list[np.ndarray] | None:
        keys = [f"{prefix}.{n}" for n in names]
        if not any(k in arrays for k in keys):
            return None
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise ModelFileError(f"{target}: missing arrays {missing}.")
        return [arrays[k] for k in keys]

    weights = group("weights")
    if weights is None:
        raise ModelFileError(f"{target}: holds no weights.")
    shapes = [tuple(p.type.shape) for p in net.params]
    net.set_weights(serialization.check_weights(weights, names, shapes, target))
    best = meta["best_score"]
    state = TrainingState(
        epoch=meta["epoch"],
        eta=meta["eta"],
        best_score=-np.inf if best is None else best,
        stalled=meta["stalled"],
        schedule_stalled=meta["schedule_stalled"],
        shuffle_rng=meta["shuffle_rng"],
        history=History.from_dict(meta["history"]),
        best_weights=group("best"),
        optimizer_state=_optimizer_state(arrays, group, target),
        step=meta["step"],
    )
    return net, state, meta["arguments"]
