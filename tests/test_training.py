"""Training features: early stopping, the eta schedule, momentum, divergence, resume state."""

from __future__ import annotations

import numpy as np
import pytest

from convnet import FullyConnectedLayer, Network, ReLU, SoftmaxLayer
from convnet.errors import ArgumentError, DivergenceError
from tests import reference


def _net(seed=0, act="sigmoid", mbs=10):
    return Network([FullyConnectedLayer(20, 16, act), SoftmaxLayer(16, 4)], mbs, seed=seed)


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 20), dtype=np.float32)
    y = (x[:, :4].argmax(axis=1)).astype(np.int32)
    return x, y


def _adversarial(x, y):
    """Validation labels shifted by one: it gets *worse* as training learns y."""
    return x, (y + 1) % 4


def test_early_stopping_restores_the_best_epochs_weights():
    x, y = _data()
    net = _net()
    seen = {}
    history = net.SGD(
        (x, y),
        12,
        10,
        0.5,
        _adversarial(x, y),
        patience=2,
        verbose=False,
        on_epoch_end=lambda s: seen.__setitem__(s.epoch - 1, net.get_weights()),
    )
    assert history.stopped and "early stopping" in history.stopped
    assert len(history.epoch) < 12
    assert history.best_epoch != history.epoch[-1]
    for got, want in zip(net.get_weights(), seen[history.best_epoch], strict=True):
        np.testing.assert_array_equal(got, want)


def test_schedule_halves_eta_when_validation_stalls_and_stops_at_eta_over_128():
    x, y = _data()
    net = _net()
    history = net.SGD((x, y), 40, 10, 0.4, _adversarial(x, y), eta_schedule=2, verbose=False)
    # Replay the book's rule on the recorded accuracies: halve after 2 stalled epochs.
    expected, eta, best, stalled = [], 0.4, -1.0, 0
    for accuracy in history.validation_accuracy:
        expected.append(eta)
        if accuracy >= best:
            best, stalled = accuracy, 0
        else:
            stalled += 1
            if stalled == 2:
                eta, stalled = eta / 2, 0
    assert history.eta == expected
    assert eta < 0.4 / 128 and "eta/128" in history.stopped
    assert len(history.epoch) < 40


def test_momentum_matches_hand_computed_steps(rng):
    m, eta, mu = 6, 0.3, 0.9
    net = Network([FullyConnectedLayer(5, 4), SoftmaxLayer(4, 3)], m, seed=1)
    net.layers[1].w.set_value(rng.normal(size=(4, 3)).astype(np.float32))
    p0 = [np.asarray(v, np.float64) for v in net.get_weights()]
    x = rng.random((m, 5), dtype=np.float32)
    y = rng.integers(0, 3, m).astype(np.int32)
    net.SGD((x, y), 2, m, eta, momentum=mu, verbose=False)

    def grads(params):
        stepped = reference.fc_softmax_sgd_step(x.astype(np.float64), y, *params, 1.0, 0.0, 1)
        return [p - s for p, s in zip(params, stepped, strict=True)]

    v1 = [-eta * g for g in grads(p0)]
    p1 = [p + v for p, v in zip(p0, v1, strict=True)]
    v2 = [mu * v - eta * g for v, g in zip(v1, grads(p1), strict=True)]
    p2 = [p + v for p, v in zip(p1, v2, strict=True)]
    for got, want in zip(net.get_weights(), p2, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore::convnet.errors.DataWarning")  # huge inputs on purpose
def test_divergence_names_epoch_and_batch_and_keeps_last_good_weights():
    x, y = _data()
    x[137] = 3e38  # one poisoned example (near float32 max) in mini-batch 13
    net = Network([FullyConnectedLayer(20, 16, ReLU), SoftmaxLayer(16, 4)], 10, seed=0)
    before = net.get_weights()
    with pytest.raises(DivergenceError, match=r"epoch 0, mini-batch 13.*smaller eta") as info:
        net.SGD((x, y), 3, 10, 0.1, verbose=False)
    assert isinstance(info.value, FloatingPointError)
    for got, want in zip(net.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert "diverged" in net.history.stopped


def test_unknown_and_bad_options_are_named():
    x, y = _data(20)
    net = _net()
    with pytest.raises(ArgumentError, match=r"unknown option.*patiense"):
        net.SGD((x, y), 1, 10, 0.1, patiense=3)
    with pytest.raises(ArgumentError, match="momentum"):
        net.SGD((x, y), 1, 10, 0.1, momentum=1.5)


def test_shuffled_runs_repeat_exactly_with_the_same_seed():
    x, y = _data()
    runs = []
    for _ in range(2):
        net = _net(seed=5)
        net.SGD((x, y), 2, 10, 0.5, shuffle=True, verbose=False)
        runs.append(net.get_weights())
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)
    unshuffled = _net(seed=5)
    unshuffled.SGD((x, y), 2, 10, 0.5, verbose=False)
    assert not np.array_equal(unshuffled.get_weights()[0], runs[0][0])


@pytest.mark.parametrize("backend", ["jax", "c"])  # an XLA loop; calls from Python
def test_many_steps_per_call_is_bit_identical_to_one(backend):
    from convnet.trainer import chunk_size

    assert chunk_size(5000, 500) == 500 and chunk_size(20, 7) == 5 and chunk_size(23, 7) == 7
    rng = np.random.default_rng(1)
    x = rng.random((230, 20), dtype=np.float32)  # 23 mini-batches: chunks of 7 + a rest of 2
    y = (x[:, :4].argmax(axis=1)).astype(np.int32)
    results = []
    for steps in (1, 7):
        net = Network(
            [FullyConnectedLayer(20, 16, ReLU, p_dropout=0.3), SoftmaxLayer(16, 4, p_dropout=0.1)],
            10,
            backend=backend,
            seed=4,
        )
        history = net.SGD(
            (x, y), 2, 10, 0.2, momentum=0.5, shuffle=True, steps_per_call=steps, verbose=False
        )
        results.append((net.get_weights(), history.train_cost))
    (w1, cost1), (w7, cost7) = results
    assert cost1 == cost7
    for a, b in zip(w1, w7, strict=True):
        np.testing.assert_array_equal(a, b)
