#!/usr/bin/env python
"""The networks of the book's chapter 6 by name, with the book's hyper-parameters, and the
chapter's whole table of results.

python scripts/chapter6.py relu --epochs 1              # train one network
python scripts/chapter6.py table --workers 2            # every row and seed, resumable
python scripts/chapter6.py report                       # docs/CHAPTER6.md from what ran
python scripts/chapter6.py park                         # keep unfinished runs in docs/

``table`` trains each row and seed as a run folder under ``--out`` (a checkpoint every
epoch; run it again and it goes on where it stopped; finished runs are never trained
again) and rewrites the report as each run ends: ``docs/CHAPTER6.md``, with
``docs/runs/chapter6/`` holding each finished run's history, test-set probabilities (the
ensemble votes with them) and ``results.json``. Every ``--park-every`` minutes, and when
it stops, ``table`` copies the checkpoints of unfinished runs there too (``park`` does it
by hand), so that a machine that goes away loses at most those minutes: ``table`` on
another machine starts from them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from convnet import Network, checkpoint, fields, files, interrupts, load, load_mnist, plots, vote
from convnet.book import ENSEMBLE_BOOK_ACCURACY, ENSEMBLE_MEMBERS, RECIPES, layers_for
from convnet.data.expand import load_expanded
from convnet.errors import ArgumentError, ConvnetError
from convnet.runs import jobs, trials
from convnet.runs import train as training

ROOT = Path(__file__).resolve().parent.parent
ROWS = (*RECIPES, "ensemble")
DOCS = ROOT / "docs"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# -- one network --------------------------------------------------------------------------
def train_one(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("net", choices=list(RECIPES), help="which network of chapter 6")
    parser.add_argument("--epochs", type=int, help="override the book's epoch count")
    parser.add_argument("--mini-batch-size", type=int, default=10)
    parser.add_argument("--data", help="MNIST folder or mnist.pkl.gz (default: $CONVNET_DATA)")
    parser.add_argument("--backend", choices=["auto", "c", "numba", "jax"])
    parser.add_argument("--device", choices=["cpu", "gpu"])
    parser.add_argument(
        "--precision",
        choices=["float32", "tf32"],
        help="TF32 products on a GPU (default, faster) or full float32",
    )
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    recipe = RECIPES[args.net]
    epochs = args.epochs or recipe.epochs
    training, validation, test = load_mnist(args.data)
    if recipe.expanded:
        training = load_expanded(training)
    mbs = args.mini_batch_size
    print(
        f"{recipe.name}: {recipe.description}; {len(training[0]):,} training images, "
        f"{_count(epochs, 'epoch')}, eta {recipe.eta}, lmbda {recipe.lmbda}, mini-batch {mbs}"
    )
    net = Network(
        layers_for(recipe.name, mbs),
        mbs,
        backend=args.backend,
        device=args.device,
        seed=args.seed,
        precision=args.precision,
    )
    start = time.perf_counter()
    history = net.SGD(training, epochs, mbs, recipe.eta, validation, test, lmbda=recipe.lmbda)
    total = time.perf_counter() - start
    final_test = history.test_accuracy[-1]
    print(
        f"\nSummary: {recipe.name}, {_count(epochs, 'epoch')} in {total:.1f} s "
        f"({sum(history.seconds) / epochs:.1f} s/epoch training); final test accuracy "
        f"{final_test:.2%} (book, {recipe.epochs} epochs: {recipe.book_accuracy:.2%})"
    )
    return 0


# -- the table ----------------------------------------------------------------------------
def table_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"chapter6.py {command}")
    parser.add_argument(
        "--out", default=str(ROOT / "runs" / "chapter6"), help="where the run folders live"
    )
    parser.add_argument("--docs", default=str(DOCS), help="where CHAPTER6.md and the logs go")
    parser.add_argument("--data", help="MNIST folder (default: $CONVNET_DATA, then the cache)")
    if command != "table":
        return parser
    parser.add_argument("--rows", help=f"comma-separated, of {', '.join(ROWS)} (default: all)")
    parser.add_argument(
        "--seeds",
        default="0,1",
        help="seeds of each row (default: 0,1); the ensemble votes dropout's seeds 0-4",
    )
    pool = parser.add_mutually_exclusive_group()
    pool.add_argument("--workers", type=int, help="runs at a time, one core each")
    pool.add_argument("--cluster", metavar="ADDR", help="a Dask scheduler, tcp://HOST:8786")
    parser.add_argument("--device", choices=["cpu", "gpu"])
    parser.add_argument("--backend", choices=["auto", "c", "numba", "jax"])
    parser.add_argument("--epochs", type=int, help="fewer epochs than the book's (a trial run)")
    parser.add_argument("--limit", type=int, help="train on the first N images (a trial run)")
    parser.add_argument(
        "--park-every",
        type=float,
        default=10.0,
        metavar="MINUTES",
        help="copy unfinished checkpoints into docs/ this often (default: 10; 0: only at the end)",
    )
    return parser


def planned(args: argparse.Namespace) -> list[trials.Trial]:
    """Each row and seed a trial, every row's first seed before any second one (so each row
    has a figure early), the ensemble's extra dropout seeds last."""
    rows = args.rows.split(",") if args.rows else list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ArgumentError(f"--rows: expected some of {', '.join(ROWS)}. Received: {unknown}.")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ArgumentError(
            f"--seeds: expected numbers, e.g. 0,1. Received: {args.seeds}."
        ) from None
    wanted = {row: list(seeds) for row in rows if row != "ensemble"}
    if "ensemble" in rows:
        members = wanted.setdefault("dropout", [])
        members += [s for s in range(ENSEMBLE_MEMBERS) if s not in members]
    order = sorted(
        (
            (seeds.index(s) if s in seeds else len(seeds) + s, ROWS.index(row), row, s)
            for row, row_seeds in wanted.items()
            for s in row_seeds
        )
    )
    fixed = {
        "data": args.data,
        "device": args.device,
        "backend": args.backend,
        "epochs": args.epochs,
        "limit": args.limit,
    }
    return [
        trials.Trial(
            run_name(row, seed),
            {k: v for k, v in (fixed | {"net": row, "seed": seed}).items() if v is not None},
        )
        for _, _, row, seed in order
    ]


