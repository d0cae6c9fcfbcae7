"""Network + SGD: exact steps against NumPy backprop, dropout paths, every backend alike."""

from __future__ import annotations

import numpy as np
import pytest
from pytensor.graph.traversal import ancestors

from convnet import ConvPoolLayer, FullyConnectedLayer, Network, ReLU, SoftmaxLayer
from convnet.errors import ArgumentError, DataError, ShapeError
from tests import reference
from tests.devices import device_for


def _value(param) -> np.ndarray:
    return np.asarray(param.get_value(borrow=True), dtype=np.float64)


def _data(rng, n, shape, classes=10):
    return rng.random((n, int(np.prod(shape))), dtype=np.float32), rng.integers(
        0, classes, n
    ).astype(np.int32)


def test_one_sgd_step_equals_numpy_backprop(rng):
    m, eta, lmbda = 8, 0.5, 0.1
    net = Network([FullyConnectedLayer(12, 7), SoftmaxLayer(7, 4)], m, seed=3)
    # network3 starts softmax weights at zero, which would hide the hidden layer's gradient.
    net.layers[1].w.set_value(rng.normal(size=(7, 4)).astype(np.float32))
    net.layers[1].b.set_value(rng.normal(size=4).astype(np.float32))
    before = [_value(p) for p in net.params]
    x, y = _data(rng, m, (12,), classes=4)
    net.SGD((x, y), 1, m, eta, lmbda=lmbda, verbose=False)
    want = reference.fc_softmax_sgd_step(x.astype(np.float64), y, *before, eta, lmbda, 1)
    for param, expected in zip(net.params, want, strict=True):
        np.testing.assert_allclose(_value(param), expected, rtol=2e-5, atol=2e-6)


def test_one_conv_sgd_step_equals_numpy_reference(rng):
    m, eta, lmbda = 3, 0.2, 0.5
    conv = ConvPoolLayer(filter_shape=(3, 2, 3, 3), image_shape=(m, 2, 9, 8), activation_fn=ReLU)
    net = Network([conv, SoftmaxLayer(3 * 3 * 3, 5)], m, seed=11)
    net.layers[1].w.set_value(rng.normal(size=(27, 5)).astype(np.float32))
    before = [_value(p) for p in net.params]
    x, y = _data(rng, m, (2, 9, 8), classes=5)
    net.SGD((x, y), 1, m, eta, lmbda=lmbda, verbose=False)
    want = reference.convpool_softmax_sgd_step(
        x.reshape(m, 2, 9, 8).astype(np.float64), y, *before, (2, 2), eta, lmbda, 1
    )
    for param, expected in zip(net.params, want, strict=True):
        np.testing.assert_allclose(_value(param), expected, rtol=1e-4, atol=1e-5)


def test_cost_uses_dropout_path_and_accuracy_the_deterministic_one():
    net = Network(
        [FullyConnectedLayer(6, 5, p_dropout=0.5), SoftmaxLayer(5, 3, p_dropout=0.5)], 4, seed=1
    )
    assert net.step in ancestors([net.layers[-1].cost(net)])
    assert net.step not in ancestors([net.layers[-1].accuracy(net.y)])
    assert net.step not in ancestors([net.output])


def test_accuracy_counts_every_example_including_a_ragged_tail(rng):
    net = Network([FullyConnectedLayer(10, 6), SoftmaxLayer(6, 3)], 7, seed=2)
    net.layers[1].w.set_value(rng.normal(size=(6, 3)).astype(np.float32))
    x, y = _data(rng, 2503, (10,), classes=3)  # not a multiple of any batch size used
    expected = float(np.mean(net.predict(x) == y))
    assert net.accuracy((x, y)) == pytest.approx(expected, abs=1e-12)
    assert net.predict_proba(x[:5]).shape == (5, 3)


def test_history_is_recorded_and_training_lowers_cost(rng):
    net = Network([FullyConnectedLayer(10, 8), SoftmaxLayer(8, 2)], 5, seed=4)
    x, _ = _data(rng, 200, (10,))
    y = (x[:, 0] > 0.5).astype(np.int32)
    history = net.SGD((x, y), 4, 5, 1.0, (x, y), (x, y), verbose=False)
    assert net.history is history
    assert history.epoch == [0, 1, 2, 3]
    assert history.train_cost[-1] < history.train_cost[0]
    assert all(0.0 <= a <= 1.0 for a in history.validation_accuracy)
    assert history.best_epoch is not None and history.test_accuracy_at_best is not None


