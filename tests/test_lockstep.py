"""Networks trained as one program (convnet.lockstep, fit_together, --together) against
the same networks trained one after another."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from convnet import Network, optimizers
from convnet.callbacks import Callback, EarlyStopping, EtaSchedule
from convnet.cli.main import main
from convnet.errors import ArgumentError, DivergenceError
from convnet.layer_spec import parse
from convnet.lockstep import Lockstep
from convnet.network import fit_together
from tests.datasets import learnable_splits
from tests.test_run_folders import _dataset

LAYERS = "conv:4:5:relu,fc:16:relu:dropout=0.3,softmax:dropout=0.2"


def _splits(n_train: int = 190) -> tuple:
    return learnable_splits(0, (n_train, 60, 60), np.int32)


def _nets(count: int, layers: str = LAYERS, backend: str = "jax") -> list[Network]:
    return [Network(parse(layers, 10), 10, backend=backend, seed=7 + k) for k in range(count)]


class StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer, epoch, logs):
        trainer.stop("stopped by the test")


def _callbacks(member: int) -> list[Callback]:
    own: list[Callback] = [EtaSchedule(1), EarlyStopping(2)]
    return [*own, StopAfterFirstEpoch()] if member == 1 else own


def _assert_same(together: list[Network], apart: list[Network]) -> None:
    for k, (a, b) in enumerate(zip(together, apart, strict=True)):
        for p, q in zip(a.get_weights(), b.get_weights(), strict=True):
            np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6, err_msg=f"member {k}")
        ha, hb = a.history, b.history
        assert ha.epoch == hb.epoch and ha.stopped == hb.stopped, f"member {k}"
        assert ha.eta == hb.eta
        np.testing.assert_allclose(ha.train_cost, hb.train_cost, rtol=1e-5)
        np.testing.assert_allclose(ha.validation_accuracy, hb.validation_accuracy, atol=1 / 60)


@pytest.mark.parametrize(("steps", "conv"), [(1, None), (4, None), (4, "patches"), (4, "native")])
def test_members_trained_as_one_program_equal_those_trained_apart(steps, conv, monkeypatch):
    """Shuffled orders, momentum, an eta schedule, early stopping and a member stopped by
    its callback after one epoch: each member ends as if it had trained alone. 19
    mini-batches in calls of 4 steps: a call for the remainder too. Each conv layer form:
    the backend's own (the CPU kernel here), and the two a GPU uses (patches, native)."""
    if conv is not None:
        monkeypatch.setenv("CONVNET_CONV", conv)
    train, validation, test = _splits()
    optimizer = optimizers.SGD(0.1, momentum=0.5)
    options = dict(validation_data=validation, test_data=test, lmbda=0.5, shuffle=True)
    together, apart = _nets(3), _nets(3)
    histories = fit_together(
        together,
        train,
        3,
        optimizer=optimizer,
        callbacks=[_callbacks(k) for k in range(3)],
        verbose=False,
        steps_per_call=steps,
        **options,
    )
    for k, net in enumerate(apart):
        net.fit(
            train,
            3,
            optimizer=optimizer,
            callbacks=_callbacks(k),
            verbose=False,
            steps_per_call=steps,
            **options,
        )
    assert [len(h.epoch) for h in histories] == [3, 1, 3]
    assert histories[0].train_cost[-1] < histories[0].train_cost[0]  # it learns
    _assert_same(together, apart)


def test_adam_state_and_a_dense_net_train_together_as_apart():
    train, validation, _ = _splits(100)
    together, apart = _nets(2, "fc:12:sigmoid,softmax"), _nets(2, "fc:12:sigmoid,softmax")
    adam = optimizers.Adam(0.01)
    fit_together(together, train, 2, optimizer=adam, validation_data=validation, verbose=False)
    for net in apart:
        net.fit(train, 2, optimizer=adam, validation_data=validation, verbose=False)
    _assert_same(together, apart)


