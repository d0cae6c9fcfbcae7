"""Ensemble members trained at once, each in a pinned worker process of its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from convnet.cli.main import main
from convnet.runs import jobs
from tests.devices import local_cluster
from tests.test_run_folders import _dataset

ARGV = [
    "train",
    "--layers",
    "conv:4:5:relu,fc:10:relu:dropout=0.2,softmax",
    "--epochs",
    "2",
    "--shuffle",
    "--quiet",
    "--ensemble",
    "2",
]


@pytest.mark.skipif(len(jobs.cores()) < 2, reason="needs 2 cores")
def test_members_trained_in_parallel_equal_the_sequential_ones_bit_for_bit(tmp_path):
    data = _dataset(tmp_path / "data.npz")
    argv = [*ARGV, "--data", str(data)]
    assert main([*argv, "--out", str(tmp_path / "one-by-one")]) == 0
    assert main([*argv, "--workers", "2", "--out", str(tmp_path / "at-once")]) == 0
    for k in range(2):
        with (
            np.load(tmp_path / "one-by-one" / f"member-{k}" / "model.npz") as a,
            np.load(tmp_path / "at-once" / f"member-{k}" / "model.npz") as b,
        ):
            assert sorted(a.files) == sorted(b.files)
            for name in a.files:
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"member {k} {name}")
    one, other = (
        json.loads((tmp_path / f / "ensemble.json").read_text()) for f in ("one-by-one", "at-once")
    )
    assert one == other
    # Each member's checkpoint resumes as a single run's does: finished, nothing to do.
    assert main(["train", "--resume", str(tmp_path / "at-once" / "member-1")]) == 0


def test_workers_without_an_ensemble_or_beyond_the_cores_are_refused(tmp_path, capsys):
    data = _dataset(tmp_path / "data.npz")
    base = ["train", "--layers", "fc:8:relu,softmax", "--data", str(data), "--out"]
    assert main([*base, str(tmp_path / "a"), "--workers", "2"]) == 2
    assert "--workers: trains ensemble members at once; give --ensemble N too." in (
        capsys.readouterr().err
    )
    too_many = len(jobs.cores()) + 1
    assert main([*base, str(tmp_path / "b"), "--ensemble", "2", "--workers", str(too_many)]) == 2
    assert f"--workers: expected at most {too_many - 1}, the cores" in capsys.readouterr().err


def test_members_trained_on_a_dask_cluster_equal_the_sequential_ones(cluster, tmp_path):
    data = _dataset(tmp_path / "data.npz")
    argv = [*ARGV, "--data", str(data)]
    assert main([*argv, "--out", str(tmp_path / "one-by-one")]) == 0
    assert main([*argv, "--cluster", cluster, "--out", str(tmp_path / "on-the-cluster")]) == 0
    for k in range(2):
        folder = tmp_path / "on-the-cluster" / f"member-{k}"
        assert {"model.npz", "model.json", "history.json", "checkpoint.npz"} <= {
            p.name for p in folder.iterdir()
        }
        with (
            np.load(tmp_path / "one-by-one" / f"member-{k}" / "model.npz") as a,
            np.load(folder / "model.npz") as b,
        ):
            for name in a.files:
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"member {k} {name}")
    one, other = (
        json.loads((tmp_path / f / "ensemble.json").read_text())
        for f in ("one-by-one", "on-the-cluster")
    )
    assert one == other


def test_an_unreachable_cluster_fails_fast_and_names_the_address(tmp_path, capsys):
    data = _dataset(tmp_path / "data.npz")
    address = "tcp://127.0.0.1:9"  # the discard port: nothing listens
    started = time.perf_counter()
    argv = [*ARGV, "--data", str(data), "--cluster", address, "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert time.perf_counter() - started < 30
    err = capsys.readouterr().err
    assert f"--cluster {address}: no Dask scheduler answered within 5 s" in err
    assert not (tmp_path / "r").exists()  # nothing written: the retry starts afresh
    assert main([*argv[:-4], "--cluster", "no-port-here", "--out", str(tmp_path / "r")]) == 2
    assert "--cluster no-port-here: expected a scheduler address such as tcp://HOST:8786" in (
        capsys.readouterr().err
    )


def test_a_cluster_with_another_convnet_is_refused_before_work_is_sent(
    cluster, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(jobs, "VERSION", "9.9")  # as if the workers ran an older convnet
    data = _dataset(tmp_path / "data.npz")
    argv = [*ARGV, "--data", str(data), "--cluster", cluster, "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--cluster {cluster}: expected workers with convnet 9.9. Received: " in err
    assert ": 0.1.0" in err
    assert not (tmp_path / "r").exists()


def _members_equal(a, b, members):
    for k in range(members):
        with (
            np.load(a / f"member-{k}" / "model.npz") as x,
            np.load(b / f"member-{k}" / "model.npz") as y,
        ):
            for name in x.files:
                np.testing.assert_array_equal(x[name], y[name], err_msg=f"member {k} {name}")
    assert json.loads((a / "ensemble.json").read_text()) == json.loads(
        (b / "ensemble.json").read_text()
    )


@pytest.mark.parametrize("workers", [None, "2", "cluster"], ids=["one-by-one", "two", "dask"])
def test_an_interrupted_ensemble_resumes_only_what_is_missing(tmp_path, capsys, workers, request):
    """Member 0 finished, member 1 stopped after its first epoch, member 2 never started
    and no vote yet: --resume trains what is missing, and the ensemble equals one
    trained without a stop, bit for bit."""
    if workers == "2" and len(jobs.cores()) < 2:
        pytest.skip("needs 2 cores")
    data = _dataset(tmp_path / "data.npz")
    argv = [*ARGV[:-1], "3", "--data", str(data)]  # --ensemble 3
    whole, short, stopped = tmp_path / "whole", tmp_path / "short", tmp_path / "stopped"
    assert main([*argv, "--out", str(whole)]) == 0
    assert main([*[a if a != "2" else "1" for a in argv], "--out", str(short)]) == 0  # 1 epoch
    shutil.copytree(whole, stopped)
    shutil.rmtree(stopped / "member-2")
    (stopped / "ensemble.json").unlink()
    shutil.copy(short / "member-1" / "checkpoint.npz", stopped / "member-1" / "checkpoint.npz")
    finished = (stopped / "member-0" / "model.npz").stat().st_mtime_ns
    capsys.readouterr()
    extra = ["--workers", workers] if workers == "2" else []
    if workers == "cluster":  # the checkpoint goes to the worker, the folder comes back
        extra = ["--cluster", request.getfixturevalue("cluster")]
    assert main(["train", "--resume", str(stopped), *extra]) == 0
    out = capsys.readouterr().out
    assert "members [1] from their checkpoints, [2] from the start, [0] done" in out
    assert (stopped / "member-0" / "model.npz").stat().st_mtime_ns == finished  # left alone
    _members_equal(whole, stopped, 3)
    assert main(["train", "--resume", str(stopped)]) == 0
    assert "finished (all 3 members trained, the vote taken)" in capsys.readouterr().out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_ends_with_its_parent_even_one_killed_with_sigkill():
    """Else a killed ``table`` or ``sweep`` leaves workers training on into folders that
    the next run takes over."""
    parent = textwrap.dedent("""
        import os, time
        from convnet.runs import jobs
        pool = jobs.pinned_pool(1)
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 600)
        time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    worker = int(process.stdout.readline())
    assert _running(worker)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(worker)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return state != "Z"  # a zombie has ended, waiting for its parent to be told


