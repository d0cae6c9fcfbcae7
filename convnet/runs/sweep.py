"""Sweeps: one network trained at every point of a grid of hyper-parameters, ``repeats``
seeds each, every trial a run folder of its own (:mod:`convnet.runs.trials`).

A sweep's folder holds ``trial-NNN/`` run folders, ``sweep-plan.json`` (every trial's
flags, written before the first one trains, so ``--resume`` runs exactly the same
trials), ``sweep.csv`` (one row per trial, rewritten as each ends) and ``sweep.png``
(best validation accuracy against each swept parameter, the repeats' spread as bars).
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from convnet import fields, files, plots
from convnet.data.mnist import find_mnist
from convnet.errors import ArgumentError
from convnet.runs import arguments as run_arguments
from convnet.runs import folder as run_folder
from convnet.runs import jobs, trials
from convnet.runs import train as training

MAX_TRIALS = 10_000  # a sweep's trials are planned (and checked) before any trains
PLAN_FILE = "sweep-plan.json"
TABLE_FILE = "sweep.csv"
FIGURE_FILE = "sweep.png"
SWEPT = ("eta", "lmbda", "momentum", "mini_batch_size", "epochs", "optimizer", "net")
RESULTS = (
    "status",
    "best_validation_accuracy",
    "best_epoch",
    "test_accuracy_at_best",
    "final_test_accuracy",
    "epochs",
    "seconds",
    "host",
    "reason",
)
_FLAGS = {flag.name: flag for flag in run_arguments.TRAIN_FLAGS}


def parse_grid(texts: Sequence[str]) -> dict[str, list[Any]]:
    """``["eta=0.01,0.1", "lmbda=0,0.1"]`` -> ``{"eta": [0.01, 0.1], "lmbda": [0.0, 0.1]}``,
    each value checked as ``convnet train`` checks its flag."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        name, _, values = text.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if name not in SWEPT:
            raise ArgumentError(
                f"--grid {text}: expected NAME=V1,V2,... with NAME one of {', '.join(SWEPT)}."
            )
        if name in grid:
            raise ArgumentError(f"--grid {text}: {name} is swept twice; give its values once.")
        flag = _FLAGS[name]
        parsed = []
        for value in values.split(","):
            try:
                parsed.append(flag.kind(value.strip()))
            except ValueError:
                raise ArgumentError(
                    f"--grid {text}: {name} takes {flag.kind.__name__} values. "
                    f"Received: {value.strip()!r}."
                ) from None
            if flag.choices and parsed[-1] not in flag.choices:
                raise ArgumentError(
                    f"--grid {text}: {name} is one of {', '.join(flag.choices)}. "
                    f"Received: {parsed[-1]!r}."
                )
        if len(set(parsed)) != len(parsed) or not values.strip():
            raise ArgumentError(f"--grid {text}: expected distinct values for {name}.")
        grid[name] = parsed
    return grid


def plan(grid: dict[str, list[Any]], repeats: int, fixed: dict[str, Any]) -> list[trials.Trial]:
    """Every grid point (the first parameter varying slowest) times ``repeats`` seeds
    (``fixed``'s seed, or 0, onwards), each checked before anything trains."""
    if repeats < 1:
        raise ArgumentError(f"--repeats: expected at least 1. Received: {repeats}.")
    if "net" in grid and fixed.get("layers"):
        raise ArgumentError(
            "--grid net: --layers is given too; a net by name and --layers are exclusive, "
            "as for convnet train. Sweep one or the other."
        )
    clash = sorted(set(grid) & {k for k, v in fixed.items() if v is not None})
    if clash:
        raise ArgumentError(
            f"--grid {clash[0]}: is also given as --{clash[0].replace('_', '-')}; "
            "sweep it or fix it, not both."
        )
    run_arguments.check_arguments(
        {k: v for k, v in fixed.items() if v is not None}
    )  # its own fault
    seed = fixed.get("seed") or 0
    planned: list[trials.Trial] = []
    for point in itertools.product(*grid.values()):
        for repeat in range(repeats):
            arguments = fixed | dict(zip(grid, point, strict=True)) | {"seed": seed + repeat}
            arguments = {k: v for k, v in arguments.items() if v is not None}
            try:
                run_arguments.check_arguments(arguments)
            except ArgumentError as exc:
                if not grid:
                    raise
                where = " ".join(f"{k}={v}" for k, v in zip(grid, point, strict=True))
                raise ArgumentError(f"--grid {where}: {exc}") from None
            planned.append(trials.Trial(f"trial-{len(planned):03d}", arguments))
    return planned


