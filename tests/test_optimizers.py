"""Update rules against independent NumPy implementations; fit, callbacks and History."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from convnet import FullyConnectedLayer, Network, SoftmaxLayer, fields, optimizers
from convnet.book import layers_for
from convnet.callbacks import Callback, CSVLogger, EarlyStopping, EtaSchedule
from convnet.checkpoint import ModelCheckpoint
from convnet.errors import ArgumentError
from convnet.history import PER_EPOCH
from tests import reference


def numpy_steps(name, params, grads_of, eta, steps, **hyper):
    """The textbook rules, written out in float64 (Lasagne's and Kingma & Ba's forms)."""
    params = [p.astype(np.float64) for p in params]
    v = [np.zeros_like(p) for p in params]
    m = [np.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        grads = grads_of(params)
        if name == "sgd":
            params = [p - eta * g for p, g in zip(params, grads, strict=True)]
        elif name in ("momentum", "nesterov"):
            mu = hyper["momentum"]
            v = [mu * vi - eta * g for vi, g in zip(v, grads, strict=True)]
            if name == "momentum":
                params = [p + vi for p, vi in zip(params, v, strict=True)]
            else:
                params = [p + mu * vi - eta * g for p, vi, g in zip(params, v, grads, strict=True)]
        else:  # adam
            b1, b2, eps = 0.9, 0.999, 1e-8
            m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads, strict=True)]
            v = [b2 * vi + (1 - b2) * g**2 for vi, g in zip(v, grads, strict=True)]
            m_hat = [mi / (1 - b1**t) for mi in m]
            v_hat = [vi / (1 - b2**t) for vi in v]
            params = [
                p - eta * mh / (np.sqrt(vh) + eps)
                for p, mh, vh in zip(params, m_hat, v_hat, strict=True)
            ]
    return params


CASES = {
    "sgd": (optimizers.SGD(0.3), {}),
    "momentum": (optimizers.SGD(0.3, momentum=0.9), {"momentum": 0.9}),
    "nesterov": (optimizers.SGD(0.3, momentum=0.9, nesterov=True), {"momentum": 0.9}),
    "adam": (optimizers.Adam(0.01), {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_update_rule_matches_numpy_through_fit(name, rng):
    """Three steps of a real network (one mini-batch per epoch, three epochs)."""
    optimizer, hyper = CASES[name]
    m = 6
    net = Network([FullyConnectedLayer(5, 4), SoftmaxLayer(4, 3)], m, seed=1)
    net.layers[1].w.set_value(rng.normal(size=(4, 3)).astype(np.float32))
    p0 = net.get_weights()
    x = rng.random((m, 5), dtype=np.float32)
    y = rng.integers(0, 3, m).astype(np.int32)
    net.fit((x, y), 3, optimizer=optimizer, verbose=False)

    def grads_of(params):
        stepped = reference.fc_softmax_sgd_step(x.astype(np.float64), y, *params, 1.0, 0.0, 1)
        return [p - s for p, s in zip(params, stepped, strict=True)]

    want = numpy_steps(name, p0, grads_of, optimizer.eta, 3, **hyper)
    for got, expected in zip(net.get_weights(), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-6)


def test_adam_state_is_its_moments_and_step_count():
    adam = optimizers.Adam()
    assert adam.state_labels(["w", "b"]) == ["m.w", "m.b", "v.w", "v.b", "t"]
    p = pt.vector("p")
    g = pt.vector("g")
    state = [pt.vector("m"), pt.vector("v"), pt.scalar("t", dtype="float32")]
    new_p, new_state = adam.step([p], [g], state, np.float32(0.1))
    fn = pytensor.function([p, g, *state], [*new_p, *new_state], mode="FAST_COMPILE")
    _, m1, v1, t1 = fn(np.ones(2), np.full(2, 2.0), np.zeros(2), np.zeros(2), np.float32(0))
    np.testing.assert_allclose(m1, 0.2, rtol=1e-5)  # (1 - beta1) * g, float32
    np.testing.assert_allclose(v1, 0.004, rtol=1e-4)  # (1 - beta2) * g**2
    assert float(t1) == 1.0


def test_bad_optimizers_and_callbacks_are_named(rng):
    with pytest.raises(ArgumentError, match=r"Adam: beta1: expected a number >= 0 and < 1"):
        optimizers.Adam(beta1=1.0)
    with pytest.raises(ArgumentError, match="nesterov=True needs a momentum"):
        optimizers.SGD(0.1, nesterov=True)
    with pytest.raises(ArgumentError, match=r"EtaSchedule: patience: expected an integer > 0"):
        EtaSchedule(0)
    with pytest.raises(ArgumentError, match=r"EarlyStopping: patience: .*Received: 2\.5"):
        EarlyStopping(2.5)
    with pytest.raises(ArgumentError, match=r"ModelCheckpoint: every: .*Received: True"):
        ModelCheckpoint(".", every=True)
    net = Network([FullyConnectedLayer(5, 4), SoftmaxLayer(4, 3)], 2, seed=0)
    data = (rng.random((4, 5), dtype=np.float32), np.zeros(4, np.int32))
    with pytest.raises(ArgumentError, match=r"optimizer: expected a convnet\.optimizers"):
        net.fit(data, 1, optimizer=0.1)
    with pytest.raises(ArgumentError, match=r"callbacks\[0\]: expected a convnet.callbacks"):
        net.fit(data, 1, optimizer=optimizers.SGD(0.1), callbacks=[print])


def test_callbacks_see_every_epoch_and_can_stop_the_run(rng, tmp_path):
    class StopAfterTwo(Callback):
        def __init__(self):
            self.events = []

        def on_train_begin(self, trainer):
            self.events.append("begin")

        def on_epoch_end(self, trainer, epoch, logs):
            self.events.append((epoch, sorted(logs)))
            if epoch == 1:
                trainer.stop("two are enough")

        def on_train_end(self, trainer):
            self.events.append("end")

    net = Network([FullyConnectedLayer(5, 4), SoftmaxLayer(4, 3)], 2, seed=0)
    x, y = rng.random((8, 5), dtype=np.float32), rng.integers(0, 3, 8).astype(np.int32)
    spy = StopAfterTwo()
    history = net.fit(
        (x, y),
        10,
        optimizer=optimizers.SGD(0.5),
        validation_data=(x, y),
        lmbda=0.1,
        callbacks=[spy, CSVLogger(tmp_path / "history.csv")],
        verbose=False,
    )
    keys = sorted([*PER_EPOCH, "improved"])
    assert spy.events == ["begin", (0, keys), (1, keys), "end"]
    assert history.epoch == [0, 1] and history.stopped == "two are enough"
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert rows[0].split(",") == list(PER_EPOCH) and len(rows) == 3
    # The validation cost: the deterministic path's log-likelihood plus the L2 term.
    accuracy, cost = net.evaluate((x, y), lmbda=0.1, n_train=8)
    assert history.validation_cost[-1] == pytest.approx(cost, rel=1e-5)
    proba = net.predict_proba(x).astype(np.float64)
    nll = -np.mean(np.log(proba[np.arange(8), y]))
    l2 = (
        0.5
        * 0.1
        / 4
        * sum(float(np.sum(w.astype(np.float64) ** 2)) for w in net.get_weights()[::2])
    )
    assert cost == pytest.approx(nll + l2, rel=1e-4)
    assert accuracy == pytest.approx(np.mean(proba.argmax(1) == y))


def test_old_histories_get_an_empty_validation_cost():
    old = {"epoch": [0, 1], "train_cost": [1.0, 0.5], "validation_accuracy": [0.5, 0.6]}
    history = fields.history(fields.Fields(old, Path("history.json")))
    assert history.validation_cost == [None, None] and history.test_accuracy == [None, None]


@pytest.mark.mnist
def test_adam_and_nesterov_train_net_a_at_least_as_well_as_the_books_sgd(mnist):
    training, _, test = mnist
    results = {}
    for name, optimizer in [
        ("sgd", optimizers.SGD(0.1)),
        ("adam", optimizers.Adam(0.001)),
        ("nesterov", optimizers.SGD(0.01, momentum=0.9, nesterov=True)),
    ]:
        net = Network(layers_for("shallow", 10), 10, seed=0)
        history = net.fit(training, 1, optimizer=optimizer, test_data=test, verbose=False)
        results[name] = history.test_accuracy[0]
    assert results["adam"] >= results["sgd"], results
    # The same effective step (eta / (1 - momentum) = 0.1), yet 0.15-0.2 pp below SGD after
    # one epoch at seeds 0-2, as PyTorch's Nesterov is from the same weights
    # (experiments.py optimizers): the method's gap at these settings, not convnet's.
    assert results["nesterov"] >= results["sgd"] - 0.005, results
