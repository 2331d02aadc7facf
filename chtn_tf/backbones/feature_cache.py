"""Backbone features of image files, computed once and cached on disk.

A frozen backbone maps the same image to the same vector every epoch and every run, so features are
computed once per (backbone, image files, preprocessing) and stored in one ``.npz`` per combination. The
key covers the backbone's handle and weight files, each image's path, size and modification time, and
the preprocessing (image size, resize method): changing any of them computes afresh. Files are written
atomically, so an interrupted extraction leaves no half-written cache entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
from typing import Optional

import numpy as np
import tensorflow as tf

from chtn_tf.atomic import atomic_path
from chtn_tf.backbones.registry import BackboneSpec, chtn_cache_dir
from chtn_tf.data.images import validate_images
from chtn_tf.data.pipeline import image_dataset, load_image

log = logging.getLogger("chtn")

# Bump when the decode/resize code changes in a way that changes features.
PREPROCESSING_VERSION = 1


@dataclasses.dataclass
class FeatureSet:
    """Features aligned with the requested image paths.

    Attributes:
        features: float32 ``[n, d]``; rows of failed images are zeros.
        failed: ``(index, path, reason)`` for each image that could not be decoded.
        cache_file: the cache entry used or written.
        from_cache: whether the features came from the cache.
    """

    features: np.ndarray
    failed: list
    cache_file: Optional[str] = None
    from_cache: bool = False


def _module_fingerprint(handle: str) -> dict:
    """Identity of a backbone's weights: sizes and mtimes of its SavedModel files (URL handles: the URL)."""
    folder = pathlib.Path(handle)
    if not folder.is_dir():
        return {"handle": handle}
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {"handle": str(folder.resolve()),
            "files": [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]}


def cache_key(image_paths, spec: BackboneSpec) -> str:
    """The cache key of (backbone, image files, preprocessing)."""
    files = []
    for path in image_paths:
        try:
            stat = os.stat(path)
            files.append((os.path.abspath(path), stat.st_size, stat.st_mtime_ns))
        except OSError:
            files.append((os.path.abspath(path), -1, -1))
    identity = {
        "backbone": {"name": spec.name, **_module_fingerprint(spec.handle)},
        "files": files,
        "preprocessing": {"image_size": spec.image_size, "resize": "bilinear-antialias", "range": [0, 1],
                          "version": PREPROCESSING_VERSION},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def extract_features(image_paths, spec: BackboneSpec, *, batch_size: int = 32, cache_dir: Optional[str] = None,
                     progress: bool = True) -> FeatureSet:
    """Backbone features of ``image_paths`` (from the cache when possible).

    An image that cannot be decoded is reported in ``failed`` with a zero row; it never stops extraction.

    Args:
        image_paths: image files.
        spec: the backbone (see :func:`chtn_tf.backbones.resolve_backbone`).
        batch_size: images per forward pass.
        cache_dir: cache folder (default ``$CHTN_CACHE_DIR/features`` or ``~/.cache/chtn/features``).
        progress: show a progress bar while computing.
    """
    image_paths = [str(p) for p in image_paths]
    folder = pathlib.Path(cache_dir) if cache_dir else chtn_cache_dir() / "features"
    cache_file = folder / f"{spec.name.replace('/', '_')[:40]}-{cache_key(image_paths, spec)}.npz"
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as saved:
            failed = [tuple(x) for x in json.loads(str(saved["failed"]))]
            return FeatureSet(saved["features"], [(int(i), p, r) for i, p, r in failed], str(cache_file), True)

    from chtn_tf.backbones.hub_layer import load_module

    module = load_module(spec.handle)
    forward = lambda images: module(images, training=False)  # noqa: E731 (already a tf.function)
    problems = validate_images(image_paths)
    failed = [(i, p, why) for i, (p, why) in enumerate(zip(image_paths, problems)) if why]
    good = [i for i, why in enumerate(problems) if not why]
    batches = image_dataset([image_paths[i] for i in good], image_size=spec.image_size, batch_size=batch_size)
    bar = _progress_bar(len(good), spec.name, progress)
    chunks, position = [], 0
    iterator = iter(batches)
    while position < len(good):
        index = good[position:position + batch_size]
        try:
            images = next(iterator)
            chunks.append((index, forward(images).numpy()))
        except tf.errors.OpError:
            # One file TensorFlow cannot decode although Pillow could: redo this batch image by image.
            chunks.append(_one_by_one(index, image_paths, spec, forward, failed))
            iterator = iter(image_dataset([image_paths[i] for i in good[position + len(index):]],
                                          image_size=spec.image_size, batch_size=batch_size))
        position += len(index)
        bar.update(len(index))
    bar.close()
    dim = next((c.shape[1] for _, c in chunks if len(c)), 0) or spec.feature_dim or int(
        forward(tf.zeros([1, spec.image_size, spec.image_size, 3])).shape[1])
    features = np.zeros((len(image_paths), dim), np.float32)
    for index, values in chunks:
        if len(index):
            features[np.asarray(index)] = values
    for i, path, why in failed:
        log.warning("image skipped: %s (%s)", path, why)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(str(cache_file), suffix=".npz") as tmp:
        np.savez(tmp, features=features, failed=json.dumps(failed))
    return FeatureSet(features, failed, str(cache_file), False)


def _one_by_one(index, image_paths, spec, forward, failed):
    """``(indices, rows)`` of the images in ``index`` that decode; the others are added to ``failed``."""
    done, rows = [], []
    for i in index:
        try:
            rows.append(forward(load_image(tf.constant(image_paths[i]), spec.image_size)[None]).numpy()[0])
            done.append(i)
        except tf.errors.OpError as err:
            failed.append((i, image_paths[i], f"TensorFlow cannot decode it ({err.message.splitlines()[0]})"))
    return done, np.asarray(rows, np.float32).reshape(len(rows), -1)


def _progress_bar(total: int, name: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{name} features", unit="img", disable=not enabled or total == 0)