def run_name(row: str, seed: int) -> str:
    return f"{row}-seed{seed}"


def table(argv: list[str]) -> int:
    args = table_parser("table").parse_args(argv)
    out, docs = Path(args.out), Path(args.docs)
    todo = planned(args)
    commit = _commit()
    published = _published(docs)
    left = [t for t in todo if t.name not in published]
    with jobs.Workers(args.workers, args.cluster) as workers:
        out.mkdir(parents=True, exist_ok=True)
        for trial in left:
            _unpark(docs, out / trial.name)
            if trials.status(out / trial.name) == "finished":  # trained, never published
                _publish(out / trial.name, trial, docs, args.data, commit)
        if not args.cluster and any(RECIPES[t.arguments["net"]].expanded for t in left):
            _expanded_cache(args)
        print(
            f"chapter 6: {len(todo)} runs, {len(todo) - len(left)} published already; "
            f"training {len(left)} {workers.describe()} into {out}",
            flush=True,
        )

        def ended(trial: trials.Trial, result: dict[str, Any], progress: str) -> None:
            if result["status"] == "finished":
                _publish(out / trial.name, trial, docs, args.data, commit)
                what = (
                    f"test accuracy {result['test_accuracy_at_best']:.2%} at the best "
                    f"validation epoch ({result['best_epoch']}), "
                    f"{result['final_test_accuracy']:.2%} at the last; {result['seconds']:.0f} s"
                )
            else:
                what = f"{result['status']}: {result['reason']}"
            print(f"{trial.name}: {what}; {progress}", flush=True)
            write_report(out, docs, args.data)

        parking = _Parking(out, docs, args.park_every)
        try:
            trials.run(left, out, workers, ended)
        finally:
            parking.stop()
            write_report(out, docs, args.data)
    print(f"Wrote {docs / 'CHAPTER6.md'}")
    return 0


def _expanded_cache(args: argparse.Namespace) -> None:
    """The expanded training set built here, once, before the local workers all need it."""
    training, _, _ = load_mnist(args.data)
    load_expanded(training)


