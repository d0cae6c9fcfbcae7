#!/usr/bin/env python
"""An ensemble of the book's net C trained one member after another, and ``--workers``
members at a time (one pinned process per core), side by side in one run.

Each variant is ``convnet train --net relu --epochs 1 --ensemble 4`` in a new process
(the caches warmed by a first, untimed run), wall time from start to the ensemble's vote;
repeats alternate the order. The one-after-another run is timed as a user runs it (free
to use every core) and pinned to one core. Medians; the ratio is the parallel run's wall
time over the free sequential one's.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE CONVNET_DATA=../shared/data/mnist \
        python benchmarks/parallel_ensemble.py [--members 4] [--workers 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

PIN = "import os, sys; os.sched_setaffinity(0, {{{core}}}); from convnet.cli.main import main; "
FREE = "import sys; from convnet.cli.main import main; "


def wall_seconds(members: int, workers: int | None, pinned: bool) -> float:
    with tempfile.TemporaryDirectory() as folder:
        argv = ["train", "--net", "relu", "--epochs", "1", "--ensemble", str(members)]
        argv += ["--quiet", "--out", os.path.join(folder, "run")]
        if workers:
            argv += ["--workers", str(workers)]
        start = PIN.format(core=min(os.sched_getaffinity(0))) if pinned else FREE
        code = start + f"sys.exit(main({argv!r}))"
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    variants = {
        "one after another": (None, False),
        "one after another, pinned to one core": (None, True),
        f"--workers {args.workers}": (args.workers, False),
    }
    wall_seconds(args.members, None, False)  # warm the compile caches
    times: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        names = list(variants) if repeat % 2 == 0 else list(variants)[::-1]
        for name in names:
            workers, pinned = variants[name]
            times[name].append(wall_seconds(args.members, workers, pinned))
    cores = len(os.sched_getaffinity(0))
    print(
        f"# {args.members} members of net C, 1 epoch each (50,000 images, with the epoch's "
        f"validation and test passes), {cores} cores, {args.repeats} repeats"
    )
    print("| variant | wall seconds (median) | all | ratio to one after another |")
    print("|---|---|---|---|")
    base = statistics.median(times["one after another"])
    for name, values in times.items():
        med = statistics.median(values)
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {med:.1f} | {shown} | {med / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
