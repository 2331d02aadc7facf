"""Turns a config's data section into model-ready arrays: image features per split, texts, labels, source.

Raw images go through the (frozen) backbone once; the features are cached by
:func:`chtn_tf.backbones.extract_features`, so a second run, or a tuning trial, starts in seconds. The workers
of a cluster each compute 1/N of them and share the rest through the cache.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np
import tensorflow as tf

from chtn_tf.backbones.extract import extract_dataset, resolve_source
from chtn_tf.data import load_dataset, source_domain
from chtn_tf.data.types import CrossModalDataset, DatasetError, Problem, SplitData
from chtn_tf.model.config import ExperimentConfig

log = logging.getLogger("chtn")


@dataclasses.dataclass
class PreparedInputs:
    """Everything the model needs, as arrays.

    Attributes:
        dataset: the dataset as read (class names, problems, ...), with pairs whose image failed dropped.
        features: ``{split: float32 [n, d]}`` image features aligned with ``dataset.splits[split]``.
        source_features: float32 ``[m, d]`` source-domain image features, or None (no source transfer).
        source_labels: int32 ``[m]`` or None.
        source_class_names: list or None.
        backbone: the backbone's description (``{"name", "handle", "image_size", "feature_dim"}``), or
            ``{"name": "precomputed"}`` when the dataset ships features.
    """

    dataset: CrossModalDataset
    features: dict
    source_features: Optional[np.ndarray]
    source_labels: Optional[np.ndarray]
    source_class_names: Optional[list]
    backbone: dict

    @property
    def feature_dim(self) -> int:
        return int(next(iter(self.features.values())).shape[1])

    @property
    def num_source_classes(self) -> int:
        return 0 if self.source_class_names is None else len(self.source_class_names)


def read_dataset(config: ExperimentConfig) -> CrossModalDataset:
    """The dataset named by ``config.data`` (a registered name or a manifest)."""
    data = config.data
    if not data.dataset and not data.manifest:
        raise DatasetError("no data given: pass --dataset NAME or --manifest PATH")
    return load_dataset(data.dataset, manifest=data.manifest, data_dir=data.data_dir, seed=config.train.seed,
                        val_fraction=data.val_fraction, **data.options)


def prepare_inputs(config: ExperimentConfig, *, progress: bool = True, shard: tuple = (0, 1)) -> PreparedInputs:
    """Reads the data and computes (or loads cached) image features for every split and the source domain.

    ``shard=(I, N)``: this process is worker I of N; it runs 1/N of the backbone passes and the features are
    merged through the shared feature cache (:func:`chtn_tf.backbones.extract.extract_dataset`).
    """
    dataset = read_dataset(config)
    source_spec = resolve_source(config.data.source, dataset, source_transfer=config.loss.source_transfer)

    source = None
    if dataset.image_kind == "features":
        features = {name: split.image_features for name, split in dataset.splits.items()}
        backbone = {"name": "precomputed", "feature_dim": int(dataset.image_feature_dim)}
    else:
        from chtn_tf.backbones import resolve_backbone

        spec = resolve_backbone(config.train.backbone)
        backbone = {"name": spec.name, "handle": str(spec.handle), "image_size": int(spec.image_size),
                    "feature_dim": int(spec.feature_dim)}
        if source_spec is not None:
            source = source_domain(source_spec, data_dir=config.data.data_dir)
        extracted = extract_dataset(dataset, spec, source_paths=None if source is None else source.image_paths,
                                    shard=shard, progress=progress)
        if shard[1] > 1:
            log.info("worker %d of %d ran %d of %d images through %s (the rest came from the other workers or the "
                     "cache)", shard[0], shard[1], sum(f.computed for f in extracted.values()),
                     sum(len(f.features) for f in extracted.values()), spec.name)
        features = {}
        for name, split in list(dataset.splits.items()):
            features[name], dataset.splits[name] = _drop_failed(dataset, name, split, extracted[name])

    source_features = source_labels = source_classes = None
    if source is not None:
        keep = np.ones(len(source.image_paths), bool)
        for index, path, reason in extracted["source"].failed:
            keep[index] = False
            log.warning("source image skipped: %s (%s)", path, reason)
        source_features = extracted["source"].features[keep]
        source_labels = np.asarray(source.labels, np.int32)[keep]
        source_classes = list(source.class_names)
    return PreparedInputs(dataset, features, source_features, source_labels, source_classes, backbone)


def _drop_failed(dataset: CrossModalDataset, split_name: str, split: SplitData, extracted):
    if not extracted.failed:
        return extracted.features, split
    keep = np.ones(len(split), bool)
    for index, path, reason in extracted.failed:
        keep[index] = False
        dataset.problems.append(Problem(kind="undecodable_image", where=str(path), pair_id=split.ids[index],
                                        split=split_name, message=f"image could not be decoded ({reason}); pair skipped"))
        log.warning("pair %s skipped: image %s could not be decoded (%s)", split.ids[index], path, reason)
    index = np.flatnonzero(keep)
    return extracted.features[index], split.subset(index)


def batches_per_epoch(inputs: PreparedInputs, split: str, batch_size: int) -> int:
    """Training steps per epoch: full batches only (one partial batch when the split is smaller than a batch)."""
    n = len(inputs.dataset.splits[split])
    return n // batch_size if n > batch_size else 1


def _epoch_seed(seed: int, epoch, draw=0):
    # A stateless shuffle takes a [2] seed: (run seed, epoch and draw number).
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64) * 1_000_003 + tf.cast(draw, tf.int64)])


def target_batches(inputs: PreparedInputs, split: str, *, batch_size: int, seed: int, shuffle: bool,
                   with_source: bool, first_epoch: int = 0) -> tf.data.Dataset:
    """Batches ``{"target": {...}, "source": {...}}`` for ``CHTNModel``: one source batch per target batch.

    ``shuffle=True`` (training): an endless stream, epoch after epoch from ``first_epoch``; train with
    ``steps_per_epoch=batches_per_epoch(...)``. Epoch ``e`` visits the pairs in a stateless permutation of
    ``(seed, e)``, and its source batches in permutations of ``(seed + 1, e)``: the same order in every
    process, on every worker of a cluster, and after a resume. Only full batches (a batch of one breaks
    BatchNorm and the MMD bandwidth), unless the split is smaller than one batch.
    ``shuffle=False`` (evaluation): one pass in order, the last batch partial.
    """
    data = inputs.dataset.splits[split]
    n = len(data)
    rows = {"image": tf.constant(inputs.features[split].astype(np.float32)),
            "text": tf.constant(list(data.texts), dtype=tf.string),
            "label": tf.constant(data.labels.astype(np.int32))}
    source = None
    if with_source and inputs.source_features is not None:
        source = {"image": tf.constant(inputs.source_features.astype(np.float32)),
                  "label": tf.constant(inputs.source_labels.astype(np.int32))}

    def gather(table, index):
        return {key: tf.gather(value, index) for key, value in table.items()}

    def source_batches(epoch):
        m = int(source["label"].shape[0])
        order = tf.data.Dataset.counter().flat_map(lambda draw: tf.data.Dataset.from_tensor_slices(
            tf.random.experimental.stateless_shuffle(tf.range(m, dtype=tf.int64), seed=_epoch_seed(seed + 1, epoch, draw))))
        return order.batch(batch_size, drop_remainder=True).map(lambda index: gather(source, index))

    def one_pass(order, epoch, drop_remainder):
        target = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=drop_remainder)
        target = target.map(lambda index: gather(rows, index))
        if source is None:
            return target.map(lambda t: {"target": t})
        return tf.data.Dataset.zip(target, source_batches(epoch)).map(lambda t, s: {"target": t, "source": s})

    if shuffle:
        batches = tf.data.Dataset.counter(first_epoch).flat_map(lambda epoch: one_pass(
            tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=_epoch_seed(seed, epoch)),
            epoch, drop_remainder=n > batch_size))
    else:
        batches = one_pass(tf.range(n, dtype=tf.int64), tf.constant(-1, tf.int64), drop_remainder=False)
    return batches.prefetch(tf.data.AUTOTUNE)