def test_sgd_without_improvement_or_validation_still_finishes(rng, capsys):
    net = Network([FullyConnectedLayer(4, 3), SoftmaxLayer(3, 2)], 2, seed=0)
    x, y = _data(rng, 6, (4,), classes=2)
    history = net.SGD((x, y), 2, 2, 0.1)
    assert history.validation_accuracy == [None, None]
    assert "Finished training network." in capsys.readouterr().out


def test_sgd_rejects_bad_arguments(rng):
    net = Network([FullyConnectedLayer(4, 3), SoftmaxLayer(3, 2)], 2, seed=0)
    x, y = _data(rng, 6, (4,), classes=2)
    for kwargs, match in [
        ({"eta": 0.0}, "eta"),
        ({"eta": -1.0}, "eta"),
        ({"lmbda": -0.1}, "lmbda"),
        ({"epochs": 0}, "epochs"),
        ({"mini_batch_size": 3}, "mini_batch_size"),
    ]:
        args = {"epochs": 1, "mini_batch_size": 2, "eta": 0.1, "lmbda": 0.0} | kwargs
        with pytest.raises(ArgumentError, match=match):
            net.SGD(
                (x, y),
                args["epochs"],
                args["mini_batch_size"],
                args["eta"],
                lmbda=args["lmbda"],
                verbose=False,
            )
    with pytest.raises(ShapeError, match=r"training_data.*4 features"):
        net.SGD((x[:, :3], y), 1, 2, 0.1, verbose=False)
    with pytest.raises(DataError, match=r"labels must lie in \[0, 2\)"):
        net.SGD((x, y + 5), 1, 2, 0.1, verbose=False)
    with pytest.raises(DataError, match="NaN"):
        net.SGD((np.full_like(x, np.nan), y), 1, 2, 0.1, verbose=False)
    with pytest.raises(ArgumentError, match="at least one mini-batch"):
        net.SGD((x[:1], y[:1]), 1, 2, 0.1, verbose=False)


def _small_dropout_convnet(backend: str | None, mbs: int = 4) -> Network:
    return Network(
        [
            ConvPoolLayer(
                filter_shape=(4, 1, 3, 3), image_shape=(mbs, 1, 10, 10), activation_fn=ReLU
            ),
            FullyConnectedLayer(4 * 4 * 4, 16, ReLU, p_dropout=0.5),
            SoftmaxLayer(16, 10, p_dropout=0.2),
        ],
        mbs,
        backend=backend,
        device=device_for(backend),
        seed=2026,
    )


def test_every_backend_gives_the_same_training_steps():
    rng = np.random.default_rng(0)
    x, y = _data(rng, 12, (1, 10, 10))
    results = {}
    for backend in ("c", "numba", "jax"):
        net = _small_dropout_convnet(backend)
        net.SGD((x, y), 2, 4, 0.1, lmbda=0.1, verbose=False)
        results[backend] = [_value(p) for p in net.params]
    for backend in ("numba", "jax"):
        for got, want in zip(results[backend], results["c"], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=backend)


def test_labels_must_be_integers_and_inputs_finite(rng):
    net = Network([FullyConnectedLayer(4, 3), SoftmaxLayer(3, 2)], 2, seed=0)
    x, y = _data(rng, 6, (4,), classes=2)
    with pytest.raises(DataError, match="labels must be integers"):
        net.SGD((x, y + 0.5), 1, 2, 0.1, verbose=False)
    net.SGD((x, y.astype(np.float64)), 1, 2, 0.1, verbose=False)  # whole floats are fine
    x[3, 1] = np.inf
    with pytest.raises(DataError, match=r"NaN or inf.*example 3"):
        net.SGD((x, y), 1, 2, 0.1, verbose=False)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_micro_batches_give_the_whole_mini_batch_step(momentum):
    """Splitting a mini-batch into parts sums the same gradient, dropout masks included.

    (Dropout at 0.5 on two layers: a part drawing its mask for the wrong rows would move
    the weights far outside this tolerance.)
    """
    rng = np.random.default_rng(5)
    x, y = _data(rng, 24, (1, 10, 10))
    results = {}
    for part in (8, 4, 2):
        net = _small_dropout_convnet(None, mbs=8)  # the suite's backend
        net.SGD((x, y), 2, 8, 0.1, lmbda=0.1, verbose=False, micro_batch=part, momentum=momentum)
        results[part] = [_value(p) for p in net.params]
    for part in (4, 2):
        for got, want in zip(results[part], results[8], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"part {part}")


