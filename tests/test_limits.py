"""limits.py: files that name absurd sizes are refused, naming the file, before anything is
allocated (every case here would otherwise allocate gigabytes or fail deep in NumPy)."""

from __future__ import annotations

import contextlib
import gzip
import io
import pickle
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from convnet import FullyConnectedLayer, checkpoint, limits, load, load_mnist
from convnet.cli.main import main
from convnet.data import safe_pickle
from convnet.data.mnist import read_idx
from convnet.errors import ArgumentError, DataError, ModelFileError, UnsafePickleError


def _idx(path: Path, shape: tuple[int, ...], body: bytes = b"", gz: bool = True) -> Path:
    raw = bytes([0, 0, 0x08, len(shape)]) + b"".join(struct.pack(">I", n) for n in shape) + body
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def _peak(call) -> int:
    """The most memory ``call`` allocated through Python's allocator (NumPy's included)."""
    tracemalloc.start()
    with contextlib.suppress(Exception):
        call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_an_idx_header_whose_sizes_wrap_is_refused_by_name(tmp_path):
    """2^22 x 2^21 x 2^21 wraps to 0 in int64: the product is taken exactly."""
    path = _idx(tmp_path / "train-images-idx3-ubyte.gz", (2**22, 2**21, 2**21))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: its header's shape"):
        read_idx(path)


def test_a_gzip_bomb_is_inflated_no_further_than_its_header_promises(tmp_path):
    """A small .gz whose header promises 100 bytes but inflates to 50 MB of zeros."""
    path = _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", (100,), bytes(50 * 2**20))
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError, match="truncated or corrupt: its header promises"):
        read_idx(path)
    assert _peak(lambda: read_idx(path)) < 2**20


def test_an_npz_array_header_past_its_bytes_is_refused_by_name(tmp_path):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
    )
    buffer.write(b"\0" * 64)
    model = tmp_path / "run"
    model.mkdir()
    with zipfile.ZipFile(checkpoint.path_in(model), "w") as archive:
        archive.writestr("weights.layer0.w.npy", buffer.getvalue())
    with pytest.raises(ModelFileError, match=r"checkpoint\.npz: .*claims shape \(1000000000000,\)"):
        checkpoint.load(model)
    assert _peak(lambda: checkpoint.load(model)) < 2**20


def test_a_pickle_that_calls_ndarray_with_a_size_is_refused(tmp_path):
    class Bomb:
        def __reduce__(self):
            return np.ndarray, ((10**12,),)

    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(Bomb(), protocol=2)))
    with pytest.raises(UnsafePickleError, match=r"mnist\.pkl\.gz: refused to call numpy\.ndarray"):
        safe_pickle.load(path)


def test_a_pickle_that_claims_a_terabyte_of_bytes_is_refused_unallocated(tmp_path):
    path = tmp_path / "mnist.pkl"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 10**12) + b"abc")  # BINBYTES8
    with pytest.raises(DataError, match=r"mnist\.pkl: asks for more than the"):
        safe_pickle.load(path)
    assert _peak(lambda: safe_pickle.load(path)) < 2**20


def test_a_pickle_that_inflates_past_the_limit_stops_there(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_ARRAY_BYTES", 2**20)  # a 1 MB world, for speed
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(bytes(4 * 2**20), protocol=4)))
    with pytest.raises(DataError, match="asks for more than the 1,048,576 bytes"):
        load_mnist(path)
    small = tmp_path / "small.pkl.gz"
    splits = tuple((np.zeros((2, 4), np.float32), np.zeros(2, np.int64)) for _ in range(3))
    small.write_bytes(gzip.compress(pickle.dumps(splits, protocol=2)))
    assert safe_pickle.load(small)[2][0].shape == (2, 4)  # numpy's own pickles still load


def test_a_layer_or_model_of_absurd_size_is_refused_before_allocating(tmp_path, capsys):
    with pytest.raises(ArgumentError, match=r"FullyConnectedLayer: its weights, shape \(784, "):
        FullyConnectedLayer(784, 10**15)
    assert main(["train", "--layers", "fc:10000000000,softmax", "--out", str(tmp_path / "r")]) == 2
    assert "--layers: item 1 'fc:10000000000'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    run = tmp_path / "model"
    run.mkdir()
    (run / "model.json").write_text(
        '{"format": "convnet-model", "format_version": 1, "mini_batch_size": 10, "seed": 0,'
        ' "layers": [{"type": "FullyConnectedLayer", "n_in": 784, "n_out": 1000000000000000,'
        ' "activation_fn": "sigmoid", "p_dropout": 0.0},'
        ' {"type": "SoftmaxLayer", "n_in": 1000000000000000, "n_out": 10, "p_dropout": 0.0}]}'
    )
    np.savez(run / "model.npz", x=np.zeros(1))
    with pytest.raises(ModelFileError, match=r"model\.json: .*more than the"):
        load(run)
