#!/usr/bin/env python
"""The book's chapters 1, 3 and 5 on convnet.book: every seeded figure the book ships,
re-run and compared number by number, and the book's in-text results over several seeds.

The book's figure data (``fig/*.json``) is read from a clone of the book's repository
(mnielsen/neural-networks-and-deep-learning), given with ``--book``; none of it is kept
here. Each experiment's results are saved in docs/book/ as it ends (``run`` skips those
already there, so an interrupted run resumes), and ``report`` writes docs/BOOK.md and the
redrawn figures in docs/img/book/.

    CONVNET_DATA=../shared/data/mnist python scripts/book.py run --book ../nndl
    CONVNET_DATA=../shared/data/mnist python scripts/book.py kernels --book ../nndl
    python scripts/book.py report --book ../nndl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "book"
IMAGES = REPO / "docs" / "img" / "book"
REPORT = REPO / "docs" / "BOOK.md"
SEED = 12345678  # the book's figure scripts seed both generators with it
TOLERANCE = 1e-9  # costs: "the same" within this relative difference

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def _quiet(call: Callable[[], Any]) -> Any:
    """Run ``call`` with the book's per-epoch lines sent to docs/book/log.txt (not kept
    in git: more_data alone prints 25,000 lines)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "log.txt", "a") as log, contextlib.redirect_stdout(log):
        return call()


def _seeded(seed: int = SEED) -> tuple[list[Any], list[Any], list[Any]]:
    """Both generators seeded, then the book's data, fresh (each figure script's start)."""
    from convnet.book import mnist_loader

    random.seed(seed)
    np.random.seed(seed)
    return mnist_loader.load_data_wrapper()


# -- the book's seeded figures: its own fig/*.py scripts, run on convnet.book -----------
def python3_edits(source: str, dtype: str | None = None) -> str:
    """The mechanical edits any of the book's Python 2 figure scripts needs, and its two
    imports pointed at convnet.book (``dtype``: also ask its networks for that dtype)."""
    source = source.replace("sys.path.append('../src/')\n", "")
    source = re.sub(r"^import (mnist_loader|network2)$", r"from convnet.book import \1", source,
                    flags=re.M)  # fmt: skip
    source = source.replace("from sklearn import svm", "svm = None  # its SVMs: not run here")
    source = re.sub(r"^(\s*)print (.+)$", r"\1print(\2)", source, flags=re.M)
    source = re.sub(r"^(\s*)print$", r"\1print()", source, flags=re.M)
    source = source.replace("raw_input(", "input(").replace("xrange(", "range(")
    source = source.replace("1500000 / size", "1500000 // size")
    if dtype:
        source = source.replace("cost=network2.CrossEntropyCost())",
                                f"cost=network2.CrossEntropyCost(), dtype={dtype!r})")  # fmt: skip
    return source


def book_script(book: Path, script: str, call: str, writes: str, dtype: str | None = None):
    """Run ``call`` in the book's ``fig/<script>`` (Python-3-edited) in a scratch folder,
    as the book ran it from fig/, and return the JSON it wrote to ``writes``."""
    path = book / "fig" / script
    if not path.is_file():
        raise SystemExit(f"--book {book}: no fig/{script} there (a clone of the book's repo?)")
    module: dict[str, Any] = {"__name__": f"book_{path.stem}"}
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            exec(compile(python3_edits(path.read_text(), dtype), str(path), "exec"), module)
            eval(call, module)
            return json.loads(Path(writes).read_text())
        finally:
            os.chdir(here)


