#!/usr/bin/env python
"""Net C's training step time (and ``import convnet``), this checkout against another one.

For a change that must not slow training down: each repeat runs both checkouts in new
processes (alternating which goes first), pinned to the same core, and times the second
of two epochs over the same images at mini-batch 10, with one SGD step per compiled call
(a short run) and with 100 (the book's 60-epoch runs); ``--parts import`` times the
import alone. Prints medians and the ratio this/baseline.

    git worktree add /tmp/baseline HEAD~1
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE CONVNET_DATA=../shared/data/mnist \
        python benchmarks/step_time.py --baseline /tmp/baseline
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import one_core  # beside this script

HERE = Path(__file__).resolve().parents[1]
CHILD = r"""
import sys
import convnet
from convnet import Network, load_mnist
from convnet.book import layers_for
images, steps = int(sys.argv[1]), int(sys.argv[2])
(x, y), _, _ = load_mnist()
net = Network(layers_for("relu", 10), 10, seed=0)
history = net.SGD((x[:images], y[:images]), 2, 10, 0.03, lmbda=0.1, verbose=False,
                  steps_per_call=steps)
print(convnet.__file__)
print(history.seconds[1] / (images // 10) * 1e3, history.train_cost[1])
"""


IMPORT_CHILD = r"""
import time
start = time.perf_counter()
import convnet
print(convnet.__file__)
print(time.perf_counter() - start, 0.0)
"""


def child(checkout: Path, code: str, *args: object) -> tuple[float, float]:
    """The two numbers a child prints last, after checking it imported ``checkout``."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    if env.get("CONVNET_DATA"):  # the child runs in the checkout's folder
        env["CONVNET_DATA"] = os.path.abspath(env["CONVNET_DATA"])
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=checkout,
        check=False,
    )
    if out.returncode:
        sys.exit(f"{checkout} failed:\n{out.stderr[-3000:]}")
    *_, where, numbers = out.stdout.strip().splitlines()
    if not Path(where).resolve().is_relative_to(checkout):
        sys.exit(f"{checkout}: its child imported convnet from {where}")
    first, second = (float(v) for v in numbers.split())
    return first, second


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="another checkout of convnet")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="import,steps", help="import, steps, or both")
    args = parser.parse_args(argv)
    baseline = Path(args.baseline).resolve()
    core = one_core()
    print(f"One core ({core}); net C, mini-batch 10, {args.images} images per timed epoch")
    runs = []
    if "import" in args.parts:
        runs.append(("import convnet", "s", IMPORT_CHILD, ()))
    if "steps" in args.parts:
        for steps in (1, 100):
            runs.append((f"{steps:>3} steps/call", "ms/step", CHILD, (args.images, steps)))
    for label, unit, code, child_args in runs:
        times: dict[str, list[float]] = {"this": [], "baseline": []}
        costs: dict[str, set[float]] = {"this": set(), "baseline": set()}
        for repeat in range(args.repeats):
            order = [("this", HERE), ("baseline", baseline)]
            for name, checkout in order if repeat % 2 == 0 else order[::-1]:
                value, cost = child(checkout, code, *child_args)
                times[name].append(value)
                costs[name].add(round(cost, 6))
        this, base = statistics.median(times["this"]), statistics.median(times["baseline"])
        print(
            f"{label}: this {this:.3f} {unit} {sorted(times['this'])}, baseline "
            f"{base:.3f} {unit} {sorted(times['baseline'])}: ratio {this / base:.3f}"
            + (
                f"; epoch-2 costs {sorted(costs['this'])} / {sorted(costs['baseline'])}"
                if code is CHILD
                else ""
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
