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
from chtn_tf.backbones.split import SplitBackbone, split_backbone_of
from chtn_tf.data import read_dataset, source_domain
from chtn_tf.data.image_folder import imagenet_labels
from chtn_tf.data.types import CrossModalDataset, DatasetError, Problem
from chtn_tf.model.chtn import IMAGENET_CLASSES
from chtn_tf.model.config import ExperimentConfig

log = logging.getLogger("chtn")

# Feature extraction on an empty cache that ``--backbone auto`` may plan for, seconds (on this project's 2-core
# machine; see chtn_tf.backbones.registry.pick_lite_backbone): the most accurate EfficientNet-Lite that fits is
# taken. A default Web News run (3,700 images) gets Lite2 and trains in the rest of 15 minutes.
EXTRACTION_BUDGET_S = 300.0


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
            ``{"name": "precomputed"}`` when the dataset ships features; with a trainable backbone top
            (``model.image_top_blocks``) ``{"name", "image_size", "feature_dim", "top_blocks", "map_shape"}``
            and ``features`` are the frozen bottom's feature maps ``[n, h, w, c]``.
        source_imagenet_labels: ``source_labels`` are ImageNet-1k class indices (a split backbone's source
            branch keeps the ImageNet classifier), not indices into ``source_class_names``.
        train_views: float32 ``[n_train, views, ...]``: the features of several views of each training image
            (view 0 is ``features["train"]``; see :func:`add_train_views`), or None (one view).
    """

    dataset: CrossModalDataset
    features: dict
    source_features: Optional[np.ndarray]
    source_labels: Optional[np.ndarray]
    source_class_names: Optional[list]
    backbone: dict
    source_imagenet_labels: bool = False
    train_views: Optional[np.ndarray] = None

    @property
    def num_train_views(self) -> int:
        """Views per training image the model trains on (1 without :attr:`train_views`)."""
        return 1 if self.train_views is None else int(self.train_views.shape[1])

    @property
    def feature_dim(self) -> int:
        """Width of the image features the image branch's dense layers start from."""
        if self.backbone.get("top_blocks"):
            return int(self.backbone["feature_dim"])
        return int(next(iter(self.features.values())).shape[1])

    @property
    def num_source_classes(self) -> int:
        if self.source_imagenet_labels:
            return IMAGENET_CLASSES
        return 0 if self.source_class_names is None else len(self.source_class_names)

    @property
    def split_backbone(self):
        """The :class:`~chtn_tf.backbones.split.SplitBackbone` whose bottom made ``features``, or None."""
        return split_backbone_of(self.backbone)


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
    top_blocks = config.model.image_top_blocks
    if dataset.image_kind == "features":
        if top_blocks:
            raise DatasetError(f"model.image_top_blocks={top_blocks} trains the top of an image backbone, but "
                               f"{dataset.name} has only precomputed image features here; set it to 0")
        features = {name: split.image_features for name, split in dataset.splits.items()}
        backbone = {"name": "precomputed", "feature_dim": int(dataset.image_feature_dim)}
    else:
        from chtn_tf.backbones import resolve_backbone

        if source_spec is not None:
            source = source_domain(source_spec, data_dir=config.data.data_dir)
        views = config.train.image_views
        # Extra views are extracted for the training images only.
        n_images = _image_count(dataset, source) + (views - 1) * len(dataset.splits["train"])
        if top_blocks:
            extractor = SplitBackbone(lite_for_top(config.train.backbone, n_images), top_blocks=top_blocks)
            backbone = {"name": extractor.arch, "image_size": extractor.image_size,
                        "feature_dim": extractor.top_dims["features"], "top_blocks": top_blocks,
                        "map_shape": list(extractor.map_shape)}
        else:
            extractor = resolve_backbone(config.train.backbone, n_images=n_images, budget_seconds=EXTRACTION_BUDGET_S)
            backbone = {"name": extractor.name, "handle": str(extractor.handle),
                        "image_size": int(extractor.image_size), "feature_dim": int(extractor.feature_dim)}
        extracted = extract_dataset(dataset, extractor, source_paths=None if source is None else source.image_paths,
                                    shard=shard, progress=progress)
        if shard[1] > 1:
            log.info("worker %d of %d ran %d of %d images through %s (the rest came from the other workers or the "
                     "cache)", shard[0], shard[1], sum(f.computed for f in extracted.values()),
                     sum(len(f.features) for f in extracted.values()), backbone["name"])
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
        imagenet = imagenet_labels(source) if top_blocks else None
        if imagenet is not None:
            source_labels = imagenet[keep]
        elif top_blocks:
            log.info("the source classes are not ImageNet classes known here (%s); the source branch learns a "
                     "%d-way classifier on the backbone top", ", ".join(source_classes[:3]), len(source_classes))
    inputs = PreparedInputs(dataset, features, source_features, source_labels, source_classes, backbone,
                            source_imagenet_labels=bool(top_blocks) and imagenet is not None)
    return add_train_views(inputs, config.train.image_views, shard=shard, progress=progress,
                           extractor=None if dataset.image_kind == "features" else extractor)