FIGURES: dict[str, tuple[str, str, str, str, bool]] = {
    # name: (the book's script, what this repo calls in it, the file it writes,
    #        what the book ran, whether the run is chaotic)
    "overfitting": ("overfitting.py", "run_network('o.json', 400, 1000, 0.0)", "o.json",
                    "1,000 images, 400 epochs", False),
    "regularized": ("overfitting.py", "run_network('o.json', 400, 1000, 0.1)", "o.json",
                    "as overfitting, lmbda 0.1", False),
    "overfitting_full": ("overfitting.py", "run_network('o.json', 30, 50000, 0.0)", "o.json",
                         "50,000 images, 30 epochs", True),
    "regularized_full": ("overfitting.py", "run_network('o.json', 30, 50000, 5.0)", "o.json",
                         "as _full, lmbda 5.0", True),
    "weight_initialization_30": ("weight_initialization.py", "run_network('w.json', 30, 0.1)",
                                 "w.json", "30 hidden, eta 0.1", False),
    "weight_initialization_100": ("weight_initialization.py", "run_network('w.json', 100, 0.1)",
                                  "w.json", "100 hidden, eta 0.1", False),
    "multiple_eta": ("multiple_eta.py", "run_networks()", "multiple_eta.json",
                     "eta 0.025, 0.25, 2.5; lmbda 5.0", True),
    "more_data": ("more_data.py", "run_networks()", "more_data.json",
                  "nine training-set sizes", False),
    "overfitting-float32": ("overfitting.py", "run_network('o.json', 400, 1000, 0.0)", "o.json",
                            "as overfitting, dtype='float32' (opt-in)", False),
}  # fmt: skip
ETAS = [0.025, 0.25, 2.5]  # multiple_eta.py's
SIZES = [100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]  # more_data.py's


# -- the book's in-text results, over several seeds -------------------------------------
def chapter1(hidden: int, seed: int) -> list[int]:
    """network.py [784, hidden, 10], eta 3.0, 30 epochs: test-set count after each."""
    from convnet.book import network

    training_data, _, test_data = _seeded(seed)
    net = network.Network([784, hidden, 10])
    counts = []
    for _ in range(30):
        net.SGD(training_data, 1, 10, 3.0)
        counts.append(net.evaluate(test_data))
    return counts


def chapter3(hidden: int, seed: int, eta: float, lmbda: float, epochs: int, on: str) -> list[int]:
    """network2, cross-entropy, large weights: the evaluation set's count after each epoch."""
    from convnet.book import network2

    training_data, validation_data, test_data = _seeded(seed)
    net = network2.Network([784, hidden, 10], cost=network2.CrossEntropyCost)
    net.large_weight_initializer()
    evaluation = validation_data if on == "validation" else test_data
    return net.SGD(training_data, epochs, 10, eta, lmbda=lmbda, evaluation_data=evaluation,
                   monitor_evaluation_accuracy=True)[1]  # fmt: skip


HEADLINES: dict[str, tuple[Callable[[int], list[int]], str, float]] = {
    # name: (run for a seed, the book's setting, the book's figure in %)
    "ch1-30": (lambda s: chapter1(30, s), "ch. 1: network.py, 30 hidden, eta 3.0; test", 95.42),
    "ch1-100": (lambda s: chapter1(100, s), "ch. 1: 100 hidden; test", 96.59),
    "ch3-ce-30": (
        lambda s: chapter3(30, s, 0.5, 0.0, 30, "test"),
        "ch. 3: cross-entropy, 30 hidden, eta 0.5; test",
        95.49,
    ),
    "ch3-ce-100": (
        lambda s: chapter3(100, s, 0.5, 0.0, 30, "test"),
        "ch. 3: cross-entropy, 100 hidden; test",
        96.82,
    ),
    "ch3-l2-30": (
        lambda s: chapter3(30, s, 0.5, 5.0, 30, "test"),
        "ch. 3: L2 lmbda 5.0, 30 hidden; test",
        96.49,
    ),
    "ch3-l2-100": (
        lambda s: chapter3(100, s, 0.5, 5.0, 30, "validation"),
        "ch. 3: L2 lmbda 5.0, 100 hidden; validation",
        97.92,
    ),
    "ch3-l2-100-eta0.1": (
        lambda s: chapter3(100, s, 0.1, 5.0, 60, "validation"),
        "ch. 3: 100 hidden, eta 0.1, lmbda 5.0, 60 epochs; validation",
        98.04,
    ),
}
SEEDS = (1, 2, 3, 4, 5)


def _save(name: str, value: Any, seconds: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    record = {"name": name, "value": value, "seconds": round(seconds, 2), "commit": commit}
    tmp = RESULTS / f".{name}.json.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, RESULTS / f"{name}.json")


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run(names: list[str], book: Path | None) -> None:
    jobs: dict[str, Callable[[], Any]] = {}
    for name, (script, call, writes, _, _) in FIGURES.items():
        dtype = name.split("-")[1] if "-" in name else None
        jobs[name] = (lambda *a: lambda: book_script(*a))(book, script, call, writes, dtype)
    for name, (make, _, _) in HEADLINES.items():
        for seed in SEEDS:
            jobs[f"{name}-seed{seed}"] = (lambda m, s: lambda: m(s))(make, seed)
    for name, job in jobs.items():
        if (names and not any(name.startswith(n) for n in names)) or _load(name):
            continue
        if name in FIGURES and book is None:
            raise SystemExit("run: the figures run the book's own scripts: give --book PATH")
        start = time.perf_counter()
        value = _quiet(job)
        _save(name, value, time.perf_counter() - start)
        print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)


