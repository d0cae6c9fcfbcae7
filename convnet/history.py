"""History: the per-epoch record of a training run (also kept on ``net.history``)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any

PER_EPOCH = (
    "epoch",
    "train_cost",
    "validation_cost",
    "validation_accuracy",
    "test_accuracy",
    "eta",
    "seconds",
)


@dataclass
class History:
    """One entry per epoch in each list of :data:`PER_EPOCH`, and why the run stopped.

    ``validation_cost`` is the deterministic path's log-likelihood plus the same L2 term
    as ``train_cost`` (which is measured on the dropout path while training): plotted
    together they show over-fitting. The best epoch is derived from the log, never
    stored beside it, so the two cannot disagree."""

    epoch: list[int] = field(default_factory=list)
    train_cost: list[float] = field(default_factory=list)
    validation_cost: list[float | None] = field(default_factory=list)
    validation_accuracy: list[float | None] = field(default_factory=list)
    test_accuracy: list[float | None] = field(default_factory=list)
    eta: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    stopped: str | None = None

    def record(self, logs: dict[str, Any]) -> None:
        """Append one epoch's ``logs`` (a key per :data:`PER_EPOCH` name)."""
        for name in PER_EPOCH:
            getattr(self, name).append(logs[name])

    def scores(self) -> list[float]:
        """Each epoch's score: its validation accuracy, or minus its training cost."""
        return [
            -cost if accuracy is None else accuracy
            for accuracy, cost in zip(self.validation_accuracy, self.train_cost, strict=True)
        ]

    def best_index(self) -> int | None:
        """The position of the best epoch: the last one whose score was not below every
        score before it (a tie goes to the later epoch, as the book's printout does)."""
        best, index = -math.inf, None
        for position, score in enumerate(self.scores()):
            if not score < best:
                best, index = score, position
        return index

    @property
    def best_epoch(self) -> int | None:
        index = self.best_index()
        return None if index is None else self.epoch[index]

    @property
    def best_validation_accuracy(self) -> float | None:
        index = self.best_index()
        return None if index is None else self.validation_accuracy[index]

    @property
    def test_accuracy_at_best(self) -> float | None:
        index = self.best_index()
        return None if index is None else self.test_accuracy[index]

    @property
    def stalled(self) -> int:
        """Epochs run since the best one (all of them when none is best yet)."""
        index = self.best_index()
        return len(self.epoch) - (0 if index is None else index + 1)

    def as_dict(self) -> dict[str, Any]:
        """The log, with the best epoch's figures alongside for readers of the file."""
        return {
            **asdict(self),
            "best_validation_accuracy": self.best_validation_accuracy,
            "best_epoch": self.best_epoch,
            "test_accuracy_at_best": self.test_accuracy_at_best,
        }

    def to_csv(self) -> str:
        """One row per epoch, one column per :data:`PER_EPOCH` name (empty for None)."""
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(PER_EPOCH)
        writer.writerows(zip(*(getattr(self, c) for c in PER_EPOCH), strict=True))
        return text.getvalue()
