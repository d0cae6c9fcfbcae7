#!/usr/bin/env python
"""Compile time (cold: a new process with empty caches; warm: another new process once the
caches are filled), peak memory of a full epoch of net C, and one 10,000-image
evaluation pass.

    python benchmarks/resources.py
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from convnet import Network, load_mnist
from convnet.book import layers_for
from convnet.optimizers import SGD
from convnet.trainer import FitOptions, Trainer
t_import = time.perf_counter() - t0
(train_x, train_y), validation, test = load_mnist()

def build():
    start = time.perf_counter()
    net = Network(layers_for("relu", 10), 10, seed=0)
    tr = Trainer(net, net.to_device((train_x[:5000], train_y[:5000]), "training_data"),
                 net.to_device(validation, "validation_data"), None,
                 FitOptions(1, SGD(0.03), 0.1, verbose=False))
    fn, index, _ = tr.calls[0]
    fn(index)                                    # JAX compiles on the first call
    correct = net.evaluation_function(tr.validation)
    int(correct(np.array(0, dtype=np.int64))[0])   # and the accuracy function's first call
    return time.perf_counter() - start, net, tr

seconds, net, tr = build()
if sys.argv[1] == "epoch":
    net.SGD((train_x, train_y), 1, 10, 0.03, validation, test, lmbda=0.1, verbose=False)
data = net.to_device(test, "test_data")
net.accuracy(data)
passes = []
for _ in range(5):
    t = time.perf_counter(); net.accuracy(data); passes.append(time.perf_counter() - t)
print(json.dumps({"import": t_import, "build": seconds, "eval": sorted(passes)[2]}))
"""


def child(mode: str, cache: str) -> tuple[dict, float]:
    """Run CHILD in a new process with ``cache`` as convnet's cache folder."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    env = dict(os.environ, CONVNET_CACHE=cache)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True, env=env
    )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return json.loads(out.stdout.strip().splitlines()[-1]), max(peak, before) / 1024


def main() -> int:
    with tempfile.TemporaryDirectory() as cache:
        cold, _ = child("compile", cache)
        warm, _ = child("compile", cache)
        _, peak_mb = child("epoch", cache)
    times = {
        "import": cold["import"],
        "cold": cold["build"],
        "warm": warm["build"],
        "eval": warm["eval"],
    }
    print("| measure (net C, mini-batch 10, JAX on CPU) | value | target |")
    print("|---|---|---|")
    print(f"| import convnet | {times['import']:.1f} s | |")
    print(
        f"| cold compile, new process (train + accuracy functions, first call) | {times['cold']:.1f} s | <= 5 s |"
    )
    print(f"| warm compile, another new process, caches filled | {times['warm']:.1f} s | <= 2 s |")
    print(f"| peak RSS, full MNIST, one epoch with evaluation | {peak_mb:,.0f} MB | <= 1,500 MB |")
    print(f"| one 10,000-image evaluation pass (median of 5) | {times['eval']:.2f} s | <= 0.3 s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