class _Parking:
    """Parks the unfinished checkpoints every few minutes on a daemon thread, and once more
    when stopped. Checkpoints are replaced atomically, so a copy is never half-written."""

    def __init__(self, out: Path, docs: Path, minutes: float) -> None:
        self.out, self.docs = out, docs
        self._stopped = threading.Event()
        self._thread = None
        if minutes > 0:
            self._thread = threading.Thread(target=self._loop, args=(60 * minutes,), daemon=True)
            self._thread.start()

    def _loop(self, seconds: float) -> None:
        while not self._stopped.wait(seconds):
            park_unfinished(self.out, self.docs)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
        park_unfinished(self.out, self.docs)


# -- what is kept in docs/ ----------------------------------------------------------------
def _runs_dir(docs: Path) -> Path:
    return docs / "runs" / "chapter6"


def _published(docs: Path) -> dict[str, dict[str, Any]]:
    """The finished runs recorded under docs/runs/chapter6 (name -> record)."""
    found = {}
    for path in sorted(_runs_dir(docs).glob("*.json")):
        if path.name != "results.json":
            found[path.stem] = json.loads(path.read_text())
    return found


def _publish(
    folder: Path, trial: trials.Trial, docs: Path, data: str | None, commit: str | None
) -> None:
    """A finished run's record, history and test-set probabilities, into docs/."""
    target = _runs_dir(docs)
    target.mkdir(parents=True, exist_ok=True)
    result = trials.summary(folder)
    history = fields.history(fields.read_json(folder / "history.json", "history"))
    model = load(folder)
    _, _, test = load_mnist(data)
    probabilities = model.predict_proba(test[0]).astype(np.float32)
    files.atomic_write(
        target / f"{trial.name}.probabilities.npz",
        lambda h: np.savez_compressed(h, test=probabilities),
    )
    files.atomic_write(
        target / f"{trial.name}.history.csv", lambda h: h.write(history.to_csv().encode())
    )
    record = {
        "row": trial.arguments["net"],
        "seed": trial.arguments["seed"],
        "epochs": result["epochs"],
        "test_at_best_validation": _percent(result["test_accuracy_at_best"]),
        "best_epoch": result["best_epoch"],
        "test_last": _percent(result["final_test_accuracy"]),
        "seconds": result["seconds"],
        "device": trial.arguments.get("device", "cpu"),
        "host": result["host"],
        "machine": machine(),
        "limit": trial.arguments.get("limit"),
        "commit": commit,
        "command": "python scripts/chapter6.py table " + " ".join(sys.argv[2:]),
        "finished": True,
    }
    files.write_json(target / f"{trial.name}.json", record)


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def _commit() -> str | None:
    """The commit the code that trains comes from, read when ``table`` starts (later
    commits do not change what a running table trains with); ``+changes`` when convnet's
    or the script's files differ from it."""
    try:
        head, changed = (
            subprocess.run(
                ["git", "-C", str(ROOT), *command],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            for command in (
                ["rev-parse", "--short", "HEAD"],
                ["status", "--porcelain", "--untracked-files=no", "--", "convnet", "scripts"],
            )
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}+changes" if changed else head


def park(argv: list[str]) -> int:
    args = table_parser("park").parse_args(argv)
    docs = Path(args.docs)
    count = park_unfinished(Path(args.out), docs)
    print(f"Parked {_count(count, 'unfinished run')} in {_runs_dir(docs) / 'unfinished'}")
    return 0


def park_unfinished(out: Path, docs: Path) -> int:
    """Copy each unfinished run's checkpoint into docs/runs/chapter6/unfinished/ (a failed
    run's too: ``table`` tries it again), and drop the parked copies of runs since
    published. Returns how many were parked."""
    parked = _runs_dir(docs) / "unfinished"
    count = 0
    for folder in sorted(p for p in out.glob("*-seed*") if p.is_dir()):
        if trials.status(folder) in ("unfinished", "failed"):
            try:
                saved = checkpoint.path_in(folder).read_bytes()
            except FileNotFoundError:  # it finished since, or failed before its first epoch
                continue
            files.atomic_write(parked / f"{folder.name}.npz", lambda h, b=saved: h.write(b))
            count += 1
    for stale in parked.glob("*.npz") if parked.is_dir() else []:
        if stale.stem in _published(docs):
            stale.unlink()
    return count


def _unpark(docs: Path, folder: Path) -> None:
    """A run this machine has not started, from a checkpoint parked in docs/."""
    parked = _runs_dir(docs) / "unfinished" / f"{folder.name}.npz"
    if parked.exists() and trials.status(folder) == "new":
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(parked, checkpoint.path_in(folder))


# -- the report ---------------------------------------------------------------------------
def report(argv: list[str]) -> int:
    args = table_parser("report").parse_args(argv)
    write_report(Path(args.out), Path(args.docs), args.data)
    print(f"Wrote {Path(args.docs) / 'CHAPTER6.md'}")
    return 0


def write_report(out: Path, docs: Path, data: str | None) -> None:
    """results.json, the curves, the ensemble's vote and CHAPTER6.md from what has run."""
    published = _published(docs)
    results: dict[str, Any] = {"rows": {}}
    for row in RECIPES:
        runs = [r for r in published.values() if r["row"] == row]
        results["rows"][row] = {
            "book": round(100 * RECIPES[row].book_accuracy, 2),
            "runs": sorted(runs, key=lambda r: r["seed"]),
            "running": _running(out, row),
        }
    results["rows"]["ensemble"] = _ensemble(docs, published, data)
    files.write_json(_runs_dir(docs) / "results.json", results)
    _curves(docs, published)
    files.atomic_write(docs / "CHAPTER6.md", lambda h: h.write(_markdown(results, docs).encode()))


def _running(out: Path, row: str) -> list[dict[str, Any]]:
    """The row's runs started and not finished: epochs done, and why one failed."""
    running = []
    for folder in sorted(out.glob(f"{row}-seed*")):
        state = trials.status(folder)
        if state not in ("unfinished", "failed"):
            continue
        try:
            done = len(checkpoint.progress(folder).epoch)
        except ConvnetError:  # no checkpoint yet
            done = 0
        entry: dict[str, Any] = {"run": folder.name, "epochs_done": done}
        if state == "failed":
            entry["failed"] = trials.summary(folder)["reason"]
        running.append(entry)
    return running


def _ensemble(docs: Path, published: dict[str, dict], data: str | None) -> dict[str, Any]:
    names = [run_name("dropout", s) for s in range(ENSEMBLE_MEMBERS)]
    entry: dict[str, Any] = {"book": round(100 * ENSEMBLE_BOOK_ACCURACY, 2), "runs": []}
    missing = [n for n in names if n not in published]
    if missing:
        entry["waiting_for"] = missing
        return entry
    probabilities = [np.load(_runs_dir(docs) / f"{n}.probabilities.npz")["test"] for n in names]
    _, _, (images, labels) = load_mnist(data)
    voted = vote(probabilities)
    accuracy = float(np.mean(voted == labels))
    plots.errors(images, labels, voted, docs / "img" / "chapter6-ensemble-errors.png", limit=60)
    members = [published[n] for n in names]
    entry["runs"] = [
        {
            "seed": 0,
            "members": [m["seed"] for m in members],
            "epochs": members[0]["epochs"],
            "test_voted": round(100 * accuracy, 2),
            "misclassified": int((voted != labels).sum()),
            "seconds": round(sum(m["seconds"] for m in members), 1),
            "device": members[0]["device"],
            "finished": True,
        }
    ]
    return entry


def _curves(docs: Path, published: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7), dpi=90, sharey=True)
    for ax, row in zip(axes.flat, RECIPES, strict=False):
        for name, record in sorted(published.items()):
            if record["row"] != row:
                continue
            history = (_runs_dir(docs) / f"{name}.history.csv").read_text().splitlines()[1:]
            epochs = [int(line.split(",")[0]) for line in history]
            test = [100 * float(line.split(",")[4] or "nan") for line in history]
            ax.plot(epochs, test, label=f"seed {record['seed']}")
        ax.axhline(100 * RECIPES[row].book_accuracy, color="black", linestyle="--", lw=0.8)
        ax.set(title=row, xlabel="epoch", ylim=(97, 100))
        ax.grid(alpha=0.3)
        if ax.lines[:-1]:
            ax.legend(fontsize=7, loc="lower right")
    axes.flat[0].set_ylabel("test accuracy (%)")
    axes.flat[4].set_ylabel("test accuracy (%)")
    axes.flat[-1].axis("off")
    fig.suptitle("Chapter 6: test accuracy per epoch (dashed: the book's figure)")
    fig.tight_layout()
    (docs / "img").mkdir(parents=True, exist_ok=True)
    fig.savefig(docs / "img" / "chapter6-curves.png")
    plt.close(fig)


