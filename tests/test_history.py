"""convnet.history: the per-epoch log, and the best epoch derived from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convnet import fields
from convnet.history import History


def _log(accuracies, costs):
    history = History()
    for epoch, (accuracy, cost) in enumerate(zip(accuracies, costs, strict=True)):
        history.record(
            {
                "epoch": epoch,
                "train_cost": cost,
                "validation_cost": None,
                "validation_accuracy": accuracy,
                "test_accuracy": None if accuracy is None else accuracy - 0.01,
                "eta": 0.1,
                "seconds": 1.0,
            }
        )
    return history


@pytest.mark.parametrize(
    ("accuracies", "costs", "best", "stalled"),
    [
        ([], [], None, 0),
        ([0.9, 0.95, 0.93], [1, 1, 1], 1, 1),
        ([0.9, 0.95, 0.95, 0.94], [1, 1, 1, 1], 2, 1),  # a tie goes to the later epoch
        ([0.97, 0.95, 0.96], [1, 1, 1], 0, 2),
        ([None, None, None], [0.5, 0.3, 0.4], 1, 1),  # no validation: the lowest cost
    ],
)
def test_the_best_epoch_is_derived_from_the_log(accuracies, costs, best, stalled):
    history = _log(accuracies, costs)
    assert history.best_epoch == best
    assert history.stalled == stalled
    if best is not None and accuracies[best] is not None:
        assert history.best_validation_accuracy == accuracies[best]
        assert history.test_accuracy_at_best == pytest.approx(accuracies[best] - 0.01)


def test_a_stored_best_is_read_back_as_derived_not_as_written():
    history = _log([0.9, 0.95, 0.93], [1, 1, 1])
    stored = history.as_dict()
    assert stored["best_epoch"] == 1 and stored["best_validation_accuracy"] == 0.95
    stored["best_epoch"], stored["best_validation_accuracy"] = 2, 0.99  # a hand-edited file
    read = fields.history(fields.Fields(json.loads(json.dumps(stored)), Path("history.json")))
    assert read.best_epoch == 1 and read.best_validation_accuracy == 0.95
    assert read.as_dict() == history.as_dict()
