#!/usr/bin/env python
"""A book network's training speed against the core's own limit and its peers, one run.

``--net relu`` (net C, the default) or ``--net dropout`` (the chapter's costliest row: two
ConvPools, two FC1000 layers and the softmax, each FC input dropped with p 0.5).
The floor is the net's training arithmetic (forward, weight gradients, image gradients
below the first layer, counted from the layers: net C 9.2 MFLOP per image) divided by this
core's single-thread sgemm rate, measured here (OpenBLAS, 2048^3, best of 5). Each
repeat trains 5,000 images (after a warm-up pass) in a new process per variant, pinned to
the same core, alternating the order: convnet with its fused conv-pool kernel
(``CONVNET_CONV=fused``) and with XLA's im2col formulation (``patches``), and its dense
kernel (``CONVNET_DENSE=kernel``) against XLA's product (``dot``), with the steps per
compiled call convnet picks for any run, 1-epoch or 60-epoch (100, in one XLA loop), and
with one step per call (for comparison); and PyTorch eager, torch.compile and hand-written
JAX in this process (bench.py's peers, from the same initial weights), in the same repeat:
every variant and peer runs once per repeat. Medians. As in bench.py, the figures count only if every
variant's first-pass mean training cost agrees within 2%.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE CONVNET_DATA=../shared/data/mnist \
        python benchmarks/training_floor.py [--net relu|dropout] [--mbs 10] [--repeats 3] \
        [--peers torch,torch-compile,jax]

The peers draw their own dropout masks, so for the dropout net the first-pass costs are
compared within 5% (2% for the others).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import one_core  # beside this script

CORE = one_core()
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402 - after the pinning above
from peers import jax_run, torch_run  # noqa: E402 - the peers live beside this script
from threadpoolctl import threadpool_limits  # noqa: E402

from convnet import Network, load_mnist  # noqa: E402
from convnet.book import RECIPES, layers_for  # noqa: E402

CHILD = r"""
import hashlib, sys
from convnet import Network, load_mnist
from convnet.book import RECIPES, layers_for
images, mbs, steps = map(int, sys.argv[1:4])
name = sys.argv[4] if len(sys.argv) > 4 else "relu"
lmbda = float(sys.argv[5]) if len(sys.argv) > 5 else RECIPES[name].lmbda
(x, y), _, _ = load_mnist()
net = Network(layers_for(name, mbs), mbs, seed=0)
print(net.layers[0].conv_implementation)
history = net.SGD((x[:images], y[:images]), 2, mbs, RECIPES[name].eta,
                  lmbda=lmbda, verbose=False,
                  steps_per_call=steps or None)  # 0: convnet's choice
digest = hashlib.sha256(b"".join(w.tobytes() for w in net.get_weights())).hexdigest()[:16]
print(history.seconds[1], history.train_cost[0], digest)  # the peers' cost: the first pass's
"""


def sgemm_gflops() -> float:
    """This core's single-thread sgemm rate (GFLOP/s), best of 5."""
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    best = np.inf
    with threadpool_limits(1):
        a @ a
        for _ in range(5):
            start = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best / 1e9


def training_flops_per_image(mbs: int, name: str = "relu") -> float:
    """Forward and weight-gradient multiply-adds of every layer, image gradients of all
    but the first: the net's arithmetic per training image, as FLOPs."""
    net = Network(layers_for(name, mbs), mbs, seed=0)
    adds = [layer.multiply_adds() for layer in net.layers]
    return 2.0 * (2 * sum(adds) + sum(adds[1:]))


# Refuse to time a convnet other than the checkout's (argv[1]), then hand on the rest.
CHECK_CHECKOUT = """
import os, sys, convnet
tree = sys.argv.pop(1)
if not os.path.abspath(convnet.__file__).startswith(os.path.abspath(tree) + os.sep):
    sys.exit(f"imported {convnet.__file__}, not the convnet in {tree}")
"""


