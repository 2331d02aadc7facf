"""PNG plots of a run: precision-recall curves and training curves (matplotlib, Agg)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from chtn_tf.atomic import atomic_path  # noqa: E402


def _save(fig, path: str) -> None:
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def plot_pr_curves(results: dict, path: str) -> None:
    """Interpolated precision-recall curves of both directions, from an ``evaluate_retrieval`` dict."""
    curve = results["pr_curve"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(curve["recall"], curve["i2t"], marker="o", label=f"image→text (MAP {results['map_i2t']:.3f})")
    ax.plot(curve["recall"], curve["t2i"], marker="s", label=f"text→image (MAP {results['map_t2i']:.3f})")
    ax.set(xlabel="recall", ylabel="interpolated precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_training_curves(history: dict, path: str) -> None:
    """Loss terms (train and validation) and validation MAP per epoch."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = range(1, len(history.get("loss", [])) + 1)
    for key in ("loss", "image_ce", "text_ce", "source_ce", "mmd_fc7", "pair_fc7"):
        if key in history and any(history[key]):
            left.plot(epochs, history[key], label=key)
        if f"val_{key}" in history and key == "loss":
            left.plot(epochs, history[f"val_{key}"], "--", label=f"val_{key}")
    left.set(xlabel="epoch", ylabel="loss", yscale="log", title="training objective")
    left.legend(fontsize=8)
    for key in ("val_map_i2t", "val_map_t2i", "val_map_avg"):
        if key in history:
            right.plot(epochs, history[key], marker=".", label=key)
    right.set(xlabel="epoch", ylabel="MAP@all", title="validation retrieval")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    _save(fig, path)
