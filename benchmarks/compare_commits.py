#!/usr/bin/env python
"""Net C's (or the dropout net's) training speed at two commits, side by side in one run.

A kernel change is judged by the whole training step, and this machine's speed drifts
between runs, so the two commits are timed alternately in one run: each repeat trains
``training_floor.py``'s convnet child (a new process, on this script's one pinned core,
the fused kernel, one and 100 steps per call) once in each checkout. A commit is checked
out into a temporary git worktree; ``--after`` defaults to the working tree. Medians; and
whether the two commits end with bit-identical weights.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE CONVNET_DATA=../shared/data/mnist \
        python benchmarks/compare_commits.py BEFORE [--after REV] [--mbs 10] [--repeats 4]
            [--net relu|dropout] [--lmbda L]  (default: the book's lmbda for the net)
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
from training_floor import convnet_seconds  # beside this script; importing it pins this process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def checkout(rev: str | None) -> Iterator[str]:
    """The folder holding ``rev`` (a temporary worktree), or the working tree for None."""
    if rev is None:
        yield ROOT
        return
    known = subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
    )
    if known.returncode != 0:
        raise SystemExit(f"compare_commits.py: {rev!r} is not a commit of {ROOT}")
    with tempfile.TemporaryDirectory() as folder:
        tree = os.path.join(folder, "tree")
        subprocess.run(
            ["git", "-C", ROOT, "worktree", "add", "-q", "--detach", tree, rev], check=True
        )
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", help="the commit to compare against")
    parser.add_argument("--after", default=None, help="a commit (default: the working tree)")
    parser.add_argument("--mbs", type=int, default=10)
    parser.add_argument("--images", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--net", default="relu", choices=("relu", "dropout"))
    parser.add_argument("--lmbda", type=float, default=None)
    args = parser.parse_args(argv)
    names = {"before": args.before, "after": args.after or "working tree"}
    times: dict[tuple[str, int], list[float]] = {}
    costs: dict[str, float] = {}
    digests: dict[tuple[str, int], set[str]] = {}
    with checkout(args.before) as before, checkout(args.after) as after:
        trees = {"before": before, "after": after}
        for repeat in range(args.repeats):
            for side in ("before", "after") if repeat % 2 == 0 else ("after", "before"):
                for steps in (1, 100):
                    seconds, cost, digest = convnet_seconds(
                        "fused",
                        args.images,
                        args.mbs,
                        steps,
                        trees[side],
                        args.net,
                        None,
                        args.lmbda,
                    )
                    times.setdefault((side, steps), []).append(seconds)
                    digests.setdefault((side, steps), set()).add(digest)
                    costs[side] = cost
    print(
        f"# net {args.net}, lmbda {'the book' + chr(39) + 's' if args.lmbda is None else args.lmbda}, "
        f"fused kernel, mini-batch {args.mbs}, {args.images:,} images, one core, "
        f"{args.repeats} repeats; before = {names['before']}, after = {names['after']}; "
        f"first-pass cost {costs['before']:.4f} / {costs['after']:.4f}"
    )
    print(
        "| steps per call | before: s (median) | after: s (median) | after / before "
        "| the same weights | all |"
    )
    print("|---|---|---|---|---|---|")
    for steps in (1, 100):
        old, new = (statistics.median(times[(side, steps)]) for side in ("before", "after"))
        every = " / ".join(
            ", ".join(f"{s:.3f}" for s in times[(side, steps)]) for side in ("before", "after")
        )
        same = "yes" if digests[("before", steps)] == digests[("after", steps)] else "no"
        print(f"| {steps} | {old:.3f} | {new:.3f} | {new / old:.2f} | {same} | {every} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
