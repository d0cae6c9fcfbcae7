#!/usr/bin/env python
"""An ensemble of the book's dropout nets trained as one program against its members
trained one after another, side by side in one run.

Each repeat runs both variants, each in a new process (pinned to one core on a CPU),
alternating the order: N members of the book's dropout net (two FC1000 layers, p=0.5)
with seeds 0..N-1 train two epochs on the first ``--images`` MNIST training images
(training only), one after another with ``Network.SGD`` ("apart") and with
``fit_together`` ("together"). The timed pass is the second epoch (the first compiles);
images/s counts every member's images. The two variants must give the same first-epoch
training cost for every member (they train the same weights), or nothing is reported.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE CONVNET_DATA=../shared/data/mnist \
        python benchmarks/ensemble_program.py [--members 5] [--images 2000] [--steps 100] \
        [--device cpu|gpu] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import one_core  # beside this script

CHILD = r"""
import sys
from convnet import Network, load_mnist, optimizers
from convnet.book import RECIPES, layers_for
from convnet.network import fit_together
variant, device, members, images, steps = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
(x, y), _, _ = load_mnist()
data = (x[:images], y[:images])
recipe = RECIPES["dropout"]
nets = [Network(layers_for("dropout", 10), 10, seed=k, device=device) for k in range(members)]
options = dict(lmbda=recipe.lmbda, verbose=False, steps_per_call=steps)
if variant == "together":
    histories = fit_together(nets, data, 2, optimizer=optimizers.SGD(recipe.eta), **options)
    seconds = histories[0].seconds[1]
else:
    histories = [net.SGD(data, 2, 10, recipe.eta, **options) for net in nets]
    seconds = sum(h.seconds[1] for h in histories)
print(seconds, *(h.train_cost[0] for h in histories))
"""


def run(variant: str, device: str, members: int, images: int, steps: int) -> tuple[float, list]:
    command = [sys.executable, "-c", CHILD, variant, device, str(members), str(images), str(steps)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the {variant} run failed:\n{out.stderr[-2000:]}")
    seconds, *costs = map(float, out.stdout.split())
    return seconds, costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=100, help="steps per compiled call")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    core = one_core() if args.device == "cpu" else None
    where = f"one core ({core})" if core is not None else args.device
    print(
        f"# {args.members} dropout nets, mini-batch 10, {args.images:,} images each, "
        f"{args.steps} steps per call, {where}, {args.repeats} repeats"
    )
    times: dict[str, list[float]] = {"apart": [], "together": []}
    costs: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        order = ["apart", "together"] if repeat % 2 == 0 else ["together", "apart"]
        for variant in order:
            seconds, first_costs = run(variant, args.device, args.members, args.images, args.steps)
            times[variant].append(seconds)
            costs[variant] = first_costs
    apart, together = costs["apart"], costs["together"]
    if any(abs(a - b) > 1e-4 * abs(a) for a, b in zip(apart, together, strict=True)):
        print(f"first-epoch costs differ: apart {apart}, together {together}; not reported")
        return 1
    total = args.members * args.images
    print("| variant | s per epoch of every member (median) | images/s | all |")
    print("|---|---|---|---|")
    for variant, values in times.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {variant} | {median:.2f} | {total / median:,.0f} | {runs} |")
    speedup = statistics.median(times["apart"]) / statistics.median(times["together"])
    print(f"\ntogether: {speedup:.2f}x the images/s of apart")
    return 0


if __name__ == "__main__":
    sys.exit(main())
