"""What users get wrong at the command line and in the API, and what convnet says.

Each case ends in a one-line error naming the flag, file or argument, or is handled
correctly (and says so), with nothing a user saved changed. A small learnable dataset
stands in for MNIST, so these run everywhere.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convnet import FullyConnectedLayer, Network, SoftmaxLayer, files, load_mnist
from convnet.cli.main import main
from convnet.data import book_format
from convnet.errors import DataError, DataWarning
from convnet.runs import folder as run_folder
from convnet.runs.arguments import TRAIN_FLAGS
from tests.datasets import learnable_splits
from tests.test_run_folders import LAYERS, _dataset, _fingerprint


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("data") / "data.npz")


def _train(data, out, *extra: str, epochs: int = 1) -> int:
    return main(
        [
            "train",
            "--layers",
            LAYERS,
            "--epochs",
            str(epochs),
            "--quiet",
            "--data",
            str(data),
            "--out",
            str(out),
            *extra,
        ]
    )


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# -- --resume ------------------------------------------------------------------------------
def test_resume_with_epochs_trains_the_run_on_and_says_what_it_continues(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(data, run, epochs=1) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert f"Resuming {run}: 1 of 3 epochs done, eta 0.1, best validation accuracy" in out
    history = json.loads((run / "history.json").read_text())
    assert history["epoch"] == [0, 1, 2]
    # The stored arguments now say 3 epochs: resuming again finds a finished run.
    before = _fingerprint(run)
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{run}: finished (3 of 3 epochs, all epochs done;" in out
    assert "Nothing was changed" in out and _fingerprint(run) == before


def test_resume_refuses_flags_it_would_ignore_and_fewer_epochs(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(data, run, epochs=2) == 0
    before = _fingerprint(run)
    assert main(["train", "--resume", str(run), "--eta", "0.5", "--shuffle"]) == 2
    err = _error(capsys)
    allowed = "--epochs, --workers, --cluster, --together, --checkpoint-every, --quiet, --data"
    allowed += ", --backend"
    assert f"only {allowed}, --device may be given" in err
    assert "Received: --eta 0.5 --shuffle" in err
    assert main(["train", "--resume", str(run), "--epochs", "1"]) == 2
    assert (
        "has already trained 2 epochs; expected --epochs >= 2 to train it on. Received: 1."
        in _error(capsys)
    )
    assert main(["train", "--resume", str(run), "--seed", "0"]) == 2  # 0 is typed, not unset
    assert "Received: --seed 0" in _error(capsys)
    assert _fingerprint(run) == before


def test_a_misspelt_layers_option_is_refused_before_anything_runs(data, tmp_path, capsys):
    for spec, message in [
        ("fc:8:relu:dropuot=0.5,softmax", "unknown option 'dropuot' for fc (it takes dropout=)"),
        ("fc:8:relu:0.5,softmax", "expected at most 3 fields separated by ':' for fc"),
        ("fc:8:dropout=0.1:dropout=0.2,softmax", "option dropout= given twice"),
    ]:
        argv = ["train", "--layers", spec, "--data", str(data), "--out", str(tmp_path / "r")]
        assert main(argv) == 2
        assert message in _error(capsys)
    assert not (tmp_path / "r").exists()


def test_a_limit_beyond_the_training_set_is_refused_not_ignored(data, tmp_path, capsys):
    assert _train(data, tmp_path / "run", "--limit", "5000") == 2
    err = _error(capsys)
    assert "--limit: expected at most 200, the training images there are. Received: 5,000." in err
    assert not (tmp_path / "run" / "model.npz").exists()


# -- --out ---------------------------------------------------------------------------------
def test_an_out_that_cannot_be_a_run_folder_is_refused_before_training(data, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert _train(data, a_file) == 2
    assert f"--out {a_file}: is a file, not a folder; nothing was trained." in _error(capsys)
    assert _train(data, a_file / "run") == 2
    assert f"--out {a_file / 'run'}: this folder cannot be written" in _error(capsys)
    assert a_file.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_an_out_folder_without_write_permission_is_refused(data, tmp_path, capsys):
    locked = tmp_path / "readonly"
    locked.mkdir(mode=0o500)
    assert _train(data, locked / "run") == 2
    assert "this folder cannot be written (Permission denied)" in _error(capsys)


def test_a_full_disk_is_named_and_the_previous_model_is_kept(data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert _train(data, run) == 0
    before = (run / "model.npz").read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", disk_full)
    assert _train(data, run, "--overwrite") == 2
    err = _error(capsys)
    assert "could not be written (No space left on device)" in err
    assert "the file that was there is kept as it was" in err
    assert (run / "model.npz").read_bytes() == before
    assert not list(run.glob(".*.tmp"))


def test_two_runs_into_one_folder_the_second_is_refused_naming_the_first(data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from convnet.runs import folder as run_folder
                with run_folder.locked(Path({str(run)!r})):
                    print("held", flush=True)
                    sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _train(data, run) == 2
        err = _error(capsys)
        assert f"another convnet (process {holder.pid}) is training into this folder" in err
        assert not (run / "model.npz").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert _train(data, run) == 0  # the lock went with its process


# -- ensembles -----------------------------------------------------------------------------
def test_evaluate_and_predict_an_ensemble_folder_vote_or_use_one_member(data, tmp_path, capsys):
    run = tmp_path / "ensemble"
    assert _train(data, run, "--ensemble", "3") == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    voted = json.loads((run / "ensemble.json").read_text())["voted"]
    assert "an ensemble of 3 nets; their vote answers" in out
    assert f"test accuracy: {voted:.2%}" in out
    assert main(["evaluate", str(run), "--member", "2", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    member = json.loads((run / "ensemble.json").read_text())["members"][2]
    assert f"test accuracy: {member:.2%}" in out and "ensemble" not in out
    picture = tmp_path / "digit.png"
    Image.fromarray(np.where(np.eye(40, dtype=bool), 0, 255).astype(np.uint8)).save(picture)
    assert main(["predict", str(run), str(picture)]) == 0
    assert " of 3 votes)" in capsys.readouterr().out
    assert main(["predict", str(run), "--member", "5", str(picture)]) == 2
    assert "--member: expected a member of" in _error(capsys)
    assert main(["evaluate", str(run / "member-0"), "--member", "0"]) == 2
    assert "is a single model, not an ensemble" in _error(capsys)


# -- numbers -------------------------------------------------------------------------------
def test_nan_images_are_refused_and_0_255_images_are_converted_saying_so(rng):
    net = Network([FullyConnectedLayer(4, 6), SoftmaxLayer(6, 3)], 2, seed=0)
    x = rng.random((6, 4), dtype=np.float32)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(DataError, match=r"x: images contain NaN or inf \(first at example 3\)"):
        net.predict(bad)
    as_bytes = np.round(x * 255).astype(np.uint8)
    with pytest.warns(DataWarning, match="divided by 255"):
        converted = net.predict_proba(as_bytes)
    np.testing.assert_allclose(converted, net.predict_proba(as_bytes / np.float32(255)), atol=1e-6)
    with pytest.warns(DataWarning, match=r"pixel values run from \d+ to \d+, outside MNIST's"):
        net.predict(as_bytes.astype(np.float32))
    y = np.arange(6) % 3
    with pytest.warns(DataWarning, match="training_data: images are whole numbers 0..255"):
        net.SGD((as_bytes, y), 1, 2, 0.1, verbose=False)


# -- at a terminal -------------------------------------------------------------------------
def test_every_train_flag_has_a_help_text_and_the_defaults_are_stated(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in TRAIN_FLAGS:
        assert flag.help and " ".join(flag.help.split()) in text, flag.name
        if flag.default is not None:
            assert f"(default: {flag.default})" in text, flag.name
    assert "--epochs N epochs to train (default: the book's for --net, e.g. 60" in text


def test_a_training_run_says_what_it_is_doing_throughout(data, tmp_path, capsys):
    assert main(["train", "--layers", LAYERS, "--epochs", "1", "--data", str(data),
                 "--out", str(tmp_path / "run")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    for stage in ["Compiling the training step on", "Compiled in", "Epoch 0:", "Saving the model"]:
        assert stage in out, stage
    assert run_folder.LOCK_FILE not in out


def test_momentum_takes_the_books_step_unless_eta_is_given(data, tmp_path):
    """With momentum mu, SGD's steady step is eta / (1 - mu): the default eta keeps it the
    book's (0.1 for --layers), not ten times larger."""
    for extra, want in [
        (["--optimizer", "nesterov"], 0.01),
        (["--momentum", "0.5"], 0.05),
        (["--optimizer", "nesterov", "--eta", "0.2"], 0.2),
    ]:
        out = tmp_path / "-".join(extra)
        assert _train(data, out, *extra) == 0
        stored = json.loads((out / "model.json").read_text())["training"]
        assert stored["eta"] == pytest.approx(want), extra


