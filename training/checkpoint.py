"""A run folder's checkpoints: the best weights by validation MAP, and the state a resumed run continues from.

Layout inside the run folder::

    checkpoints/best/   the two encoders' variables at the best validation epoch (what evaluation and export load)
    checkpoints/last/   every model variable, the optimiser's state and the run state (epoch, best value,
                        history) of the last finished epoch, saved together (what a resumed run loads)

Both are TensorFlow checkpoints written by ``tf.train.CheckpointManager``: a save writes new files
(``ckpt-<epoch>.*``) and then swaps the folder's ``checkpoint`` index in one atomic rename, so a process killed
at any moment leaves the previous checkpoint whole; leftovers of an interrupted save are removed by
:func:`remove_leftovers` on the next run. Variables are keyed by name, never by position: a model variable by
``<layer>:<variable>`` (explicit layer names: ``fc6_i:kernel``), an optimiser variable by its own name, which
Keras derives from the variable it belongs to (``fc6_i_kernel_momentum``). A checkpoint of another model is
refused with the names that differ (:class:`CheckpointMismatch`), never half-loaded. The names, and the
reading of the best checkpoint by export, live in :mod:`chtn_tf.model.persist`.

Who writes: every process of a distributed run must take part in a save (variables may live on several
workers), but only one may own the run folder. :func:`writes_run_folder` is that decision, in one place;
:class:`RunCheckpoints` saves into a throw-away folder when it is False.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import tensorflow as tf

from chtn_tf.model.persist import (BEST_DIR, CHECKPOINT_PREFIX, CHECKPOINTS, CheckpointMismatch,
                                   check_same_variables, encoder_variables, model_variables, optimizer_variables)

LAST_DIR = os.path.join(CHECKPOINTS, "last")

__all__ = ["BEST_DIR", "LAST_DIR", "CheckpointMismatch", "RunCheckpoints", "has_checkpoint", "remove_leftovers",
           "writes_run_folder"]


def writes_run_folder(distribution=None) -> bool:
    """Whether this process writes the run folder (checkpoints, config, results): the chief of a cluster.

    ``distribution``: this process's :class:`training.strategy.Distribution`; without one, ``TF_CONFIG``
    decides (no ``TF_CONFIG``, or worker 0 of it: this process writes). This function is the one place to
    decide it.
    """
    if distribution is not None:
        return distribution.is_chief
    from training.strategy import read_tf_config

    cluster = read_tf_config()
    return cluster is None or cluster.worker_index == 0


class RunCheckpoints:
    """Saves and restores a run's ``checkpoints/best`` and ``checkpoints/last`` (see the module docstring).

    Args:
        run_dir: the run folder.
        model: a built ``CHTNModel`` whose optimiser is built (``model.optimizer.build(...)``).
        writer: whether this process owns the run folder (default :func:`writes_run_folder`); otherwise saves
            go to a temporary folder that is deleted.
    """

    def __init__(self, run_dir: str, model, *, writer: bool | None = None):
        self.run_dir = run_dir
        self.writer = writes_run_folder() if writer is None else writer
        self._state = tf.Variable("", dtype=tf.string, trainable=False)
        self._best_sections = {"model": encoder_variables(model)}
        self._last_sections = {"model": model_variables(model), "optimizer": optimizer_variables(model.optimizer)}
        self._best = tf.train.Checkpoint(**self._best_sections)
        self._last = tf.train.Checkpoint(**self._last_sections, state=self._state)

        self._managers = {}

    @staticmethod
    def _manager(checkpoint, folder: str) -> tf.train.CheckpointManager:
        # max_to_keep=1: the manager deletes the previous checkpoint only after the new one is indexed.
        return tf.train.CheckpointManager(checkpoint, folder, max_to_keep=1, checkpoint_name=CHECKPOINT_PREFIX)

    def _save(self, checkpoint, subdir: str, number: int) -> None:
        if self.writer:
            if subdir not in self._managers:
                self._managers[subdir] = self._manager(checkpoint, os.path.join(self.run_dir, subdir))
            self._managers[subdir].save(checkpoint_number=number)
            return
        scratch = tempfile.mkdtemp(prefix="chtn-worker-")
        try:
            self._manager(checkpoint, scratch).save(checkpoint_number=number)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def save_best(self, epoch: int) -> None:
        """Saves the encoders' variables as the best checkpoint (no optimiser state: export needs none)."""
        self._save(self._best, BEST_DIR, epoch + 1)

    def save_last(self, epoch: int, state: dict) -> None:
        """Saves every model and optimiser variable with ``state`` (JSON-serialisable) as one checkpoint."""
        self._state.assign(json.dumps(state))
        self._save(self._last, LAST_DIR, epoch + 1)

    def restore_last(self):
        """Loads ``checkpoints/last`` into the model and optimiser; returns its state dict, or None if absent.

        Raises:
            CheckpointMismatch: the checkpoint holds other variables than this model and optimiser.
        """
        path = tf.train.latest_checkpoint(os.path.join(self.run_dir, LAST_DIR))
        if path is None:
            return None
        check_same_variables(path, self._last_sections)
        self._last.read(path).assert_existing_objects_matched().expect_partial()
        # The checkpoint's save counter is created lazily, at the first save, and would then be restored from
        # `path`: on a worker that is not the chief that file may be gone by then (the chief keeps one
        # checkpoint). Create it now, while the file is there.
        _ = self._last.save_counter
        return json.loads(self._state.numpy().decode("utf-8"))