# -- the book's own arithmetic on the chaotic runs, under two BLAS kernels ---------------
CHAOTIC = {"overfitting_full": 0.0, "regularized_full": 5.0, "multiple_eta-2.5": 5.0}
KERNEL_EPOCHS = 30


def _per_example(name: str) -> dict[str, list[Any]]:
    """The book's algorithm, one example at a time (benchmarks/book_reference.py), from
    the seeded start of ``name``: its four monitors per epoch (the training cost alone
    for the eta 2.5 run)."""
    from book_reference import PerExample

    from convnet.book import network2, shuffle

    training_data, validation_data, test_data = _seeded()
    if name.startswith("multiple_eta"):
        for _ in ETAS[:2]:  # replay the two runs before it: their draws and shuffles
            network2.Network([784, 30, 10])
            for _ in range(30):
                shuffle.shuffle(training_data)
        net = network2.Network([784, 30, 10])
        eta = 2.5
    else:
        net = network2.Network([784, 30, 10], cost=network2.CrossEntropyCost())
        net.large_weight_initializer()
        eta = 0.5
    lmbda = CHAOTIC[name]
    ref = PerExample(net.weights, net.biases)
    series: dict[str, list[Any]] = {"test_cost": [], "test_accuracy": [], "training_cost": []}
    series["training_accuracy"] = []
    for _ in range(KERNEL_EPOCHS):
        ref.epoch(training_data, 10, eta, lmbda)
        series["training_cost"].append(ref.total_cost(training_data, lmbda))
        if name.startswith("multiple_eta"):
            continue
        series["training_accuracy"].append(ref.accuracy(training_data, convert=True))
        series["test_cost"].append(ref.total_cost(test_data, lmbda, convert=True))
        series["test_accuracy"].append(ref.accuracy(test_data))
    del validation_data
    return series


def kernels(coretypes: list[str]) -> None:
    """Each chaotic run with the book's algorithm under each OpenBLAS kernel (a process
    each: the kernel is chosen when NumPy loads)."""
    for name in CHAOTIC:
        for core in coretypes:
            key = f"kernels-{name}-{core}"
            if _load(key):
                continue
            env = {**os.environ, "OPENBLAS_CORETYPE": core, "OPENBLAS_NUM_THREADS": "1"}
            env.pop("OPENBLAS_L2_SIZE", None)
            start = time.perf_counter()
            subprocess.run([sys.executable, __file__, "_kernel", name, core], env=env, check=True)
            print(f"{key}: {time.perf_counter() - start:.1f} s", flush=True)


def _kernel_child(name: str, core: str) -> None:
    from threadpoolctl import threadpool_info

    start = time.perf_counter()
    series = _per_example(name)
    used = threadpool_info()[0].get("architecture") if threadpool_info() else None
    _save(f"kernels-{name}-{core}", {"kernel": used, **series}, time.perf_counter() - start)


# -- the report ----------------------------------------------------------------------------
def _compare(ours: list[Any], book: list[Any]) -> dict[str, Any]:
    """Identical integers, and costs within TOLERANCE, of two series; the first epoch
    where they part."""
    if not book:
        return {"n": 0}
    ours_a, book_a = np.array(ours, dtype=float), np.array(book, dtype=float)
    integer = all(isinstance(v, int) for v in book)
    close = np.abs(ours_a - book_a) <= TOLERANCE * np.abs(book_a)
    same = ours_a == book_a if integer else close
    relative = np.abs(ours_a - book_a) / np.maximum(np.abs(book_a), 1e-300)
    parted = int(np.argmin(same)) if not same.all() else None
    return {
        "n": len(book),
        "same": int(same.sum()),
        "integer": integer,
        "max_relative": float(relative.max()),
        "parted": parted,
    }


