"""MNIST loading: IDX (.gz and raw), the book's pickle, corrupt files, crafted pickles."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from convnet import load_data_shared, load_mnist, size
from convnet.data.mnist import IDX_FILES, read_idx
from convnet.errors import DataError, DataNotFoundError, UnsafePickleError


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fake_mnist(folder: Path, *, gz: bool, n_train: int = 50_010, n_test: int = 7) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": np.arange(n_train) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": np.arange(n_test) % 10,
    }
    for key, stem in IDX_FILES.items():
        data = _idx_bytes(arrays[key])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_gives_the_books_split(tmp_path, gz):
    _write_fake_mnist(tmp_path, gz=gz)
    (tx, ty), (vx, vy), (sx, _) = load_mnist(tmp_path)
    assert tx.shape == (50_000, 784) and vx.shape == (10, 784) and sx.shape == (7, 784)
    assert tx.dtype == np.float32 and ty.dtype == np.int32
    assert tx.min() >= 0.0 and tx.max() <= 1.0
    assert vy[0] == 50_000 % 10  # validation starts at training image 50,000


def test_books_pickle_loads(tmp_path):
    rng = np.random.default_rng(1)
    splits = tuple(
        (rng.random((n, 784)).astype(np.float32), rng.integers(0, 10, n)) for n in (20, 5, 6)
    )
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as handle:
        pickle.dump(splits, handle, protocol=2)
    loaded = load_mnist(path)
    for (x, y), (want_x, want_y) in zip(loaded, splits, strict=True):
        np.testing.assert_array_equal(x, want_x)
        np.testing.assert_array_equal(y, want_y)
    assert load_mnist(tmp_path)[2][0].shape == (6, 784)  # a folder holding the pickle


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as handle:
        pickle.dump(((_Exploit(marker), np.zeros(3)),), handle)
    with pytest.raises(UnsafePickleError, match=r"refused to load .*system"):
        load_mnist(path)
    assert not marker.exists()


def test_truncated_and_foreign_files_name_the_file(tmp_path):
    _write_fake_mnist(tmp_path, gz=False, n_train=50_001, n_test=3)
    images = tmp_path / IDX_FILES["test_images"]
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match=rf"{images.name}: truncated or corrupt.*\(3, 28, 28\)"):
        load_mnist(tmp_path)
    images.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(images)
    bad_gz = tmp_path / "x.gz"
    bad_gz.write_bytes(b"\x1f\x8b\x08\x00broken")
    with pytest.raises(DataError, match=r"x\.gz: cannot be read as gzip"):
        read_idx(bad_gz)


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVNET_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("CONVNET_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError) as info:
        load_mnist()
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "cache" / "mnist") in message
    assert "convnet download mnist" in message


@pytest.mark.mnist
def test_real_mnist_matches_its_published_facts(mnist):
    (tx, ty), (vx, vy), (sx, sy) = mnist
    assert (len(tx), len(vx), len(sx)) == (50_000, 10_000, 10_000)
    assert list(ty[:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert list(sy[:10]) == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    counts = np.bincount(np.concatenate([ty, vy]), minlength=10)
    assert list(counts) == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    mean_pixel = np.concatenate([tx, vx]).mean() * 255
    assert abs(mean_pixel - 33.318) < 0.001


@pytest.mark.mnist
def test_load_data_shared_is_the_books_call(mnist_dir):
    training, validation, test = load_data_shared()
    assert size(training) == 50_000 and size(validation) == 10_000 and size(test) == 10_000
    assert training[0].get_value(borrow=True).dtype == np.float32
