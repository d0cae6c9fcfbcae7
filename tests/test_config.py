"""config.py: the one table of ``CONVNET_*`` variables, and the README's copy of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from convnet import config
from convnet.errors import ArgumentError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_a_value_outside_a_variables_choices_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("CONVNET_DEVICE", "tpu")
    with pytest.raises(ArgumentError, match=r"CONVNET_DEVICE .*cpu, gpu, auto.*'tpu'"):
        config.setting("CONVNET_DEVICE")
    monkeypatch.setenv("CONVNET_DEVICE", " GPU ")
    assert config.setting("CONVNET_DEVICE") == "gpu"


def test_the_readme_lists_every_variable_as_config_has_it():
    text = README.read_text()
    start, end = "<!-- CONVNET_VARIABLES -->\n", "\n<!-- /CONVNET_VARIABLES -->"
    assert start in text and end in text, "the README's table markers are gone"
    table = text[text.index(start) + len(start) : text.index(end)]
    assert table == config.markdown_table(), "run: python -m convnet.config"
    assert all(f"`{name}`" in table for name in config.VARIABLES)
