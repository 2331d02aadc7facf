"""Backbone features of image files, computed once and cached on disk.

A frozen backbone (or the frozen bottom of one) maps the same image to the same output every epoch and
every run, so outputs are computed once per (backbone, image files, preprocessing, view) and stored in one
``.npz`` per combination. The key covers the backbone's identity (handle and weight files, or the weights
file's content and the split point), each image's path, size and modification time, the preprocessing
(image size, resize method) and the view (see :mod:`chtn_tf.backbones.views`): changing any of them
computes afresh. Several views missing from the cache are computed in one pass that decodes each image
once. Files are written atomically, so an interrupted extraction leaves no half-written cache entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from chtn_tf.atomic import atomic_path
from chtn_tf.backbones.registry import BackboneSpec, chtn_cache_dir
from chtn_tf.backbones.views import CROP_SIDE, check_views, view_images
from chtn_tf.data.images import validate_images

log = logging.getLogger("chtn")

# Bump when the decode/resize code changes in a way that changes features.
PREPROCESSING_VERSION = 1


@dataclasses.dataclass
class FeatureSet:
    """Backbone outputs aligned with the requested image paths.

    Attributes:
        features: float32 ``[n, ...]`` (one row per image: ``[n, d]`` feature vectors or ``[n, h, w, c]``
            feature maps) when no views were asked for, else ``[n, n_views, ...]`` in the order of ``views``.
            Rows of failed images are zeros.
        failed: ``(index, path, reason)`` for each image that could not be decoded.
        cache_file: the cache entry of the first view.
        from_cache: whether every view came from the cache.
        views: the views asked for, or None.
        cache_files: the cache entry of each view.
        compute_seconds: wall-clock seconds spent computing the views that were not cached (0.0 when none).
        computed_views: the views that were computed (the others came from the cache).
    """

    features: np.ndarray
    failed: list
    cache_file: Optional[str] = None
    from_cache: bool = False
    views: Optional[tuple] = None
    cache_files: tuple = ()
    compute_seconds: float = 0.0
    computed_views: tuple = ()


def _module_fingerprint(handle: str) -> dict:
    """Identity of a backbone's weights: sizes and mtimes of its SavedModel files (URL handles: the URL)."""
    folder = pathlib.Path(handle)
    if not folder.is_dir():
        return {"handle": handle}
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {"handle": str(folder.resolve()),
            "files": [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]}


def _file_identity(image_paths) -> list:
    files = []
    for path in image_paths:
        try:
            stat = os.stat(path)
            files.append((os.path.abspath(path), stat.st_size, stat.st_mtime_ns))
        except OSError:
            files.append((os.path.abspath(path), -1, -1))
    return files


def _key(backbone: dict, files: list, image_size: int, view: str) -> str:
    preprocessing = {"image_size": image_size, "resize": "bilinear-antialias", "range": [0, 1],
                     "version": PREPROCESSING_VERSION}
    if view != "orig":  # the whole image keeps the key it had before views existed
        preprocessing.update(view=view, crop_side=CROP_SIDE)
    identity = {"backbone": backbone, "files": files, "preprocessing": preprocessing}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def cache_key(image_paths, spec: BackboneSpec, view: str = "orig") -> str:
    """The cache key of (backbone, image files, preprocessing, view)."""
    return _key({"name": spec.name, **_module_fingerprint(spec.handle)}, _file_identity(image_paths),
                spec.image_size, view)


def extract_features(image_paths, spec: BackboneSpec, *, views=None, batch_size: int = 32,
                     cache_dir: Optional[str] = None, progress: bool = True) -> FeatureSet:
    """Pooled backbone features of ``image_paths`` (from the cache when possible).

    An image that cannot be decoded is reported in ``failed`` with a zero row; it never stops extraction.

    Args:
        image_paths: image files.
        spec: the backbone (see :func:`chtn_tf.backbones.resolve_backbone`).
        views: None for the whole images (``features`` ``[n, d]``), or names out of
            :data:`chtn_tf.backbones.views.VIEWS` (``features`` ``[n, len(views), d]``).
        batch_size: images (views) per forward pass.
        cache_dir: cache folder (default ``$CHTN_CACHE_DIR/features`` or ``~/.cache/chtn/features``).
        progress: show a progress bar while computing.
    """
    def make_forward():
        from chtn_tf.backbones.hub_layer import load_module

        module = load_module(spec.handle)
        return lambda images: module(images, training=False)  # already a tf.function

    return extract_cached(image_paths, name=spec.name.replace("/", "_")[:40],
                          backbone={"name": spec.name, **_module_fingerprint(spec.handle)},
                          image_size=spec.image_size, make_forward=make_forward, views=views,
                          batch_size=batch_size, cache_dir=cache_dir, progress=progress)


