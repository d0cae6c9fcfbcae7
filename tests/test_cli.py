"""The `convnet` command end to end on real MNIST (small --limit, few epochs)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from convnet import load, load_mnist
from convnet.cli.main import main
from convnet.runs import folder as run_folder
from tests.test_data import _write_fake_mnist

pytestmark = pytest.mark.mnist


def _train(out, *extra: str, epochs: int = 1, limit: int = 2000) -> int:
    """`convnet train` of the shallow net on the first `limit` images, quietly."""
    return main(
        [
            "train",
            "--net",
            "shallow",
            "--epochs",
            str(epochs),
            "--limit",
            str(limit),
            "--quiet",
            "--out",
            str(out),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("run")
    assert _train(out, epochs=2, limit=10000) == 0
    return out


def _picture(path):
    with Image.open(path) as image:
        return image.size, np.asarray(image.convert("L"), dtype=np.float64)


def test_train_writes_model_history_and_pictures(run_dir):
    for name in [
        "model.npz",
        "model.json",
        "history.json",
        "history.csv",
        "curves.png",
        "errors.png",
    ]:
        assert (run_dir / name).is_file(), name
    history = json.loads((run_dir / "history.json").read_text())
    assert history["epoch"] == [0, 1] and history["test_accuracy"][-1] > 0.85
    assert all(0 < cost < history["validation_cost"][0] + 1 for cost in history["validation_cost"])
    header = (run_dir / "history.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_cost,validation_cost,validation_accuracy")
    arch = json.loads((run_dir / "model.json").read_text())
    assert arch["training"]["limit"] == 10000 and arch["training"]["net"] == "shallow"
    for name, size in [("curves.png", (1000, 400)), ("errors.png", (600, 600))]:
        got_size, pixels = _picture(run_dir / name)
        assert got_size == size
        assert pixels.std() > 10  # not blank


def test_evaluate_prints_accuracy_and_confusion_matrix(run_dir, capsys):
    assert main(["evaluate", str(run_dir)]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("test accuracy: ")[1].split("%")[0])
    saved = json.loads((run_dir / "history.json").read_text())["test_accuracy"][-1]
    assert accuracy == pytest.approx(100 * saved, abs=0.01)
    rows = out.splitlines()[-10:]
    assert [int(r.split()[0]) for r in rows] == list(range(10))
    assert sum(int(v) for r in rows for v in r.split()[1:]) == 10_000


def test_predict_reads_inverted_resized_digits(run_dir, tmp_path, capsys, mnist):
    net = load(run_dir)
    _, _, (x, y) = mnist
    confident = np.flatnonzero(
        (net.predict_proba(x[:200]).max(1) > 0.95) & (net.predict(x[:200]) == y[:200])
    )
    paths = []
    for k in confident[:3]:
        ink_on_paper = (255 - 255 * x[k].reshape(28, 28)).astype(np.uint8)
        path = tmp_path / f"digit_{k}.png"
        Image.fromarray(ink_on_paper).resize((84, 112), Image.Resampling.BICUBIC).save(path)
        paths.append(str(path))
    assert main(["predict", str(run_dir), *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    for k, line in zip(confident[:3], lines, strict=True):
        assert line.split(": ")[1].split()[0] == str(y[k]), line


def test_plot_redraws_the_pictures(run_dir):
    (run_dir / "curves.png").unlink()
    assert main(["plot", str(run_dir)]) == 0
    assert _picture(run_dir / "curves.png")[0] == (1000, 400)


def test_ensemble_reports_members_and_vote(tmp_path, capsys):
    assert _train(tmp_path, "--ensemble", "3") == 0
    result = json.loads((tmp_path / "ensemble.json").read_text())
    assert len(result["members"]) == 3 and 0.7 < result["voted"] <= 1.0
    assert (tmp_path / "member-2" / "model.npz").is_file()
    assert "voted (3 nets)" in capsys.readouterr().out


def test_the_vote_reads_each_members_probabilities_only_while_they_match_its_model(
    tmp_path, monkeypatch
):
    assert _train(tmp_path, "--ensemble", "2") == 0
    test = load_mnist()[2]
    members = [tmp_path / "member-0", tmp_path / "member-1"]
    computed = [load(m).predict_proba(test[0]) for m in members]
    for member, fresh in zip(members, computed, strict=True):
        kept = np.load(member / run_folder.PROBABILITIES_FILE)["test"]
        np.testing.assert_allclose(kept, fresh, atol=1e-6)
    # Stale answers (the model changed after them) and damaged ones are recomputed.
    stale = np.load(members[0] / run_folder.PROBABILITIES_FILE)
    np.savez(
        members[0] / run_folder.PROBABILITIES_FILE,
        test=stale["test"][:, ::-1].copy(),
        model_sha256=np.array("0" * 64),
    )
    (members[1] / run_folder.PROBABILITIES_FILE).write_bytes(b"not an npz")
    first = json.loads((tmp_path / "ensemble.json").read_text())
    again = run_folder.write_ensemble(tmp_path, 2, test)
    assert again == first
    # While they match, the vote never rebuilds a member.
    for member, fresh in zip(members, computed, strict=True):
        run_folder.write_probabilities(member, fresh)
    monkeypatch.setattr(run_folder, "load", lambda *a, **k: pytest.fail("rebuilt a member"))
    assert run_folder.write_ensemble(tmp_path, 2, test) == first


def test_expand_mnist_caches_the_expansion(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONVNET_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "mnist"
    data.mkdir()
    _write_fake_mnist(data, gz=True, n_train=120, n_test=5)
    assert main(["expand-mnist", "--data", str(data)]) == 0
    assert "600 training images" in capsys.readouterr().out
    (cache,) = (tmp_path / "cache").glob("mnist_expanded_120_*.npz")
    with np.load(cache) as stored:
        assert stored["x"].shape == (600, 784)
    training = load_mnist(data)[0]
    from convnet.data.expand import load_expanded

    np.testing.assert_array_equal(load_expanded(training)[1], load_expanded(training)[1])
    # another training set of the same size gets its own expansion, never this cache's
    other = (training[0][::-1].copy(), training[1][::-1].copy())
    assert not np.array_equal(load_expanded(other)[0][:5], load_expanded(training)[0][:5])
    assert len(list((tmp_path / "cache").glob("mnist_expanded_120_*.npz"))) == 2


def test_train_never_overwrites_a_trained_model_unless_asked(run_dir, capsys):
    before = (run_dir / "model.npz").read_bytes()
    assert _train(run_dir, limit=100) == 2
    assert "already holds model.npz" in capsys.readouterr().err
    assert (run_dir / "model.npz").read_bytes() == before


@pytest.mark.parametrize("flag", ["--epochs", "--limit", "--ensemble", "--checkpoint-every"])
def test_zero_counts_are_refused_not_taken_as_defaults(tmp_path, capsys, flag):
    assert _train(tmp_path / "run", flag, "0") == 2
    assert (
        f"{flag}: expected an integer >= 1 and <= 2,147,483,647. Received: 0."
        in capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()


def test_errors_are_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "convnet.cli", "evaluate", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "no such model file" in result.stderr and "Traceback" not in result.stderr


def test_info_names_backend_and_blas():
    result = subprocess.run(
        [sys.executable, "-m", "convnet.cli", "info"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "backend:" in result.stdout and "pytensor" in result.stdout
    lines = result.stdout.splitlines()
    assert any(line.startswith("data: MNIST in ") for line in lines), result.stdout
    assert any(
        line.startswith("cache: ") and (" MB" in line or "not created yet" in line)
        for line in lines
    )
    assert any(line.startswith("C++ conv-pool kernel: ") for line in lines), result.stdout


def test_train_with_adam_and_info_prints_the_networks_summary(tmp_path, capsys):
    out = tmp_path / "adam"
    args = ["train", "--net", "shallow", "--epochs", "1", "--limit", "2000"]
    assert main([*args, "--optimizer", "adam", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FullyConnectedLayer" in printed and "79,510" in printed  # 784*100+100 + 100*10+10
    stored = json.loads((out / "model.json").read_text())["training"]
    assert stored["optimizer"] == "adam" and stored["eta"] == 0.001  # Adam's own default
    assert main(["info", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "total" in summary and "79,510" in summary and "79,400" in summary  # multiply-adds
    assert main(["train", "--resume", str(out)]) == 0  # a finished run: nothing to do