@pytest.mark.skipif(len(jobs.cores()) < 2, reason="needs 2 cores")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_interrupting_an_ensembles_driver_stops_every_worker_at_once(tmp_path, how):
    """SIGTERM to the driver, or Ctrl-C to its process group, of ``--ensemble 3 --workers
    2``: every worker stops at once, the queued member never starts, one line names the
    ensemble's folder to resume (never a member's), exit 130, no worker's traceback."""
    from convnet.data import book_format
    from tests.datasets import learnable_splits

    data = book_format.write(tmp_path / "data.npz", learnable_splits(1, (3000, 100, 100)))
    run = tmp_path / "ensemble"
    # Epochs enough that no member can finish while the other still starts (the signal
    # comes once both have a checkpoint; with 20, a busy core let one finish first).
    argv = [*ARGV[:-1], "3", "--epochs", "1000", "--workers", "2", "--data", str(data)]
    process = subprocess.Popen(
        [sys.executable, "-m", "convnet.cli", *argv, "--out", str(run)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    started = [run / f"member-{k}" / "checkpoint.npz" for k in (0, 1)]
    deadline = time.monotonic() + 240
    while not all(p.exists() for p in started) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.1)
    assert all(p.exists() for p in started), "the members never wrote a checkpoint"
    asked = time.monotonic()
    if how == signal.SIGINT:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    else:
        process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=60)
    took = time.monotonic() - asked
    text = errors.decode()
    assert process.returncode == 130, text
    assert took < 10, f"took {took:.1f} s to stop"
    assert "Traceback" not in text, text
    assert f"Resume with: convnet train --resume {run}\n" in text, text
    assert "members none finished, [0, 1] keep their last checkpoints" in text, text
    assert not (run / "member-2").exists() or not any((run / "member-2").iterdir())
    left = "?"
    for _ in range(50):  # the session's processes: the workers, multiprocessing's tracker
        left = subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True).stdout
        if not left.strip():
            break
        time.sleep(0.1)
    assert not left.strip(), f"processes left running 5 s after the driver: {left!r}"


