"""Runs that are killed at any moment resume exactly; a killed checkpoint write loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from convnet import FullyConnectedLayer, Network, SoftmaxLayer, checkpoint, files
from convnet.cli.main import main
from convnet.errors import ModelFileError

pytestmark = pytest.mark.mnist

# Dropout, shuffling and momentum: every piece of state a resume must restore matters here.
TRAIN = [
    "train",
    "--layers",
    "conv:8:5:relu,fc:40:relu:dropout=0.3,softmax:dropout=0.2",
    "--limit",
    "1000",
    "--epochs",
    "6",
    "--shuffle",
    "--seed",
    "3",
    "--momentum",
    "0.5",
    "--eta",
    "0.1",
    "--quiet",
]


def _mtime(run_dir: Path) -> int | None:
    path = checkpoint.path_in(run_dir)
    return path.stat().st_mtime_ns if path.exists() else None


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "model.npz") as stored:
        return {name: stored[name] for name in stored.files}


ADAM = [*TRAIN[: TRAIN.index("--momentum")], "--optimizer", "adam", "--eta", "0.002", "--quiet"]
# Plain SGD with an FC layer of 460,800 weights: its backward and step are convnet's fused
# dense kernel (convnet.dense), stepping the weights in place.
FUSED = [
    *TRAIN[:2],
    "conv:8:5:relu,fc:400:relu:dropout=0.5,softmax:dropout=0.5",
    *TRAIN[3 : TRAIN.index("--momentum")],
    "--eta",
    "0.05",
    "--quiet",
]


@pytest.mark.parametrize(
    "train", [TRAIN, ADAM, FUSED], ids=["sgd-momentum", "adam", "sgd-fused-dense"]
)
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(
    tmp_path, mnist_dir, train
):
    """Every optimizer's state (velocities; Adam's moments and step count) is resumed."""
    reference = tmp_path / "reference"
    assert main([*train, "--out", str(reference)]) == 0

    run = tmp_path / "killed"
    rng = np.random.default_rng(2026)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    kills = resumes = 0
    for _ in range(4):
        resuming = checkpoint.path_in(run).exists()
        resumes += resuming
        args = ["train", "--resume", str(run)] if resuming else [*train, "--out", str(run)]
        process = subprocess.Popen(
            [sys.executable, "-m", "convnet.cli", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Kill at a random moment after the run has written one more checkpoint, so every
        # round makes progress and every restart has something to resume from.
        seen = _mtime(run)
        deadline = time.monotonic() + 180
        while process.poll() is None and _mtime(run) == seen and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        _, errors = process.communicate()
        assert b"error" not in errors, errors.decode()
    assert kills >= 2, "the runs finished before they could be killed; make them longer"
    assert resumes >= 2
    assert main(["train", "--resume", str(run)]) == 0

    want, got = _weights(reference), _weights(run)
    assert sorted(want) == sorted(got)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    net = Network([FullyConnectedLayer(6, 4), SoftmaxLayer(4, 3)], 2, seed=1)
    x = np.random.default_rng(0).random((8, 6), dtype=np.float32)
    y = np.arange(8, dtype=np.int32) % 3
    history = net.SGD(
        (x, y), 1, 2, 0.1, verbose=False, on_epoch_end=lambda s: checkpoint.save(tmp_path, net, s)
    )
    assert history.epoch == [0]
    before = checkpoint.path_in(tmp_path).read_bytes()

    child = textwrap.dedent(f"""
        import time, numpy as np
        from convnet import checkpoint
        net, state, _ = checkpoint.load({str(tmp_path)!r})
        state.epoch += 1
        real_savez = np.savez
        def slow_savez(handle, **arrays):
            handle.write(b"PK" + b"x" * 1000)  # half a file ...
            handle.flush()
            time.sleep(60)                     # ... and then the power goes
        np.savez = slow_savez
        checkpoint.save({str(tmp_path)!r}, net, state)
    """)
    process = subprocess.Popen([sys.executable, "-c", child])
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".checkpoint.npz.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()

    assert checkpoint.path_in(tmp_path).read_bytes() == before
    restored, state, _ = checkpoint.load(tmp_path)
    assert state.epoch == 1
    # The next save clears the killed writer's temporary file.
    checkpoint.save(tmp_path, restored, state)
    assert not list(tmp_path.glob(".checkpoint.npz.*.tmp"))


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "checkpoint.npz: no such checkpoint file" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["nan", "dtype", "shape"])
def test_a_checkpoint_gets_the_same_checks_as_a_model_file(tmp_path, damage):
    net = Network([FullyConnectedLayer(6, 4), SoftmaxLayer(4, 3)], 2, seed=1)
    x = np.random.default_rng(0).random((8, 6), dtype=np.float32)
    net.SGD(
        (x, np.arange(8, dtype=np.int32) % 3),
        1,
        2,
        0.1,
        verbose=False,
        on_epoch_end=lambda s: checkpoint.save(tmp_path, net, s),
    )
    path = checkpoint.path_in(tmp_path)
    with np.load(path) as stored:
        arrays = {name: stored[name] for name in stored.files}
    w = arrays["weights.layers.0.w"]
    arrays["weights.layers.0.w"] = {
        "nan": np.full_like(w, np.nan),
        "dtype": w.astype(np.float64),
        "shape": w[:3],
    }[damage]
    np.savez(path, **arrays)
    with pytest.raises(ModelFileError, match=r"checkpoint\.npz: weights\.layers\.0\.w"):
        checkpoint.load(tmp_path)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_says_where_and_keeps_its_checkpoint(tmp_path, mnist_dir, signum):
    run = tmp_path / "run"
    args = ["train", "--net", "relu", "--limit", "2000", "--epochs", "40", "--quiet"]
    process = subprocess.Popen(
        [sys.executable, "-m", "convnet.cli", *args, "--out", str(run)],
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 180
    while process.poll() is None and _mtime(run) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into the next epoch
    assert process.poll() is None, "the run finished before it could be interrupted"
    process.send_signal(signum)
    _, errors = process.communicate(timeout=60)
    text = errors.decode()
    assert process.returncode == 130, text
    assert "Traceback" not in text
    assert "Interrupted at epoch" in text and f"convnet train --resume {run}" in text
    _, state, _ = checkpoint.load(run)  # the checkpoint is whole
    assert state.epoch >= 1 and f"checkpoint of epoch {state.epoch - 1} kept" in text


def test_a_writer_never_removes_the_file_another_is_still_writing(tmp_path):
    """Two processes writing one path (two workers building the same cache) both finish;
    only the leftovers of a killed writer are cleared."""
    target = tmp_path / "cache.npz"
    child = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from convnet import files
        def slow(handle):
            handle.write(b"theirs")
            handle.flush()
            print("writing", flush=True)
            sys.stdin.readline()  # until the test says go on
        files.atomic_write(Path({str(target)!r}), slow)
    """)
    other = subprocess.Popen(
        [sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert other.stdout.readline() == "writing\n"
    killed = tmp_path / f".cache.npz.{files.HOST}-{_dead_pid()}.abc.tmp"
    killed.write_bytes(b"half")
    files.atomic_write(target, lambda h: h.write(b"ours"))
    assert not killed.exists()
    assert target.read_bytes() == b"ours"
    other.stdin.write("\n")
    other.stdin.close()
    assert other.wait(timeout=60) == 0  # its temporary file was still there to rename
    assert target.read_bytes() == b"theirs"
    assert not list(tmp_path.glob(".*.tmp"))


def _dead_pid() -> int:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


def _dropping_an_interruption() -> None:
    """A Ctrl-C that lands in code which swallows it, as Numba's callbacks do (PyTensor's C
    backend runs softmax through Numba; the sweep CLI's Ctrl-C was once lost there)."""
    try:
        signal.raise_signal(signal.SIGINT)
        sum(range(1000))  # Python runs the handler here, and it raises
    except KeyboardInterrupt:
        return
    raise AssertionError("the signal did not interrupt")


@pytest.mark.parametrize("together", [False, True])
def test_an_interruption_dropped_inside_a_training_call_still_ends_the_training(together):
    """After each compiled call, alone or as one program (fit_together, JAX only)."""
    from convnet import interrupts
    from convnet.callbacks import Callback
    from convnet.network import fit_together
    from convnet.optimizers import SGD

    class DropOne(Callback):
        def on_batches(self, trainer, images):
            seen.append(images)
            if len(seen) == 2:
                _dropping_an_interruption()

    seen: list[int] = []
    rng = np.random.default_rng(3)
    x = rng.random((40, 6), dtype=np.float32)
    y = x[:, :3].argmax(axis=1).astype(np.int32)
    backend = "jax" if together else None
    nets = [
        Network([FullyConnectedLayer(6, 4), SoftmaxLayer(4, 3)], 2, seed=1, backend=backend)
        for _ in range(2 if together else 1)
    ]
    options = dict(optimizer=SGD(0.1), steps_per_call=1, verbose=False)
    with pytest.raises(KeyboardInterrupt), interrupts.interruptible():
        if together:
            fit_together(nets, (x, y), 3, callbacks=[[DropOne()], []], **options)
        else:
            nets[0].fit((x, y), epochs=3, callbacks=[DropOne()], **options)
    assert seen == [2, 4]  # ended at the next compiled call, not after three epochs


def test_an_interruption_dropped_on_the_way_is_raised_when_the_work_ends():
    from convnet import interrupts

    went_on = False
    with pytest.raises(KeyboardInterrupt), interrupts.interruptible():
        _dropping_an_interruption()
        went_on = True
    assert went_on
    with interrupts.interruptible():  # a new piece of work starts with none pending
        pass


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interruption_that_lands_in_a_gc_callback_is_not_lost(signum):
    """Python drops an exception raised inside a garbage-collector callback (JAX has one):
    a Ctrl-C that lands there must still end the work."""
    child = textwrap.dedent("""
        import gc, time
        from convnet import interrupts
        def callback(phase, info):
            if phase == "start" and not calls:
                calls.append(phase)
                print("in the callback", flush=True)
                time.sleep(1)
        calls = []
        try:
            with interrupts.interruptible():
                gc.callbacks.append(callback)
                gc.collect()
                time.sleep(10)
            print("trained on")
        except KeyboardInterrupt:
            print("interrupted")
    """)
    process = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "in the callback\n"
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert out == "interrupted\n", err
    assert "Exception ignored" not in err
