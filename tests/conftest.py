"""Shared fixtures: where real MNIST is, and which backend the suite runs on."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.devices import local_cluster

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        default=None,
        help="run the suite on this convnet backend (c, numba, jax); default: auto",
    )


def pytest_configure(config: pytest.Config) -> None:
    backend = config.getoption("--backend")
    if backend:
        os.environ["CONVNET_BACKEND"] = backend
    os.environ.setdefault("CONVNET_DEVICE", "cpu")
    if "CONVNET_DATA" not in os.environ and SHARED_MNIST.is_dir():
        os.environ["CONVNET_DATA"] = str(SHARED_MNIST)


@pytest.fixture(autouse=True)
def _float32_products_on_gpus():
    """On a GPU the suite checks the CPU's float32 numerics, to the same tolerances, so
    every test runs with full float32 products there (convnet's GPU default is TF32; see
    ``Backend.matmul_precision``)."""
    if os.environ.get("CONVNET_DEVICE", "").strip().lower() != "gpu":
        yield
        return
    import jax

    from convnet.runtime.backend import Backend

    with jax.default_matmul_precision(Backend("jax", "gpu", "float32").matmul_precision):
        yield


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    path = Path(os.environ.get("CONVNET_DATA", SHARED_MNIST))
    if (
        not (path / "train-images-idx3-ubyte.gz").exists()
        and not (path / "train-images-idx3-ubyte").exists()
    ):
        pytest.skip(f"real MNIST not found at {path}")
    return path


@pytest.fixture(scope="session")
def mnist(mnist_dir: Path):
    from convnet import load_mnist

    return load_mnist(mnist_dir)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def cluster():
    """A real Dask cluster on 127.0.0.1: a scheduler and 2 worker processes, 1 thread each."""
    with local_cluster() as local:
        yield local.scheduler_address
