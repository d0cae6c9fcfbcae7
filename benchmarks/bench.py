#!/usr/bin/env python
"""convnet vs PyTorch (eager and torch.compile) on the book's nets A, B, C, side by side.

Same architecture, same initial weights (copied from convnet), same mini-batches in the
same order, one core each (the process is pinned to one core; PyTorch also runs one
thread), frameworks alternated within each repeat; medians reported.
A run counts only if convnet's and PyTorch's mean training losses agree (same math, same
data), so a fast but wrong result is never reported.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench.py --quick
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import one_core  # beside this script

# One core for every framework (one thread was each peer's best at mini-batch 10), pinned
# before JAX and PyTorch start their thread pools.
CORE = one_core()
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402 - after the pinning above
from peers import jax_run, torch_run  # noqa: E402 - the peers live beside this script

from convnet import Network, load_mnist  # noqa: E402
from convnet.book import layers_for  # noqa: E402

NETS = {"A": ("shallow", 0.1, 0.0), "B": ("conv", 0.1, 0.0), "C": ("relu", 0.03, 0.1)}
EPOCH_IMAGES = 50_000


def convnet_run(name, eta, lmbda, data, mbs, seed):
    """Seconds for one pass over ``data`` (after a warm-up pass) and the mean cost.

    Steps per compiled call are convnet's own choice (the same for every run length).
    """
    net = Network(layers_for(name, mbs), mbs, seed=seed)
    initial = [np.asarray(p.get_value()).copy() for p in net.params]
    history = net.SGD(data, 2, mbs, eta, lmbda=lmbda, verbose=False)
    return history.seconds[1], history.train_cost[0], initial, net


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nets", default="A,B,C")
    parser.add_argument("--mbs", type=int, default=10)
    parser.add_argument("--images", type=int, default=EPOCH_IMAGES, help="images per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", default="torch,torch-compile,jax")
    parser.add_argument(
        "--quick", action="store_true", help="5,000 images, 1 repeat, eager peer only"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats, args.peers = 5_000, 1, "torch,jax"
    peers = [p for p in args.peers.split(",") if p]

    import torch
    from threadpoolctl import threadpool_info

    (train_x, train_y), _, _ = load_mnist()
    data = (train_x[: args.images], train_y[: args.images])
    scale = EPOCH_IMAGES / args.images
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
        f"torch {torch.__version__}, mini-batch {args.mbs}, {args.images} images per pass, {args.repeats} repeats"
    )
    print(
        "# BLAS:",
        ", ".join(
            f"{i['internal_api']} {i.get('architecture')} threads={i['num_threads']}"
            for i in threadpool_info()
        ),
        f"; pinned to CPU core {CORE}"
        if CORE is not None
        else "; not pinned (no sched_setaffinity)",
    )
    print("| net | framework | s/epoch (median) | images/s | ratio to convnet |")
    print("|---|---|---|---|---|")
    ok = True
    unknown = set(peers) - {"torch", "torch-compile", "jax"}
    if unknown:
        parser.error(f"--peers: unknown {sorted(unknown)}; choose from torch, torch-compile, jax")
    for key in args.nets.split(","):
        name, eta, lmbda = NETS[key]
        times = {f: [] for f in ["convnet", *peers]}
        for repeat in range(args.repeats):
            seconds, cost, initial, net = convnet_run(name, eta, lmbda, data, args.mbs, seed=repeat)
            times["convnet"].append(seconds * scale)
            for peer in peers:
                if peer == "jax":
                    t_seconds, t_cost = jax_run(net, initial, data, args.mbs, eta, lmbda)
                else:
                    compiled = peer == "torch-compile"
                    t_seconds, t_cost = torch_run(
                        net, initial, data, args.mbs, eta, lmbda, compiled
                    )
                times[peer].append(t_seconds * scale)
                if abs(t_cost - cost) > 0.02 * abs(cost) + 1e-3:
                    ok = False
                    print(
                        f"# MISMATCH {key} {peer}: mean loss {t_cost:.5f} vs convnet {cost:.5f}",
                        file=sys.stderr,
                    )
        base = statistics.median(times["convnet"])
        for framework, values in times.items():
            med = statistics.median(values)
            print(
                f"| {key} | {framework} | {med:.2f} | {EPOCH_IMAGES / med:,.0f} | {med / base:.2f} |"
            )
        fastest = min(statistics.median(times[p]) for p in peers)
        print(f"| {key} | **convnet / fastest peer** | **{base / fastest:.2f}** | | |")
    if not ok:
        print(
            "Results withheld: convnet and PyTorch disagree on the training loss.", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
