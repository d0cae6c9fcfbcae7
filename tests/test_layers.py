"""Layers: construction checks, initialisers, dropout masks, one description per layer."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from convnet import ConvPoolLayer, FullyConnectedLayer, Network, ReLU, SoftmaxLayer
from convnet.errors import ArgumentError, ShapeError
from convnet.layers import DropoutSource
from convnet.noise import hash32, hash32_numpy, uniform


def test_fc_rejects_bad_sizes_and_dropout():
    with pytest.raises(ArgumentError, match="n_in"):
        FullyConnectedLayer(0, 10)
    with pytest.raises(ArgumentError, match="p_dropout"):
        FullyConnectedLayer(10, 10, p_dropout=1.0)
    with pytest.raises(ArgumentError, match="p_dropout"):
        SoftmaxLayer(10, 10, p_dropout=-0.1)


def test_convpool_checks_channels_and_sizes():
    with pytest.raises(ShapeError, match=r"filter_shape\[1\].*expected 1"):
        ConvPoolLayer(filter_shape=(20, 3, 5, 5), image_shape=(10, 1, 28, 28))
    with pytest.raises(ShapeError, match="larger than the image"):
        ConvPoolLayer(filter_shape=(20, 1, 29, 5), image_shape=(10, 1, 28, 28))
    with pytest.raises(ArgumentError, match="poolsize"):
        ConvPoolLayer(filter_shape=(20, 1, 5, 5), image_shape=(10, 1, 28, 28), poolsize=(0, 2))


def test_network_names_both_layers_when_they_do_not_chain():
    layers = [FullyConnectedLayer(784, 100), SoftmaxLayer(30, 10)]
    with pytest.raises(
        ShapeError, match=r"layer 0 \(FullyConnectedLayer\).*100.*layer 1 \(SoftmaxLayer\).*30"
    ):
        Network(layers, 10)


def test_network_checks_conv_batch_and_conv_chain():
    conv = ConvPoolLayer(filter_shape=(20, 1, 5, 5), image_shape=(5, 1, 28, 28))
    with pytest.raises(ShapeError, match=r"image_shape\[0\].*expected 10"):
        Network([conv, FullyConnectedLayer(20 * 12 * 12, 10), SoftmaxLayer(10, 10)], 10)
    first = ConvPoolLayer(filter_shape=(20, 1, 5, 5), image_shape=(10, 1, 28, 28))
    second = ConvPoolLayer(filter_shape=(40, 10, 5, 5), image_shape=(10, 10, 12, 12))
    with pytest.raises(ShapeError, match=r"outputs \(20, 12, 12\).*expects \(10, 12, 12\)"):
        Network([first, second, SoftmaxLayer(40 * 4 * 4, 10)], 10)


def test_params_are_tagged_weights_regularizable_biases_not():
    layer = FullyConnectedLayer(4, 3)
    assert layer.params == [layer.w, layer.b]
    assert layer.get_params(regularizable=True) == [layer.w]
    conv = ConvPoolLayer(filter_shape=(2, 1, 3, 3), image_shape=(1, 1, 8, 8))
    assert conv.output_shape == (2, 3, 3) and conv.n_out == 18


def test_initialisers_follow_their_schemes():
    rng = np.random.default_rng(0)
    n3 = FullyConnectedLayer(400, 100, rng=rng).w.get_value()
    assert abs(n3.std() - np.sqrt(1 / 100)) < 0.005  # network3: 1/n_out
    default = FullyConnectedLayer(400, 100, init="default", rng=rng).w.get_value()
    assert abs(default.std() - 1 / np.sqrt(400)) < 0.003  # network2 default: 1/sqrt(n_in)
    large = FullyConnectedLayer(400, 100, init="large", rng=rng).w.get_value()
    assert abs(large.std() - 1.0) < 0.02
    conv = ConvPoolLayer(filter_shape=(40, 20, 5, 5), image_shape=(1, 20, 12, 12), rng=rng)
    assert abs(conv.w.get_value().std() - np.sqrt(4 / (40 * 25))) < 0.003
    soft = SoftmaxLayer(100, 10, rng=rng)
    assert not soft.w.get_value().any() and not soft.b.get_value().any()
    with pytest.raises(ValueError, match="init"):
        FullyConnectedLayer(4, 3, init="xavier")


def test_seed_makes_weights_repeatable():
    def make():
        return Network([FullyConnectedLayer(20, 5), SoftmaxLayer(5, 3)], 4, seed=42)

    a, b = make(), make()
    for pa, pb in zip(a.params, b.params, strict=True):
        np.testing.assert_array_equal(np.asarray(pa.get_value()), np.asarray(pb.get_value()))


def test_hash_matches_numpy_and_uniforms_are_uniform():
    x = pt.vector("x", dtype="uint64")
    values = np.arange(0, 2**32, 2**20, dtype=np.uint64)
    np.testing.assert_array_equal(
        hash32(x).eval({x: values}), hash32_numpy(values.astype(np.uint32))
    )
    step = pytensor.shared(np.int64(3))
    u = uniform((200, 500), seed=1, salt=0, step=step).eval()
    assert u.dtype == np.float32 and u.min() >= 0.0 and u.max() < 1.0
    counts, _ = np.histogram(u, bins=10, range=(0, 1))
    expected = u.size / 10
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 30  # 9 degrees of freedom: p < 0.001 above ~27.9


def test_dropout_rate_and_independence_across_layers_and_steps():
    p, shape = 0.3, (100, 1000)
    ones = pt.ones(shape, dtype="float32")
    step = pytensor.shared(np.int64(0))
    masks = [
        DropoutSource(seed=5, salt=salt, step=step, batch_size=100).drop(ones, p, 1000).eval()
        for salt in (0, 1)
    ]
    n = masks[0].size
    for mask in masks:
        kept = mask.mean()
        assert abs(kept - (1 - p)) < 4 * np.sqrt(p * (1 - p) / n)  # within 4 sigma
    assert (masks[0] != masks[1]).mean() > 0.3  # layers draw their own masks
    step.set_value(np.int64(1))
    later = DropoutSource(seed=5, salt=0, step=step, batch_size=100).drop(ones, p, 1000).eval()
    assert (later != masks[0]).mean() > 0.3  # and a new mask every step


def test_deterministic_path_has_no_dropout_and_scales_by_keep_probability():
    layer = FullyConnectedLayer(
        6, 4, activation_fn="linear", p_dropout=0.5, rng=np.random.default_rng(1)
    )
    x = pt.matrix("x", dtype="float32")
    step = pytensor.shared(np.int64(0))
    layer.set_inpt(x, x, 8, dropout=DropoutSource(3, 0, step, 8))
    value = np.ones((8, 6), np.float32)
    det = layer.output.eval({x: value})
    w, b = layer.w.get_value(), layer.b.get_value()
    np.testing.assert_allclose(det, 0.5 * value @ w + b, rtol=1e-6)
    np.testing.assert_allclose(layer.output.eval({x: value}), det)  # no randomness
    dropped = layer.output_dropout.eval({x: value})
    assert not np.allclose(dropped, det)


def test_relu_layer_and_repr():
    layer = FullyConnectedLayer(3, 2, ReLU)
    assert "activation_fn='relu'" in repr(layer)
