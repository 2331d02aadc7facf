"""PNG plots of a run: precision-recall curves and training curves (matplotlib, Agg), written atomically."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from chtn_tf.atomic import atomic_path  # noqa: E402


def _save(fig, path: str) -> None:
    try:
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


def plot_pr_curves(results: dict, path: str) -> None:
    """Precision-recall curves of both directions from an ``evaluate_retrieval`` dict, as a PNG at ``path``.

    Solid: interpolated precision; dotted (when the dict has them): raw precision at each recall level.
    """
    curve = results["pr_curve"]
    fig, ax = plt.subplots(figsize=(5, 4))
    for direction, marker, name in (("i2t", "o", "image→text"), ("t2i", "s", "text→image")):
        line, = ax.plot(curve["recall"], curve[direction], marker=marker,
                        label=f"{name} (MAP {results[f'map_{direction}']:.3f})")
        if f"{direction}_raw" in curve:
            ax.plot(curve["recall"], curve[f"{direction}_raw"], ":", color=line.get_color(), label=f"{name}, raw")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _is_retrieval_key(key: str) -> bool:
    return "map" in key


def plot_training_curves(history: dict, path: str) -> None:
    """Loss terms per epoch (left, log scale) and retrieval figures such as ``val_map_avg`` (right), as a PNG.

    ``history`` maps a name to its per-epoch values (Keras ``History.history`` or the run's history.json);
    every key containing ``map`` goes right, every other key left (``val_`` keys dashed). Terms that are
    always 0 (e.g. MMD without a source domain) are left out.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted(history):
        values = [float(v) for v in history[key]]
        if not values or not all(math.isfinite(v) for v in values):
            continue
        epochs = range(1, len(values) + 1)
        if _is_retrieval_key(key):
            right.plot(epochs, values, marker=".", label=key)
        elif any(v > 0 for v in values):
            left.plot(epochs, values, "--" if key.startswith("val_") else "-", label=key)
    left.set(xlabel="epoch", ylabel="loss", title="training objective")
    if any(v > 0 for line in left.get_lines() for v in line.get_ydata()):
        left.set_yscale("log")
    right.set(xlabel="epoch", ylabel="MAP", title="retrieval")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    _save(fig, path)