def test_a_member_that_diverges_is_named_and_rolled_back():
    train, _, _ = _splits(100)
    nets = _nets(2, "fc:12:relu,softmax")
    before = [net.get_weights() for net in nets]
    with pytest.raises(DivergenceError, match=r"^nets\[\d\]: Training diverged at epoch 0"):
        fit_together(nets, train, 1, optimizer=optimizers.SGD(1e30), verbose=False)
    diverged = [k for k, net in enumerate(nets) if (net.history.stopped or "").startswith("div")]
    assert diverged
    for k in diverged:  # the weights from before that epoch
        for p, q in zip(nets[k].get_weights(), before[k], strict=True):
            np.testing.assert_array_equal(p, q)


def test_networks_that_cannot_share_a_program_are_refused():
    train, _, _ = _splits(100)
    sgd = optimizers.SGD(0.1)
    mixed = [*_nets(1), *_nets(1, "fc:12:relu,softmax")]
    with pytest.raises(ArgumentError, match=r"nets\[1\]: networks trained as one program need"):
        fit_together(mixed, train, 1, optimizer=sgd)
    with pytest.raises(ArgumentError, match="on the JAX backend only"):
        fit_together(_nets(2, "fc:12:relu,softmax", backend="c"), train, 1, optimizer=sgd)
    twice = _nets(1, "fc:12:relu,softmax")
    with pytest.raises(ArgumentError, match=r"nets\[1\]: the same network appears twice"):
        fit_together(twice * 2, train, 1, optimizer=sgd)
    alone = _nets(1, "fc:12:relu,softmax")[0]
    with pytest.raises(ArgumentError, match=r"nets: expected a list of networks"):
        fit_together(alone, train, 1, optimizer=sgd)
    with pytest.raises(ArgumentError, match=r"nets\[1\]: expected a convnet Network"):
        fit_together([alone, "x"], train, 1, optimizer=sgd)
    with pytest.raises(ArgumentError, match=r"callbacks: expected one entry per network \(2\)"):
        fit_together(_nets(2, "fc:12:relu,softmax"), train, 1, optimizer=sgd, callbacks=[[]])


ARGV = ["train", "--layers", LAYERS, "--epochs", "2", "--shuffle", "--quiet", "--ensemble", "2"]


def test_an_ensemble_trained_together_writes_the_members_trained_apart(tmp_path, capsys):
    data = _dataset(tmp_path / "data.npz")
    argv = [*ARGV, "--backend", "jax", "--data", str(data)]
    apart, together = tmp_path / "apart", tmp_path / "together"
    assert main([*argv, "--out", str(apart)]) == 0
    assert main([*argv, "--together", "--out", str(together)]) == 0
    for k in range(2):
        a, b = apart / f"member-{k}", together / f"member-{k}"
        assert {p.name for p in a.iterdir()} == {p.name for p in b.iterdir()}
        with np.load(a / "model.npz") as x, np.load(b / "model.npz") as y:
            for name in x.files:
                np.testing.assert_allclose(x[name], y[name], rtol=1e-5, atol=1e-6)
    votes = [json.loads((f / "ensemble.json").read_text()) for f in (apart, together)]
    np.testing.assert_allclose(votes[0]["members"], votes[1]["members"], atol=1 / 50)
    # Each member's checkpoint resumes as a single run's does: finished, nothing to do.
    assert main(["train", "--resume", str(together / "member-1")]) == 0
    assert "finished" in capsys.readouterr().out


def test_together_is_one_way_to_train_an_ensemble(tmp_path, capsys):
    data = _dataset(tmp_path / "data.npz")
    base = ["train", "--layers", "fc:8:relu,softmax", "--data", str(data), "--out"]
    assert main([*base, str(tmp_path / "a"), "--together"]) == 2
    assert "--together: trains ensemble members at once; give --ensemble N too." in (
        capsys.readouterr().err
    )
    argv = [*base, str(tmp_path / "b"), "--ensemble", "2", "--together", "--workers", "2"]
    assert main(argv) == 2
    assert "--workers and --together: choose one way" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    argv = [*base, str(tmp_path / "c"), "--ensemble", "2", "--together", "--backend", "c"]
    assert main(argv) == 2
    assert "--together: trains the members as one program on the JAX backend only. " in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "c").exists()


