"""The two pictures a run leaves behind: learning curves and misclassified digits."""

from __future__ import annotations

from pathlib import Path

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
    """A grid of misclassified digits, each titled "true -> predicted" (600x600 px)."""
    plt = _pyplot()
    wrong = np.flatnonzero(truth != predicted)[:limit]
    cols = 6
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6, max(1, rows)), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, wrong, strict=False):
        ax.imshow(images[index].reshape(28, 28), cmap="gray_r")
        ax.set_title(f"{truth[index]} → {predicted[index]}", fontsize=8)
    if not len(wrong):
        axes.flat[0].text(0.5, 0.5, "no errors", ha="center", va="center")
    fig.suptitle("Misclassified test digits (true → predicted)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