def _where(run: dict[str, Any]) -> str:
    where = f"{run['run']} at epoch {run['epochs_done']}"
    if "failed" in run:
        reason = run["failed"].replace("|", "\\|")
        return f"{where}, failed ({reason}); `table` tries it again"
    return where


def _markdown(results: dict[str, Any], docs: Path) -> str:
    lines = [
        "# The book's chapter-6 table, reproduced",
        "",
        "Written by `python scripts/chapter6.py report` (and by `table` as each run ends) "
        "from `docs/runs/chapter6/`; do not edit by hand. Test accuracy is read at the "
        "epoch of best validation accuracy (the book's rule), and at the last epoch.",
        "",
        "| row | book | convnet (best validation epoch) | last epoch | mean − book (pp) | "
        "seeds | epochs | wall (s, each) | device | state |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, entry in results["rows"].items():
        runs = entry["runs"]
        if row == "ensemble":
            if runs:
                run = runs[0]
                lines.append(
                    f"| ensemble | {entry['book']:.2f} | {run['test_voted']:.2f} (vote of "
                    f"dropout seeds {run['members']}) | | "
                    f"{run['test_voted'] - entry['book']:+.2f} | | {run['epochs']} each | "
                    f"{run['seconds']:.0f} (all) | {run['device']} | finished |"
                )
            else:
                lines.append(
                    f"| ensemble | {entry['book']:.2f} | | | | | | | | waiting for "
                    f"{', '.join(entry['waiting_for'])} |"
                )
            continue
        best = " / ".join(f"{r['test_at_best_validation']:.2f}" for r in runs)
        last = " / ".join(f"{r['test_last']:.2f}" for r in runs)
        state = ", ".join(_where(r) for r in entry["running"]) or (
            "finished" if runs else "not started"
        )
        gap = (
            format(
                float(np.mean([r["test_at_best_validation"] for r in runs])) - entry["book"], "+.2f"
            )
            if runs
            else ""
        )
        lines.append(
            f"| {row} | {entry['book']:.2f} | {best} | {last} | {gap} | "
            f"{', '.join(str(r['seed']) for r in runs)} | "
            f"{', '.join(sorted({str(r['epochs']) for r in runs}))} | "
            f"{' / '.join(format(r['seconds'], '.0f') for r in runs)} | "
            f"{', '.join(sorted({r['device'] for r in runs}))} | {state} |"
        )
    commits = sorted(
        {r["commit"] for e in results["rows"].values() for r in e["runs"] if r.get("commit")}
    )
    machines = sorted(
        {r["machine"] for e in results["rows"].values() for r in e["runs"] if r.get("machine")}
    )
    lines += [
        "",
        f"Measured at commit(s) {', '.join(commits) or '-'} on {'; '.join(machines) or '-'}.",
        "",
        "![test accuracy per epoch](img/chapter6-curves.png)",
        "",
    ]
    if results["rows"]["ensemble"]["runs"]:
        lines += [
            "The ensemble's misclassified test digits (true → voted):",
            "",
            "![misclassified](img/chapter6-ensemble-errors.png)",
            "",
        ]
    analysis = docs / "chapter6-analysis.md"
    if analysis.exists():
        lines += [analysis.read_text()]
    return "\n".join(lines) + "\n"


COMMANDS = {"table": table, "report": report, "park": park}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        with interrupts.interruptible():
            if argv and argv[0] in COMMANDS:
                return COMMANDS[argv[0]](argv[1:])
            return train_one(argv)
    except ConvnetError as exc:
        print(f"chapter6.py: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, training.RunInterruptedError):
        kept = (
            "; each run's checkpoint is kept, and parked in docs/runs/chapter6/unfinished/. "
            "The same command goes on from them."
            if argv[:1] == ["table"]
            else "."
        )
        print(f"\nchapter6.py: interrupted{kept}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
