"""callbacks.py: a stateful callback is one class whose counters every checkpoint keeps
(``state_dict`` / ``load_state_dict``), so a run killed at any moment resumes exactly."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from convnet import FullyConnectedLayer, Network, SoftmaxLayer, checkpoint, optimizers
from convnet.callbacks import Callback, EtaSchedule, ReduceLROnPlateau
from convnet.errors import ArgumentError
from convnet.trainer import TrainingState


class _Logs:
    """A trainer stand-in: the eta a callback sets, and what it says."""

    def __init__(self, eta: float) -> None:
        self.state = TrainingState(eta=eta)
        self.said: list[str] = []

    def set_eta(self, eta: float) -> None:
        self.state.eta = eta

    def say(self, line: str) -> None:
        self.said.append(line)


def _etas(callback: Callback, costs: list[float], eta: float = 1.0) -> list[float]:
    trainer = _Logs(eta)
    callback.on_train_begin(trainer)
    seen = []
    for epoch, cost in enumerate(costs):
        callback.on_epoch_end(trainer, epoch, {"validation_cost": cost, "improved": False})
        seen.append(trainer.state.eta)
    return seen


def test_reduce_on_plateau_waits_patience_epochs_then_cools_down():
    plateau = ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1, min_eta=0.2)
    # improves, improves, flat, flat (-> 0.5), cooling, flat, flat (-> 0.25), ..., floor 0.2
    etas = _etas(plateau, [3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0])
    assert etas == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2, 0.2]
    assert plateau.state_dict() == {"best": -1.0, "wait": 0, "cooling": 0}


def test_reduce_on_plateau_takes_back_its_counters():
    costs = [3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    whole = _etas(ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1), costs)
    first = ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1)
    head = _etas(first, costs[:5])
    second = ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1)
    trainer = _Logs(head[-1])
    second.on_train_begin(trainer)
    second.load_state_dict(first.state_dict())
    for epoch, cost in enumerate(costs[5:], 5):
        second.on_epoch_end(trainer, epoch, {"validation_cost": cost, "improved": False})
        head.append(trainer.state.eta)
    assert head == whole


def test_reduce_on_plateau_refuses_a_monitor_the_run_does_not_log():
    with pytest.raises(ArgumentError, match="monitor: 'validation_cost' is not in this run"):
        _etas(ReduceLROnPlateau(), [None])  # type: ignore[list-item]
    with pytest.raises(ArgumentError, match="ReduceLROnPlateau: factor"):
        ReduceLROnPlateau(factor=2.0)


def test_every_stateful_callback_is_kept_under_its_own_key(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 6), dtype=np.float32), (np.arange(40) % 3).astype(np.int32)
    net = Network([FullyConnectedLayer(6, 5), SoftmaxLayer(5, 3)], 10, seed=1)
    plateaus = [ReduceLROnPlateau("train_cost", patience=1), ReduceLROnPlateau("train_cost")]
    net.fit(
        (x, y), 3, optimizer=optimizers.SGD(0.1), verbose=False,
        callbacks=[EtaSchedule(5), *plateaus, checkpoint.ModelCheckpoint(tmp_path)],
    )  # fmt: skip
    _, state, _ = checkpoint.load(tmp_path)
    assert set(state.callbacks) == {"EtaSchedule", "ReduceLROnPlateau", "ReduceLROnPlateau#2"}
    assert state.callbacks["ReduceLROnPlateau#2"] == plateaus[1].state_dict()
    assert state.callbacks["EtaSchedule"] == {"stalled": 0}  # train_cost: no "improved" run


_CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from convnet import FullyConnectedLayer, Network, SoftmaxLayer, checkpoint, optimizers
    from convnet.callbacks import Callback, ReduceLROnPlateau

    run, kill_at, where = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    class Kill(Callback):  # "after": once epoch kill_at - 1's checkpoint is written
        def on_epoch_begin(self, trainer, epoch):
            if where == "after" and epoch == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        def on_epoch_end(self, trainer, epoch, logs):  # "before": epoch kill_at's is not
            if where == "before" and epoch == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    rng = np.random.default_rng(0)
    x = rng.random((600, 20), dtype=np.float32)
    y = x[:, :10].argmax(axis=1).astype(np.int32)
    plateau = ReduceLROnPlateau("train_cost", factor=0.5, patience=2, min_delta=10.0, cooldown=1)
    save = checkpoint.ModelCheckpoint(run)
    callbacks = [save, Kill(), plateau]  # the checkpoint waits for every callback's epoch
    if checkpoint.path_in(run).exists():
        net, state, _ = checkpoint.load(run)
    else:
        net = Network([FullyConnectedLayer(20, 30), SoftmaxLayer(30, 10)], 10, seed=3)
        state = None
    net.fit((x, y), 12, optimizer=optimizers.SGD(0.5), shuffle=True, callbacks=callbacks,
            state=state, verbose=False)
    np.savez(os.path.join(run, "final.npz"), *net.get_weights(), eta=np.array(net.history.eta))
""")


def _child(run, kill_at: int, where: str) -> int:
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(run), str(kill_at), where], timeout=300
    ).returncode


def test_a_plateau_schedule_killed_with_sigkill_resumes_bit_exact(tmp_path):
    """Killed (kill -9) once just after a checkpoint and once just before one, then
    resumed: the same etas, epoch by epoch, and the same weights as a run never killed."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _child(reference, -1, "after") == 0
    # killed where the schedule's counters are not at rest: 1 epoch waited, 1 cooling
    assert _child(killed, 5, "after") == -9
    assert checkpoint.load(killed)[1].callbacks["ReduceLROnPlateau"]["wait"] == 1
    assert _child(killed, 9, "before") == -9
    assert checkpoint.load(killed)[1].callbacks["ReduceLROnPlateau"]["cooling"] == 1
    assert checkpoint.load(killed)[1].epoch == 9  # epoch 9 is trained again on resume
    assert _child(killed, -1, "after") == 0
    with np.load(reference / "final.npz") as want, np.load(killed / "final.npz") as got:
        assert len(set(want["eta"])) >= 3, "the schedule must reduce eta for this to test it"
        for name in want.files:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