def sweep(
    out: str | Path,
    grid: Mapping[str, Sequence[Any]] | None = None,
    *,
    repeats: int = 1,
    workers: int | None = None,
    cluster: str | None = None,
    resume: bool = False,
    verbose: bool = True,
    **fixed: Any,
) -> list[dict[str, Any]]:
    """Train ``fixed`` (``convnet train``'s flags: ``net``, ``epochs``, ``limit``,
    ``expanded``, ``data``, ...) at every point of ``grid``, ``repeats`` seeds each, into
    ``out``; with ``resume``, the trials of the sweep already planned there that are not
    finished. Returns one row per trial, as in ``sweep.csv``."""
    out = Path(out)
    if resume:
        if grid or fixed or repeats != 1:
            raise ArgumentError(
                f"--resume {out}: runs the sweep planned there; give only --workers or "
                "--cluster with it."
            )
        points, planned = read_plan(out)
    else:
        if not grid and repeats < 2:
            raise ArgumentError(
                "sweep: expected at least one --grid NAME=V1,V2,... or --repeats R (R >= 2: "
                "the same network at R seeds)."
            )
        points = {name: list(values) for name, values in (grid or {}).items()}
        count = math.prod(len(values) for values in points.values()) * max(repeats, 1)
        if count > MAX_TRIALS:
            raise ArgumentError(
                f"sweep: {count:,} trials (the grid's points times --repeats); expected at most "
                f"{MAX_TRIALS:,} in one sweep. Split it, or sweep fewer values."
            )
        planned = plan(points, repeats, fixed)
        find_mnist(fixed.get("data"))  # every trial reads it: a missing --data fails here, once
        if (out / PLAN_FILE).exists():
            raise ArgumentError(
                f"--out {out}: already holds a sweep. Continue it with --resume {out}, "
                "or choose another --out."
            )
    try:
        with jobs.Workers(workers, cluster) as pool:  # a bad --workers/--cluster writes nothing
            rows = _train(out, points, planned, pool, resume, verbose)
    except (KeyboardInterrupt, training.RunInterruptedError):
        finished = sum(trials.status(out / t.name) == "finished" for t in planned)
        raise SweepInterruptedError(out, finished, len(planned)) from None
    if verbose:
        failed = [r for r in rows if r["status"] != "finished"]
        print(
            f"Wrote {out / TABLE_FILE} and {out / FIGURE_FILE}: {len(rows) - len(failed)} "
            f"trials finished, {len(failed)} failed"
            + (f" ({', '.join(r['trial'] for r in failed)})" if failed else "")
        )
    return rows