def has_checkpoint(run_dir: str) -> bool:
    """Whether the run folder holds a finished epoch (a last or best checkpoint)."""
    return any(tf.train.latest_checkpoint(os.path.join(run_dir, d)) for d in (LAST_DIR, BEST_DIR))


# Temporary names that chtn_tf.atomic (mkstemp: ".tmp-" + 8 characters) and earlier versions of chtn (config.json
# as "<file>.tmp-<pid>", this module's folders) gave the files they were writing; a killed process leaves them behind.
_RUN_LEFTOVERS = {"": (r"\.tmp-[a-z0-9_]{8}(\.weights\.h5)?", r".+\.tmp-\d+"),
                  CHECKPOINTS: (r"last\.old-\d+", r"\.tmp-last-[a-z0-9_]{8}")}


def remove_leftovers(run_dir: str) -> list:
    """Removes what an interrupted save left in the run folder; returns the removed paths.

    Only names this package writes are touched: temporary files of atomic writes (``.tmp-XXXXXXXX``,
    ``<file>.tmp-<pid>``, and an older version's ``checkpoints/last.old-<pid>``, ``checkpoints/.tmp-last-*``),
    TensorFlow's unfinished checkpoint files (``ckpt-N_temp/``, ``checkpoint.tmp*``) and checkpoint files that
    the folder's ``checkpoint`` index does not list (a save killed before its index was swapped). Call it only
    while holding the run folder's lock (:func:`chtn_tf.atomic.folder_lock`).
    """
    removed = []
    for subdir, patterns in _RUN_LEFTOVERS.items():
        folder = os.path.join(run_dir, subdir)
        if os.path.isdir(folder):
            removed += [os.path.join(folder, name) for name in sorted(os.listdir(folder))
                        if any(re.fullmatch(p, name) for p in patterns)]
    for subdir in (BEST_DIR, LAST_DIR):
        folder = os.path.join(run_dir, subdir)
        if not os.path.isdir(folder):
            continue
        state = tf.train.get_checkpoint_state(folder)
        kept = {os.path.basename(p) for p in state.all_model_checkpoint_paths} if state else set()
        for name in sorted(os.listdir(folder)):
            match = re.fullmatch(rf"({CHECKPOINT_PREFIX}-\d+)(_temp|\.index|\.data-\d+-of-\d+)", name)
            unfinished = match and (match.group(2) == "_temp" or match.group(1) not in kept)
            if unfinished or name.startswith("checkpoint.tmp"):
                removed.append(os.path.join(folder, name))
    for path in removed:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)
    return removed
