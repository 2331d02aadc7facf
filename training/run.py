"""One CHTN run: build, train with validation MAP, keep the best checkpoint, resume, evaluate on test."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from chtn_tf.atomic import write_json_atomic
from chtn_tf.metrics import plots
from chtn_tf.metrics.retrieval import evaluate_retrieval
from chtn_tf.model.chtn import CHTNModel, make_optimizer
from chtn_tf.model.config import ExperimentConfig
from chtn_tf.model.persist import BEST_WEIGHTS, save_model_definition
from chtn_tf.model.text import build_text_vectorizer
from training import checkpoint
from training.callbacks import RunCheckpointer, ValidationMAP
from training.inputs import PreparedInputs, batches_per_epoch, target_batches
from training.replica_loop import fit_replicated, uses_replica_loop
from training.strategy import Distribution, default_distribution

log = logging.getLogger("chtn")


def build_model(config: ExperimentConfig, inputs: PreparedInputs, *, strategy=None) -> CHTNModel:
    """The model factory shared by ``training.fit`` and ``training.tune``: built and compiled.

    The model, its optimiser and metrics are created under ``strategy.scope()`` (default: the current
    strategy); the text vocabulary is adapted outside it (it is data, the same on every worker).
    """
    keras.utils.set_random_seed(config.train.seed)
    train = inputs.dataset.splits["train"]
    vectorizer = build_text_vectorizer(config.model, train.texts)
    with (strategy or tf.distribute.get_strategy()).scope():
        model = CHTNModel(config, image_feature_dim=inputs.feature_dim, num_classes=inputs.dataset.num_classes,
                          text_vectorizer=vectorizer, num_source_classes=inputs.num_source_classes)
        model.compile(optimizer=make_optimizer(config.optimizer))
        model.build_all()
        model.optimizer.build(model.trainable_variables)
    return model


def fit_callbacks(model_inputs: PreparedInputs) -> list:
    """Callbacks every CHTN fit needs first (validation MAP into the logs)."""
    val = model_inputs.dataset.splits["val"]
    return [ValidationMAP(model_inputs.features["val"], val.texts, val.labels)]


def fit_model(model: CHTNModel, inputs: PreparedInputs, *, epochs: int, initial_epoch: int = 0,
              callbacks=(), verbose="auto"):
    """``model.fit`` on the training split with validation batches and MAP; returns the History.

    Epoch ``e`` sees the same batches however the run got there (fresh, resumed, or on several workers);
    models built under a mirrored or multi-worker strategy train with :func:`fit_replicated`.
    """
    config = model.config
    with_source = model.use_source
    train = target_batches(inputs, "train", batch_size=config.train.batch_size, seed=config.train.seed,
                           shuffle=True, with_source=with_source, first_epoch=initial_epoch)
    val = target_batches(inputs, "val", batch_size=config.train.batch_size, seed=config.train.seed,
                         shuffle=False, with_source=with_source)
    steps = batches_per_epoch(inputs, "train", config.train.batch_size)
    callbacks = fit_callbacks(inputs) + list(callbacks)
    if uses_replica_loop(model.distribute_strategy):
        return fit_replicated(model, train, steps_per_epoch=steps, validation_data=val, epochs=epochs,
                              initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose)
    # shuffle=False: the tf.data pipeline shuffles (seeded); Keras cannot shuffle a Dataset and warns if asked.
    return model.fit(train, steps_per_epoch=steps, validation_data=val, epochs=epochs, initial_epoch=initial_epoch,
                     shuffle=False, callbacks=callbacks, verbose=verbose)


def evaluate_split(model: CHTNModel, inputs: PreparedInputs, split: str) -> dict:
    """Retrieval metrics (MAP@all both ways, MAP@R, P@K, PR curves) of ``model`` on one split."""
    data = inputs.dataset.splits[split]
    image_codes = model.encode_images(inputs.features[split])
    text_codes = model.encode_texts(data.texts)
    return evaluate_retrieval(image_codes, text_codes, data.labels, data.labels)


def train_and_evaluate(config: ExperimentConfig, inputs: PreparedInputs, run_dir: str, *,
                       resume: bool = True, verbose="auto", distribution: Optional[Distribution] = None) -> dict:
    """Trains (or resumes) a run in ``run_dir``, reloads its best checkpoint, evaluates on test.

    Writes ``config.json``, the model definition, TensorBoard logs under ``logs/``, ``history.json``,
    ``best.weights.h5``, ``checkpoints/last/``, ``results.json``, ``pr_curves.png`` and
    ``training_curves.png``. Returns the results dict.

    Under a multi-worker ``distribution`` only the chief writes ``run_dir``; the other workers resume from
    and evaluate with the chief's checkpoints there (a folder every worker can read), write their own
    copies into a private temporary folder and remove it.
    """
    distribution = distribution or default_distribution()
    if distribution.is_chief:
        return _train_and_evaluate(config, inputs, run_dir, run_dir, resume, verbose, distribution)
    private = tempfile.mkdtemp(prefix=f"chtn-worker{distribution.worker_index}-")
    try:
        return _train_and_evaluate(config, inputs, run_dir, private, resume, verbose, distribution)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _train_and_evaluate(config, inputs, run_dir, write_dir, resume, verbose, distribution) -> dict:
    os.makedirs(write_dir, exist_ok=True)
    started = time.time()
    model = build_model(config, inputs, strategy=distribution.strategy)
    state = None
    if resume:
        state = checkpoint.load_last(model, run_dir)
        if state is not None:
            print(f"Resuming {run_dir} after epoch {state['epoch'] + 1} (best val MAP "
                  f"{state['best']:.4f} at epoch {state['best_epoch'] + 1})", flush=True)
    save_model_definition(write_dir, model, class_names=inputs.dataset.class_names, backbone=inputs.backbone,
                          source_class_names=inputs.source_class_names)
    initial_epoch = 0 if state is None else state["epoch"] + 1
    checkpointer = RunCheckpointer(write_dir, patience=config.train.early_stopping_patience, state=state)
    tensorboard = keras.callbacks.TensorBoard(log_dir=os.path.join(write_dir, "logs"), write_graph=False)
    if initial_epoch < config.train.epochs:
        fit_model(model, inputs, epochs=config.train.epochs, initial_epoch=initial_epoch,
                  callbacks=[checkpointer, tensorboard], verbose=verbose)
    checkpointer.write_history()
    train_seconds = time.time() - started
    # Every worker past its last epoch: the chief's checkpoints are complete.
    distribution.barrier()

    model.load_weights(os.path.join(run_dir, BEST_WEIGHTS))
    test = evaluate_split(model, inputs, "test")
    dataset = inputs.dataset
    results = {
        "dataset": dataset.name,
        "backbone": inputs.backbone.get("name"),
        "source": None if inputs.source_features is None else config.data.source,
        "n_train": len(dataset.splits["train"]), "n_val": len(dataset.splits["val"]),
        "n_test": len(dataset.splits["test"]),
        "dropped_pairs": dataset.dropped(),
        "map_i2t": test["map_i2t"], "map_t2i": test["map_t2i"], "map_avg": test["map_avg"],
        "val_map_avg": checkpointer.best,
        "best_epoch": checkpointer.best_epoch + 1,
        "epochs_run": len(checkpointer.history.get("loss", [])),
        "train_seconds": round(train_seconds, 1),
        **distribution.record(),
        "weights_sha256": weights_digest(model),
        "test": test,
    }
    write_json_atomic(os.path.join(write_dir, "results.json"), results)
    plots.plot_pr_curves(test, os.path.join(write_dir, "pr_curves.png"))
    plots.plot_training_curves(checkpointer.history, os.path.join(write_dir, "training_curves.png"))
    return results


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of every weight's bytes, in order: equal digests mean bit-identical models (e.g. across workers)."""
    digest = hashlib.sha256()
    for value in model.get_weights():
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def format_results(results: dict) -> str:
    """The MAP table printed at the end of a run."""
    lines = [
        f"{'dataset':<12}{'backbone':<20}{'n_test':>7}{'I->T':>9}{'T->I':>9}{'avg':>9}{'val avg':>9}",
        f"{results['dataset']:<12}{str(results['backbone']):<20}{results['n_test']:>7}"
        f"{results['map_i2t']:>9.4f}{results['map_t2i']:>9.4f}{results['map_avg']:>9.4f}{results['val_map_avg']:>9.4f}",
    ]
    return "\n".join(lines)