# -- nothing read or written outside the folder named (issue 31) ---------------------------
def _link_out(link: Path, target: Path) -> dict[str, bytes]:
    """``link`` made a symlink to ``target``, a folder outside; its contents before."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "mine.txt").write_text("a user's own file")
    shutil.rmtree(link, ignore_errors=True)
    link.symlink_to(target, target_is_directory=True)
    return {p.name: p.read_bytes() for p in target.iterdir()}


def test_an_ensemble_member_linked_elsewhere_is_neither_read_nor_written(tmp_path, capsys):
    data = book_format.write(tmp_path / "data.npz", learnable_splits(0, (200, 50, 50)))
    run = tmp_path / "ensemble"
    argv = ["train", "--layers", "fc:8:sigmoid,softmax", "--epochs", "1", "--quiet"]
    argv += ["--data", str(data), "--ensemble", "2", "--out", str(run)]
    assert main(argv) == 0
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run / "member-1", elsewhere)
    before = _link_out(run / "member-1", elsewhere)
    capsys.readouterr()
    for command in (["evaluate", str(run)], ["info", str(run)], ["train", "--resume", str(run)]):
        assert main(command) == 2, command
        assert "outside" in capsys.readouterr().err, command
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before


def test_a_sweep_trial_linked_elsewhere_or_replaced_by_a_file_is_refused(tmp_path, capsys):
    data = book_format.write(tmp_path / "data.npz", learnable_splits(0, (200, 50, 50)))
    out = tmp_path / "sweep"
    argv = ["sweep", "--layers", "fc:8:sigmoid,softmax", "--epochs", "1", "--quiet"]
    argv += ["--data", str(data), "--grid", "eta=0.1,0.2", "--out", str(out)]
    assert main(argv) == 0
    shutil.rmtree(out / "trial-001")
    before = _link_out(out / "trial-001", tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["sweep", "--resume", str(out)]) == 2
    assert "outside" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "elsewhere").iterdir()} == before
    (out / "trial-001").unlink()
    (out / "trial-001").write_text("my notes")
    assert main(["sweep", "--resume", str(out)]) == 2
    assert "trial-001: is a file, not a run folder" in capsys.readouterr().err
    assert (out / "trial-001").read_text() == "my notes"


def test_an_out_that_is_a_device_or_a_fifo_is_never_written_over(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert main(["train", "--net", "shallow", "--out", str(fifo)]) == 2
    assert "is a FIFO, not a folder" in capsys.readouterr().err
    assert main(["expand-mnist", "--out", "/dev/null", "--overwrite"]) == 2
    assert "/dev/null: is a device, not a file convnet writes" in capsys.readouterr().err
    assert stat.S_ISFIFO(fifo.stat().st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_the_smaller_mistakes_of_issue_31_are_named(tmp_path, capsys):
    assert main(["train", "--net", "shallow", "--ensemble", "2", "--cluster", "", "--out",
                 str(tmp_path / "r")]) == 2  # fmt: skip
    assert "--cluster: expected a scheduler address" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["train", "--net", "shallow", "--optimizer", "nesterov", "--momentum", "1.5",
                 "--out", str(tmp_path / "r")]) == 2  # fmt: skip
    assert "--momentum: expected a number" in capsys.readouterr().err
    folder = tmp_path / "mnist"
    folder.mkdir()
    labels = bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(10)
    images = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (10, 28, 28))
    for name, raw in (("train-images-idx3-ubyte", labels), ("train-labels-idx1-ubyte", labels),
                      ("t10k-images-idx3-ubyte", images + bytes(7840)),
                      ("t10k-labels-idx1-ubyte", labels)):  # fmt: skip
        (folder / name).write_bytes(raw)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: expected images .* 1-d"):
        load_mnist(folder)


def test_predict_into_a_closed_pipe_ends_quietly(tmp_path):
    """``convnet predict RUN pictures... | head -1``: no BrokenPipeError traceback."""
    code = (
        "import sys; from convnet.cli.main import main; "
        "sys.stdout.write = lambda text: (_ for _ in ()).throw(BrokenPipeError(32, 'pipe')); "
        "sys.exit(main(['info']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 141 and "Traceback" not in result.stderr
