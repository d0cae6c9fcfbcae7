"""The cache of rewritten graphs: same results, keys that tell graphs apart, no damage."""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
import pytest
from pytensor.graph.basic import Apply
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.op import Op

from convnet import ConvPoolLayer, FullyConnectedLayer, Network, ReLU, SoftmaxLayer
from convnet.runtime import graph_cache

pytest.importorskip("jax")  # the cache serves the JAX mode


def _net(n_hidden: int = 16) -> Network:
    layers = [
        ConvPoolLayer(filter_shape=(4, 1, 3, 3), image_shape=(4, 1, 10, 10), activation_fn=ReLU),
        FullyConnectedLayer(4 * 4 * 4, n_hidden, ReLU, p_dropout=0.5),
        SoftmaxLayer(n_hidden, 10),
    ]
    return Network(layers, 4, backend="jax", seed=3)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((16, 100), dtype=np.float32), rng.integers(0, 10, 16).astype(np.int32)


def _train(**options) -> list[np.ndarray]:
    """Trained weights, then the node count of the compiled evaluation function."""
    net = _net()
    x, y = _data()
    net.SGD((x, y), 2, 4, 0.1, (x, y), lmbda=0.1, verbose=False, **options)
    (validation,) = net._datasets.values()
    return [*net.get_weights(), len(validation.evaluate.maker.fgraph.apply_nodes)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVNET_CACHE", str(tmp_path))
    monkeypatch.delenv("CONVNET_GRAPH_CACHE", raising=False)
    loads = []
    load = graph_cache.CachedRewriter._load

    def counting_load(self, path, fgraph):
        hit = load(self, path, fgraph)
        loads.append(hit)
        return hit

    monkeypatch.setattr(graph_cache.CachedRewriter, "_load", counting_load)
    return tmp_path / "graphs", loads


@pytest.mark.parametrize("steps_per_call", [1, 2])
def test_a_stored_graph_trains_exactly_like_a_fresh_rewrite(cache, monkeypatch, steps_per_call):
    folder, loads = cache
    first = _train(steps_per_call=steps_per_call)  # rewrites and stores
    assert loads and not any(loads)
    entries = sorted(folder.iterdir())
    assert entries
    loads.clear()
    second = _train(steps_per_call=steps_per_call)  # new objects, same structure: loads
    assert loads and all(loads)
    assert sorted(folder.iterdir()) == entries
    monkeypatch.setenv("CONVNET_GRAPH_CACHE", "0")
    uncached = _train(steps_per_call=steps_per_call)
    for a, b, c in zip(first, second, uncached, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_keys_tell_graphs_apart_and_ignore_object_identity():
    x = pt.matrix("x", dtype="float32", shape=(2, 3))

    def key(expr, inputs=(x,)):
        return graph_cache.graph_key(FunctionGraph(list(inputs), [expr], clone=True))

    assert key(pt.exp(x) * 2) == key(pt.exp(x) * 2)  # rebuilt from scratch: same key
    assert key(pt.exp(x) * 2) != key(pt.exp(x) * 3)  # a constant's value
    assert key(pt.exp(x) * 2) != key(pt.log(x) * 2)  # an op
    assert key(x.sum(axis=0)) != key(x.sum(axis=1))  # an op's parameter
    other = pt.matrix("x", dtype="float32", shape=(2, 4))
    assert key(pt.exp(other) * 2, (other,)) != key(pt.exp(x) * 2)  # an input's type


class _NoProps(Op):
    def make_node(self, x):
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = inputs[0]


def test_a_graph_with_an_op_it_cannot_read_is_not_cached():
    x = pt.vector("x")
    with pytest.raises(graph_cache.UncacheableError):
        graph_cache.graph_key(FunctionGraph([x], [_NoProps()(x)], clone=True))


def test_a_damaged_entry_is_ignored_and_replaced(cache):
    folder, loads = cache
    want = _train()
    for entry in folder.iterdir():
        entry.write_bytes(b"not a pickle")
    loads.clear()
    got = _train()
    assert loads and not any(loads)
    assert all(entry.read_bytes() != b"not a pickle" for entry in folder.iterdir())
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_cache_keeps_only_the_most_recently_used_entries(cache, monkeypatch):
    folder, _ = cache
    monkeypatch.setattr(graph_cache, "MAX_ENTRIES", 1)
    _train()  # a training and an accuracy graph: only the last one stored stays
    assert len(list(folder.iterdir())) == 1
