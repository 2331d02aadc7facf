"""One CHTN run: build, train with validation MAP, keep the best checkpoint, resume, evaluate on test."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from chtn_tf.atomic import folder_lock, write_json_atomic
from chtn_tf.data.pipeline import batches_per_epoch, target_batches
from chtn_tf.metrics import plots
from chtn_tf.metrics.retrieval import evaluate_retrieval
from chtn_tf.model.chtn import CHTNModel, make_optimizer
from chtn_tf.model.config import ExperimentConfig
from chtn_tf.model.persist import (CONFIG_FILE, VECTORIZER_FILE, read_model_info, restore_best,
                                   save_model_definition)
from chtn_tf.model.sizing import fill_from, has_auto_size, size_to_data
from chtn_tf.model.text import build_text_vectorizer, load_text_vectorizer, vectorize_texts
from training import checkpoint
from training.callbacks import ResumableEarlyStopping, RunCheckpointer, ValidationMAP, stopped_early
from training.inputs import PreparedInputs
from training.examples import write_run_examples
from training.replica_loop import fit_replicated, uses_replica_loop
from training.strategy import Distribution, StrategyError, default_distribution

log = logging.getLogger("chtn")

CONFIG_HISTORY_FILE = "config_history.json"
# Fields a resumed run may change: the schedule, and where the (same, fingerprinted) data is found.
RESUMABLE_CHANGES = ("train.epochs", "train.early_stopping_patience", "data.data_dir", "data.manifest")
# What a run folder holds besides the files it shares with a new run; removed by --no-resume.
_RUN_OUTPUTS = (checkpoint.CHECKPOINTS, "logs", "history.json", "results.json", "pr_curves.png", "training_curves.png",
                CONFIG_HISTORY_FILE)
_LEGACY_FILES = ("best.weights.h5", os.path.join(checkpoint.LAST_DIR, "state.json"))


class RunConflict(ValueError):
    """The run folder holds a run that this command cannot continue; nothing in it has been changed."""


def build_model(config: ExperimentConfig, inputs: PreparedInputs, *, text_vectorizer=None,
                strategy=None) -> CHTNModel:
    """The model factory shared by ``training.fit`` and ``training.tune``: built and compiled.

    Widths and members left to the data (0) are chosen from the number of training pairs (:func:`size_to_data`).
    ``text_vectorizer``: a saved run's vectoriser (resume); by default one is adapted on the training texts
    (outside the strategy: it is data, the same on every worker). The model, its optimiser and metrics are
    created under ``strategy.scope()`` (default: the current strategy).
    """
    config = size_to_data(config, len(inputs.dataset.splits["train"]))
    keras.utils.set_random_seed(config.train.seed)
    if text_vectorizer is None:
        text_vectorizer = build_text_vectorizer(config.model, inputs.dataset.splits["train"].texts)
    steps = batches_per_epoch(len(inputs.dataset.splits["train"]), config.train.batch_size, shuffle=True)
    with (strategy or tf.distribute.get_strategy()).scope():
        model = CHTNModel(config, image_feature_dim=inputs.feature_dim, num_classes=inputs.dataset.num_classes,
                          text_vectorizer=text_vectorizer, num_source_classes=inputs.num_source_classes,
                          split_backbone=inputs.split_backbone)
        model.compile(optimizer=make_optimizer(config.optimizer, total_steps=steps * config.train.epochs))
        model.build_all()
        model.optimizer.build(model.trainable_variables)
    if model.gallery_linear_weight:
        train = inputs.dataset.splits["train"]
        model.fit_text_regression(vectorize_texts(text_vectorizer, train.texts), train.labels)
    return model


def fit_callbacks(model_inputs: PreparedInputs, model=None) -> list:
    """Callbacks every CHTN fit needs first (validation MAP into the logs)."""
    val = model_inputs.dataset.splits["val"]
    first = []
    if model is not None and getattr(model.optimizer, "use_ema", False):
        first.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    return first + [ValidationMAP(model_inputs.features["val"], val.texts, val.labels)]


def split_columns(model: CHTNModel, inputs: PreparedInputs, split: str) -> dict:
    """One split as the model trains on it: image features (the training split: all its cached views, when
    ``inputs`` has them), the texts' bag-of-words rows (vectorised once, by the model's own vectoriser, as a
    sparse matrix) and labels, one row per pair."""
    data = inputs.dataset.splits[split]
    image = ({"image_views": inputs.train_views} if split == "train" and inputs.train_views is not None
             else {"image": inputs.features[split]})
    return {**image, "bag_of_words": vectorize_texts(model.text_vectorizer, data.texts), "label": data.labels}


def fit_model(model: CHTNModel, inputs: PreparedInputs, *, epochs: int, initial_epoch: int = 0,
              callbacks=(), verbose="auto"):
    """``model.fit`` on the training split with validation batches and MAP; returns the History.

    Epoch ``e`` sees the same batches whatever ``initial_epoch`` is (see
    :func:`chtn_tf.data.pipeline.target_batches`), so a resumed run continues exactly where an uninterrupted
    one would be, on one process or several workers. Models built under a mirrored or multi-worker strategy
    train with :func:`fit_replicated`.
    """
    config = model.config
    source = None
    if model.use_source and inputs.source_features is not None:
        source = {"image": inputs.source_features, "label": inputs.source_labels}
    common = dict(source=source, batch_size=config.train.batch_size, seed=config.train.seed)
    train = target_batches(split_columns(model, inputs, "train"), shuffle=True, epochs=(initial_epoch, epochs),
                           **common)
    val = target_batches(split_columns(model, inputs, "val"), shuffle=False, **common)
    steps = batches_per_epoch(len(inputs.dataset.splits["train"]), config.train.batch_size, shuffle=True)
    if uses_replica_loop(model.distribute_strategy):
        return fit_replicated(model, train, steps_per_epoch=steps, validation_data=val, epochs=epochs,
                              initial_epoch=initial_epoch, callbacks=fit_callbacks(inputs, model) + list(callbacks),
                              verbose=verbose)
    # shuffle=False: the tf.data pipeline shuffles (seeded); Keras cannot shuffle a Dataset and warns if asked.
    return model.fit(train, validation_data=val, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                     shuffle=False, callbacks=fit_callbacks(inputs, model) + list(callbacks), verbose=verbose)


def evaluate_split(model: CHTNModel, inputs: PreparedInputs, split: str) -> dict:
    """Retrieval metrics (MAP@all both ways, MAP@R, P@K, PR curves) of ``model`` on one split."""
    data = inputs.dataset.splits[split]
    image_codes = model.encode_images(inputs.features[split])
    text_codes = model.encode_texts(data.texts)
    return evaluate_retrieval(image_codes, text_codes, data.labels, data.labels,
                              text_gallery_codes=model.encode_text_gallery(data.texts))


# ---------------------------------------------------------------- continuing a run folder

def data_fingerprint(inputs: PreparedInputs) -> str:
    """A hash of every split's pair ids, labels and texts, and of the class names (not of file locations)."""
    dataset = inputs.dataset
    digest = hashlib.sha256(json.dumps(dataset.class_names, ensure_ascii=False).encode("utf-8"))
    for name, split in dataset.splits.items():
        rows = [[name, pair_id, int(label), text] for pair_id, label, text in zip(split.ids, split.labels, split.texts)]
        digest.update(json.dumps(rows, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "options":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def has_trained_state(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a finished epoch, i.e. something a new run there would lose."""
    return checkpoint.has_checkpoint(run_dir) or any(os.path.exists(os.path.join(run_dir, f)) for f in _LEGACY_FILES)


def check_config(run_dir: str, config: ExperimentConfig) -> dict:
    """What a resumed run changes in the saved config: ``{field: [old, new]}``, schedule fields only.

    Raises:
        RunConflict: the run folder was written by an older chtn, or another field changed (all of them are
            listed).
    """
    if not has_trained_state(run_dir):
        return {}
    if not checkpoint.has_checkpoint(run_dir):
        raise RunConflict(f"{run_dir} holds a run written by an older chtn version, which cannot be continued; "
                          f"use a new --out folder (or --no-resume to replace that run)")
    saved = ExperimentConfig.from_json(os.path.join(run_dir, CONFIG_FILE))
    config = fill_from(config, saved)  # sizes left to the data are the saved run's (check_data: the same data)
    old = _flatten(json.loads(json.dumps(saved.to_dict())))
    new = _flatten(json.loads(json.dumps(config.to_dict())))
    changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    refused = {k: v for k, v in changed.items() if k not in RESUMABLE_CHANGES}
    if refused:
        listed = "; ".join(f"{k}: {json.dumps(a)} -> {json.dumps(b)}" for k, (a, b) in refused.items())
        raise RunConflict(f"{run_dir} holds a run with another config, which it cannot continue ({listed}). "
                          f"Run with the same settings to resume it (only {', '.join(RESUMABLE_CHANGES)} may "
                          f"change), use a new --out folder, or pass --no-resume to replace that run")
    return changed


def check_data(run_dir: str, config: ExperimentConfig, data) -> None:
    """Raises :class:`RunConflict` when ``data`` is not what the run in ``run_dir`` was trained on.

    ``data`` is the :class:`PreparedInputs` (everything is compared: classes, image features, source domain,
    the pairs themselves), or a dataset as read (only its classes are compared: a check before the features
    are computed).
    """
    info = read_model_info(run_dir)
    if info is None or not has_trained_state(run_dir):
        return
    inputs = data if isinstance(data, PreparedInputs) else None
    dataset = data.dataset if inputs else data
    reasons = []
    if info["class_names"] != list(dataset.class_names):
        added = [c for c in dataset.class_names if c not in info["class_names"]]
        gone = [c for c in info["class_names"] if c not in dataset.class_names]
        reasons.append(f"the classes differ (run: {len(info['class_names'])}, data now: {dataset.num_classes}"
                       + (f"; new: {', '.join(added[:5])}" if added else "")
                       + (f"; gone: {', '.join(gone[:5])}" if gone else "") + ")")
    if inputs is not None:
        was, now = info["backbone"].get("name"), inputs.backbone.get("name")
        if info["image_feature_dim"] != inputs.feature_dim or was != now:
            reasons.append(f"the image features differ (run: {was}, {info['image_feature_dim']}-d; now: {now}, "
                           f"{inputs.feature_dim}-d)")
        source_classes = inputs.num_source_classes if config.loss.source_transfer else 0
        if info["num_source_classes"] != source_classes:
            reasons.append(f"the source domain differs (run: {info['num_source_classes']} classes, "
                           f"now: {source_classes})")
        if not reasons and info.get("data_fingerprint") not in (None, data_fingerprint(inputs)):
            reasons.append("the pairs (ids, labels or texts) differ from those it was trained on")
    if reasons:
        raise RunConflict(f"{run_dir} holds a run trained on other data: {'; '.join(reasons)}. Start a new --out "
                          f"folder (or pass --no-resume to replace that run)")


def _record_config_changes(run_dir: str, changes: dict, epoch: int) -> None:
    path = os.path.join(run_dir, CONFIG_HISTORY_FILE)
    history = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            history = json.load(f)
    history.append({"time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "from_epoch": epoch + 1, "changed": changes})
    write_json_atomic(path, history)


def _remove_earlier_run(run_dir: str) -> None:
    for name in _RUN_OUTPUTS + _LEGACY_FILES:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def train_and_evaluate(config: ExperimentConfig, inputs: PreparedInputs, run_dir: str, *,
                       resume: bool = True, verbose="auto", distribution: Distribution | None = None) -> dict:
    """Trains (or resumes) a run in ``run_dir``, reloads its best checkpoint, evaluates on test.

    Writes ``config.json``, the model definition, TensorBoard logs under ``logs/``, ``history.json``,
    ``checkpoints/best/``, ``checkpoints/last/``, ``results.json``, ``pr_curves.png``,
    ``training_curves.png``, ``examples.html`` and the projector's ``logs/projector/``; a resumed run whose schedule changed (``--epochs``) appends the change to
    ``config_history.json``. Leftovers of an interrupted run are removed first. With ``resume=False`` an
    earlier run in ``run_dir`` is replaced. Returns the results dict.

    Under a multi-worker ``distribution`` (default: one process) only the chief writes ``run_dir``; the other
    workers resume from and evaluate with the chief's checkpoints there (a folder every worker reads), save
    their own checkpoints into temporary folders they delete, and write nothing else.

    Raises:
        RunConflict: ``run_dir`` holds a run with another config or other data (with ``resume``).
        chtn_tf.atomic.FolderBusy: another process is writing ``run_dir``.
    """
    distribution = distribution or default_distribution()
    writer = checkpoint.writes_run_folder(distribution)
    with folder_lock(run_dir) if writer else contextlib.nullcontext():
        if writer:
            removed = checkpoint.remove_leftovers(run_dir)
            if removed:
                print(f"Removed {len(removed)} leftover(s) of an interrupted run in {run_dir}", flush=True)
        return _train_and_evaluate(config, inputs, run_dir, resume=resume, verbose=verbose, writer=writer,
                                   distribution=distribution)


def _train_and_evaluate(config, inputs, run_dir, *, resume, verbose, writer, distribution) -> dict:
    started = time.time()
    if has_auto_size(config):
        config = size_to_data(config, len(inputs.dataset.splits["train"]))
        print(f"Network size for {len(inputs.dataset.splits['train'])} training pairs: branches "
              f"{list(config.model.branch_widths)}, shared {list(config.model.shared_widths)}, "
              f"{config.model.members} member(s)", flush=True)
    if config.train.image_views != inputs.num_train_views:
        # The views are what the inputs hold (prepare_inputs extracts train.image_views of them; precomputed
        # features have one); the run records what it trained on.
        print(f"Training on {inputs.num_train_views} view(s) per training image (train.image_views "
              f"{config.train.image_views}: the inputs have {inputs.num_train_views})", flush=True)
        config = config.override({"train.image_views": inputs.num_train_views})
    changes = {}
    if resume:
        changes = check_config(run_dir, config)
        check_data(run_dir, config, inputs)
    elif writer:
        _remove_earlier_run(run_dir)
    vectorizer = None
    if resume and checkpoint.has_checkpoint(run_dir):
        vectorizer = load_text_vectorizer(os.path.join(run_dir, VECTORIZER_FILE), name="text_vectorizer")
    model = build_model(config, inputs, text_vectorizer=vectorizer, strategy=distribution.strategy)
    checkpoints = checkpoint.RunCheckpoints(run_dir, model, writer=writer)
    state = checkpoints.restore_last() if resume else None
    if state is not None:
        print(f"Resuming {run_dir} after epoch {state['epoch'] + 1} (best val MAP {state['best']:.4f} at epoch "
              f"{state['best_epoch'] + 1})", flush=True)
    if writer:
        save_model_definition(run_dir, model, class_names=inputs.dataset.class_names, backbone=inputs.backbone,
                              source_class_names=inputs.source_class_names, data_fingerprint=data_fingerprint(inputs))
        if changes and state is not None:
            _record_config_changes(run_dir, changes, state["epoch"] + 1)
            print(f"Config changes recorded in {CONFIG_HISTORY_FILE}: "
                  + "; ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items()), flush=True)

    initial_epoch = 0 if state is None else state["epoch"] + 1
    patience = config.train.early_stopping_patience
    checkpointer = RunCheckpointer(checkpoints, state=state)
    callbacks = [checkpointer]
    if patience:
        callbacks.append(ResumableEarlyStopping(patience=patience, state=state))
    if writer:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, "logs"), write_graph=False))
    if state is not None and stopped_early(state, patience):
        print(f"Early stopping had ended this run after epoch {state['epoch'] + 1}; nothing left to train",
              flush=True)
    elif initial_epoch < config.train.epochs:
        fit_model(model, inputs, epochs=config.train.epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                  verbose=verbose)
    elif state is not None:
        print(f"{run_dir} has already trained {initial_epoch} epochs (--epochs {config.train.epochs}); "
              f"evaluating its best checkpoint", flush=True)
    train_seconds = time.time() - started

    # Every worker is past its last epoch, so the chief's checkpoints are complete.
    distribution.barrier()
    if not writer and not checkpoint.has_checkpoint(run_dir):
        raise StrategyError(f"worker {distribution.worker_index} finds no checkpoint of the chief in {run_dir}: the "
                            f"run folder (--out) must be a folder every worker shares (the same path on each)")
    restore_best(run_dir, model)
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
    if writer:
        write_json_atomic(os.path.join(run_dir, "history.json"), checkpointer.history)
        write_json_atomic(os.path.join(run_dir, "results.json"), results)
        plots.plot_pr_curves(test, os.path.join(run_dir, "pr_curves.png"))
        plots.plot_training_curves(checkpointer.history, os.path.join(run_dir, "training_curves.png"))
        shown = write_run_examples(model, inputs, run_dir, results=results, seed=config.train.seed)
        log.info("examples.html and logs/projector written in %.1f s", shown["seconds"])
    return results


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of every weight's bytes, in order: equal digests mean bit-identical models (e.g. across workers)."""
    digest = hashlib.sha256()
    for value in model.get_weights():
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def format_results(results: dict) -> str:
    """The MAP table printed at the end of a run (columns as wide as their longest entry)."""
    header = ["dataset", "backbone", "n_test", "I->T", "T->I", "avg", "val avg"]
    row = [str(results["dataset"]), str(results["backbone"]), str(results["n_test"])] + [
        f"{results[k]:.4f}" for k in ("map_i2t", "map_t2i", "map_avg", "val_map_avg")]
    widths = [max(len(h), len(v)) for h, v in zip(header, row)]
    lines = []
    for cells in (header, row):
        text = [f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths))]
        lines.append("  ".join(text))
    return "\n".join(lines)