def _extractor_of(backbone: dict):
    """What made a run's image features, from :attr:`PreparedInputs.backbone`: a split backbone or a backbone spec."""
    from chtn_tf.backbones import resolve_backbone

    split = split_backbone_of(backbone)
    # A spec's name is the name it was resolved from (a known name, or the handle as given).
    return split if split is not None else resolve_backbone(backbone["name"])


def add_train_views(inputs: PreparedInputs, views: int, *, shard: tuple = (0, 1), progress: bool = True,
                    cache_dir: Optional[str] = None, extractor=None) -> PreparedInputs:
    """``inputs`` with the features of the first ``views`` views of every training image
    (:data:`~chtn_tf.backbones.views.TRAIN_VIEW_ORDER`) in ``train_views``; view 0 is the image as served
    (``features["train"]``, not computed again). The extra views go through the same backbone and feature cache
    (a cluster's workers share them like the features, see :func:`prepare_inputs`). ``views`` 1: unchanged.
    ``extractor``: the backbone (spec or split backbone) that made ``features``, when the caller has it;
    otherwise it is resolved again from ``inputs.backbone``.

    Raises:
        DatasetError: ``views`` > 1 but the image side is precomputed features (there are no images to view).
    """
    from chtn_tf.backbones.extract import EXTRACTION_BATCH
    from chtn_tf.backbones.feature_cache import extract_features
    from chtn_tf.backbones.views import TRAIN_VIEW_ORDER

    if views <= 1:
        return dataclasses.replace(inputs, train_views=None)
    if inputs.backbone.get("name") == "precomputed":
        raise DatasetError(f"train.image_views={views} needs raw images, but {inputs.dataset.name} has only "
                           f"precomputed image features here; set it to 1 (--image-views 1)")
    train = inputs.dataset.splits["train"]
    names = TRAIN_VIEW_ORDER[1:views]
    extractor = extractor or _extractor_of(inputs.backbone)
    if isinstance(extractor, SplitBackbone):
        extracted = extractor.extract(train.image_paths, views=names, batch_size=EXTRACTION_BATCH, shard=shard,
                                      progress=progress, cache_dir=cache_dir)
    else:
        extracted = extract_features(train.image_paths, extractor, views=names, batch_size=EXTRACTION_BATCH,
                                     shard=shard, progress=progress, cache_dir=cache_dir)
    extra = np.asarray(extracted.features, np.float32)
    served = np.asarray(inputs.features["train"], np.float32)
    for index, path, reason in extracted.failed:
        # The served view of this image decoded (the pair is here), so its other views are the served one.
        log.warning("views of training image %s could not be computed (%s); it trains on the image as served",
                    path, reason)
        extra[index] = served[index][None]
    return dataclasses.replace(inputs, train_views=np.concatenate([served[:, None], extra], axis=1))


def lite_for_top(backbone: str, n_images: int) -> str:
    """The EfficientNet-Lite a trainable backbone top is cut from: ``backbone`` when it names one; for ``auto`` the
    most accurate whose extraction of ``n_images`` fits :data:`EXTRACTION_BUDGET_S`.

    Raises:
        ValueError: another backbone (only the offline EfficientNet-Lite models can be split here).
    """
    from chtn_tf.backbones.registry import LITE_IMAGE_SIZES, pick_lite_backbone

    if backbone == "auto":
        return pick_lite_backbone(n_images, EXTRACTION_BUDGET_S)
    if backbone not in LITE_IMAGE_SIZES:
        raise ValueError(f"model.image_top_blocks > 0 trains the top of an EfficientNet-Lite backbone; --backbone "
                         f"{backbone!r} is not one ({', '.join(['auto', *LITE_IMAGE_SIZES])}), or set "
                         f"model.image_top_blocks to 0")
    return backbone


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


def _image_count(dataset: CrossModalDataset, source) -> int:
    return sum(len(split) for split in dataset.splits.values()) + (0 if source is None else len(source.image_paths))
