"""The command line's own arguments: what it refuses before reading any data, --version."""

from __future__ import annotations

import pytest

from convnet.cli.main import main
from convnet.config import VERSION


def test_the_command_line_refuses_optimizer_flags_that_do_not_fit_before_reading_data(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("CONVNET_DATA", str(tmp_path / "no-mnist-here"))  # never reached
    base = ["train", "--net", "shallow", "--out", str(tmp_path / "run")]
    assert main([*base, "--optimizer", "adam", "--momentum", "0.5"]) == 2
    assert "--momentum is for sgd and nesterov" in capsys.readouterr().err
    assert main([*base, "--optimizer", "nesterov", "--momentum", "0"]) == 2
    assert "nesterov=True needs a momentum" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_command_line_says_its_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"convnet {VERSION}"


def test_a_bad_environment_variable_is_refused_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("CONVNET_DENSE", "fast")
    run = tmp_path / "run"
    assert main(["train", "--net", "dropout", "--epochs", "1", "--out", str(run)]) == 2
    assert "environment variable CONVNET_DENSE" in capsys.readouterr().err
    assert not run.exists()
