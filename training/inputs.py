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
from chtn_tf.data import read_dataset, source_domain
from chtn_tf.data.types import CrossModalDataset, Problem, SplitData
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


def prepare_inputs(config: ExperimentConfig, *, progress: bool = True, dataset: Optional[CrossModalDataset] = None,
                   shard: tuple = (0, 1)) -> PreparedInputs:
    """Reads the data (unless ``dataset``, read by :func:`chtn_tf.data.read_dataset`, is given) and computes (or loads cached)
    image features for every split and the source domain.

    ``shard=(I, N)``: this process is worker I of N; it runs 1/N of the backbone passes and the features are
    merged through the shared feature cache (:func:`chtn_tf.backbones.extract.extract_dataset`).
    """
    dataset = read_dataset(config) if dataset is None else dataset
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


def batches_per_epoch(n: int, batch_size: int, *, shuffle: bool) -> int:
    """Batches :func:`target_batches` gives per epoch for ``n`` pairs."""
    if shuffle and n > batch_size:
        return n // batch_size
    return -(-n // batch_size)


def _permutation(n: int, seed) -> tf.Tensor:
    """A permutation of ``0..n-1`` that depends only on ``seed`` (a pair of int64), the same in every process."""
    return tf.argsort(tf.random.stateless_uniform([n], seed=seed))


def target_batches(inputs: PreparedInputs, split: str, *, batch_size: int, seed: int, shuffle: bool,
                   with_source: bool, epochs: tuple = (0, 1)) -> tf.data.Dataset:
    """Batches ``{"target": {...}, "source": {...}}`` for ``CHTNModel``: one source batch per target batch.

    With ``shuffle``, the batches of epochs ``epochs[0]`` to ``epochs[1] - 1`` follow one another (fit it with
    ``steps_per_epoch=batches_per_epoch(...)``), and the order of epoch ``e`` depends only on ``(seed, e)``: a
    run resumed at epoch ``e`` sees exactly the batches an uninterrupted run sees from there.
    """
    data = inputs.dataset.splits[split]
    target = {"image": tf.constant(inputs.features[split], tf.float32),
              "text": tf.constant(list(data.texts), dtype=tf.string),
              "label": tf.constant(data.labels, tf.int32)}
    n = len(data)
    source = None
    if with_source and inputs.source_features is not None:
        source = {"image": tf.constant(inputs.source_features, tf.float32),
                  "label": tf.constant(inputs.source_labels, tf.int32)}
        m = len(inputs.source_features)
    # Drop a ragged last batch while training: a batch of one breaks BatchNorm and the MMD bandwidth.
    drop_remainder = shuffle and n > batch_size

    def gather(values, index):
        return {key: tf.gather(value, index) for key, value in values.items()}

    def one_epoch(epoch):
        epoch = tf.cast(epoch, tf.int64)
        order = _permutation(n, tf.stack([tf.constant(seed, tf.int64), epoch])) if shuffle else tf.range(n)
        pairs = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=drop_remainder)
        pairs = pairs.map(lambda index: gather(target, index))
        if source is None:
            return pairs.map(lambda t: {"target": t})
        # One fresh permutation of the source images per pass, as many passes as the epoch needs.
        source_seed = tf.constant(seed + 1, tf.int64) * 1_000_003 + epoch
        sources = tf.data.Dataset.counter().flat_map(
            lambda k: tf.data.Dataset.from_tensor_slices(_permutation(m, tf.stack([source_seed, k]))))
        sources = sources.batch(batch_size, drop_remainder=True).map(lambda index: gather(source, index))
        return tf.data.Dataset.zip(pairs, sources).map(lambda t, s: {"target": t, "source": s})

    # The batch count is known, but not to tf.data once a source stream is zipped in; Keras needs it.
    batches = batches_per_epoch(n, batch_size, shuffle=shuffle)
    if not shuffle:
        dataset = one_epoch(0).apply(tf.data.experimental.assert_cardinality(batches))
    else:
        dataset = tf.data.Dataset.range(*epochs).flat_map(one_epoch)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches * max(0, epochs[1] - epochs[0])))
    return dataset.prefetch(tf.data.AUTOTUNE)
