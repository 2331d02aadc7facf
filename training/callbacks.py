"""Callbacks of a CHTN run: validation MAP every epoch, best/last checkpoints, early stopping on MAP."""

from __future__ import annotations

import math

import keras
import numpy as np

from chtn_tf.metrics.retrieval import mean_average_precision
from training.checkpoint import RunCheckpoints

MONITOR = "val_map_avg"


def retrieval_map(model, features, texts, labels) -> dict:
    """MAP@all in both directions (and their mean) of ``model`` on one split."""
    image_codes = model.encode_images(features)
    text_codes = model.encode_texts(texts)
    i2t = float(mean_average_precision(image_codes, labels, model.encode_text_gallery(texts), labels))
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
    """Keeps the best encoders by validation MAP and a resumable "last" checkpoint with the run's history.

    At the end of every epoch: the epoch's logs join the history; when ``monitor`` beats the best value so far
    the encoders are saved as ``checkpoints/best``; then the model, the optimiser and the run state
    (``{"epoch", "best", "best_epoch", "history"}``) are saved together as ``checkpoints/last``.

    Keras' own callbacks do not give these guarantees, hence this one: ``ModelCheckpoint`` writes its file in
    place (a kill during the write destroys the previous best), its weights-only file still carries the
    optimiser's state, and its best value does not survive a restart. ``BackupAndRestore`` writes the weights
    and the epoch number as two files one after the other (a kill between them resumes at the wrong epoch),
    keys the optimiser's variables by position, and keeps nothing else of the run (best value, history).
    Early stopping is Keras' ``EarlyStopping`` (:class:`ResumableEarlyStopping`).

    Args:
        checkpoints: the run's :class:`~training.checkpoint.RunCheckpoints`.
        monitor: the log key to maximise (never a test-split figure).
        state: the resumed run state, or None for a new run.
    """

    def __init__(self, checkpoints: RunCheckpoints, *, monitor: str = MONITOR, state: dict | None = None):
        super().__init__()
        self.checkpoints = checkpoints
        self.monitor = monitor
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
            self.checkpoints.save_best(epoch)
        self.checkpoints.save_last(epoch, {"epoch": epoch, "best": self.best, "best_epoch": self.best_epoch,
                                           "history": self.history})


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` on validation MAP that continues a resumed run's count instead of starting over.

    Args:
        patience: epochs without a better ``monitor`` value before training stops (at least 1).
        state: the resumed run state (``best``, ``best_epoch``, ``epoch``), or None for a new run.
    """

    def __init__(self, *, patience: int, state: dict | None = None, monitor: str = MONITOR):
        super().__init__(monitor=monitor, mode="max", patience=patience)
        self.resumed = state

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resumed:
            self.best = self.resumed["best"]
            self.best_epoch = self.resumed["best_epoch"]
            self.wait = self.resumed["epoch"] - self.resumed["best_epoch"]


def stopped_early(state: dict, patience: int) -> bool:
    """Whether a run in ``state`` had already been stopped by :class:`ResumableEarlyStopping`."""
    return bool(patience) and state["epoch"] > 0 and state["epoch"] - state["best_epoch"] >= patience
