#!/usr/bin/env python
"""On a machine with an NVIDIA GPU: is convnet right there, and how fast against PyTorch?

1. One training step of net C on the GPU equals the same step on the CPU backend.
2. Net C at mini-batch 10 and 256: convnet (JAX on the GPU) vs PyTorch eager (CUDA),
   same weights, same data, alternating, median of repeats; the ratios.
3. Cold compile time on the GPU.

Runs on synthetic MNIST-shaped data (a GPU machine may have no MNIST); ``--device cpu``
smoke-tests this script anywhere. Launched by ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from peers import torch_run

from convnet import Network
from convnet.book import layers_for


def net_c(mbs: int, device: str, backend: str = "jax") -> Network:
    return Network(layers_for("relu", mbs), mbs, backend=backend, device=device, seed=0)


def synthetic(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32)


def step_check(device: str) -> float:
    data = synthetic(10)
    results = []
    for dev, backend in ((device, "jax"), ("cpu", "c")):
        net = net_c(10, dev, backend)
        net.SGD(data, 1, 10, 0.03, lmbda=0.1, verbose=False)
        results.append(net.get_weights())
    return max(float(np.max(np.abs(a - b))) for a, b in zip(*results, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="gpu", choices=["gpu", "cpu"])
    parser.add_argument("--images", type=int, default=20_000, help="images per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch_device = "cuda" if args.device == "gpu" else "cpu"
    if args.device == "gpu":
        print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip())

    start = time.perf_counter()
    probe = net_c(10, args.device)
    probe.SGD(synthetic(20), 1, 10, 0.03, verbose=False)
    print(
        f"compile + first epoch of net C on {probe.backend.describe()}: {time.perf_counter() - start:.1f} s"
    )
    print(f"max |GPU - CPU| after one step of net C: {step_check(args.device):.2e}")

    print(
        "| net C mini-batch | convnet images/s | PyTorch eager images/s | convnet / PyTorch time |"
    )
    print("|---|---|---|---|")
    for mbs in (10, 256):
        data = synthetic(args.images)
        ours, theirs = [], []
        for _ in range(args.repeats):
            net = net_c(mbs, args.device)
            initial = net.get_weights()
            history = net.SGD(data, 2, mbs, 0.03, lmbda=0.1, verbose=False)
            ours.append(history.seconds[1])
            seconds, _ = torch_run(net, initial, data, mbs, 0.03, 0.1, False, torch_device)
            theirs.append(seconds)
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"| {mbs} | {args.images / a:,.0f} | {args.images / b:,.0f} | {a / b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