def test_micro_batch_must_divide_the_mini_batch(rng):
    net = Network([FullyConnectedLayer(4, 3), SoftmaxLayer(3, 2)], 4, seed=0)
    x, y = _data(rng, 8, (4,), classes=2)
    with pytest.raises(ArgumentError, match=r"micro_batch: expected a divisor of .* 4"):
        net.SGD((x, y), 1, 4, 0.1, verbose=False, micro_batch=3)
    with pytest.raises(ArgumentError, match="micro_batch"):
        net.SGD((x, y), 1, 4, 0.1, verbose=False, micro_batch=0)


def test_a_layer_in_use_by_another_network_is_refused_by_name():
    """Users build ensembles this way; it used to fail later with PyTensor's raw
    MissingInputError when the second network trained."""
    import gc

    layers = [FullyConnectedLayer(4, 3, name="hidden"), SoftmaxLayer(3, 2)]
    first = Network(layers, 2, seed=0)
    with pytest.raises(ArgumentError, match=r"layers\[0\] \(hidden\): .*another Network"):
        Network(layers, 2, seed=1)
    with pytest.raises(ArgumentError, match="appears twice"):
        twice = FullyConnectedLayer(4, 4)
        Network([twice, twice, SoftmaxLayer(4, 2)], 2)
    spare = FullyConnectedLayer(4, 3)
    with pytest.raises(ShapeError) as refused:  # the refused network stays alive in `refused`
        Network([spare, SoftmaxLayer(5, 2)], 2)
    Network([spare, SoftmaxLayer(3, 2)], 2)  # ... but it claimed nothing
    del refused
    del first
    gc.collect()
    again = Network(layers, 2, seed=1)  # once the first network is gone, the layers are free
    x = np.random.default_rng(0).random((6, 4), dtype=np.float32)
    again.SGD((x, np.arange(6, dtype=np.int32) % 2), 1, 2, 0.1, verbose=False)


def test_repeated_accuracy_on_the_same_arrays_keeps_one_copy_and_one_function(rng):
    net = Network([FullyConnectedLayer(12, 7), SoftmaxLayer(7, 4)], 4, seed=0)
    x, y = _data(rng, 50, (12,), classes=4)
    first = net.accuracy((x, y))
    for _ in range(10):
        assert net.accuracy((x, y)) == first
    assert len(net._datasets) == 1
    (kept,) = net._datasets.values()
    assert kept.evaluate is not None  # compiled once, reused
    y[:] = net.predict(x)  # the same arrays with new contents are new data
    assert net.accuracy((x, y)) == 1.0
    for k in range(8):  # many datasets: only the last few stay on the device
        net.accuracy(_data(np.random.default_rng(k), 20, (12,), classes=4))
    assert len(net._datasets) == 4


def test_summary_counts_parameters_and_multiply_adds():
    net = Network(
        [
            ConvPoolLayer(filter_shape=(20, 1, 5, 5), image_shape=(10, 1, 28, 28)),
            FullyConnectedLayer(20 * 12 * 12, 100),
            SoftmaxLayer(100, 10),
        ],
        10,
        seed=0,
    )
    text = net.summary(show=False)
    assert sum(w.size for w in net.get_weights()) == 520 + 288_100 + 1_010
    conv_macs = 20 * 25 * 24 * 24  # every filter tap at every output position
    total_macs = conv_macs + 2880 * 100 + 100 * 10
    assert f"{conv_macs:,}" in text and f"{289_630:,}" in text and f"{total_macs:,}" in text
    assert text.splitlines()[-1].startswith("total")
