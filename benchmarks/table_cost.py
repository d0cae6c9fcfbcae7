#!/usr/bin/env python
"""The chapter-6 table's training cost from per-image training times measured now.

Each row of the table (``convnet.book.RECIPES``) trains ``--images`` MNIST images for two
epochs on one pinned core (the first compiles and warms up; the second is timed), with
convnet's choices for everything (the kernels included). A row's cost is its time per
image x the images of an epoch (250,000 for the expanded rows: the same time per image as
50,000, see ``epoch_size.py``) x its epochs x the seeds the table trains (2 per row, 5 for
the dropout net, whose five members are also the ensemble). Prints each row and the total
in core-hours, which docs/CHAPTER6.md's wall column summed to 15.5 (measured on shared
2-core machines with ``--workers 2``; these are one process on a quiet core).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE CONVNET_DATA=../shared/data/mnist \
        python benchmarks/table_cost.py [--images 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import one_core  # beside this script

CORE = one_core()

from convnet import Network, load_mnist  # noqa: E402 - after the pinning above
from convnet.book import RECIPES, layers_for  # noqa: E402

SEEDS = {"dropout": 5}  # the ensemble's five members; every other row: 2


def seconds_per_image(name: str, data: tuple, repeats: int) -> float:
    """Median over ``repeats`` fresh networks of the second epoch's seconds per image."""
    recipe = RECIPES[name]
    times = []
    for seed in range(repeats):
        net = Network(layers_for(name, 10), 10, seed=seed)
        history = net.SGD(data, 2, 10, recipe.eta, lmbda=recipe.lmbda, verbose=False)
        times.append(history.seconds[1] / len(data[0]))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    (x, y), _, _ = load_mnist()
    data = (x[: args.images], y[: args.images])
    print(f"# core {CORE}; {args.images:,} images per timed epoch; medians of {args.repeats}")
    print("| row | ms per 1,000 images | images per epoch | epochs | seeds | core-hours |")
    print("|---|---|---|---|---|---|")
    total = 0.0
    for name, recipe in RECIPES.items():
        per_image = seconds_per_image(name, data, args.repeats)
        images = 250_000 if recipe.expanded else 50_000
        seeds = SEEDS.get(name, 2)
        hours = per_image * images * recipe.epochs * seeds / 3600
        total += hours
        print(
            f"| {name} | {per_image * 1e6:.0f} | {images:,} | {recipe.epochs} | {seeds} "
            f"| {hours:.2f} |",
            flush=True,
        )
    print(f"| **the table** | | | | | **{total:.2f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
