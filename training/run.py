"""One CHTN run: build, train with validation MAP, keep the best checkpoint, resume, evaluate on test."""

from __future__ import annotations

import logging
import os
import time

import keras

from chtn_tf.atomic import write_json_atomic
from chtn_tf.metrics import plots
from chtn_tf.metrics.retrieval import evaluate_retrieval
from chtn_tf.model.chtn import CHTNModel, make_optimizer
from chtn_tf.model.config import ExperimentConfig
from chtn_tf.model.persist import BEST_WEIGHTS, save_model_definition
from chtn_tf.model.text import build_text_vectorizer
from training import checkpoint
from training.callbacks import RunCheckpointer, ValidationMAP
from training.examples import write_run_examples
from training.inputs import PreparedInputs, target_batches

log = logging.getLogger("chtn")


def build_model(config: ExperimentConfig, inputs: PreparedInputs) -> CHTNModel:
    """The model factory shared by ``training.fit`` and ``training.tune``: built and compiled."""
    keras.utils.set_random_seed(config.train.seed)
    train = inputs.dataset.splits["train"]
    vectorizer = build_text_vectorizer(config.model, train.texts)
    model = CHTNModel(config, image_feature_dim=inputs.feature_dim, num_classes=inputs.dataset.num_classes,
                      text_vectorizer=vectorizer, num_source_classes=inputs.num_source_classes)
    n_train = len(train)
    batches = n_train // config.train.batch_size if n_train > config.train.batch_size else 1
    model.compile(optimizer=make_optimizer(config.optimizer, total_steps=batches * config.train.epochs))
    model.build_all()
    model.optimizer.build(model.trainable_variables)
    return model


def fit_callbacks(model_inputs: PreparedInputs) -> list:
    """Callbacks every CHTN fit needs first (validation MAP into the logs)."""
    val = model_inputs.dataset.splits["val"]
    return [ValidationMAP(model_inputs.features["val"], val.texts, val.labels)]


def fit_model(model: CHTNModel, inputs: PreparedInputs, *, epochs: int, initial_epoch: int = 0,
              callbacks=(), verbose="auto"):
    """``model.fit`` on the training split with validation batches and MAP; returns the History."""
    config = model.config
    with_source = model.use_source
    train = target_batches(inputs, "train", batch_size=config.train.batch_size, seed=config.train.seed,
                           shuffle=True, with_source=with_source)
    val = target_batches(inputs, "val", batch_size=config.train.batch_size, seed=config.train.seed,
                         shuffle=False, with_source=with_source)
    # shuffle=False: the tf.data pipeline shuffles (seeded); Keras cannot shuffle a Dataset and warns if asked.
    return model.fit(train, validation_data=val, epochs=epochs, initial_epoch=initial_epoch, shuffle=False,
                     callbacks=fit_callbacks(inputs) + list(callbacks), verbose=verbose)


def evaluate_split(model: CHTNModel, inputs: PreparedInputs, split: str) -> dict:
    """Retrieval metrics (MAP@all both ways, MAP@R, P@K, PR curves) of ``model`` on one split."""
    data = inputs.dataset.splits[split]
    image_codes = model.encode_images(inputs.features[split])
    text_codes = model.encode_texts(data.texts)
    return evaluate_retrieval(image_codes, text_codes, data.labels, data.labels)


def train_and_evaluate(config: ExperimentConfig, inputs: PreparedInputs, run_dir: str, *,
                       resume: bool = True, verbose="auto") -> dict:
    """Trains (or resumes) a run in ``run_dir``, reloads its best checkpoint, evaluates on test.

    Writes ``config.json``, the model definition, TensorBoard logs under ``logs/``, ``history.json``,
    ``best.weights.h5``, ``checkpoints/last/``, ``results.json``, ``pr_curves.png``,
    ``training_curves.png``, ``examples.html`` and the projector's ``logs/projector/``. Returns the results dict.
    """
    os.makedirs(run_dir, exist_ok=True)
    started = time.time()
    model = build_model(config, inputs)
    state = None
    if resume:
        state = checkpoint.load_last(model, run_dir)
        if state is not None:
            print(f"Resuming {run_dir} after epoch {state['epoch'] + 1} (best val MAP "
                  f"{state['best']:.4f} at epoch {state['best_epoch'] + 1})", flush=True)
    save_model_definition(run_dir, model, class_names=inputs.dataset.class_names, backbone=inputs.backbone,
                          source_class_names=inputs.source_class_names)
    initial_epoch = 0 if state is None else state["epoch"] + 1
    checkpointer = RunCheckpointer(run_dir, patience=config.train.early_stopping_patience, state=state)
    tensorboard = keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, "logs"), write_graph=False)
    if initial_epoch < config.train.epochs:
        fit_model(model, inputs, epochs=config.train.epochs, initial_epoch=initial_epoch,
                  callbacks=[checkpointer, tensorboard], verbose=verbose)
    checkpointer.write_history()
    train_seconds = time.time() - started

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
        "test": test,
    }
    write_json_atomic(os.path.join(run_dir, "results.json"), results)
    plots.plot_pr_curves(test, os.path.join(run_dir, "pr_curves.png"))
    plots.plot_training_curves(checkpointer.history, os.path.join(run_dir, "training_curves.png"))
    shown = write_run_examples(model, inputs, run_dir, results=results, seed=config.train.seed)
    log.info("examples.html and logs/projector written in %.1f s", shown["seconds"])
    return results


def format_results(results: dict) -> str:
    """The MAP table printed at the end of a run."""
    lines = [
        f"{'dataset':<12}{'backbone':<20}{'n_test':>7}{'I->T':>9}{'T->I':>9}{'avg':>9}{'val avg':>9}",
        f"{results['dataset']:<12}{str(results['backbone']):<20}{results['n_test']:>7}"
        f"{results['map_i2t']:>9.4f}{results['map_t2i']:>9.4f}{results['map_avg']:>9.4f}{results['val_map_avg']:>9.4f}",
    ]
    return "\n".join(lines)

