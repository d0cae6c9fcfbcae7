"""convnet download against a local HTTP server (127.0.0.1, started by the test itself):
good files, a corrupt file, a 404, a connection cut mid-file, and a slow response."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from convnet import load_mnist
from convnet.cli.main import main
from convnet.data.download import CANONICAL, DownloadError, download_mnist, fetch_file, verified
from convnet.errors import DataNotFoundError


class _Mirror(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    log: ClassVar[list[tuple[str, str | None]]] = []
    cut_once: ClassVar[set[str]] = set()

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        kind, _, name = self.path.strip("/").partition("/")
        self.log.append((self.path, self.headers.get("Range")))
        data = self.files.get(name)
        if kind == "missing" or data is None:
            self.send_error(404, "Not Found")
            return
        if kind == "slow":
            time.sleep(1.0)
        if kind == "corrupt":
            data = data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "cut" and self.path not in self.cut_once:
            self.cut_once.add(self.path)
            self.wfile.write(body[: len(body) // 2])  # then the connection drops
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server(mnist_dir):
    _Mirror.files = {p.name: p.read_bytes() for p in Path(mnist_dir).glob("*.gz")}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Mirror)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(autouse=True)
def _fresh_log():
    _Mirror.log.clear()
    _Mirror.cut_once.clear()


FAST = {"retries": 2, "timeout": 0.5, "backoff": 0.01, "progress": False}


def test_falls_through_404_and_corrupt_mirrors_and_resumes_a_cut_transfer(server, tmp_path):
    mirrors = [f"{server}/missing", f"{server}/corrupt", f"{server}/cut", f"{server}/good"]
    folder = download_mnist(tmp_path, mirrors=mirrors, **FAST)
    for name in CANONICAL:
        assert verified(folder / f"{name}.gz", name)
    assert not list(folder.glob(".*.part"))
    cut_requests = [rng for path, rng in _Mirror.log if path.startswith("/cut/")]
    assert cut_requests.count(None) == 4 and all(
        r and r.startswith("bytes=") for r in cut_requests if r
    )
    assert not any(path.startswith("/good/") for path, _ in _Mirror.log)  # resumed, not re-fetched


def test_every_mirror_failing_gives_one_clear_error_and_no_file(server, tmp_path):
    mirrors = [f"{server}/missing", f"{server}/slow"]
    with pytest.raises(DownloadError) as info:
        fetch_file(
            "t10k-labels-idx1-ubyte", tmp_path, mirrors, retries=2, timeout=0.3, backoff=0.01
        )
    message = str(info.value)
    assert "HTTP 404" in message and "gave up after 2 attempts" in message
    assert "CONVNET_MNIST_MIRRORS" in message
    assert not list(tmp_path.iterdir())


def test_verified_files_are_not_fetched_again(server, tmp_path):
    download_mnist(tmp_path, mirrors=[f"{server}/good"], **FAST)
    _Mirror.log.clear()
    download_mnist(tmp_path, mirrors=[f"{server}/good"], **FAST)
    assert _Mirror.log == []


def test_cli_download_uses_the_mirrors_from_the_environment(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONVNET_MNIST_MIRRORS", f"{server}/missing,{server}/good")
    assert main(["download", "mnist", "--to", str(tmp_path)]) == 0
    assert str(tmp_path) in capsys.readouterr().out
    assert all((tmp_path / f"{name}.gz").is_file() for name in CANONICAL)


def test_mnist_is_fetched_on_first_use_when_no_place_is_named(server, tmp_path, monkeypatch):
    """``load_mnist()`` with neither CONVNET_DATA nor the cache: fetched into the cache,
    verified, then read from there (the second call fetches nothing)."""
    monkeypatch.delenv("CONVNET_DATA", raising=False)
    monkeypatch.setenv("CONVNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CONVNET_MNIST_MIRRORS", f"{server}/missing,{server}/good")
    (x, y), _, (tx, _) = load_mnist()
    assert x.shape == (50_000, 784) and tx.shape == (10_000, 784)
    assert all(verified(tmp_path / "cache" / "mnist" / f"{n}.gz", n) for n in CANONICAL)
    _Mirror.log.clear()
    assert np.array_equal(load_mnist()[0][1], y)
    assert _Mirror.log == []


def test_first_use_offline_says_how_to_point_at_the_files(server, tmp_path, monkeypatch):
    monkeypatch.delenv("CONVNET_DATA", raising=False)
    monkeypatch.setenv("CONVNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CONVNET_MNIST_MIRRORS", f"{server}/missing")
    with pytest.raises(DataNotFoundError, match="fetching it failed") as info:
        load_mnist()
    assert "CONVNET_DATA" in str(info.value) and "HTTP 404" in str(info.value)


def test_a_named_place_without_mnist_is_never_a_reason_to_download(server, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVNET_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("CONVNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CONVNET_MNIST_MIRRORS", f"{server}/good")
    with pytest.raises(DataNotFoundError, match=r"MNIST not found\. Looked in"):
        load_mnist()
    with pytest.raises(DataNotFoundError):
        load_mnist(tmp_path / "empty")
    assert _Mirror.log == []
