"""Sweeps: a grid of trials, each a run folder, on a local pool, a Dask cluster or one
after another; what is left of one after a failure, a killed worker or Ctrl-C."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import convnet
from convnet.cli.main import main
from convnet.errors import ArgumentError
from convnet.runs import jobs, trials
from convnet.runs import sweep as sweeps
from tests.conftest import REPO
from tests.datasets import learnable_splits
from tests.devices import local_cluster
from tests.test_run_folders import _dataset

LAYERS = "fc:16:relu,softmax"
GRID = ["--grid", "eta=0.05,0.2", "--grid", "lmbda=0,1"]


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / sweeps.TABLE_FILE, newline="") as handle:
        return list(csv.DictReader(handle))


def _weights(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "model.npz") as stored:
        return {name: stored[name] for name in stored.files}


def _same_models(one: Path, other: Path, names: list[str]) -> None:
    for name in names:
        a, b = _weights(one / name), _weights(other / name)
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {key}")


def test_a_grid_sweep_writes_a_row_per_trial_and_a_figure(tmp_path, capsys):
    data = _dataset(tmp_path / "data.npz")
    out = tmp_path / "sweep"
    argv = ["sweep", "--layers", LAYERS, *GRID, "--repeats", "2", "--epochs", "2"]
    assert main([*argv, "--data", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 trials, 0 done already" in printed
    assert "8 of 8 ended" in printed
    rows = _rows(out)
    assert [r["trial"] for r in rows] == [f"trial-{k:03d}" for k in range(8)]
    points = [(float(r["eta"]), float(r["lmbda"]), int(r["seed"])) for r in rows]
    assert points == [(e, lm, s) for e in (0.05, 0.2) for lm in (0.0, 1.0) for s in (0, 1)]
    for row in rows:
        history = json.loads((out / row["trial"] / "history.json").read_text())
        assert row["status"] == "finished"
        assert int(row["epochs"]) == 2
        assert float(row["best_validation_accuracy"]) == history["best_validation_accuracy"]
        assert int(row["best_epoch"]) == history["best_epoch"]
        assert float(row["test_accuracy_at_best"]) == history["test_accuracy_at_best"]
        assert float(row["final_test_accuracy"]) == history["test_accuracy"][-1]
        assert row["host"] and float(row["seconds"]) > 0
        model = json.loads((out / row["trial"] / "model.json").read_text())
        assert model["seed"] == int(row["seed"])
        assert model["training"]["eta"] == float(row["eta"])
        assert model["training"]["lmbda"] == float(row["lmbda"])
    assert (out / sweeps.FIGURE_FILE).stat().st_size > 10_000
    # Repeats differ by seed only; the same point and seed trained twice is the same model.
    a, b = _weights(out / "trial-000"), _weights(out / "trial-001")
    assert any(not np.array_equal(a[k], b[k]) for k in a)


def test_resume_trains_only_the_missing_trials_and_refuses_a_second_plan(tmp_path, capsys):
    data = _dataset(tmp_path / "data.npz")
    out = tmp_path / "sweep"
    argv = ["sweep", "--layers", LAYERS, *GRID, "--epochs", "2", "--data", str(data)]
    assert main([*argv, "--out", str(out)]) == 0
    kept = {n: (out / n / "model.npz").stat().st_mtime_ns for n in ("trial-000", "trial-002")}
    before = _weights(out / "trial-001")
    for name in ("trial-001", "trial-003"):
        for path in (out / name).iterdir():
            path.unlink()
    capsys.readouterr()
    assert main(["sweep", "--resume", str(out), "--quiet"]) == 0
    assert {n: (out / n / "model.npz").stat().st_mtime_ns for n in kept} == kept
    assert [r["status"] for r in _rows(out)] == ["finished"] * 4
    after = _weights(out / "trial-001")
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])

    # a trial killed after its last checkpoint, before its last files: finished on resume
    for name in ("model.json", "curves.png", "trial.json"):
        (out / "trial-002" / name).unlink()
    model = (out / "trial-002" / "model.npz").read_bytes()
    assert main(["sweep", "--resume", str(out), "--quiet"]) == 0
    assert all(
        (out / "trial-002" / n).is_file() for n in ("model.json", "curves.png", "trial.json")
    )
    assert (out / "trial-002" / "model.npz").read_bytes() == model
    assert [r["status"] for r in _rows(out)] == ["finished"] * 4

    assert main([*argv, "--out", str(out)]) == 2
    assert f"--out {out}: already holds a sweep. Continue it with --resume" in (
        capsys.readouterr().err
    )
    assert main(["sweep", "--resume", str(out), "--epochs", "3"]) == 2
    assert "only --workers, --cluster and --quiet may be given with it. Received: --epochs" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("size=1,2", "--grid size=1,2: expected NAME=V1,V2,... with NAME one of eta"),
        ("eta=0.1,fast", "--grid eta=0.1,fast: eta takes float values. Received: 'fast'."),
        ("optimizer=sgd,rmsprop", "optimizer is one of sgd, nesterov, adam. Received: 'rmsprop'"),
        ("eta=0.1,0.1", "--grid eta=0.1,0.1: expected distinct values for eta."),
        ("epochs=2,0", "--epochs: expected an integer >= 1"),
        ("lmbda=-1,0", "--lmbda: expected a number >= 0"),
        ("net=shallow,conv", "--grid net: --layers is given too"),
        ("eta=0.1,0.2 --repeats 0", "--repeats: expected at least 1. Received: 0."),
        ("eta=0.1,0.2 --data nowhere.npz", "nowhere.npz"),
        ("eta=0.1,0.2 --repeats 1000000000", "sweep: 2,000,000,000 trials"),
    ],
)
def test_a_bad_grid_is_refused_before_anything_is_written(tmp_path, capsys, grid, message):
    """Every value is checked as ``convnet train`` checks its flag, before any folder."""
    out = tmp_path / "sweep"
    text, *more = grid.split(" ")
    argv = ["sweep", "--layers", LAYERS, "--grid", text, *more, "--out", str(out)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_sweep_whose_every_trial_failed_exits_non_zero(tmp_path, capsys):
    data = _dataset(tmp_path / "data.npz")
    argv = ["sweep", "--layers", LAYERS, "--grid", "eta=1e30,1e31", "--epochs", "1"]
    assert main([*argv, "--data", str(data), "--out", str(tmp_path / "s")]) == 1
    assert "0 trials finished, 2 failed" in capsys.readouterr().out


def test_a_damaged_plan_names_the_file_and_the_trial(tmp_path, capsys):
    data = _dataset(tmp_path / "data.npz")
    out = tmp_path / "sweep"
    argv = ["sweep", "--layers", LAYERS, "--grid", "eta=0.1,0.2", "--epochs", "1", "--quiet"]
    assert main([*argv, "--data", str(data), "--out", str(out)]) == 0
    plan = json.loads((out / "sweep-plan.json").read_text())
    plan["trials"][1]["arguments"]["epochs"] = "1"
    (out / "sweep-plan.json").write_text(json.dumps(plan))
    assert main(["sweep", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "sweep-plan.json: trials[1].arguments (trial-001)" in err and "--epochs" in err


def test_a_parameter_both_swept_and_fixed_is_refused(tmp_path, capsys):
    argv = ["sweep", "--layers", LAYERS, "--grid", "eta=0.1,0.2", "--eta", "0.3"]
    assert main([*argv, "--out", str(tmp_path / "s")]) == 2
    assert "--grid eta: is also given as --eta; sweep it or fix it, not both." in (
        capsys.readouterr().err
    )


def test_a_diverging_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    data = _dataset(tmp_path / "data.npz")
    rows = convnet.sweep(
        tmp_path / "sweep",
        {"eta": [0.1, 1e30]},
        layers=LAYERS,
        epochs=2,
        data=str(data),
        verbose=False,
    )
    assert [r["status"] for r in rows] == ["finished", "diverged"]
    assert "DivergenceError" in rows[1]["reason"]
    assert rows[1]["best_validation_accuracy"] is None
    assert [r["status"] for r in _rows(tmp_path / "sweep")] == ["finished", "diverged"]
    # A diverged trial is not retried (its seeds would diverge again); nothing is left.
    again = convnet.sweep(tmp_path / "sweep", resume=True, verbose=False)
    assert [r["status"] for r in again] == ["finished", "diverged"]


def test_the_sweep_api_returns_the_rows_of_sweep_csv(tmp_path):
    data = _dataset(tmp_path / "data.npz")
    rows = convnet.sweep(
        tmp_path / "sweep",
        {"mini_batch_size": [5, 10]},
        layers=LAYERS,
        epochs=1,
        data=str(data),
        verbose=False,
    )
    assert [(r["trial"], r["mini_batch_size"], r["status"]) for r in rows] == [
        ("trial-000", 5, "finished"),
        ("trial-001", 10, "finished"),
    ]
    assert [r["best_validation_accuracy"] for r in rows] == [
        float(r["best_validation_accuracy"]) for r in _rows(tmp_path / "sweep")
    ]
    with pytest.raises(ArgumentError, match="expected at least one --grid"):
        convnet.sweep(tmp_path / "other", {}, layers=LAYERS)


def test_repeats_alone_give_one_networks_spread_over_seeds(tmp_path):
    data = _dataset(tmp_path / "data.npz")
    rows = convnet.sweep(
        tmp_path / "spread", repeats=3, layers=LAYERS, epochs=1, data=str(data), verbose=False
    )
    assert [(r["seed"], r["status"]) for r in rows] == [
        (0, "finished"),
        (1, "finished"),
        (2, "finished"),
    ]
    first, second = (_weights(tmp_path / "spread" / f"trial-00{k}") for k in (0, 1))
    assert any(not np.array_equal(first[n], second[n]) for n in first)  # two seeds, two nets
    assert (tmp_path / "spread" / "sweep.png").stat().st_size > 5_000
    with pytest.raises(ArgumentError, match="or --repeats R"):
        convnet.sweep(tmp_path / "one", repeats=1, layers=LAYERS)


@pytest.mark.skipif(len(jobs.cores()) < 2, reason="needs 2 cores")
def test_a_sweep_on_two_workers_equals_the_one_after_another_sweep(tmp_path):
    data = _dataset(tmp_path / "data.npz")
    argv = ["sweep", "--layers", LAYERS, *GRID, "--epochs", "2", "--quiet", "--data", str(data)]
    assert main([*argv, "--out", str(tmp_path / "one-by-one")]) == 0
    assert main([*argv, "--workers", "2", "--out", str(tmp_path / "at-once")]) == 0
    names = [f"trial-{k:03d}" for k in range(4)]
    _same_models(tmp_path / "one-by-one", tmp_path / "at-once", names)


def test_a_sweep_on_a_dask_cluster_writes_every_row(cluster, tmp_path):
    data = _dataset(tmp_path / "data.npz")
    out = tmp_path / "sweep"
    argv = ["sweep", "--layers", LAYERS, *GRID, "--epochs", "2", "--quiet", "--data", str(data)]
    assert main([*argv, "--cluster", cluster, "--out", str(out)]) == 0
    rows = _rows(out)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    assert main([*argv, "--out", str(tmp_path / "here")]) == 0
    _same_models(tmp_path / "here", out, [r["trial"] for r in rows])


# -- a killed worker, Ctrl-C ---------------------------------------------------------------
SLOW = ["--layers", "conv:8:5:relu,fc:32:relu,softmax", "--shuffle"]


def _slow_dataset(path: Path) -> Path:
    from convnet.data import book_format

    return book_format.write(path, learnable_splits(1, (3000, 100, 100)))


def _sweep_process(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "convnet.cli", "sweep", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _mid_trial(out: Path) -> list[Path]:
    """Trials with a checkpoint (an epoch done) and not yet finished."""
    return [
        folder for folder in sorted(out.glob("trial-*")) if trials.status(folder) == "unfinished"
    ]


def _pool_workers(pid: int) -> list[int]:
    """The spawned worker processes of the process ``pid`` (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parent = next(line for line in status.splitlines() if line.startswith("PPid:"))
        if int(parent.split()[1]) == pid and "spawn_main" in command:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(len(jobs.cores()) < 2, reason="needs 2 cores")
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers in /proc")
def test_a_worker_killed_mid_trial_loses_only_that_trials_last_epoch(tmp_path):
    data = _slow_dataset(tmp_path / "data.npz")
    out = tmp_path / "killed"
    grid = ["--grid", "eta=0.05,0.1"]
    base = [*SLOW, "--epochs", "12", *grid, "--data", str(data)]
    driver = _sweep_process([*base, "--workers", "2", "--out", str(out)])
    _wait_for(lambda: bool(_mid_trial(out)) or driver.poll() is not None)
    assert driver.poll() is None, driver.communicate()
    workers = _pool_workers(driver.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    assert [r["status"] for r in _rows(out)] == ["finished", "finished"], stdout
    for row in _rows(out):
        assert int(row["epochs"]) == 12
    # Resumed from their checkpoints, the trials are the uninterrupted ones bit for bit.
    assert main(["sweep", *base, "--quiet", "--out", str(tmp_path / "calm")]) == 0
    _same_models(tmp_path / "calm", out, ["trial-000", "trial-001"])


def test_ctrl_c_on_the_driver_keeps_every_finished_trial(tmp_path):
    data = _slow_dataset(tmp_path / "data.npz")
    out = tmp_path / "sweep"
    # The second trial is long, so that the signal surely comes while it trains, on any machine.
    argv = [*SLOW, "--grid", "epochs=2,25", "--data", str(data)]
    driver = _sweep_process([*argv, "--out", str(out)])
    _wait_for(lambda: _mid_trial(out) == [out / "trial-001"] or driver.poll() is not None)
    assert driver.poll() is None, driver.communicate()
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    assert "Traceback" not in stderr
    rows = _rows(out)
    assert rows[0]["status"] == "finished"
    finished = [r["trial"] for r in rows if r["status"] == "finished"]
    assert (
        f"convnet sweep: Interrupted with {len(finished)} of 2 trials finished; the others "
        in stderr
    )
    assert stderr.rstrip().endswith(f"Resume with: convnet sweep --resume {out}")
    stamps = {n: (out / n / "model.npz").stat().st_mtime_ns for n in finished}
    assert main(["sweep", "--resume", str(out), "--quiet"]) == 0
    assert [r["status"] for r in _rows(out)] == ["finished"] * 2
    assert {n: (out / n / "model.npz").stat().st_mtime_ns for n in finished} == stamps


def test_a_dask_worker_killed_mid_trial_does_not_lose_the_sweep(tmp_path):
    distributed = pytest.importorskip("distributed")
    data = _slow_dataset(tmp_path / "data.npz")
    out = tmp_path / "sweep"
    with (
        local_cluster() as local,
        distributed.Client(local) as client,
    ):
        pids = client.run(os.getpid)
        driver = _sweep_process(
            [
                *SLOW,
                *("--epochs", "12", "--grid", "eta=0.05,0.1", "--data", str(data)),
                *("--out", str(out), "--cluster", local.scheduler_address),
            ]
        )
        # Workers train in folders of their own; wait until both have started training.
        _wait_for(
            lambda: all(client.processing().get(w) for w in pids) or driver.poll() is not None
        )
        time.sleep(3)
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    assert [r["status"] for r in _rows(out)] == ["finished", "finished"], stdout