def extract_cached(image_paths, *, name: str, backbone: dict, image_size: int, make_forward: Callable,
                   views=None, batch_size: int = 32, cache_dir: Optional[str] = None, progress: bool = True,
                   what: str = "features") -> FeatureSet:
    """Outputs of a frozen image function on ``image_paths``, one cache entry per view.

    The engine behind :func:`extract_features` and :func:`chtn_tf.backbones.split.SplitBackbone.extract`.

    Args:
        image_paths: image files.
        name: prefix of the cache files (say which backbone and part).
        backbone: JSON-able identity of the function: any change of it must change this dict.
        image_size: the side images are resized to.
        make_forward: returns ``forward(images [b, S, S, 3] in [0, 1]) -> [b, ...]``; called only when some
            view is not cached.
        views, batch_size, cache_dir, progress: as for :func:`extract_features`.
        what: what the outputs are, for the progress bar and the log.
    """
    image_paths = [str(p) for p in image_paths]
    asked = None if views is None else check_views(views)
    views = asked or ("orig",)
    folder = pathlib.Path(cache_dir) if cache_dir else chtn_cache_dir() / "features"
    files = _file_identity(image_paths)
    cache_files = {v: folder / (f"{name}-{_key(backbone, files, image_size, v)}.npz" if v == "orig" else
                                f"{name}-{v}-{_key(backbone, files, image_size, v)}.npz") for v in views}
    arrays, failed = {}, None
    for view, path in cache_files.items():
        if path.is_file():
            with np.load(path, allow_pickle=False) as saved:
                arrays[view] = saved["features"]
                failed = [(int(i), p, r) for i, p, r in json.loads(str(saved["failed"]))]
    missing = tuple(v for v in views if v not in arrays)
    seconds = 0.0
    if missing:
        start = time.perf_counter()
        computed, failed = _compute(image_paths, missing, image_size, make_forward(), batch_size,
                                    desc=f"{name} {what}" + (f", {len(missing)} views" if len(missing) > 1 else ""),
                                    progress=progress)
        seconds = time.perf_counter() - start
        good = len(image_paths) - len(failed)
        log.info("%s %s: %d image(s) x %d view(s) (%s) in %.1f s, %.1f images/s per view", name, what, good,
                 len(missing), ", ".join(missing), seconds, good * len(missing) / max(seconds, 1e-9))
        for i, path, why in failed:
            log.warning("image skipped: %s (%s)", path, why)
        folder.mkdir(parents=True, exist_ok=True)
        for view, values in zip(missing, computed):
            with atomic_path(str(cache_files[view]), suffix=".npz") as tmp:
                np.savez(tmp, features=values, failed=json.dumps(failed))
            arrays[view] = values
    features = arrays[views[0]] if asked is None else np.stack([arrays.pop(v) for v in views], axis=1)
    return FeatureSet(features, failed, str(cache_files[views[0]]), not missing, asked,
                      tuple(str(cache_files[v]) for v in views), round(seconds, 3), missing)


def _compute(image_paths, views, image_size, forward, batch_size, *, desc, progress):
    """``([array [n, ...] per view], failed)``: ``forward`` on every view of every decodable image."""
    problems = validate_images(image_paths)
    failed = [(i, p, why) for i, (p, why) in enumerate(zip(image_paths, problems)) if why]
    good = [i for i, why in enumerate(problems) if not why]
    per_batch = max(1, batch_size // len(views))

    def batches(paths):
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths, dtype=tf.string))
        ds = ds.map(lambda p: view_images(tf.io.read_file(p), views, image_size), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
        return iter(ds.batch(per_batch).prefetch(tf.data.AUTOTUNE))

    def run(images):  # [b, views, S, S, 3] -> [b, views, ...]
        out = forward(tf.reshape(images, [-1, image_size, image_size, 3]))
        return np.asarray(out).reshape(-1, len(views), *out.shape[1:])

    bar = _progress_bar(len(good), desc, progress)
    chunks, position = [], 0
    iterator = batches([image_paths[i] for i in good])
    while position < len(good):
        index = good[position:position + per_batch]
        try:
            chunks.append((index, run(next(iterator))))
        except tf.errors.OpError:
            # One file TensorFlow cannot decode although Pillow could: redo this batch image by image.
            chunks.append(_one_by_one(index, image_paths, views, image_size, run, failed))
            iterator = batches([image_paths[i] for i in good[position + len(index):]])
        position += len(index)
        bar.update(len(index))
    bar.close()
    failed.sort()
    shape = next((c.shape[2:] for _, c in chunks if len(c)), None)
    if shape is None:  # no image decoded: the output shape from a blank image
        shape = tuple(forward(tf.zeros([1, image_size, image_size, 3])).shape[1:])
    outputs = [np.zeros((len(image_paths), *shape), np.float32) for _ in views]
    for index, values in chunks:
        if len(index):
            for v, out in enumerate(outputs):
                out[np.asarray(index)] = values[:, v]
    return outputs, failed


def _one_by_one(index, image_paths, views, image_size, run, failed):
    """``(indices, rows)`` of the images in ``index`` that decode; the others are added to ``failed``."""
    done, rows = [], []
    for i in index:
        try:
            rows.append(run(view_images(tf.io.read_file(image_paths[i]), views, image_size)[None])[0])
            done.append(i)
        except tf.errors.OpError as err:
            failed.append((i, image_paths[i], f"TensorFlow cannot decode it ({err.message.splitlines()[0]})"))
    return done, np.asarray(rows, np.float32)


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or total == 0)
