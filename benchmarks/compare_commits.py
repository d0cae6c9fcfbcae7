#!/usr/bin/env python
"""Net C's training speed at two commits, side by side in one run.

A kernel change is judged by the whole training step, and this machine's speed drifts
between runs, so the two commits are timed alternately in one run: each repeat trains
``training_floor.py``'s convnet child (a new process, on this script's one pinned core,
the fused kernel, one and 100 steps per call) once in each checkout. A commit is checked
out into a temporary git worktree; ``--after`` defaults to the working tree. Medians.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE CONVNET_DATA=../shared/data/mnist \
        python benchmarks/compare_commits.py BEFORE [--after REV] [--mbs 10] [--repeats 4]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from training_floor import CHILD  # beside this script; importing it pins this process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Refuse to time a convnet other than the checkout's (argv[1]), then hand on the rest.
CHECK = """
import os, sys, convnet
tree = sys.argv.pop(1)
if not os.path.abspath(convnet.__file__).startswith(os.path.abspath(tree) + os.sep):
    sys.exit(f"imported {convnet.__file__}, not the convnet in {tree}")
"""


@contextlib.contextmanager
def checkout(rev: str | None) -> Iterator[str]:
    """The folder holding ``rev`` (a temporary worktree), or the working tree for None."""
    if rev is None:
        yield ROOT
        return
    with tempfile.TemporaryDirectory() as folder:
        tree = os.path.join(folder, "tree")
        subprocess.run(
            ["git", "-C", ROOT, "worktree", "add", "-q", "--detach", tree, rev], check=True
        )
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], check=True)


def step_seconds(tree: str, images: int, mbs: int, steps: int) -> tuple[float, float]:
    """Seconds of the second of two passes over ``images`` images, and the first's cost
    (run from this folder, so that relative paths such as CONVNET_DATA's still hold)."""
    env = dict(os.environ, PYTHONPATH=tree, CONVNET_CONV="fused")
    # -P: no current folder ahead of PYTHONPATH, which would import this folder's convnet
    command = [sys.executable, "-P", "-c", CHECK + CHILD, tree, str(images), str(mbs), str(steps)]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the run in {tree} failed:\n{out.stderr[-2000:]}")
    seconds, cost = map(float, out.stdout.strip().splitlines()[-1].split())
    return seconds, cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", help="the commit to compare against")
    parser.add_argument("--after", default=None, help="a commit (default: the working tree)")
    parser.add_argument("--mbs", type=int, default=10)
    parser.add_argument("--images", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args(argv)
    names = {"before": args.before, "after": args.after or "working tree"}
    times: dict[tuple[str, int], list[float]] = {}
    costs: dict[str, float] = {}
    with checkout(args.before) as before, checkout(args.after) as after:
        trees = {"before": before, "after": after}
        for repeat in range(args.repeats):
            for side in ("before", "after") if repeat % 2 == 0 else ("after", "before"):
                for steps in (1, 100):
                    seconds, cost = step_seconds(trees[side], args.images, args.mbs, steps)
                    times.setdefault((side, steps), []).append(seconds)
                    costs[side] = cost
    print(
        f"# net C, fused kernel, mini-batch {args.mbs}, {args.images:,} images, one core, "
        f"{args.repeats} repeats; before = {names['before']}, after = {names['after']}; "
        f"first-pass cost {costs['before']:.4f} / {costs['after']:.4f}"
    )
    print("| steps per call | before: s (median) | after: s (median) | after / before | all |")
    print("|---|---|---|---|---|")
    for steps in (1, 100):
        old, new = (statistics.median(times[(side, steps)]) for side in ("before", "after"))
        every = " / ".join(
            ", ".join(f"{s:.3f}" for s in times[(side, steps)]) for side in ("before", "after")
        )
        print(f"| {steps} | {old:.3f} | {new:.3f} | {new / old:.2f} | {every} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
