"""Damaged or hand-edited run folders: every reader checks what it reads.

The fuzz test below corrupts a real run folder at random (truncations, flipped bytes,
edited JSON values, edited arrays) and runs ``evaluate``, ``predict`` and ``--resume`` on
it: each must end in a one-line convnet error or a correct result, never a traceback,
and a command that fails must leave every file as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convnet import checkpoint, load
from convnet.cli.main import main
from convnet.data import book_format
from convnet.errors import ModelFileError
from convnet.runs import folder as run_folder
from tests.datasets import learnable_splits

LAYERS = "fc:8:sigmoid,softmax"


def _dataset(path: Path) -> Path:
    """A small learnable dataset in the book's three-split layout (.npz)."""
    return book_format.write(path, learnable_splits(0, (200, 50, 50)))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(finished run folder, dataset, a digit picture)."""
    root = tmp_path_factory.mktemp("pristine")
    data = _dataset(root / "data.npz")
    run = root / "run"
    argv = ["train", "--layers", LAYERS, "--epochs", "2", "--quiet", "--data", str(data)]
    assert main([*argv, "--out", str(run)]) == 0
    picture = root / "digit.png"
    pixels = np.full((40, 30), 230, np.uint8)
    pixels[8:32, 12:17] = 20
    Image.fromarray(pixels).save(picture)
    return run, data, picture


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".convnet.lock"
    }


# -- corruptions --------------------------------------------------------------------------
JSON_VALUES = [None, -1, 0, 1, 2.5, -0.5, 1e308, 2**70, "x", "", [], [1, 2], {}, True, False]


def _edit_json(value, rng: np.random.Generator):
    """``value`` with one random node deleted, replaced or resized."""
    paths: list[tuple] = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, (*path, key))
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, (*path, index))

    walk(value, ())
    path = paths[int(rng.integers(1, len(paths)))] if len(paths) > 1 else ()
    parent = value
    for step in path[:-1]:
        parent = parent[step]
    action = rng.integers(3)
    if action == 0 and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == 1 and isinstance(parent[path[-1]], list) and parent[path[-1]]:
        parent[path[-1]].pop()
    else:
        parent[path[-1]] = JSON_VALUES[int(rng.integers(len(JSON_VALUES)))]
    return value


def _rewrite_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def _edit_arrays(arrays: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    names = sorted(n for n in arrays if n != "meta")
    name = names[int(rng.integers(len(names)))]
    action = int(rng.integers(6))
    if action == 0:
        del arrays[name]
    elif action == 1:
        arrays[name] = arrays[name].astype(np.float64)
    elif action == 2:
        arrays[name] = arrays[name].ravel()[:-1]
    elif action == 3:
        arrays[name] = np.full_like(arrays[name], np.nan)
    elif action == 4:
        arrays[f"{name}.extra"] = arrays[name]
    else:
        arrays[name] = arrays[name].astype(np.int32)


def corrupt(run: Path, rng: np.random.Generator) -> str:
    """Damage one file of ``run`` at random; returns what was done (for failure reports)."""
    target = run / ["model.json", "model.npz", "checkpoint.npz"][int(rng.integers(3))]
    raw = target.read_bytes()
    kind = ["truncate", "flip", "edit"][int(rng.integers(3))]
    if kind == "truncate":
        cut = int(rng.integers(0, len(raw)))
        target.write_bytes(raw[:cut])
        return f"{target.name}: truncated to {cut} of {len(raw)} bytes"
    if kind == "flip":
        damaged = bytearray(raw)
        places = rng.integers(0, len(raw), int(rng.integers(1, 5)))
        for place in places:
            damaged[place] ^= int(rng.integers(1, 256))
        target.write_bytes(bytes(damaged))
        return f"{target.name}: bytes flipped at {sorted(places.tolist())}"
    if target.suffix == ".json":
        target.write_text(json.dumps(_edit_json(json.loads(raw), rng)))
        return f"{target.name}: JSON edited"
    with np.load(target) as stored:
        arrays = {name: stored[name] for name in stored.files}
    if "meta" in arrays and rng.random() < 0.6:
        meta = _edit_json(json.loads(arrays["meta"].tobytes()), rng)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        _rewrite_npz(target, arrays)
        return f"{target.name}: its JSON record edited"
    _edit_arrays(arrays, rng)
    _rewrite_npz(target, arrays)
    return f"{target.name}: arrays edited"


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)  # anything but a convnet error propagates, failing the test
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_random_corruptions_end_in_a_clear_error_or_a_correct_result(pristine, tmp_path, capsys):
    run, data, picture = pristine
    rng = np.random.default_rng(2026)
    outcomes = {"error": 0, "ok": 0, "trained": 0}
    for trial in range(210):
        folder = tmp_path / f"trial-{trial}"
        shutil.copytree(run, folder)
        what = corrupt(folder, rng)
        damaged = "checkpoint" if "checkpoint" in what else "model"
        commands = (
            [["train", "--resume", str(folder), "--quiet", "--data", str(data)]]
            if damaged == "checkpoint"
            else [
                ["evaluate", str(folder), "--data", str(data)],
                ["predict", str(folder), str(picture)],
            ]
        )
        for argv in commands:
            before = _fingerprint(folder)
            code, out, err = _run(argv, capsys)
            case = f"trial {trial} ({what}), convnet {' '.join(argv[:1])}"
            assert code in (0, 2), case
            if code == 2:
                lines = err.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith(f"convnet {argv[0]}: error: "), (
                    case,
                    err,
                )
            trained = argv[0] == "train" and "Resuming" in out
            if not trained:
                assert _fingerprint(folder) == before, case
            outcomes["trained" if trained else ("ok" if code == 0 else "error")] += 1
            if code == 0 and argv[0] == "evaluate":
                assert "test accuracy:" in out, case
            if code == 0 and argv[0] == "predict":
                assert out.startswith(f"{picture}: "), case
        shutil.rmtree(folder)
    assert outcomes["error"] >= 150, outcomes  # most corruptions must be caught
    assert outcomes["ok"] >= 10, outcomes  # harmless edits still work


def test_damaged_files_are_named_with_the_field(pristine, tmp_path, capsys):
    run, data, picture = pristine
    cases = {
        "model.json": (
            lambda a: a["layers"][0].update(n_in="784"),
            'model.json: layers[0].n_in: expected an integer >= 1. Received: "784".',
        ),
        "history.json": (
            lambda h: h.update(train_cost=[1.0]),
            "history.json: train_cost: expected 2 entries (one per epoch). Received: 1.",
        ),
    }
    for name, (edit, message) in cases.items():
        folder = tmp_path / name.replace(".", "-")
        shutil.copytree(run, folder)
        value = json.loads((folder / name).read_text())
        edit(value)
        (folder / name).write_text(json.dumps(value))
        command = ["plot", str(folder)] if name == "history.json" else ["evaluate", str(folder)]
        code, _, err = _run([*command, "--data", str(data)], capsys)
        assert code == 2 and message in err, err
    folder = tmp_path / "zip"
    shutil.copytree(run, folder)
    raw = (folder / "model.npz").read_bytes()
    (folder / "model.npz").write_bytes(raw[: len(raw) // 2])
    code, _, err = _run(["predict", str(folder), str(picture)], capsys)
    assert code == 2 and "model.npz: damaged, or not an .npz archive" in err
    with zipfile.ZipFile(folder / "ok.npz", "w") as archive:
        archive.writestr("meta.txt", "not numpy")
    shutil.copy(folder / "ok.npz", folder / "checkpoint.npz")
    code, _, err = _run(["train", "--resume", str(folder)], capsys)
    assert code == 2 and "checkpoint.npz" in err, err


def test_the_api_readers_raise_model_file_errors_for_the_same_damage(pristine, tmp_path):
    """``convnet.load`` and ``checkpoint.load`` run the same checks as the commands."""
    run, _, _ = pristine
    rng = np.random.default_rng(11)
    caught = 0
    for trial in range(40):
        folder = tmp_path / f"api-{trial}"
        shutil.copytree(run, folder)
        what = corrupt(folder, rng)
        before = _fingerprint(folder)
        reader = checkpoint.load if "checkpoint" in what else load
        try:
            reader(folder)
        except ModelFileError as exc:
            assert str(folder) in str(exc), (what, exc)
            caught += 1
        assert _fingerprint(folder) == before, what
    assert caught >= 25


# -- a run killed between its last checkpoint and its last file ---------------------------
def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".npz", ".json")}


@pytest.mark.parametrize("lost", [["model.json"], ["model.json", "errors.png", "history.csv"]])
def test_resume_finishes_a_trained_run_whose_files_are_missing(pristine, tmp_path, lost, capsys):
    """Killed after its last checkpoint, before its last file: ``--resume`` writes the
    missing files from the checkpoint, the same model as the run would have written."""
    run = tmp_path / "run"
    shutil.copytree(pristine[0], run)
    want = _files(run)
    for name in lost:
        (run / name).unlink()
    assert main(["train", "--resume", str(run)]) == 0
    assert "missing: writing them from its checkpoint" in capsys.readouterr().out
    assert all((run / name).is_file() for name in lost)
    got = _files(run)
    for name in ("model.npz", "checkpoint.npz", "test-probabilities.npz"):
        assert got[name] == want[name], name
    assert json.loads(got["model.json"]) == json.loads(want["model.json"])
    assert main(["train", "--resume", str(run)]) == 0  # now finished: nothing changes
    assert "Nothing was changed" in capsys.readouterr().out
    assert _files(run) == got


def test_an_ensemble_member_killed_before_its_model_file_is_finished_on_resume(
    pristine, tmp_path, capsys
):
    data = pristine[1]
    run = tmp_path / "ensemble"
    argv = ["train", "--layers", LAYERS, "--epochs", "2", "--quiet", "--data", str(data)]
    assert main([*argv, "--ensemble", "2", "--out", str(run)]) == 0
    vote = json.loads((run / "ensemble.json").read_text())
    (run / "member-1" / "model.json").unlink()
    (run / "ensemble.json").unlink()
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "member-1" / "model.json").is_file()
    assert json.loads((run / "ensemble.json").read_text()) == vote


def test_an_ensemble_killed_at_any_moment_resumes_to_the_same_vote(pristine, tmp_path):
    """The driver killed with kill -9 at moments spread over an ensemble's whole life
    (building, training, between checkpoint and model files, the vote): ``--resume``
    always ends with every member's files and the vote of an uninterrupted run."""
    data = pristine[1]
    argv = ["train", "--layers", LAYERS, "--epochs", "3", "--quiet", "--data", str(data)]
    argv += ["--ensemble", "2"]
    reference = tmp_path / "reference"
    start = time.monotonic()
    assert main([*argv, "--out", str(reference)]) == 0
    vote = json.loads((reference / "ensemble.json").read_text())
    want = {k: _files(reference / f"member-{k}")["model.npz"] for k in (0, 1)}
    command = [sys.executable, "-m", "convnet.cli"]
    lifetime = 3.0 + 2 * (time.monotonic() - start)  # a new process starts slower
    for k, delay in enumerate(np.linspace(0.5, lifetime, 6)):
        run = tmp_path / f"killed-{k}"
        process = subprocess.Popen([*command, *argv, "--out", str(run)])
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if (run / "ensemble-plan.json").exists():
            assert (
                subprocess.run([*command, "train", "--resume", str(run), "--quiet"]).returncode == 0
            )
        else:  # killed before anything was planned: nothing to resume, start again
            assert (
                subprocess.run([*command, *argv, "--out", str(run), "--overwrite"]).returncode == 0
            )
        assert json.loads((run / "ensemble.json").read_text()) == vote, delay
        for member in (0, 1):
            folder = run / f"member-{member}"
            assert not run_folder.missing_files(folder), (delay, member)
            assert _files(folder)["model.npz"] == want[member], (delay, member)


