#!/usr/bin/env python
"""Train any network of the book's chapter 6 by name, with the book's hyper-parameters.

python scripts/chapter6.py relu --epochs 1
"""

from __future__ import annotations

import argparse
import sys
import time

from convnet import Network, load_mnist
from convnet.book import RECIPES, layers_for
from convnet.data.expand import load_expanded


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("net", choices=list(RECIPES), help="which network of chapter 6")
    parser.add_argument("--epochs", type=int, help="override the book's epoch count")
    parser.add_argument("--mini-batch-size", type=int, default=10)
    parser.add_argument("--data", help="MNIST folder or mnist.pkl.gz (default: $CONVNET_DATA)")
    parser.add_argument("--backend", choices=["auto", "c", "numba", "jax"])
    parser.add_argument("--device", choices=["cpu", "gpu"])
    parser.add_argument(
        "--precision",
        choices=["float32", "tf32"],
        help="TF32 products on a GPU (default, faster) or full float32",
    )
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    recipe = RECIPES[args.net]
    epochs = args.epochs or recipe.epochs
    training, validation, test = load_mnist(args.data)
    if recipe.expanded:
        training = load_expanded(training)
    mbs = args.mini_batch_size
    print(
        f"{recipe.name}: {recipe.description}; {len(training[0]):,} training images, "
        f"{_count(epochs, 'epoch')}, eta {recipe.eta}, lmbda {recipe.lmbda}, mini-batch {mbs}"
    )
    net = Network(
        layers_for(recipe.name, mbs),
        mbs,
        backend=args.backend,
        device=args.device,
        seed=args.seed,
        precision=args.precision,
    )
    start = time.perf_counter()
    history = net.SGD(training, epochs, mbs, recipe.eta, validation, test, lmbda=recipe.lmbda)
    total = time.perf_counter() - start
    final_test = history.test_accuracy[-1]
    print(
        f"\nSummary: {recipe.name}, {_count(epochs, 'epoch')} in {total:.1f} s "
        f"({sum(history.seconds) / epochs:.1f} s/epoch training); final test accuracy "
        f"{final_test:.2%} (book, {recipe.epochs} epochs: {recipe.book_accuracy:.2%})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
