#!/usr/bin/env python
"""convnet.book.network2 against the book's algorithm as the book wrote it and against
the same algorithm vectorised in NumPy, side by side in one process on one pinned core,
float64 (convnet's faithful mode), the same weights and the same shuffles for all; also
convnet in float32 (opt-in) and on its XLA path (``CONVNET_KERNEL=0``), for comparison.

Two settings: the book's fig/overfitting.py (1,000 training images, all four monitors,
the 10,000 test images evaluated each epoch; 400 epochs) and one 50,000-image epoch of
[784, 30, 10] with the test images' accuracy. Prints each one's seconds per epoch (median
of ``--repeats`` epochs after one warm-up epoch, which for convnet holds its compile), the
400-epoch time each implies, the ratios, and whether the float64 ones gave the same
counts after the first epoch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        CONVNET_DATA=../shared/data/mnist python benchmarks/book_speed.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import one_core  # beside this script

CORE = one_core()  # before NumPy's BLAS and JAX start their threads

import numpy as np  # noqa: E402
from book_reference import PerExample, Vectorised  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from convnet.book import mnist_loader, network2  # noqa: E402


def _timed(run_epoch: Any, epochs: int) -> tuple[list[float], list[Any]]:
    times, outcomes = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        outcomes.append(run_epoch())
        times.append(time.perf_counter() - start)
    return times, outcomes


def _convnet(net: Any, training: list[Any], test: list[Any], overfitting: bool) -> Any:
    def epoch() -> Any:
        with contextlib.redirect_stdout(io.StringIO()):
            return net.SGD(
                training, 1, 10, 0.5, evaluation_data=test,
                monitor_evaluation_cost=overfitting, monitor_evaluation_accuracy=True,
                monitor_training_cost=overfitting, monitor_training_accuracy=overfitting,
            )  # fmt: skip

    return epoch


def _per_example(ref: PerExample, training: list[Any], test: list[Any], overfitting: bool):
    def epoch() -> Any:
        ref.epoch(training, 10, 0.5, 0.0)
        counts = [ref.accuracy(test)]
        if overfitting:
            ref.total_cost(test, 0.0, convert=True)
            ref.total_cost(training, 0.0)
            counts.append(ref.accuracy(training, convert=True))
        return counts

    return epoch


def _vectorised(ref: Vectorised, training: list[Any], test: list[Any], overfitting: bool):
    test_x = np.hstack([x for x, _ in test]).astype(np.float64)
    test_y = np.array([y for _, y in test])

    def epoch() -> Any:
        ref.epoch(training, 10, 0.5, 0.0)
        counts = [ref.evaluate(test_x, test_y, 0.0)[1]]
        if overfitting:
            rows = [ref.index[id(pair)] for pair in training]
            labels = np.argmax(ref.y[:, rows], axis=0)
            counts.append(ref.evaluate(ref.x[:, rows], labels, 0.0)[1])
        return counts

    return epoch


def setting(name: str, size: int, repeats: int, slow_repeats: int, overfitting: bool) -> None:
    training_all, _, test = mnist_loader.load_data_wrapper()
    results = {}
    counts = {}
    for who in (
        "book's code (per example)",
        "vectorised NumPy",
        "convnet.book (float64)",
        "convnet.book (float32, opt-in)",
        "convnet.book, XLA loop (CONVNET_KERNEL=0)",
    ):
        os.environ["CONVNET_KERNEL"] = "0" if "XLA" in who else "1"
        random.seed(12345678)
        np.random.seed(12345678)
        training = training_all[:size]
        dtype = "float32" if "float32" in who else "float64"
        net = network2.Network([784, 30, 10], cost=network2.CrossEntropyCost(), dtype=dtype)
        net.large_weight_initializer()
        if who.startswith("book"):
            run = _per_example(PerExample(net.weights, net.biases), training, test, overfitting)
            epochs = slow_repeats
        elif who.startswith("vectorised"):
            ref = Vectorised(net.weights, net.biases, training)
            run = _vectorised(ref, training, test, overfitting)
            epochs = repeats
        else:
            run = _convnet(net, training, test, overfitting)
            epochs = repeats
        (warm,), (outcome,) = _timed(run, 1)  # the counts after the first epoch
        times, _ = _timed(run, epochs)
        results[who] = (warm, statistics.median(times))
        if dtype == "float64":  # float32 rounds otherwise: its counts may differ
            counts[who] = (
                outcome if not who.startswith("convnet") else _counts(outcome, overfitting)
            )
    os.environ.pop("CONVNET_KERNEL")
    _print(name, results, counts, epochs_in_figure=400 if overfitting else 1)


def _counts(history: Any, overfitting: bool) -> list[int]:
    _, test_accuracy, _, training_accuracy = history
    return [test_accuracy[-1]] + ([training_accuracy[-1]] if overfitting else [])


def _print(name: str, results: dict, counts: dict, epochs_in_figure: int) -> None:
    print(f"\n## {name}")
    print("| implementation | first epoch (s) | s per epoch, median | x the book's code |")
    print("|---|---|---|---|")
    book = results["book's code (per example)"][1]
    for who, (warm, median) in results.items():
        print(f"| {who} | {warm:.4f} | {median:.4f} | {book / median:.1f}x |")
    ours = results["convnet.book (float64)"]
    vector = results["vectorised NumPy"][1]
    if epochs_in_figure > 1:
        total = ours[0] + ours[1] * (epochs_in_figure - 1)
        print(
            f"{epochs_in_figure} epochs: book's code {book * epochs_in_figure:.1f} s "
            f"(from its median), convnet {total:.2f} s with its first epoch's compile: "
            f"{book * epochs_in_figure / total:.1f}x"
        )
    print(f"convnet / vectorised NumPy: {vector / ours[1]:.1f}x faster per epoch")
    same = len({tuple(c) for c in counts.values()}) == 1
    # After one epoch: the 50,000-image run is the book's chaotic overfitting_full, where
    # even the book's code under two BLAS kernels parts by epoch 2 (docs/BOOK.md).
    print(f"the same counts after the first epoch: {'yes' if same else 'NO'} {counts}")


def profile(epochs: int = 20) -> None:
    """Where convnet's overfitting-settings epoch spends its time (cProfile, own time)."""
    import cProfile
    import pstats

    training_all, _, test = mnist_loader.load_data_wrapper()
    net = network2.Network([784, 30, 10], cost=network2.CrossEntropyCost())
    run = _convnet(net, training_all[:1000], test, overfitting=True)
    run()
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(lambda: [run() for _ in range(epochs)])
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = sorted(stats.items(), key=lambda item: -item[1][2])[:8]
    print(f"\n## Where an overfitting-settings epoch goes ({total / epochs * 1e3:.1f} ms)")
    for (path, line, function), (_, _, own, _, _) in rows:
        place = f"{os.path.basename(path)}:{line}({function})"
        print(f"{own / total:6.1%}  {place}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed epochs (median)")
    parser.add_argument("--slow-repeats", type=int, default=3, help="of the book's code")
    parser.add_argument("--profile", action="store_true", help="only where convnet's time goes")
    args = parser.parse_args()
    if args.profile:
        with threadpool_limits(1):
            profile()
        return
    blas = threadpool_info()[0].get("architecture") if threadpool_info() else None
    print(f"one core: {CORE}; NumPy's BLAS kernel: {blas}; threads: 1")
    with threadpool_limits(1):
        setting(
            "The overfitting settings (1,000 images, four monitors)",
            1000, args.repeats, args.slow_repeats, overfitting=True,
        )  # fmt: skip
        setting(
            "One 50,000-image epoch, test accuracy",
            50000, max(3, args.repeats // 3), args.slow_repeats, overfitting=False,
        )  # fmt: skip


if __name__ == "__main__":
    main()
