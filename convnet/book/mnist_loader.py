"""The book's ``mnist_loader``: MNIST as the book's programs take it.

``load_data()`` gives ``(training, validation, test)``, each ``(images, digits)``: images
float32 rows of 784 pixels, digits int64. ``load_data_wrapper()`` gives the lists the
book's networks train on: training pairs ``(784x1 image, 10x1 one-hot vector)``,
validation and test pairs ``(784x1 image, digit)``.

The data is the book's: its ``mnist.pkl.gz`` where the book's loader looks for it
(``../data/mnist.pkl.gz``), else convnet's MNIST (``CONVNET_DATA``, then
``~/.cache/convnet/mnist``) with the pixels divided by **256**, as in the book's file
(chapter 6's loader divides by 255). The book's seeded figure data is reproduced only
with these exact values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from convnet.data import book_format, mnist

__all__ = ["BOOK_FILE", "load_data", "load_data_wrapper", "vectorized_result"]

BOOK_FILE = Path("..") / "data" / "mnist.pkl.gz"  # where the book's loader reads it
BOOK_DIVISOR = 256.0  # the book's mnist.pkl.gz holds the IDX bytes / 256 as float32

Split = tuple[np.ndarray, np.ndarray]


def load_data(filename: str | os.PathLike[str] | None = None) -> tuple[Split, Split, Split]:
    """The three splits as ``(images, digits)`` arrays (``filename``: a file or folder as
    :func:`convnet.load_mnist` takes, instead of the places above)."""
    if filename is None and BOOK_FILE.is_file():
        splits = book_format.read_pickle(BOOK_FILE)
    else:
        splits = mnist.load_mnist(filename, divisor=BOOK_DIVISOR)
    training, validation, test = ((x, y.astype(np.int64)) for x, y in splits)
    return training, validation, test


def load_data_wrapper(
    filename: str | os.PathLike[str] | None = None,
) -> tuple[list[Any], list[Any], list[Any]]:
    """The three splits as the book's lists of ``(x, y)`` pairs (see the module's text)."""
    training, validation, test = load_data(filename)
    training_data = [
        (np.reshape(x, (784, 1)), vectorized_result(y))
        for x, y in zip(training[0], training[1], strict=True)
    ]
    validation_data = [
        (np.reshape(x, (784, 1)), y) for x, y in zip(validation[0], validation[1], strict=True)
    ]
    test_data = [(np.reshape(x, (784, 1)), y) for x, y in zip(test[0], test[1], strict=True)]
    return training_data, validation_data, test_data


def vectorized_result(j: int) -> np.ndarray:
    """A 10x1 unit vector with a 1.0 in the j'th position (a digit as a desired output)."""
    e = np.zeros((10, 1))
    e[j] = 1.0
    return e
