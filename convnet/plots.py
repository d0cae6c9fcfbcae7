"""The pictures convnet draws: a run's learning curves and misclassified digits, and a
sweep's accuracy against its parameters."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convnet.history import History


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def curves(history: History, path: Path) -> Path:
    """Training and validation cost, validation and test accuracy per epoch (1000x400 px)."""
    plt = _pyplot()
    fig, (cost_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    epochs = history.epoch
    cost_ax.plot(epochs, history.train_cost, marker="o", color="tab:red", label="training")
    validation = [
        (e, c) for e, c in zip(epochs, history.validation_cost, strict=True) if c is not None
    ]
    if validation:
        cost_ax.plot(
            *zip(*validation, strict=True), marker="o", color="tab:blue", label="validation"
        )
        cost_ax.legend()
    cost_ax.set(title="Cost", xlabel="epoch", ylabel="cost")
    for name, values in [
        ("validation", history.validation_accuracy),
        ("test", history.test_accuracy),
    ]:
        points = [(e, 100 * v) for e, v in zip(epochs, values, strict=True) if v is not None]
        if points:
            acc_ax.plot(*zip(*points, strict=True), marker="o", label=name)
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="% correct")
    if acc_ax.lines:
        acc_ax.legend()
    from matplotlib.ticker import MaxNLocator

    for ax in (cost_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def errors(
    images: np.ndarray, truth: np.ndarray, predicted: np.ndarray, path: Path, limit: int = 36
) -> Path:
    """A grid of misclassified digits, each titled "true -> predicted" (600 px wide, 100 px
    a row). The digits are one mosaic in one axes: a subplot per digit took ~1.3 s."""
    plt = _pyplot()
    wrong = np.flatnonzero(truth != predicted)[:limit]
    cols, cell, title = 6, 28, 12  # a cell: a title band above a 28 x 28 digit, in pixels
    rows = max(1, -(-len(wrong) // cols))
    height, width = cell + title, cell + 8
    mosaic = np.zeros((rows * height, cols * width), np.float32)
    for k, index in enumerate(wrong):
        top, left = (k // cols) * height + title, (k % cols) * width + 4
        mosaic[top : top + cell, left : left + cell] = images[index].reshape(cell, cell)
    fig = plt.figure(figsize=(6, max(1, rows)), dpi=100)
    ax = fig.add_axes((0.02, 0.0, 0.96, 0.94 if rows > 1 else 0.8))
    ax.imshow(
        mosaic,
        cmap="gray_r",
        vmin=0.0,
        vmax=max(1.0, float(mosaic.max())),
        interpolation="antialiased",
        aspect="auto",
    )
    ax.axis("off")
    for k, index in enumerate(wrong):
        x, y = (k % cols) * width + width / 2, (k // cols) * height + title - 2
        ax.text(x, y, f"{truth[index]} → {predicted[index]}", ha="center", va="bottom", fontsize=8)
    if not len(wrong):
        ax.text(cols * width / 2, height / 2, "no errors", ha="center", va="center")
    fig.suptitle("Misclassified test digits (true → predicted)", fontsize=9)
    fig.savefig(path)
    plt.close(fig)
    return path


def sweep(rows: Sequence[dict[str, Any]], swept: Sequence[str], path: Path) -> Path:
    """Best validation accuracy against each swept parameter (one panel each), a line per
    setting of the others, the mean over repeats with their min-max spread as bars."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(swept), figsize=(5 * len(swept), 4), dpi=100, squeeze=False)
    for ax, name in zip(axes.flat, swept, strict=True):
        others = [n for n in swept if n != name]
        lines: dict[tuple, dict[Any, list[float]]] = {}
        for row in rows:
            if row["best_validation_accuracy"] is None:
                continue
            line = lines.setdefault(tuple(row[n] for n in others), {})
            line.setdefault(row[name], []).append(100 * row["best_validation_accuracy"])
        values = sorted({v for line in lines.values() for v in line}, key=_order)
        numeric = all(isinstance(v, (int, float)) for v in values)
        for key, line in lines.items():
            xs = [v for v in values if v in line]
            means = [float(np.mean(line[v])) for v in xs]
            low = [m - min(line[v]) for m, v in zip(means, xs, strict=True)]
            high = [max(line[v]) - m for m, v in zip(means, xs, strict=True)]
            label = ", ".join(f"{n}={v}" for n, v in zip(others, key, strict=True)) or None
            positions = xs if numeric else [values.index(v) for v in xs]
            style = "none" if name == "seed" else "-"  # seeds have no order to join
            ax.errorbar(
                positions, means, yerr=[low, high], marker="o", capsize=3, ls=style, label=label
            )
            if name == "seed":
                mean = float(np.mean(means))
                ax.axhline(mean, color="grey", ls="--", lw=0.8, label=f"mean {mean:.2f}%")
        if numeric and values and min(values) > 0 and max(values) >= 10 * min(values):
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set(xlabel=name, ylabel="best validation accuracy (%)", title=f"Sweep over {name}")
        ax.grid(alpha=0.3)
        if (others and len(lines) <= 12) or name == "seed":
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _order(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))
