#!/usr/bin/env python
"""The dropout net's training time per image on the 50,000-image training set and on the
book's expanded set (250,000 images), one whole epoch each, side by side on one pinned
core: whether the larger set's epoch costs more per image (it lives on the device as one
784 MB array, and each mini-batch is gathered from it).

Each repeat trains a network two epochs on each set, in alternating order, and times the
second (the first compiles); medians.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE CONVNET_DATA=../shared/data/mnist \
        python benchmarks/epoch_size.py [--repeats 3]
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
from convnet.data.expand import load_expanded  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    training, _, _ = load_mnist()
    sets = {"50,000 images": training, "250,000 images (expanded)": load_expanded(training)}
    recipe = RECIPES["dropout"]
    times: dict[str, list[float]] = {name: [] for name in sets}
    for repeat in range(args.repeats):
        order = list(sets) if repeat % 2 == 0 else list(sets)[::-1]
        for name in order:
            net = Network(layers_for("dropout", 10), 10, seed=repeat)
            history = net.SGD(sets[name], 2, 10, recipe.eta, verbose=False)
            times[name].append(history.seconds[1] / len(sets[name][0]))
    print(f"# core {CORE}; the dropout net, mini-batch 10; medians of {args.repeats}")
    print("| training set | us per image (median) | all | per image / 50,000's |")
    print("|---|---|---|---|")
    base = statistics.median(times["50,000 images"])
    for name, values in times.items():
        med = statistics.median(values)
        runs = ", ".join(f"{v * 1e6:.1f}" for v in values)
        print(f"| {name} | {med * 1e6:.1f} | {runs} | {med / base:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
