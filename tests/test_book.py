"""The book's chapter-6 networks on real MNIST, and its expanded data."""

from __future__ import annotations

import numpy as np
import pytest

from convnet import Network
from convnet.book import RECIPES, layers_for
from convnet.data.expand import expand, load_expanded, shift


@pytest.mark.mnist
@pytest.mark.parametrize(("name", "floor"), [("shallow", 0.90), ("relu", 0.965)])
def test_one_epoch_reaches_the_books_early_accuracy(mnist, name, floor):
    training, validation, test = mnist
    recipe = RECIPES[name]
    net = Network(layers_for(name, 10), 10, seed=0)
    history = net.SGD(
        training, 1, 10, recipe.eta, validation, test, lmbda=recipe.lmbda, verbose=False
    )
    assert history.test_accuracy[0] >= floor


def test_every_recipe_builds_a_network():
    for name in RECIPES:
        net = Network(layers_for(name, 4), 4, seed=0)
        assert net.layers[-1].n_out == 10
    with pytest.raises(ValueError, match="shallow"):
        layers_for("resnet")


def test_shift_moves_one_pixel_and_fills_zeros():
    image = np.arange(1, 785, dtype=np.float32).reshape(1, 784)
    down = shift(image, 1, 0).reshape(28, 28)
    np.testing.assert_array_equal(down[0], 0)
    np.testing.assert_array_equal(down[1:], image.reshape(28, 28)[:-1])
    left = shift(image, 0, -1).reshape(28, 28)
    np.testing.assert_array_equal(left[:, -1], 0)
    np.testing.assert_array_equal(left[:, :-1], image.reshape(28, 28)[:, 1:])


def test_expand_gives_five_times_the_data_and_caches_it(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((6, 784)).astype(np.float32), np.arange(6, dtype=np.int32)
    big_x, big_y = expand(x, y)
    assert big_x.shape == (30, 784) and sorted(big_y) == sorted(np.tile(y, 5))
    assert any(np.array_equal(row, x[0]) for row in big_x)  # originals are kept
    cache = tmp_path / "expanded.npz"
    first = load_expanded((x, y), cache)
    assert cache.is_file()
    again = load_expanded((x, y), cache)
    np.testing.assert_array_equal(first[0], again[0])
