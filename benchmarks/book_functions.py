#!/usr/bin/env python
"""The book's own PyTensor function over net C, as its ``conv.py`` ``ensemble()`` builds it.

``theano.function([i], net.layers[-1].y_out, givens={net.x: test_x[i*10:(i+1)*10]})`` in
PyTensor's default mode (Numba), then called on all 1,000 test mini-batches. Each run is
a new process; "cold" runs start with empty PyTensor, Numba and convnet caches, "warm"
runs reuse the caches the previous run left. Prints seconds for building the function
plus its first call, and for the whole 10,000-image pass; the targets are <= 20 s cold and
<= 5 s warm for the first.

    CONVNET_DATA=../shared/data/mnist python benchmarks/book_functions.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import one_core  # beside this script

CHILD = r"""
import time
import numpy as np
import pytensor as theano
import pytensor.tensor as T
import convnet as network3
from convnet import ConvPoolLayer, FullyConnectedLayer, Network, ReLU, SoftmaxLayer

training_data, validation_data, test_data = network3.load_data_shared()
mini_batch_size = 10
net = Network([
    ConvPoolLayer(image_shape=(mini_batch_size, 1, 28, 28), filter_shape=(20, 1, 5, 5),
                  poolsize=(2, 2), activation_fn=ReLU),
    ConvPoolLayer(image_shape=(mini_batch_size, 20, 12, 12), filter_shape=(40, 20, 5, 5),
                  poolsize=(2, 2), activation_fn=ReLU),
    FullyConnectedLayer(n_in=40*4*4, n_out=100, activation_fn=ReLU),
    SoftmaxLayer(n_in=100, n_out=10)], mini_batch_size, seed=0)
test_x, test_y = test_data
start = time.perf_counter()
i = T.lscalar()
predictions = theano.function(
    [i], net.layers[-1].y_out,
    givens={net.x: test_x[i * mini_batch_size: (i + 1) * mini_batch_size]})
predictions(0)
first = time.perf_counter() - start
start = time.perf_counter()
votes = np.concatenate([predictions(j) for j in range(1000)])
whole = time.perf_counter() - start
assert np.array_equal(votes, net.predict(test_x.get_value())), "user function disagrees"
print(first, whole)
"""


def run_child(caches: str) -> tuple[float, float]:
    env = dict(
        os.environ,
        PYTENSOR_FLAGS=f"base_compiledir={caches}/pytensor",
        NUMBA_CACHE_DIR=f"{caches}/numba",
        CONVNET_CACHE=f"{caches}/convnet",
    )
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode:
        sys.exit(f"child failed:\n{out.stderr[-3000:]}")
    first, whole = (float(v) for v in out.stdout.strip().splitlines()[-1].split())
    return first, whole


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    core = one_core()
    print(f"One core ({core}); PyTensor's default mode; {args.repeats} cold + warm pairs")
    cold, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as caches:
            cold.append(run_child(caches))
            warm.append(run_child(caches))
    for name, runs in (("cold", cold), ("warm", warm)):
        firsts = [r[0] for r in runs]
        wholes = [r[1] for r in runs]
        print(
            f"{name}: build + first call median {statistics.median(firsts):.2f} s "
            f"(runs {', '.join(f'{v:.2f}' for v in firsts)}); the other 1,000 calls "
            f"median {statistics.median(wholes):.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
