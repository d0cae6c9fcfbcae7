"""Digit pictures of any size and polarity become MNIST-style inputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convnet.ensemble import vote
from convnet.errors import DataError, ShapeError
from convnet.images import load_image, to_mnist


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