# -- the same fuzz over ensemble and sweep folders ----------------------------------------
@pytest.fixture(scope="module")
def pristine_many(tmp_path_factory, pristine) -> tuple[Path, Path, Path]:
    """(a finished 2-member ensemble, a finished 2-trial sweep, the dataset)."""
    root = tmp_path_factory.mktemp("many")
    data = pristine[1]
    base = ["--layers", LAYERS, "--epochs", "1", "--quiet", "--data", str(data)]
    ensemble, sweep = root / "ensemble", root / "sweep"
    assert main(["train", *base, "--ensemble", "2", "--out", str(ensemble)]) == 0
    assert main(["sweep", *base, "--grid", "eta=0.1,0.2", "--out", str(sweep)]) == 0
    return ensemble, sweep, data


def corrupt_many(top: Path, rng: np.random.Generator, outside: Path) -> str:
    """Damage an ensemble's or a sweep's folder: its plans and records, a member's or a
    trial's files, or the member/trial folder itself (a link out, a file, gone)."""
    plans = [p for p in top.iterdir() if p.suffix == ".json"]
    members = sorted(p for p in top.iterdir() if p.is_dir())
    choice = rng.random()
    if choice < 0.3:
        target = plans[int(rng.integers(len(plans)))]
        raw = target.read_bytes()
        if rng.random() < 0.5:
            target.write_text(json.dumps(_edit_json(json.loads(raw), rng)))
            return f"{target.name}: JSON edited"
        cut = int(rng.integers(0, len(raw)))
        target.write_bytes(raw[:cut])
        return f"{target.name}: truncated to {cut} bytes"
    member = members[int(rng.integers(len(members)))]
    if choice < 0.4:
        shutil.rmtree(member)
        member.symlink_to(outside, target_is_directory=True)
        return f"{member.name}: a link out of the folder"
    if choice < 0.45:
        shutil.rmtree(member)
        member.write_text("a user's notes")
        return f"{member.name}: replaced by a file"
    if choice < 0.5:
        victim = sorted(member.iterdir())[int(rng.integers(len(list(member.iterdir()))))]
        victim.unlink()
        return f"{member.name}/{victim.name}: deleted"
    return f"{member.name}/" + corrupt(member, rng)


