"""Saving and loading models: round trips, other batch sizes and backends, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convnet import ConvPoolLayer, FullyConnectedLayer, Network, ReLU, SoftmaxLayer, load
from convnet.errors import ModelFileError


def _convnet(mbs=4):
    return Network(
        [
            ConvPoolLayer(
                filter_shape=(3, 1, 5, 5), image_shape=(mbs, 1, 28, 28), activation_fn=ReLU
            ),
            FullyConnectedLayer(3 * 12 * 12, 10, ReLU, p_dropout=0.3),
            SoftmaxLayer(10, 10),
        ],
        mbs,
        seed=9,
    )


def test_save_load_predict_gives_the_same_outputs(tmp_path, rng):
    net = _convnet()
    net.layers[2].w.set_value(rng.normal(size=(10, 10)).astype(np.float32))
    x = rng.random((7, 784), dtype=np.float32)  # 7: not a multiple of the batch size
    path = net.save(tmp_path / "run", note="hello")
    assert path.name == "model.npz" and (tmp_path / "run" / "model.json").exists()
    loaded = load(tmp_path / "run")
    np.testing.assert_array_equal(loaded.predict_proba(x), net.predict_proba(x))
    other = load(path, mini_batch_size=25, backend="c", device="cpu")
    assert other.mini_batch_size == 25 and other.layers[0].image_shape[0] == 25
    np.testing.assert_allclose(other.predict_proba(x), net.predict_proba(x), rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "run" / "model.json").read_text())["note"] == "hello"


def test_model_file_errors_name_the_file(tmp_path):
    net = _convnet()
    net.save(tmp_path / "m.npz")
    arch = json.loads((tmp_path / "m.json").read_text())

    bad = dict(
        arch, layers=[*arch["layers"][:1], dict(arch["layers"][1], n_out=11), arch["layers"][2]]
    )
    (tmp_path / "m.json").write_text(json.dumps(bad))
    with pytest.raises(ModelFileError, match=r"m\.(npz|json)"):
        load(tmp_path / "m.npz")

    (tmp_path / "m.json").write_text(json.dumps(dict(arch, format_version=99)))
    with pytest.raises(ModelFileError, match=r"format_version: expected 1.*Received: 99"):
        load(tmp_path / "m.npz")

    (tmp_path / "m.json").write_text(json.dumps(arch))
    arrays = dict(np.load(tmp_path / "m.npz"))
    arrays["layers.2.w"] = arrays["layers.2.w"][:5]
    np.savez(tmp_path / "m.npz", **arrays)
    with pytest.raises(ModelFileError, match=r"layers\.2\.w expected float32 \(10, 10\)"):
        load(tmp_path / "m.npz")

    np.savez(tmp_path / "m.npz", **(arrays | {"layers.2.w": np.array([object()] * 3)}))
    with pytest.raises(ModelFileError, match=r"m\.npz: damaged, or not an \.npz archive"):
        load(tmp_path / "m.npz")

    with pytest.raises(ModelFileError, match="no such model file"):
        load(tmp_path / "missing")


def test_a_failed_save_leaves_the_previous_model_intact(tmp_path, monkeypatch):
    net = _convnet()
    net.save(tmp_path)
    before = (tmp_path / "model.npz").read_bytes()

    def explode(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(OSError, match="disk full"):
        net.save(tmp_path)
    assert (tmp_path / "model.npz").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