def test_a_cluster_address_that_takes_the_connection_and_says_nothing_fails_in_time(
    tmp_path, capsys
):
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    threading.Thread(
        target=lambda: held.extend(server.accept() for _ in range(8)), daemon=True
    ).start()
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    data = _dataset(tmp_path / "data.npz")
    start = time.monotonic()
    argv = [*ARGV, "--data", str(data), "--cluster", address, "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert time.monotonic() - start < 30
    assert f"--cluster {address}: no Dask scheduler answered within" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    server.close()


def test_a_dask_worker_killed_mid_member_does_not_lose_the_ensemble(tmp_path):
    """kill -9 of a worker process while both members train: the lost member is trained
    again elsewhere, and the ensemble ends bit-identical to one trained in turn."""
    distributed = pytest.importorskip("distributed")
    from tests.test_sweep import SLOW, _slow_dataset, _wait_for

    data = _slow_dataset(tmp_path / "data.npz")
    argv = ["train", *SLOW, "--epochs", "8", "--ensemble", "2", "--quiet", "--data", str(data)]
    out = tmp_path / "on-the-cluster"
    with (
        local_cluster() as local,
        distributed.Client(local) as client,
    ):
        pids = client.run(os.getpid)
        where = ["--out", str(out), "--cluster", local.scheduler_address]
        driver = subprocess.Popen(
            [sys.executable, "-m", "convnet.cli", *argv, *where],
            cwd=Path(__file__).parent.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for(
            lambda: all(client.processing().get(w) for w in pids) or driver.poll() is not None
        )
        time.sleep(3)
        assert driver.poll() is None, "the members finished before a worker could be killed"
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    assert main([*argv, "--out", str(tmp_path / "in-turn")]) == 0
    for k in range(2):
        with (
            np.load(tmp_path / "in-turn" / f"member-{k}" / "model.npz") as a,
            np.load(out / f"member-{k}" / "model.npz") as b,
        ):
            for name in a.files:
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"member {k} {name}")


def test_a_dask_cluster_that_loses_every_worker_ends_the_ensemble_in_bounded_time(
    tmp_path, monkeypatch, capsys
):
    """Every worker of a real cluster retired mid-member: the driver says so and stops
    (Dask alone would wait for a worker forever); the members keep their folders."""
    import threading

    distributed = pytest.importorskip("distributed")
    from tests.test_sweep import SLOW, _slow_dataset, _wait_for

    monkeypatch.setattr(jobs, "POLL_SECONDS", 0.5)
    monkeypatch.setattr(jobs, "NO_WORKERS_SECONDS", 3.0)
    data = _slow_dataset(tmp_path / "data.npz")
    out = tmp_path / "ensemble"
    argv = ["train", *SLOW, "--epochs", "30", "--ensemble", "2", "--quiet", "--data", str(data)]
    with local_cluster() as local, distributed.Client(local) as client:

        def retire_when_busy():
            _wait_for(lambda: any(client.processing().values()))
            local.scale(0)

        retiring = threading.Thread(target=retire_when_busy, daemon=True)
        retiring.start()
        start = time.monotonic()
        code = main([*argv, "--out", str(out), "--cluster", local.scheduler_address])
        took = time.monotonic() - start
        retiring.join(timeout=30)
    assert code != 0
    err = capsys.readouterr().err
    assert f"--cluster {local.scheduler_address}: no worker has been there for 3 s" in err
    assert took < 120, took
    assert (out / "ensemble.json").exists() or any(out.iterdir())  # the folder is kept
