"""Resumable run state: the last epoch's weights, optimiser variables and history, written atomically."""

from __future__ import annotations

import json
import os
import tempfile

import keras
import numpy as np

from chtn_tf.atomic import atomic_path, replace_dir_atomic, write_json_atomic

BEST_WEIGHTS = "best.weights.h5"
LAST_DIR = os.path.join("checkpoints", "last")

__all__ = ["BEST_WEIGHTS", "LAST_DIR", "save_weights_atomic", "save_last", "load_last", "write_json_atomic"]


def save_weights_atomic(model: keras.Model, path: str) -> None:
    """``model.save_weights`` through a temporary file and one rename."""
    with atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)


def save_last(model: keras.Model, run_dir: str, state: dict) -> None:
    """Writes ``checkpoints/last/`` (weights, optimiser variables, state.json) as one atomic folder swap."""
    final = os.path.join(run_dir, LAST_DIR)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-last-", dir=os.path.dirname(final))
    model.save_weights(os.path.join(tmp, "model.weights.h5"))
    optimizer_values = {f"v{i:05d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)}
    np.savez(os.path.join(tmp, "optimizer.npz"), **optimizer_values)
    with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
        json.dump(state, f)
    replace_dir_atomic(tmp, final)


def load_last(model: keras.Model, run_dir: str):
    """Restores weights and optimiser state from ``checkpoints/last``; returns its state dict, or None if absent.

    The optimiser must be built (``model.optimizer.build(model.trainable_variables)``) first.
    """
    folder = os.path.join(run_dir, LAST_DIR)
    if not os.path.exists(os.path.join(folder, "state.json")):
        return None
    model.load_weights(os.path.join(folder, "model.weights.h5"))
    with np.load(os.path.join(folder, "optimizer.npz")) as saved:
        values = [saved[f"v{i:05d}"] for i in range(len(saved.files))]
    variables = model.optimizer.variables
    if len(values) != len(variables):
        raise ValueError(f"{folder}: the checkpoint has {len(values)} optimiser variables, the model "
                         f"{len(variables)}; was the config changed? Start a new --out folder.")
    for variable, value in zip(variables, values):
        variable.assign(value)
    with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
        return json.load(f)
