"""``scripts/chapter6.py table``: the chapter's rows as run folders, published to docs/
(results.json, CHAPTER6.md), resumable, and carried between machines by parking."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from convnet import checkpoint, load, load_mnist, vote
from convnet.cli.main import main
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "chapter6.py"
ROWS = ["shallow", "conv", "conv2", "relu", "relu-expanded", "relu-2fc", "dropout", "ensemble"]

pytestmark = pytest.mark.mnist


def _chapter6(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_row_is_trained_published_and_never_trained_again(tmp_path):
    out, docs = tmp_path / "runs", tmp_path / "docs"
    where = ["--out", str(out), "--docs", str(docs)]
    printed = _chapter6(
        "table", "--rows", "shallow", "--seeds", "0", "--epochs", "2", "--limit", "1000", *where
    )
    assert "1 runs, 0 published already; training 1 one after another" in printed
    results = json.loads((docs / "runs" / "chapter6" / "results.json").read_text())
    assert list(results["rows"]) == ROWS
    shallow = results["rows"]["shallow"]
    assert shallow["book"] == 97.80
    [run] = shallow["runs"]
    history = json.loads((out / "shallow-seed0" / "history.json").read_text())
    assert run["seed"] == 0 and run["epochs"] == 2 and run["finished"] is True
    assert run["test_at_best_validation"] == round(100 * history["test_accuracy_at_best"], 2)
    assert run["test_last"] == round(100 * history["test_accuracy"][-1], 2)
    assert run["device"] == "cpu" and run["seconds"] > 0
    if (REPO / ".git").exists():  # the commit the table started at
        assert re.fullmatch(r"[0-9a-f]{7,}(\+changes)?", run["commit"]), run["commit"]
    _, _, (images, labels) = load_mnist()
    stored = np.load(docs / "runs" / "chapter6" / "shallow-seed0.probabilities.npz")["test"]
    np.testing.assert_allclose(stored, load(out / "shallow-seed0").predict_proba(images), 1e-6)
    assert results["rows"]["ensemble"]["waiting_for"][0] == "dropout-seed0"
    report = (docs / "CHAPTER6.md").read_text()
    assert f"| shallow | 97.80 | {run['test_at_best_validation']:.2f} |" in report
    gap = run["test_at_best_validation"] - 97.80
    assert f"| {run['test_last']:.2f} | {gap:+.2f} | 0 | 2 |" in report
    assert "| conv | 98.78 |" in report and "not started" in report
    assert (docs / "img" / "chapter6-curves.png").stat().st_size > 10_000
    stamp = (out / "shallow-seed0" / "model.npz").stat().st_mtime_ns
    printed = _chapter6("table", "--rows", "shallow", "--seeds", "0", "--epochs", "2", *where)
    assert "1 runs, 1 published already; training 0" in printed
    assert (out / "shallow-seed0" / "model.npz").stat().st_mtime_ns == stamp
    assert stored.shape == (len(labels), 10)


def test_a_parked_run_goes_on_on_another_machine(tmp_path):
    out, docs = tmp_path / "here", tmp_path / "docs"
    started = tmp_path / "started"
    argv = ["--net", "shallow", "--limit", "1000", "--seed", "1", "--quiet"]
    assert main(["train", *argv, "--epochs", "1", "--out", str(started)]) == 0
    (out / "shallow-seed1").mkdir(parents=True)
    (out / "shallow-seed1" / "checkpoint.npz").write_bytes(
        (started / "checkpoint.npz").read_bytes()
    )
    failed = out / "conv-seed0"  # a run that failed after its first epoch: tried again
    failed.mkdir()
    (failed / "checkpoint.npz").write_bytes((started / "checkpoint.npz").read_bytes())
    (failed / "failed.json").write_text('{"reason": "OSError: disk | gone", "retry": true}')
    assert "Parked 2 unfinished runs in" in _chapter6(
        "park", "--out", str(out), "--docs", str(docs)
    )
    parked = docs / "runs" / "chapter6" / "unfinished" / "shallow-seed1.npz"
    assert parked.exists() and parked.with_name("conv-seed0.npz").exists()
    report = _chapter6("report", "--out", str(out), "--docs", str(docs))
    assert "CHAPTER6.md" in report
    written = (docs / "CHAPTER6.md").read_text()
    assert "shallow-seed1 at epoch 1 |" in written
    assert (
        "conv-seed0 at epoch 1, failed (OSError: disk \\| gone); `table` tries it again" in written
    )
    parked.with_name("conv-seed0.npz").unlink()

    elsewhere = tmp_path / "elsewhere"  # a machine without the run folder: only docs/
    table = ["table", "--rows", "shallow", "--seeds", "1", "--epochs", "2", "--limit", "1000"]
    _chapter6(*table, "--out", str(elsewhere), "--docs", str(docs))
    history = json.loads((elsewhere / "shallow-seed1" / "history.json").read_text())
    first = json.loads((started / "history.json").read_text())
    assert history["epoch"] == [0, 1]
    assert history["train_cost"][0] == first["train_cost"][0]  # epoch 0 was not redone
    assert main(["train", *argv, "--epochs", "2", "--out", str(tmp_path / "calm")]) == 0
    calm = json.loads((tmp_path / "calm" / "history.json").read_text())
    assert history["test_accuracy"] == calm["test_accuracy"]  # as if never interrupted
    _chapter6("park", "--out", str(elsewhere), "--docs", str(docs))
    assert not parked.exists()  # published now: the parked checkpoint is dropped


def test_the_ensemble_row_is_the_vote_of_five_dropout_nets(tmp_path):
    out, docs = tmp_path / "runs", tmp_path / "docs"
    _chapter6(
        "table",
        "--rows",
        "ensemble",
        "--epochs",
        "1",
        "--limit",
        "200",
        "--out",
        str(out),
        "--docs",
        str(docs),
    )
    results = json.loads((docs / "runs" / "chapter6" / "results.json").read_text())
    assert [r["seed"] for r in results["rows"]["dropout"]["runs"]] == [0, 1, 2, 3, 4]
    [run] = results["rows"]["ensemble"]["runs"]
    assert run["members"] == [0, 1, 2, 3, 4] and results["rows"]["ensemble"]["book"] == 99.67
    _, _, (images, labels) = load_mnist()
    nets = [load(out / f"dropout-seed{s}") for s in range(5)]
    voted = vote([net.predict_proba(images) for net in nets])
    assert run["test_voted"] == round(100 * float(np.mean(voted == labels)), 2)
    assert run["misclassified"] == int((voted != labels).sum())
    assert (docs / "img" / "chapter6-ensemble-errors.png").exists()
    assert f"| ensemble | 99.67 | {run['test_voted']:.2f} (vote of" in (
        (docs / "CHAPTER6.md").read_text()
    )


def test_the_table_parks_as_it_goes_and_ends_cleanly_on_sigterm(tmp_path):
    """A machine that goes away mid-run loses at most ``--park-every`` minutes."""
    out, docs = tmp_path / "runs", tmp_path / "docs"
    argv = ["--rows", "shallow", "--seeds", "0", "--epochs", "5000", "--limit", "1000"]
    where = ["--out", str(out), "--docs", str(docs)]
    table = subprocess.Popen(
        [sys.executable, str(SCRIPT), "table", *argv, "--park-every", "0.01", *where],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    parked = docs / "runs" / "chapter6" / "unfinished" / "shallow-seed0.npz"
    deadline = time.monotonic() + 120
    while not parked.exists() and time.monotonic() < deadline and table.poll() is None:
        time.sleep(0.1)
    assert parked.exists()  # while it still runs
    table.send_signal(signal.SIGTERM)
    _, err = table.communicate(timeout=120)
    assert table.returncode == 130
    assert "interrupted; each run's checkpoint is kept, and parked" in err
    assert "Traceback" not in err
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "checkpoint.npz").write_bytes(parked.read_bytes())
    assert len(checkpoint.progress(copy).epoch) >= 1
    assert parked.read_bytes() == (out / "shallow-seed0" / "checkpoint.npz").read_bytes()
