"""The dataset registry, the one list of dataset names: each name's reader and its default run settings.

A name maps to the module that reads it and to the settings a run on it starts from (on top of the released
CHTN model's values, :func:`chtn_tf.model.config.dataset_config`). ``training.fit``, ``training.tune``,
``chtn_tf.backbones.extract`` and ``chtn_tf.data.inspect`` take their ``--dataset`` choices from here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Optional

from chtn_tf.data.checks import resolve_overlaps
from chtn_tf.data.types import CrossModalDataset, DatasetError


@dataclasses.dataclass(frozen=True)
class RegisteredDataset:
    """One registered dataset.

    Attributes:
        reader: the module with its ``load(data_dir, *, seed, val_fraction, **options)``; imported on use, so
            that ``python -m chtn_tf.data.<reader>`` runs a module the package has not imported yet.
        defaults: ``{"section.field": value}`` config settings of a run on this dataset, over the released
            model's values (see :func:`chtn_tf.model.config.dataset_config`).
    """

    reader: str
    defaults: dict = dataclasses.field(default_factory=dict)


# Narrower, regularised layers for the small datasets: on 2 CPU cores the paper's 4096-wide layers train
# ~10x slower and overfit a 2,000-pair training set within a few epochs.
# A text's gallery code (what image->text ranks) mixes in a logistic regression fitted on the training texts, 3 : 1
# (chtn_tf.model.linear): on a few thousand texts or fewer the network's text probabilities are less accurate and
# far more confident than the regression's, which cost image->text its lead over semantic matching
# (benchmarks/RESULTS.md, small collections and "Where the image->text gap comes from").
_TEXT_GALLERY = {"model.text_gallery_linear_weight": 0.75}
_SMALL_DATA = {"model.branch_widths": (1024, 1024), "model.shared_widths": (1024, 1024), "model.dropout": 0.5,
               **_TEXT_GALLERY}
# Three networks 512 wide, their class probabilities averaged (chtn_tf.model.sizing): a Web News run trains in
# 229 s where one 1024-wide network takes 91 s (benchmarks/speed.py, the same 2-core Xeon), and they score higher
# on test and no lower on validation, 3 seeds each (benchmarks/RESULTS.md):
# Web News 0.488 +- 0.005 vs 0.472 +- 0.007, Wikipedia 0.288 +- 0.002 vs 0.269 +- 0.003.
_SMALL_DATA_ENSEMBLE = {**_SMALL_DATA, "model.branch_widths": (512, 512), "model.shared_widths": (512, 512),
                        "model.members": 3}

DATASETS = {
    "wikipedia": RegisteredDataset("chtn_tf.data.wikipedia", {**_SMALL_DATA_ENSEMBLE, "train.epochs": 40}),
    # Chosen by validation MAP (never test) among SGD/Adam, vocabulary 3k/10k, fc9/fc10, 30/60 epochs:
    # Chinese character uni+bi-grams need a larger vocabulary than the paper's 3,000 English words.
    "webnews": RegisteredDataset("chtn_tf.data.webnews", {
        **_SMALL_DATA_ENSEMBLE, "train.epochs": 30, "model.text_vocab_size": 10000, "optimizer.name": "adam",
        "optimizer.learning_rate": 1e-4, "optimizer.weight_decay": 1e-4}),
    "pascal": RegisteredDataset("chtn_tf.data.pascal", {**_SMALL_DATA, "train.epochs": 40}),
    "nuswide10k": RegisteredDataset("chtn_tf.data.nuswide", {
        "model.branch_widths": (2048, 2048), "model.shared_widths": (2048, 2048), "model.dropout": 0.5}),
}


# A user's own collection (--manifest): sized from its training pairs and regularised for a few hundred of them.
# Chosen on the small-collection test bed's validation splits (benchmarks/testbed.py), judged on its test
# splits and the baselines (benchmarks/RESULTS.md, small collections): widths and ensemble members from the
# data (chtn_tf.model.sizing), dropout 0.5, Adam with a cosine schedule that converges within the run, small batches
# (246 pairs at batch 64 are 4 steps an epoch), and the text input L2-normalised instead of batch-normalised
# (batch statistics of 32 sparse rows are noise), and the 5,000 most frequent terms a tf-idf baseline keeps (3,000
# drop much of a short text's rare character bigrams). Five cached views per training image (the image, its mirror,
# three 80% crops; one per pair per epoch) and dropout 0.3 on the image input: more image variety than ~250 photos
# give, measured with Lite2 features and 5 members (benchmarks/RESULTS.md, small collections); none on the text
# input, where dropping 30% of a short text's few terms cost more than it regularised.
NEW_COLLECTION_DEFAULTS = {
    "model.branch_widths": (0, 0), "model.shared_widths": (0, 0), "model.members": 0, "model.dropout": 0.5,
    "model.text_input_norm": "l2", "model.text_vocab_size": 5000, "optimizer.name": "adam",
    "optimizer.learning_rate": 1e-3,
    "optimizer.schedule": "cosine", "train.batch_size": 32, "train.epochs": 100, "train.image_views": 5,
    "model.input_dropout": 0.3, "model.text_input_dropout": 0.0, **_TEXT_GALLERY,
}


def dataset_names() -> list:
    """The registered dataset names."""
    return sorted(DATASETS)


def registered(name: str) -> RegisteredDataset:
    """The registry entry of ``name``.

    Raises:
        DatasetError: no dataset of that name is registered.
    """
    entry = DATASETS.get(name.lower())
    if entry is None:
        raise DatasetError(f"unknown dataset {name!r}; use one of {', '.join(dataset_names())}, "
                           f"or --manifest PATH for your own data")
    return entry


def load_dataset(name: Optional[str] = None, *, manifest: Optional[str] = None, data_dir: Optional[str] = None,
                 seed: int = 0, val_fraction: float = 0.1, allow_leak: bool = False, **options) -> CrossModalDataset:
    """Reads a registered dataset, or a user's CSV manifest, into train / val / test splits.

    Args:
        name: a registered name (:func:`dataset_names`); exactly one of ``name`` / ``manifest``.
        manifest: path of a CSV manifest ``image,text,label[,split]`` (see :mod:`chtn_tf.data.manifest`).
        data_dir: the data folder (``--data-dir``); else ``$CHTN_DATA_DIR``, else the user cache folder.
        seed: seed of every random split (stratified, so class proportions are kept).
        val_fraction: the fraction of train carved out as ``val`` when the dataset has no validation split.
        allow_leak: keep a pair whose image file is also in an earlier split (reported either way; see
            :func:`chtn_tf.data.checks.resolve_overlaps`, which also drops exact duplicate pairs).
        **options: reader settings, e.g. ``protocol="231/462"`` and ``image_side`` (wikipedia),
            ``sentences="each"`` (pascal), ``test_fraction`` (manifest), ``validate_images=False``.

    Returns:
        the dataset; its ``problems`` list every pair dropped (by id) and every oddity resolved.

    Raises:
        DatasetError: the data cannot be used (the message says what, where, and what to do).
    """
    if (name is None) == (manifest is None):
        raise DatasetError("give exactly one of a dataset name (--dataset NAME) or a manifest (--manifest PATH); "
                           f"names: {', '.join(dataset_names())}")
    if manifest is not None:
        from chtn_tf.data import manifest as manifest_reader

        module = manifest_reader.__name__
        reader = functools.partial(manifest_reader.load, manifest)
    else:
        module = registered(name).reader
        reader = functools.partial(importlib.import_module(module).load, data_dir)
    try:
        dataset = reader(seed=seed, val_fraction=val_fraction, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise DatasetError(f"{name or manifest}: {err}; see help({module})") from err
        raise
    return resolve_overlaps(dataset, allow_leak=allow_leak)


def read_dataset(config, *, data_dir: Optional[str] = None) -> CrossModalDataset:
    """The dataset a run's config names, read exactly as ``training.fit`` reads it for that run.

    Args:
        config: an :class:`~chtn_tf.model.config.ExperimentConfig`: its data section (dataset or manifest,
            data folder, validation fraction, ``allow_leak``, reader options) and its seed, which draws the
            random splits. Reading a run's ``config.json`` this way gives that run's splits.
        data_dir: where the data is now, instead of the config's ``data.data_dir``.

    Raises:
        DatasetError: the config names no data, or the data cannot be used.
    """
    data = config.data
    if not data.dataset and not data.manifest:
        raise DatasetError("no data given: pass --dataset NAME, --manifest PATH, or a --config naming one")
    return load_dataset(data.dataset, manifest=data.manifest, data_dir=data_dir or data.data_dir,
                        seed=config.train.seed, val_fraction=data.val_fraction, allow_leak=data.allow_leak,
                        **data.options)
