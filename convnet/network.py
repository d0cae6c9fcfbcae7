"""The book's ``Network``: a :class:`~convnet.model.Model` that trains (``fit``, network3's
``SGD``) and saves itself, and :func:`load` for a saved one."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from convnet import optimizers, serialization
from convnet.callbacks import Callback, EarlyStopping, EpochEndFunction, EtaSchedule, ProgressBar
from convnet.errors import ArgumentError, ModelFileError, ShapeError, check_number
from convnet.fields import Fields
from convnet.history import History
from convnet.lockstep import Lockstep, check_alike
from convnet.model import DeviceData, Model
from convnet.optimizers import Optimizer
from convnet.trainer import FitOptions, TogetherLoop, Trainer, TrainingState


class Network(Model):
    """network3's ``Network(layers, mini_batch_size)``, plus backend, device and seed.

    ``backend`` is "auto" | "c" | "numba" | "jax" (default: ``CONVNET_BACKEND``),
    ``device`` is "cpu" | "gpu" (default: ``CONVNET_DEVICE``). A ``seed`` re-draws every
    layer's weights from it and fixes the dropout masks, so a run is repeatable.
    ``precision`` is "tf32" | "float32" (default: ``CONVNET_PRECISION``, else tf32): how
    a GPU multiplies float32 matrices (see ``Backend.matmul_precision``). The book's
    attributes (``layers``, ``params``, ``x``, ``y``, ``output``, ``output_dropout``,
    ``mini_batch_size``) come from the model.
    """

    def save(self, path: Any, **details: Any) -> Any:
        """Save weights (``.npz``) and architecture (``.json``); see
        :func:`convnet.serialization.save`."""
        return serialization.save(self, path, **details)

    # -- training ---------------------------------------------------------------------
    def fit(
        self,
        training_data: Any,
        epochs: int,
        *,
        optimizer: Optimizer,
        validation_data: Any = None,
        test_data: Any = None,
        lmbda: float = 0.0,
        callbacks: Sequence[Callback] = (),
        shuffle: bool = False,
        verbose: bool = True,
        progress: bool | None = None,
        state: TrainingState | None = None,
        steps_per_call: int | None = None,
        micro_batch: int | None = None,
    ) -> History:
        """Train for ``epochs`` with ``optimizer`` (see :mod:`convnet.optimizers`); returns
        the History (also ``net.history``).

        ``callbacks`` (:mod:`convnet.callbacks`) run in order at each epoch's end; a
        progress bar is added on terminals (``progress=`` forces it on or off). ``state``
        resumes a checkpointed run; ``steps_per_call`` and ``micro_batch`` override the
        backend's measured choices.
        """
        options = FitOptions(
            epochs, optimizer, float(lmbda), shuffle, verbose, steps_per_call, micro_batch
        )
        return self.fit_with(
            options, training_data, validation_data, test_data,
            callbacks=callbacks, state=state, progress=progress,
        )  # fmt: skip

    def fit_with(
        self,
        options: FitOptions,
        training_data: Any,
        validation_data: Any = None,
        test_data: Any = None,
        *,
        callbacks: Sequence[Callback] = (),
        state: TrainingState | None = None,
        progress: bool | None = None,
    ) -> History:
        """:meth:`fit` with its options in one :class:`~convnet.trainer.FitOptions` (what
        the run folders pass down)."""
        train = self._training_set(training_data)
        validation, test = self._evaluation_sets(validation_data, test_data)
        show = progress if progress is not None else options.verbose and sys.stdout.isatty()
        bar = [ProgressBar()] if show else []
        trainer = Trainer(
            self, train, validation, test, options, callbacks=[*callbacks, *bar], state=state
        )
        return trainer.run()

    def _training_set(self, training_data: Any) -> DeviceData:
        train = self.to_device(training_data, "training_data", keep=False)
        if train.n < self.mini_batch_size:
            raise ArgumentError(
                f"training_data: expected at least one mini-batch ({self.mini_batch_size} "
                f"examples). Received: {train.n}."
            )
        return train

    def _evaluation_sets(
        self, validation_data: Any, test_data: Any
    ) -> tuple[DeviceData | None, DeviceData | None]:
        return (
            self.to_device(validation_data, "validation_data")
            if validation_data is not None
            else None,
            self.to_device(test_data, "test_data") if test_data is not None else None,
        )

    def SGD(  # noqa: N802 - the book's name
        self,
        training_data: Any,
        epochs: int,
        mini_batch_size: int,
        eta: float,
        validation_data: Any = None,
        test_data: Any = None,
        lmbda: float = 0.0,
        **options: Any,
    ) -> History:
        """network3's call: :meth:`fit` with ``optimizers.SGD(eta)``; returns the History.

        Keyword extras: ``momentum``, ``nesterov`` (the optimizer); ``patience`` and
        ``restore_best`` (:class:`~convnet.callbacks.EarlyStopping`), ``eta_schedule`` and
        ``min_eta_fraction`` (:class:`~convnet.callbacks.EtaSchedule`), ``on_epoch_end``
        (a function of the :class:`TrainingState`), ``callbacks``, and :meth:`fit`'s
        ``shuffle``, ``verbose``, ``progress``, ``state``, ``steps_per_call``,
        ``micro_batch``.
        """
        unknown = sorted(set(options) - SGD_OPTIONS)
        if unknown:
            raise ArgumentError(
                f"SGD: unknown option(s) {', '.join(unknown)}. "
                f"Expected some of: {', '.join(sorted(SGD_OPTIONS))}."
            )
        if mini_batch_size != self.mini_batch_size:
            raise ArgumentError(
                f"mini_batch_size: SGD must use the network's mini_batch_size: expected "
                f"{self.mini_batch_size}. Received: {mini_batch_size!r}."
            )
        check_number(eta, "eta")
        optimizer = optimizers.SGD(
            float(eta), options.pop("momentum", 0.0), options.pop("nesterov", False)
        )
        callbacks: list[Callback] = []
        schedule = options.pop("eta_schedule", None)
        if schedule is not None:
            fraction = options.pop("min_eta_fraction", 1 / 128)
            callbacks.append(EtaSchedule(schedule, min_fraction=fraction))
        options.pop("min_eta_fraction", None)
        patience, restore = options.pop("patience", None), options.pop("restore_best", None)
        if patience is not None or restore:
            callbacks.append(EarlyStopping(patience, restore if restore is not None else True))
        hook = options.pop("on_epoch_end", None)
        callbacks += [*options.pop("callbacks", ()), *([EpochEndFunction(hook)] if hook else [])]
        return self.fit(
            training_data,
            epochs,
            optimizer=optimizer,
            validation_data=validation_data,
            test_data=test_data,
            lmbda=lmbda,
            callbacks=callbacks,
            **options,
        )


def fit_together(
    nets: Sequence[Network],
    training_data: Any,
    epochs: int,
    *,
    optimizer: Optimizer,
    validation_data: Any = None,
    test_data: Any = None,
    lmbda: float = 0.0,
    callbacks: Sequence[Sequence[Callback]] | None = None,
    shuffle: bool = False,
    verbose: bool = True,
    states: Sequence[TrainingState | None] | None = None,
    steps_per_call: int | None = None,
) -> list[History]:
    """Train ``nets`` (one architecture: an ensemble's members) as one compiled program,
    as :meth:`Network.fit` would train each of them; returns their Histories.

    Every step trains all members at once (:mod:`convnet.lockstep`): member k ends with
    the weights, history and callbacks' effects that ``nets[k].fit(...)`` gives, to
    float32 rounding. ``callbacks`` and ``states`` hold one entry per network. A member
    that a callback stops keeps the weights it stopped with while the others train on.
    The JAX backend only; whole mini-batches (no micro-batches).
    """
    options = FitOptions(epochs, optimizer, float(lmbda), shuffle, verbose, steps_per_call)
    return fit_together_with(
        nets, options, training_data, validation_data, test_data,
        callbacks=callbacks, states=states,
    )  # fmt: skip


def fit_together_with(
    nets: Sequence[Network],
    options: FitOptions,
    training_data: Any,
    validation_data: Any = None,
    test_data: Any = None,
    *,
    callbacks: Sequence[Sequence[Callback]] | None = None,
    states: Sequence[TrainingState | None] | None = None,
) -> list[History]:
    """:func:`fit_together` with its options in one :class:`~convnet.trainer.FitOptions`
    (whole mini-batches: its ``micro_batch`` must be None)."""
    check_alike(nets)
    nets = list(nets)
    template, count = nets[0], len(nets)
    if template.backend.name != "jax":
        raise ArgumentError(
            f"fit_together: networks train as one program on the JAX backend only. "
            f"Received: backend {template.backend.name!r}; train them one after another."
        )
    if options.micro_batch is not None:
        raise ArgumentError("fit_together: trains whole mini-batches; micro_batch must be None.")
    for what, given in (("callbacks", callbacks), ("states", states)):
        if given is not None and len(given) != count:
            raise ArgumentError(
                f"{what}: expected one entry per network ({count}). Received: {len(given)}."
            )
    train = template._training_set(training_data)
    trainers = []
    for k, net in enumerate(nets):
        validation, test = net._evaluation_sets(validation_data, test_data)
        own = callbacks[k] if callbacks is not None else ()
        state = states[k] if states is not None else None
        label = f"[net {k}] " if count > 1 else ""
        trainer = Trainer(
            net, train, validation, test, options, callbacks=own, state=state, own_steps=False,
            label=label,
        )  # fmt: skip
        trainers.append(trainer)
    return TogetherLoop(Lockstep(nets), trainers, train).run()


SGD_OPTIONS = {
    "momentum",
    "nesterov",
    "patience",
    "restore_best",
    "eta_schedule",
    "min_eta_fraction",
    "on_epoch_end",
    "callbacks",
    "shuffle",
    "verbose",
    "progress",
    "state",
    "steps_per_call",
    "micro_batch",
}


def from_architecture(
    arch: Fields, mini_batch_size: int, *, backend: str | None, device: str | None
) -> Network:
    """The network a checked model description (model.json, or a checkpoint's) describes,
    with fresh weights; layers that don't chain name the file."""
    layers = serialization.build_layers(arch, mini_batch_size)
    try:
        return Network(
            layers,
            mini_batch_size,
            backend=backend,
            device=device,
            seed=arch.integer("seed", low=0, high=serialization.SEED_MAX),
        )
    except (ShapeError, ArgumentError) as exc:
        raise ModelFileError(
            f"{arch.source}: the saved layers don't form a network: {exc}"
        ) from None


def load(
    path: str | os.PathLike[str],
    *,
    mini_batch_size: int | None = None,
    backend: str | None = None,
    device: str | None = None,
) -> Network:
    """A model saved by :meth:`Network.save`, optionally with another mini-batch size,
    backend or device; every array is checked against the architecture first."""
    weights_path, json_path = serialization.model_paths(path)
    arch = serialization.read_architecture(json_path)
    mbs = mini_batch_size or arch.integer("mini_batch_size", low=1)
    net = from_architecture(arch, mbs, backend=backend, device=device)
    shapes = [tuple(p.type.shape) for p in net.params]
    names = serialization.weight_names(net)
    net.set_weights(serialization.read_weights(weights_path, json_path, names, shapes))
    return net