def test_an_ensemble_trained_together_resumes_together(tmp_path, capsys):
    """Two epochs, and one epoch then --resume --epochs 2, both as one program: the same
    members (each from its own checkpoint, all at the same epoch)."""
    data = _dataset(tmp_path / "data.npz")
    argv = [*ARGV, "--backend", "jax", "--together", "--data", str(data)]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main([*argv, "--out", str(whole)]) == 0
    one_epoch = [a if a != "2" or argv[k - 1] != "--epochs" else "1" for k, a in enumerate(argv)]
    assert main([*one_epoch, "--out", str(resumed)]) == 0
    capsys.readouterr()
    resume = ["train", "--resume", str(resumed), "--epochs", "2", "--together", "--backend", "jax"]
    assert main(resume) == 0
    assert "members [0, 1] from their checkpoints" in capsys.readouterr().out
    for k in range(2):
        with (
            np.load(whole / f"member-{k}" / "model.npz") as a,
            np.load(resumed / f"member-{k}" / "model.npz") as b,
        ):
            for name in a.files:
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"member {k} {name}")


def _dot_generals(function) -> list[str]:
    """The GEMMs of a compiled training function's program (StableHLO, as JAX lowers it)."""
    args = [storage[0] for storage in function.vm.inputs]
    args[0] = np.array(0, dtype=np.int64)
    text = function.vm.jit_fn.lower(*args).as_text()
    return [line for line in text.splitlines() if "stablehlo.dot_general" in line]


def test_the_program_is_one_batched_gemm_per_layer_and_pass():
    """Three dense nets as one program: as many GEMMs as one net's step (forward, weight
    gradients, image gradient), each batched over the three members."""
    nets = _nets(3, "fc:12:relu,softmax")
    train, _, _ = _splits(100)
    program = Lockstep(nets)
    backend = nets[0].backend
    data = nets[0].to_device(train, "train")
    orders = program.stacked([np.arange(100)] * 3, "orders")
    etas = program.stacked([np.float32(0.1)] * 3, "etas")
    sums = program.stacked([np.float32(0.0)] * 3, "sums")
    step = backend.shared(np.int64(0), "step")
    sgd = optimizers.SGD(0.1)
    together = program.train_function(data, orders, etas, 0.0, sums, step, sgd)
    alone = nets[0].train_function(
        data,
        backend.shared(np.arange(100), "order"),
        backend.shared(np.float32(0.1), "eta"),
        0.0,
        backend.shared(np.float32(0.0), "cost"),
        sgd,
    )
    batched, single = _dot_generals(together), _dot_generals(alone)
    assert len(batched) == len(single) == 5
    for line in batched:
        assert "batching_dims = [0] x [0]" in line and "tensor<3x" in line, line


def test_resume_together_of_members_at_different_epochs_is_refused_by_member(tmp_path, capsys):
    data = _dataset(tmp_path / "data.npz")
    run = tmp_path / "run"
    argv = [*ARGV, "--backend", "jax", "--data", str(data), "--epochs", "1", "--out", str(run)]
    assert main(argv) == 0
    shutil.rmtree(run / "member-1")  # as if killed before member 1 started
    (run / "ensemble.json").unlink()
    capsys.readouterr()
    resume = ["train", "--resume", str(run), "--epochs", "2", "--backend", "jax"]
    assert main([*resume, "--together"]) == 2
    assert "member 0 at epoch 1, member 1 at epoch 0" in capsys.readouterr().err
    assert main(resume) == 0  # one after another, each from where it stands
    assert (run / "ensemble.json").is_file()