class SweepInterruptedError(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a sweep: what is kept, and the command that goes on (still
    an interruption, so ``except Exception`` does not swallow it)."""

    def __init__(self, out: Path, finished: int, total: int) -> None:
        super().__init__(
            f"Interrupted with {finished} of {total} trials finished; the others keep their "
            f"checkpoints. Resume with: convnet sweep --resume {out}"
        )


def _train(
    out: Path,
    grid: dict[str, list[Any]],
    planned: list[trials.Trial],
    pool: jobs.Workers,
    resume: bool,
    verbose: bool,
) -> list[dict[str, Any]]:
    """The sweep's trials trained into ``out``, its table rewritten as each one ends."""
    if not resume:
        run_folder.prepare_out(out, overwrite=False)
    with run_folder.locked(out):
        if not resume:
            files.write_json(
                out / PLAN_FILE,
                {
                    "grid": grid,
                    "trials": [{"name": t.name, "arguments": t.arguments} for t in planned],
                },
            )
        done = ("finished", "diverged")  # a diverged trial is not tried again
        left = [t for t in planned if trials.status(out / t.name) not in done]
        if verbose:
            print(
                f"Sweep {out}: {len(planned)} trials, {len(planned) - len(left)} done "
                f"already; training {len(left)} {pool.describe()}",
                flush=True,
            )

        def report(trial: trials.Trial, result: dict[str, Any], progress: str) -> None:
            write_table(out, grid, planned)
            if verbose:
                print(f"{_describe(trial, grid, result)}; {progress}", flush=True)

        try:
            trials.run(planned, out, pool, report)
        finally:  # an interrupted sweep's table still has every finished trial
            rows = write_table(out, grid, planned)
        finished = [r for r in rows if r["status"] == "finished"]
        if finished:
            plots.sweep(finished, list(grid) or ["seed"], out / FIGURE_FILE)
        return rows


def read_plan(out: Path) -> tuple[dict[str, list[Any]], list[trials.Trial]]:
    """The grid and trials of the sweep planned in ``out``, checked."""
    stored = fields.read_json(
        out / PLAN_FILE, "sweep plan", hint=" Only sweeps started by convnet sweep resume."
    )
    grid_record = stored.record("grid")
    assert grid_record is not None
    grid = {}
    for name, values in grid_record.value.items():
        if name not in SWEPT or not isinstance(values, list) or not values:
            grid_record.fail(name, "the values of a swept parameter", values)
        grid[name] = values
    entries = stored.raw("trials")
    if not isinstance(entries, list) or not entries:
        stored.fail("trials", "a list of trials", entries)
    planned = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("arguments"), dict):
            stored.fail(f"trials[{index}]", "a trial's name and arguments", entry)
        name = str(entry.get("name"))
        if Path(name).name != name or not name.startswith("trial-"):
            stored.fail(f"trials[{index}].name", "trial-NNN", name)
        try:
            run_arguments.check_arguments(entry["arguments"])
        except ArgumentError as exc:  # a flag the user typed once, now a field of the plan
            stored.fail(
                f"trials[{index}].arguments ({name})", "the flags it was planned with", str(exc)
            )
        planned.append(trials.Trial(name, entry["arguments"]))
    return grid, planned


def write_table(
    out: Path, grid: dict[str, list[Any]], planned: Sequence[trials.Trial]
) -> list[dict[str, Any]]:
    """``out/sweep.csv``, one row per trial: its parameters, seed and results."""
    rows = [
        {"trial": t.name, **{name: t.arguments.get(name) for name in grid}}
        | {"seed": t.arguments.get("seed", 0)}
        | trials.summary(out / t.name)
        for t in planned
    ]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["trial", *grid, "seed", *RESULTS])
    writer.writeheader()
    writer.writerows(rows)
    files.write_bytes(out / TABLE_FILE, text.getvalue().encode())
    return rows


def _describe(trial: trials.Trial, grid: dict[str, list[Any]], result: dict[str, Any]) -> str:
    seed = trial.arguments.get("seed", 0)
    point = [f"{name}={trial.arguments.get(name)}" for name in grid] + [f"seed {seed}"]
    head = f"{trial.name} ({', '.join(point)})"
    if result["status"] != "finished":
        return f"{head}: {result['status']}: {result['reason']}"
    best = result["best_validation_accuracy"]
    if best is None:
        return f"{head}: final test accuracy {result['final_test_accuracy']:.2%}"
    return (
        f"{head}: best validation accuracy {best:.2%} (epoch {result['best_epoch']}), "
        f"test accuracy there {result['test_accuracy_at_best']:.2%}"
    )
