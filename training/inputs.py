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

from chtn_tf.backbones.extract import extract_dataset, resolve_source
from chtn_tf.data import read_dataset, source_domain
from chtn_tf.data.types import CrossModalDataset, Problem
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
    """Reads the data (unless ``dataset``, read by :func:`chtn_tf.data.read_dataset`, is given) and computes (or
    loads cached) image features for every split and the source domain.

    ``shard=(I, N)``: this process is worker I of N; it runs 1/N of the backbone passes and the features are
    merged through the shared feature cache (:func:`chtn_tf.backbones.extract.extract_dataset`).

    Returns:
        the inputs; their ``dataset`` is a new one without the pairs whose image could not be decoded (each
        recorded in its ``problems``). The ``dataset`` given is left as it was.
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
        dataset, features = _without_failed_images(dataset, extracted)

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


def _without_failed_images(dataset: CrossModalDataset, extracted: dict) -> tuple:
    """``(dataset, {split: features})`` without the pairs whose image failed to decode, each one a new problem."""
    splits, features, problems = {}, {}, list(dataset.problems)
    for name, split in dataset.splits.items():
        keep = np.ones(len(split), bool)
        for index, path, reason in extracted[name].failed:
            keep[index] = False
            problems.append(Problem(kind="undecodable_image", where=str(path), pair_id=split.ids[index], split=name,
                                    message=f"image could not be decoded ({reason}); pair skipped"))
            log.warning("pair %s skipped: image %s could not be decoded (%s)", split.ids[index], path, reason)
        if keep.all():
            splits[name], features[name] = split, extracted[name].features
        else:
            index = np.flatnonzero(keep)
            splits[name], features[name] = split.subset(index), extracted[name].features[index]
    return dataclasses.replace(dataset, splits=splits, problems=problems), features
