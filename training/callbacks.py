"""Callbacks of a CHTN run: validation MAP every epoch, best/last checkpoints, early stopping on MAP."""

from __future__ import annotations

import logging
import math
import os

import keras
import numpy as np

from chtn_tf.metrics.retrieval import mean_average_precision
from training import checkpoint

log = logging.getLogger("chtn")


def retrieval_map(model, features, texts, labels) -> dict:
    """MAP@all in both directions (and their mean) of ``model`` on one split."""
    image_codes = model.encode_images(features)
    text_codes = model.encode_texts(texts)
    i2t = float(mean_average_precision(image_codes, labels, text_codes, labels))
    t2i = float(mean_average_precision(text_codes, labels, image_codes, labels))
    return {"map_i2t": i2t, "map_t2i": t2i, "map_avg": (i2t + t2i) / 2}


class ValidationMAP(keras.callbacks.Callback):
    """Adds ``val_map_i2t``, ``val_map_t2i``, ``val_map_avg`` to the epoch logs.

    Put it first in the callback list: later callbacks (checkpointing, keras-tuner, TensorBoard) read the
    same logs dict.
    """

    def __init__(self, features, texts, labels):
        super().__init__()
        self.features = np.asarray(features, np.float32)
        self.texts = list(texts)
        self.labels = np.asarray(labels)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        scores = retrieval_map(self.model, self.features, self.texts, self.labels)
        for name, value in scores.items():
            logs[f"val_{name}"] = value
        print(f"  epoch {epoch + 1}: val MAP i2t {scores['map_i2t']:.4f}  t2i {scores['map_t2i']:.4f}  "
              f"avg {scores['map_avg']:.4f}", flush=True)


class RunCheckpointer(keras.callbacks.Callback):
    """Keeps the best weights by validation MAP and a resumable "last" checkpoint, both written atomically.

    Args:
        run_dir: the run folder.
        monitor: the log key to maximise (never a test-split figure).
        patience: stop after this many epochs without improvement (0: never stop early).
        state: the resumed run state (``best``, ``best_epoch``, ``history``), or None for a new run.
    """

    def __init__(self, run_dir: str, *, monitor: str = "val_map_avg", patience: int = 0, state: dict | None = None):
        super().__init__()
        self.run_dir = run_dir
        self.monitor = monitor
        self.patience = patience
        state = state or {}
        self.best = state.get("best", -math.inf)
        self.best_epoch = state.get("best_epoch", -1)
        self.history = state.get("history", {})

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        value = logs.get(self.monitor)
        if value is None:
            raise KeyError(f"{self.monitor} is not in the epoch logs; is ValidationMAP before RunCheckpointer?")
        if value > self.best:
            self.best, self.best_epoch = float(value), epoch
            checkpoint.save_weights_atomic(self.model, os.path.join(self.run_dir, checkpoint.BEST_WEIGHTS))
        state = {"epoch": epoch, "best": self.best, "best_epoch": self.best_epoch, "history": self.history}
        checkpoint.save_last(self.model, self.run_dir, state)
        if self.patience and epoch - self.best_epoch >= self.patience:
            log.info("no better %s for %d epochs: stopping", self.monitor, self.patience)
            self.model.stop_training = True

    def write_history(self):
        path = os.path.join(self.run_dir, "history.json")
        checkpoint.write_json_atomic(path, self.history)