def _series(name: str, value: Any) -> dict[str, list[Any]]:
    """A figure's result as named series, in the book's JSON layout."""
    labels = ["evaluation cost", "evaluation accuracy", "training cost", "training accuracy"]
    if name in ("overfitting", "regularized", "overfitting_full", "regularized_full"):
        labels = ["test cost", "test accuracy", "training cost", "training accuracy"]
        return dict(zip(labels, value, strict=True))
    if name.startswith("weight_initialization"):
        return {
            f"{init.split('_')[0]} weights, {label}": series
            for init, four in value.items()
            for label, series in zip(labels, four, strict=True)
        }
    if name == "multiple_eta":
        return {
            f"eta {eta}, {label}": series
            for eta, four in zip(ETAS, value, strict=True)
            for label, series in zip(labels, four, strict=True)
        }
    return {"validation accuracy (%)": value}


def _figure(name: str, ours: dict[str, list[Any]], book: dict[str, list[Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [k for k in book if book[k]]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.2), squeeze=False)
    for ax, key in zip(axes[0], shown, strict=True):
        x = SIZES if name == "more_data" else range(len(book[key]))
        ax.plot(x, book[key], color="#2A6EA6", lw=2.5, alpha=0.5, label="the book's data")
        ax.plot(x, ours[key], color="#FF7033", lw=0.9, label="convnet.book")
        if name == "more_data":
            ax.set_xscale("log")
        ax.set_title(key, fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / f"{name}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return str(path.relative_to(REPORT.parent))


def _book_json(book: Path, name: str) -> Any:
    path = book / "fig" / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"--book {book}: no fig/{name}.json there (a clone of the book's repo?)")
    return json.loads(path.read_text())


def report(book: Path) -> None:
    lines = [
        "# The book's chapters 1-5 on convnet.book",
        "",
        "Written by `python scripts/book.py report --book PATH` from the results that "
        "`scripts/book.py run` and `kernels` saved in docs/book/ (each names the commit it "
        "ran at); PATH is a clone of the book's repository, whose `fig/*.json` are compared "
        "here number by number. The runs use `convnet.book` as the book's scripts use "
        "`network2` (the same calls, seeds and data), in its default faithful mode: float64, "
        "Python 2's shuffle, the book's pixels (/256).",
        "",
        "## Every seeded figure the book ships",
        "",
        "A count is the same when it is identical; a cost when it is within 1e-9 relative. "
        "*parts at* is the first epoch (from 0) where a series differs.",
        "",
        "| figure | the book's run | series | the same | largest relative difference | "
        "parts at | wall (s) | commit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    pictures = []
    for name, (script, call, _, what, chaotic) in FIGURES.items():
        saved = _load(name)
        if saved is None:
            lines.append(f"| {name} | `fig/{script}` {what} | not run yet | | | | | |")
            continue
        source = name.split("-")[0]  # a variant is compared with the book's run
        ours = _series(source, saved["value"])
        theirs = _series(source, _book_json(book, source))
        ran = f"`fig/{script}` `{call}`: {what}"
        for key, series in theirs.items():
            c = _compare(ours[key], series)
            if not c["n"]:
                continue
            flag = " (chaotic)" if chaotic and c["parted"] is not None else ""
            parted = "-" if c["parted"] is None else str(c["parted"])
            lines.append(
                f"| {name}{flag} | {ran} | {key} | {c['same']} / {c['n']} | "
                f"{c['max_relative']:.1e} | {parted} | {saved['seconds']:.0f} | "
                f"{saved['commit']} |"
            )
            ran = "″"  # the same run
        pictures.append(f"![{name}]({_figure(name, ours, theirs)})")
    lines += ["", *[p + "\n" for p in pictures]]
    lines += _kernels_section(book)
    lines += _headlines_section()
    lines += [
        "## Not reproduced here",
        "",
        "- `more_data_svm.json` (scikit-learn's SVM, not the book's networks): it "
        "reproduces only with scikit-learn's 2015 default `SVC(gamma='auto')`.",
        "- `norms_during_training_*.json`, `initial_gradient.json` (chapter 5): made by "
        "`generate_gradient.py`, which seeds neither generator; the runs can't be repeated.",
        "",
        "Chapter 6's table: [CHAPTER6.md](CHAPTER6.md).",
        "",
    ]
    REPORT.write_text("\n".join(lines))
    print(f"wrote {REPORT}")


def _kernels_section(book: Path) -> list[str]:
    lines = [
        "## The chaotic runs: the book's own arithmetic under two BLAS kernels",
        "",
        "`overfitting_full`, `regularized_full` and the eta 2.5 run of `multiple_eta` amplify "
        "rounding: the book's own algorithm, one example at a time in NumPy "
        "(benchmarks/book_reference.py), from the same seeds, parts from itself when only "
        "OpenBLAS's kernel changes. No implementation can follow the book's data past the "
        "epoch where the book's code, rerun, cannot follow it either. (`python "
        "scripts/book.py kernels --book PATH`, one process per kernel.)",
        "",
        "| run | series | kernel | the same as the book's data | parts at | "
        "parts from the other kernel at |",
        "|---|---|---|---|---|---|",
    ]
    for name in CHAOTIC:
        runs = {}
        for path in sorted(RESULTS.glob(f"kernels-{name}-*.json")):
            saved = json.loads(path.read_text())
            runs[saved["value"]["kernel"] or path.stem] = saved["value"]
        if not runs:
            lines.append(f"| {name} | not run yet | | | | |")
            continue
        figure = "multiple_eta" if name.startswith("multiple_eta") else name
        theirs = _book_json(book, figure)
        if figure == "multiple_eta":
            theirs = {"training_cost": theirs[ETAS.index(2.5)][2]}
        else:
            keys = ["test_cost", "test_accuracy", "training_cost", "training_accuracy"]
            theirs = dict(zip(keys, theirs, strict=True))
        kernel_names = list(runs)
        for key, series in theirs.items():
            for kernel_name, value in runs.items():
                ours = value[key]
                c = _compare(ours, series[: len(ours)])
                other = [runs[k][key] for k in kernel_names if k != kernel_name]
                between = _compare(ours, other[0]) if other else {"parted": None}
                parted = "-" if c["parted"] is None else str(c["parted"])
                apart = "-" if between["parted"] is None else str(between["parted"])
                lines.append(
                    f"| {name} | {key} | {kernel_name} | {c['same']} / {c['n']} | {parted} | "
                    f"{apart} |"
                )
    return [*lines, ""]


def _headlines_section() -> list[str]:
    lines = [
        "## The book's in-text results, over several seeds",
        "",
        f"Seeds {', '.join(map(str, SEEDS))} (both generators); the book's figures are single "
        "runs from its text. *peak* is the best epoch's accuracy, *final* the last epoch's. "
        "Chapter 1's 100-hidden network (large weights, quadratic cost, eta 3.0) often stalls: "
        "here three seeds end near 87%, one at 57.6%, "
        "one at 96.71%. The book warns that some runs of it give results quite a bit worse.",
        "",
        "| result | the book (%) | final, median (min-max) | peak, median (min-max) | "
        "wall per run (s) | commit |",
        "|---|---|---|---|---|---|",
    ]
    for name, (_, what, figure) in HEADLINES.items():
        runs = [_load(f"{name}-seed{seed}") for seed in SEEDS]
        done = [r for r in runs if r]
        if not done:
            lines.append(f"| {what} | {figure} | not run yet | | | |")
            continue
        size = 10000.0 / 100  # counts out of 10,000 as %
        finals = [r["value"][-1] / size for r in done]
        peaks = [max(r["value"]) / size for r in done]

        def spread(values: list[float]) -> str:
            return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

        seconds = statistics.mean(r["seconds"] for r in done)
        lines.append(
            f"| {what} | {figure} | {spread(finals)} | {spread(peaks)} | {seconds:.0f} | "
            f"{done[0]['commit']} |"
        )
    return [*lines, ""]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_kernel":
        _kernel_child(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "kernels", "report"])
    parser.add_argument("names", nargs="*", help="run: only the experiments named so")
    parser.add_argument("--book", type=Path, help="a clone of the book's repository")
    parser.add_argument(
        "--kernels", default="Haswell,SkylakeX", help="kernels: OpenBLAS core types"
    )
    args = parser.parse_args()
    if args.command == "run":
        run(args.names, args.book)
    elif args.command == "kernels":
        kernels(args.kernels.split(","))
    if args.book is not None:
        report(args.book)
    elif args.command == "report":
        parser.error("report needs --book PATH (a clone of the book's repository)")


if __name__ == "__main__":
    main()
