"""The book's programs on convnet.

Chapter 6's networks by name (:mod:`convnet.book.chapter6`, re-exported here), and the
programs of chapters 1-5, imported as the book's scripts import them::

    from convnet.book import mnist_loader, network, network2
"""

from convnet.book.chapter6 import (
    ENSEMBLE_BOOK_ACCURACY,
    ENSEMBLE_MEMBERS,
    RECIPES,
    Recipe,
    layers_for,
)

__all__ = ["ENSEMBLE_BOOK_ACCURACY", "ENSEMBLE_MEMBERS", "RECIPES", "Recipe", "layers_for"]
