"""The networks of chapter 6, by name, with the book's hyper-parameters."""

from __future__ import annotations

from dataclasses import dataclass

from convnet.activations import ReLU, sigmoid
from convnet.layers import ConvPoolLayer, FullyConnectedLayer, Layer, SoftmaxLayer


@dataclass(frozen=True)
class Recipe:
    """A chapter-6 experiment: what to build and how the book trained it."""

    name: str
    description: str
    epochs: int
    eta: float
    lmbda: float
    expanded: bool
    book_accuracy: float  # the book's reported test accuracy


RECIPES = {
    r.name: r
    for r in [
        Recipe("shallow", "FC100 sigmoid + softmax", 60, 0.1, 0.0, False, 0.9780),
        Recipe("conv", "ConvPool20 + FC100 + softmax, sigmoid", 60, 0.1, 0.0, False, 0.9878),
        Recipe("conv2", "two ConvPools + FC100, sigmoid", 60, 0.1, 0.0, False, 0.9906),
        Recipe("relu", "two ConvPools + FC100, ReLU, L2", 60, 0.03, 0.1, False, 0.9923),
        Recipe("relu-expanded", "as relu, expanded data", 60, 0.03, 0.1, True, 0.9937),
        Recipe("relu-2fc", "as relu-expanded, two FC100", 60, 0.03, 0.1, True, 0.9943),
        Recipe(
            "dropout", "two ConvPools + 2x FC1000 dropout, expanded", 40, 0.03, 0.0, True, 0.9960
        ),
    ]
}

ENSEMBLE_MEMBERS = 5  # the book's ensemble: five dropout nets voting
ENSEMBLE_BOOK_ACCURACY = 0.9967


def _conv_pools(mbs: int, activation, count: int) -> list[Layer]:
    layers: list[Layer] = [
        ConvPoolLayer(
            image_shape=(mbs, 1, 28, 28),
            filter_shape=(20, 1, 5, 5),
            poolsize=(2, 2),
            activation_fn=activation,
        )
    ]
    if count == 2:
        layers.append(
            ConvPoolLayer(
                image_shape=(mbs, 20, 12, 12),
                filter_shape=(40, 20, 5, 5),
                poolsize=(2, 2),
                activation_fn=activation,
            )
        )
    return layers


def layers_for(name: str, mini_batch_size: int = 10) -> list[Layer]:
    """Fresh layers for the book's network ``name`` (see :data:`RECIPES`)."""
    mbs = mini_batch_size
    if name == "shallow":
        return [FullyConnectedLayer(n_in=784, n_out=100), SoftmaxLayer(n_in=100, n_out=10)]
    if name == "conv":
        return [
            *_conv_pools(mbs, sigmoid, 1),
            FullyConnectedLayer(n_in=20 * 12 * 12, n_out=100),
            SoftmaxLayer(n_in=100, n_out=10),
        ]
    if name == "conv2":
        return [
            *_conv_pools(mbs, sigmoid, 2),
            FullyConnectedLayer(n_in=40 * 4 * 4, n_out=100),
            SoftmaxLayer(n_in=100, n_out=10),
        ]
    if name in ("relu", "relu-expanded"):
        return [
            *_conv_pools(mbs, ReLU, 2),
            FullyConnectedLayer(n_in=40 * 4 * 4, n_out=100, activation_fn=ReLU),
            SoftmaxLayer(n_in=100, n_out=10),
        ]
    if name == "relu-2fc":
        return [
            *_conv_pools(mbs, ReLU, 2),
            FullyConnectedLayer(n_in=40 * 4 * 4, n_out=100, activation_fn=ReLU),
            FullyConnectedLayer(n_in=100, n_out=100, activation_fn=ReLU),
            SoftmaxLayer(n_in=100, n_out=10),
        ]
    if name == "dropout":
        return [
            *_conv_pools(mbs, ReLU, 2),
            FullyConnectedLayer(n_in=40 * 4 * 4, n_out=1000, activation_fn=ReLU, p_dropout=0.5),
            FullyConnectedLayer(n_in=1000, n_out=1000, activation_fn=ReLU, p_dropout=0.5),
            SoftmaxLayer(n_in=1000, n_out=10, p_dropout=0.5),
        ]
    raise ValueError(f"net: expected one of {', '.join(RECIPES)}. Received: {name!r}.")
