"""Voting several networks' predictions, as the book's ensemble of five dropout nets did."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convnet.errors import ShapeError


def vote(predictions: Sequence[np.ndarray], n_classes: int | None = None) -> np.ndarray:
    """Majority vote over members' predictions.

    Each member gives labels (n,) or class probabilities (n, k). Ties go to the tied
    class with the highest summed probability (for label-only members: the lowest label).
    """
    if not predictions:
        raise ShapeError("predictions: expected at least one member. Received: none.")
    arrays = [np.asarray(p) for p in predictions]
    n = len(arrays[0])
    k = n_classes or max(int(a.shape[1]) if a.ndim == 2 else int(a.max()) + 1 for a in arrays)
    votes = np.zeros((n, k))
    confidence = np.zeros((n, k))
    for index, member in enumerate(arrays):
        if len(member) != n:
            raise ShapeError(f"predictions[{index}]: expected {n} rows. Received: {len(member)}.")
        labels = member.argmax(axis=1) if member.ndim == 2 else member.astype(np.int64)
        votes[np.arange(n), labels] += 1
        if member.ndim == 2:
            confidence += member
    # Votes dominate; summed probabilities (< number of members) only break ties.
    return (votes * (len(arrays) + 1) + confidence).argmax(axis=1)