def test_random_corruptions_of_ensembles_and_sweeps(pristine_many, tmp_path, capsys):
    ensemble, sweep, data = pristine_many
    outside = tmp_path / "outside"
    shutil.copytree(ensemble / "member-0", outside)
    kept = _fingerprint(outside)
    rng = np.random.default_rng(31)
    outcomes = {"error": 0, "ok": 0}
    for trial in range(220):
        pristine_top = ensemble if trial % 2 == 0 else sweep
        top = tmp_path / f"case-{trial}"
        shutil.copytree(pristine_top, top, symlinks=True)
        what = corrupt_many(top, rng, outside)
        if pristine_top is ensemble:
            commands = [
                ["evaluate", str(top), "--data", str(data)],
                ["info", str(top)],
                ["train", "--resume", str(top), "--quiet", "--data", str(data)],
            ]
        else:
            commands = [["sweep", "--resume", str(top), "--quiet"]]
        for argv in commands:
            before = _fingerprint(top) if not (top / "member-0").is_symlink() else None
            code, _, err = _run(argv, capsys)
            case = f"case {trial} ({what}), convnet {' '.join(argv[:2])}"
            assert code in (0, 1, 2), (case, err)
            if code == 2:
                lines = err.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith(f"convnet {argv[0]}: error: "), (
                    case,
                    err,
                )
                if before is not None:
                    assert _fingerprint(top) == before, case
            outcomes["ok" if code == 0 else "error"] += 1
            assert _fingerprint(outside) == kept, f"{case}: wrote outside the folder"
        shutil.rmtree(top)
    assert outcomes["error"] >= 60 and outcomes["ok"] >= 60, outcomes


@pytest.mark.parametrize("name", ["model.json", "model.npz", "checkpoint.npz"])
def test_a_file_that_links_out_of_its_run_folder_is_never_read(pristine, tmp_path, name, capsys):
    run = tmp_path / "run"
    shutil.copytree(pristine[0], run)
    elsewhere = tmp_path / "elsewhere" / name
    elsewhere.parent.mkdir()
    (run / name).rename(elsewhere)
    (run / name).symlink_to(elsewhere)
    command = ["train", "--resume", str(run)] if name == "checkpoint.npz" else ["info", str(run)]
    assert main(command) == 2
    assert f"{name}: is a link to {elsewhere}, outside {run}" in capsys.readouterr().err
