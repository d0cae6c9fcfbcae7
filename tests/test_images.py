"""Digit pictures of any size and polarity become MNIST-style inputs."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from convnet import Network
from convnet.book import layers_for
from convnet.ensemble import vote
from convnet.errors import DataError, ShapeError
from convnet.images import load_image, to_mnist
from tests.photos import FORMATS, render


def test_dark_on_light_large_image_is_inverted_scaled_and_centred(tmp_path):
    canvas = np.full((200, 120), 250, np.uint8)
    canvas[30:170, 20:40] = 10  # a thick dark vertical bar, off centre
    path = tmp_path / "bar.png"
    Image.fromarray(canvas).save(path)
    out = load_image(path).reshape(28, 28)
    assert out.dtype == np.float32 and out.max() <= 1.0
    assert out[0].max() == 0 and out[:, 0].max() == 0  # background is dark after inversion
    rows, cols = np.indices(out.shape)
    centre = ((rows * out).sum() / out.sum(), (cols * out).sum() / out.sum())
    assert abs(centre[0] - 14) < 1.5 and abs(centre[1] - 14) < 1.5
    assert (out > 0.5).any(axis=1).sum() in range(18, 22)  # ~20 px tall, like MNIST


def test_blank_and_unreadable_images_are_named(tmp_path):
    with pytest.raises(DataError, match="blank"):
        to_mnist(np.zeros((10, 10)), "empty.png")
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.png: not an image"):
        load_image(path)


def test_vote_majority_with_probability_tie_break():
    a = np.array([0, 1, 2, 3])
    b = np.array([0, 1, 1, 2])
    c = np.array([1, 1, 2, 1])
    np.testing.assert_array_equal(vote([a, b, c], n_classes=4), [0, 1, 2, 1])
    p = np.array([[0.6, 0.4], [0.4, 0.6]])
    q = np.array([[0.1, 0.9], [0.45, 0.55]])
    # one vote each in row 0; summed probability 0.7 vs 1.3 -> class 1
    np.testing.assert_array_equal(vote([p, q]), [1, 1])
    with pytest.raises(ShapeError):
        vote([a, b[:2]])


# -- real-world pictures --------------------------------------------------------------------
def _png_header_only(path, width: int, height: int) -> None:
    """A PNG that claims ``width`` x ``height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def _bar_digit() -> np.ndarray:
    """A '1'-like upright bar as MNIST values: tall, thin, centred."""
    digit = np.zeros((28, 28), np.float32)
    digit[4:24, 12:16] = 1.0
    return digit.reshape(-1)


@pytest.mark.parametrize("style", FORMATS)
def test_each_format_is_read_upright_and_not_blank(tmp_path, style):
    path = render(_bar_digit(), tmp_path / "bar", style, np.random.default_rng(3))
    out = load_image(path).reshape(28, 28)
    rows = np.flatnonzero(out.max(axis=1) > 0.5)
    cols = np.flatnonzero(out.max(axis=0) > 0.5)
    assert len(rows) >= 18, style  # the bar is upright (an EXIF rotation undone) ...
    assert len(cols) <= 10, style  # ... and thin, so not read sideways
    assert out[0].max() < 0.1 and out[:, 0].max() < 0.1, style  # paper and shading gone


def test_huge_pictures_are_refused_before_they_are_decoded(tmp_path):
    big = tmp_path / "big.png"
    Image.new("L", (10_000, 6_000), 255).save(big)
    with pytest.raises(DataError, match=r"big\.png: 10000 x 6000 pixels is too large"):
        load_image(big)
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 30_000, 30_000)
    with pytest.raises(DataError, match=r"bomb\.png: .*too large"):
        load_image(bomb)


def test_a_picture_without_ink_is_named(tmp_path):
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((50, 50), 200, np.uint8)).save(flat)
    with pytest.raises(DataError, match=r"flat\.png: the image is blank"):
        load_image(flat)
    with pytest.raises(DataError, match="NaN"):
        to_mnist(np.full((10, 10), np.nan), "nan.tif")


@pytest.mark.mnist
def test_photos_of_digits_under_shading_rotation_noise_and_blur_are_read_right(tmp_path, mnist):
    """30 rendered photos of test digits the network reads confidently in MNIST form, in
    every format: the picture reader must not lose them (at least 27 right)."""
    training, _, (x, y) = mnist
    net = Network(layers_for("shallow", 10), 10, seed=0)
    net.SGD((training[0][:20000], training[1][:20000]), 1, 10, 0.1, verbose=False)
    p = net.predict_proba(x[:600])
    confident = np.flatnonzero((p.max(1) > 0.95) & (p.argmax(1) == y[:600]))[:30]
    assert len(confident) == 30
    rng = np.random.default_rng(0)
    paths = [
        render(x[k], tmp_path / f"photo-{i}", FORMATS[i % len(FORMATS)], rng)
        for i, k in enumerate(confident)
    ]
    read = net.predict(np.stack([load_image(path) for path in paths]))
    wrong = [
        (path.name, int(y[k]), int(r))
        for path, k, r in zip(paths, confident, read, strict=True)
        if r != y[k]
    ]
    assert len(wrong) <= 3, wrong
