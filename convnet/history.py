"""History: the per-epoch record of a training run (also kept on ``net.history``)."""

from __future__ import annotations

import csv
import io
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
    """One entry per epoch in each list of :data:`PER_EPOCH`, plus the run's summary.

    ``validation_cost`` is the deterministic path's log-likelihood plus the same L2 term
    as ``train_cost`` (which is measured on the dropout path while training): plotted
    together they show over-fitting."""

    epoch: list[int] = field(default_factory=list)
    train_cost: list[float] = field(default_factory=list)
    validation_cost: list[float | None] = field(default_factory=list)
    validation_accuracy: list[float | None] = field(default_factory=list)
    test_accuracy: list[float | None] = field(default_factory=list)
    eta: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_validation_accuracy: float | None = None
    best_epoch: int | None = None
    test_accuracy_at_best: float | None = None
    stopped: str | None = None

    def record(self, logs: dict[str, Any]) -> None:
        """Append one epoch's ``logs`` (a key per :data:`PER_EPOCH` name)."""
        for name in PER_EPOCH:
            getattr(self, name).append(logs[name])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_csv(self) -> str:
        """One row per epoch, one column per :data:`PER_EPOCH` name (empty for None)."""
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(PER_EPOCH)
        writer.writerows(zip(*(getattr(self, c) for c in PER_EPOCH), strict=True))
        return text.getvalue()