def convnet_seconds(
    conv: str,
    images: int,
    mbs: int,
    steps: int,
    checkout: str | None = None,
    name: str = "relu",
    env: dict[str, str] | None = None,
    lmbda: float | None = None,
) -> tuple[float, float, str]:
    """Seconds of the child's second pass, its first pass's cost and a digest of the
    weights it ends with (equal digests: bit-identical training), with the book's lmbda
    for ``name`` unless given; with ``checkout``, of
    the convnet in that folder (``-P``: no current folder ahead of PYTHONPATH, which would
    import this folder's convnet; run from here, so relative paths such as CONVNET_DATA's
    still hold)."""
    env = dict(os.environ, CONVNET_CONV=conv, **(env or {}))
    command = [sys.executable, "-c", CHILD, str(images), str(mbs), str(steps), name]
    command += [] if lmbda is None else [str(lmbda)]
    if checkout is not None:
        env["PYTHONPATH"] = checkout
        command[1:3] = ["-P", "-c", CHECK_CHECKOUT + CHILD, checkout]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(
            f"the convnet run failed ({checkout or 'this checkout'}):\n{out.stderr[-2000:]}"
        )
    chosen, timing = out.stdout.strip().splitlines()[-2:]
    if chosen != conv:
        raise RuntimeError(f"asked for CONVNET_CONV={conv}, the network built {chosen}")
    seconds, cost, digest = timing.split()
    return float(seconds), float(cost), digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--net", default="relu", choices=("relu", "dropout"))
    parser.add_argument("--mbs", type=int, default=10)
    parser.add_argument("--images", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", default="torch,torch-compile,jax")
    args = parser.parse_args(argv)
    peers = [p for p in args.peers.split(",") if p]

    per_image = training_flops_per_image(args.mbs, args.net)
    recipe = RECIPES[args.net]
    # The core's clock drifts within a run: its sgemm rate is measured before every repeat
    # (and after the peers), and the floor is taken from the median.
    rates = [sgemm_gflops()]
    # (conv form, dense form, steps per call): convnet's choices first, then XLA's forms.
    variants = [
        ("fused", "kernel", 0),
        ("fused", "kernel", 1),
        ("fused", "dot", 0),
        ("patches", "dot", 0),
    ]
    times: dict[str, list[float]] = {}
    costs: dict[str, float] = {}
    (x, y), _, _ = load_mnist()
    data = (x[: args.images], y[: args.images])
    net = Network(layers_for(args.net, args.mbs), args.mbs, seed=0)
    initial = [np.asarray(p.get_value()).copy() for p in net.params]

    def run(what: tuple[str, str, int] | str) -> None:
        if isinstance(what, tuple):
            conv, form, steps = what
            seconds, cost, _ = convnet_seconds(
                conv, args.images, args.mbs, steps, name=args.net, env={"CONVNET_DENSE": form}
            )
            calls = "any run (its choice)" if steps == 0 else "1 step/call"
            key = f"convnet {conv} conv, {form} dense, {calls}"
        elif what == "jax":
            key = what
            seconds, cost = jax_run(net, initial, data, args.mbs, recipe.eta, recipe.lmbda)
        else:
            key = what
            compiled = what == "torch-compile"
            seconds, cost = torch_run(
                net, initial, data, args.mbs, recipe.eta, recipe.lmbda, compiled
            )
        times.setdefault(key, []).append(seconds)
        costs[key] = cost

    # Every variant and peer in every repeat, the order reversed each time: this machine's
    # speed drifts between states ~15% apart, which a block of one kind would take alone.
    for repeat in range(args.repeats):
        if repeat:
            rates.append(sgemm_gflops())
        runs: list[tuple[str, str, int] | str] = [*variants, *peers]
        for what in runs if repeat % 2 == 0 else runs[::-1]:
            run(what)
    rates.append(sgemm_gflops())
    rate = statistics.median(rates)
    floor = per_image * args.images / (rate * 1e9)
    print(
        f"# core {CORE}: single-thread sgemm {rate:.0f} GFLOP/s (median of "
        f"{', '.join(f'{r:.0f}' for r in rates)}); net {args.net} trains "
        f"{per_image / 1e6:.2f} MFLOP per image; floor {floor:.2f} s per {args.images:,} "
        f"images; mini-batch {args.mbs}; {args.repeats} repeats"
    )
    reference = costs["convnet fused conv, kernel dense, any run (its choice)"]
    within = 0.05 if args.net == "dropout" else 0.02  # the peers' own dropout masks
    disagree = [k for k, c in costs.items() if abs(c - reference) > within * abs(reference) + 1e-3]
    if disagree:
        print(f"Results withheld: first-pass costs disagree: {costs}", file=sys.stderr)
        return 1
    fastest_peer = min((statistics.median(times[p]) for p in peers), default=None)
    print(
        f"| variant | s per {args.images:,} images (median) | images/s | x floor "
        "| x fastest peer | cost |"
    )
    print("|---|---|---|---|---|---|")
    for key, values in times.items():
        med = statistics.median(values)
        versus = f"{med / fastest_peer:.2f}" if fastest_peer else "-"
        print(
            f"| {key} | {med:.3f} | {args.images / med:,.0f} | {med / floor:.2f} | {versus} "
            f"| {costs[key]:.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
