"""Backbone features of image files, computed once and cached on disk.

A frozen backbone maps the same image to the same vector every epoch and every run, so features are
computed once per (backbone, image files, preprocessing) and stored in one ``.npz`` per combination. The
key covers the backbone's handle and weight files, each image's path, size and modification time, and
the preprocessing (image size, resize method): changing any of them computes afresh. Files are written
atomically, so an interrupted extraction leaves no half-written cache entry.

Several processes (the workers of a cluster) can share one extraction: each computes a shard of whole
batches and the shards are merged through the cache folder, which they must share (``CHTN_CACHE_DIR``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import time
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
        computed: how many of the images this process ran through the backbone (a shard's part).
    """

    features: np.ndarray
    failed: list
    cache_file: Optional[str] = None
    from_cache: bool = False
    computed: int = 0


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


def batch_plan(count: int, batch_size: int) -> list:
    """``[(start, end), ...]``: the fixed batches of ``batch_size`` paths an extraction runs, whoever runs them.

    A batch's forward pass sees exactly the decodable images among its paths, so one process and N shards
    feed the backbone identical tensors and get identical features, bit for bit.
    """
    return [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def shard_bounds(count: int, batch_size: int, shard: tuple) -> tuple:
    """The path range ``[start, end)`` shard ``(index, num_shards)`` extracts: a contiguous run of whole batches."""
    return plan_shards({"": count}, batch_size, shard[1])[""][shard[0]]


def plan_shards(set_sizes: dict, batch_size: int, num_shards: int) -> dict:
    """``{set: [(start, end) per shard]}``: the batches of several image sets dealt out as N contiguous runs.

    The batches of all sets, in order, are split into ``num_shards`` runs of (nearly) equal length, so the
    shards share the work evenly even when a set has a single batch. Within a set a shard's range is
    contiguous and may be empty.
    """
    batches = [(name, a, b) for name, size in set_sizes.items() for a, b in batch_plan(size, batch_size)]
    plan = {name: [] for name in set_sizes}
    for index in range(num_shards):
        mine = batches[index * len(batches) // num_shards:(index + 1) * len(batches) // num_shards]
        for name in set_sizes:
            spans = [(a, b) for n, a, b in mine if n == name]
            plan[name].append((spans[0][0], spans[-1][1]) if spans else (0, 0))
    return plan


def parse_shard(text: str) -> tuple:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N; raises ValueError saying what is expected."""
    try:
        index, num_shards = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 0/2 and 1/2 for two workers") from None
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"--shard {text!r}: need 0 <= I < N")
    return index, num_shards


def extract_features(image_paths, spec: BackboneSpec, *, batch_size: int = 32, cache_dir: Optional[str] = None,
                     progress: bool = True, shard: tuple = (0, 1), parts: Optional[list] = None,
                     stall_seconds: float = 600.0) -> FeatureSet:
    """Backbone features of ``image_paths`` (from the cache when possible).

    An image that cannot be decoded is reported in ``failed`` with a zero row; it never stops extraction.

    With ``shard=(I, N)`` this process computes only its 1/N of the batches (:func:`shard_bounds`), writes
    them as a shard entry in the cache folder, waits for the other N-1 shards there (written by other
    processes or machines sharing ``cache_dir``), and merges them into the ordinary cache entry; every shard
    returns the full features, equal bit for bit to a one-process extraction.

    Args:
        image_paths: image files.
        spec: the backbone (see :func:`chtn_tf.backbones.resolve_backbone`).
        batch_size: images per forward pass (part of the result's identity: keep it equal on every shard).
        cache_dir: cache folder (default ``$CHTN_CACHE_DIR/features`` or ``~/.cache/chtn/features``).
        progress: show a progress bar while computing.
        shard: ``(index, num_shards)``.
        parts: every shard's ``(start, end)`` range of whole batches (default :func:`shard_bounds`; see
            :func:`plan_shards` for sharing several sets); the same on every shard.
        stall_seconds: give up waiting for another shard that has shown no progress for this long.
    Raises:
        TimeoutError: a missing shard made no progress for ``stall_seconds`` (its process died or never ran).
    """
    image_paths = [str(p) for p in image_paths]
    index, num_shards = shard
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"shard must be (index, num_shards) with 0 <= index < num_shards, got {shard}")
    folder = pathlib.Path(cache_dir) if cache_dir else chtn_cache_dir() / "features"
    stem = f"{spec.name.replace('/', '_')[:40]}-{cache_key(image_paths, spec)}"
    cache_file = folder / f"{stem}.npz"
    if cache_file.is_file():
        return _read_entry(cache_file, from_cache=True)
    folder.mkdir(parents=True, exist_ok=True)
    if num_shards == 1:
        features, failed = _compute(image_paths, 0, len(image_paths), spec, batch_size, progress)
        _write_entry(cache_file, features, failed)
        return FeatureSet(features, failed, str(cache_file), False, computed=len(image_paths))

    parts = parts or [shard_bounds(len(image_paths), batch_size, (i, num_shards)) for i in range(num_shards)]
    if len(parts) != num_shards:
        raise ValueError(f"parts must give a range for each of the {num_shards} shards, got {len(parts)}")
    start, end = parts[index]
    part = _shard_file(folder, stem, index, num_shards)
    computed = 0
    if end > start and not part.is_file():
        heartbeat = _heartbeat_file(folder, stem, index, num_shards)
        features, failed = _compute(image_paths, start, end, spec, batch_size, progress, heartbeat=heartbeat)
        _write_entry(part, features, failed, start=start, end=end)
        computed = end - start
    owners = [i for i, (a, b) in enumerate(parts) if b > a]
    result = _merge_shards(folder, stem, num_shards, owners, len(image_paths), stall_seconds)
    result.computed = computed
    return result


def _shard_file(folder, stem, index, num_shards) -> pathlib.Path:
    return folder / f"{stem}.shard-{index}-of-{num_shards}.npz"


def _heartbeat_file(folder, stem, index, num_shards) -> pathlib.Path:
    return folder / f"{stem}.shard-{index}-of-{num_shards}.progress"


def _write_entry(path, features, failed, **extra) -> None:
    with atomic_path(str(path), suffix=".npz") as tmp:
        np.savez(tmp, features=features, failed=json.dumps(failed), **extra)


def _read_entry(path, *, from_cache: bool) -> FeatureSet:
    with np.load(path, allow_pickle=False) as saved:
        failed = [(int(i), p, r) for i, p, r in json.loads(str(saved["failed"]))]
        return FeatureSet(saved["features"], failed, str(path), from_cache)


def _merge_shards(folder, stem, num_shards, owners, count, stall_seconds) -> FeatureSet:
    """Waits until the entries of shards ``owners`` are in ``folder``, then writes (or reads) the merged entry."""
    cache_file = folder / f"{stem}.npz"
    waiting_since = time.monotonic()
    reported = False
    while True:
        if cache_file.is_file():  # another shard merged first
            return _read_entry(cache_file, from_cache=False)
        parts = [_shard_file(folder, stem, i, num_shards) for i in owners]
        missing = [i for i, p in zip(owners, parts) if not p.is_file()]
        if not missing:
            try:
                pieces = []
                for p in parts:
                    with np.load(p, allow_pickle=False) as saved:
                        pieces.append((int(saved["start"]), int(saved["end"]), saved["features"],
                                       json.loads(str(saved["failed"]))))
            except FileNotFoundError:  # merged and cleaned up by another shard meanwhile
                continue
            bounds = [(start, end) for start, end, _, _ in pieces]
            if not bounds or bounds[0][0] != 0 or bounds[-1][1] != count or any(
                    a[1] != b[0] for a, b in zip(bounds, bounds[1:])):
                raise ValueError(f"feature shards of {stem} in {folder} do not tile the {count} images ({bounds}): "
                                 f"were they extracted with different batch sizes? Delete them and extract again")
            dim = max((f.shape[1] for _, _, f, _ in pieces if f.ndim == 2 and f.shape[0]), default=0)
            features = np.zeros((count, dim), np.float32)
            failed = []
            for start, end, values, part_failed in pieces:
                if end > start:
                    features[start:end] = values
                failed += [(int(i), p, r) for i, p, r in part_failed]
            failed.sort()
            _write_entry(cache_file, features, failed)
            for i in owners:
                for leftover in (_shard_file(folder, stem, i, num_shards),
                                 _heartbeat_file(folder, stem, i, num_shards)):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
            return FeatureSet(features, failed, str(cache_file), False)
        now = time.monotonic()
        for i in missing:
            beat = _heartbeat_file(folder, stem, i, num_shards)
            try:
                idle = time.time() - beat.stat().st_mtime
            except FileNotFoundError:
                idle = now - waiting_since
            if idle > stall_seconds:
                raise TimeoutError(
                    f"feature shard {i + 1} of {num_shards} ({stem}) is missing from {folder} and has shown no "
                    f"progress for {idle:.0f} s: is worker {i} running with the same data, backbone and "
                    f"CHTN_CACHE_DIR (a folder shared by all workers)? Re-run it; finished shards are kept.")
        if not reported:
            log.info("waiting for feature shard(s) %s of %d in %s", ", ".join(str(i + 1) for i in missing),
                     num_shards, folder)
            reported = True
        time.sleep(1.0)


def _compute(image_paths, start, end, spec, batch_size, progress, heartbeat=None) -> tuple:
    """Features of ``image_paths[start:end]`` (rows ``end - start``) and the failed ``(index, path, reason)``."""
    if heartbeat is not None:
        _beat(heartbeat, 0, end - start)
    from chtn_tf.backbones.hub_layer import load_module

    module = load_module(spec.handle)
    forward = lambda images: module(images, training=False)  # noqa: E731 (already a tf.function)
    plan = [(a, b) for a, b in batch_plan(len(image_paths), batch_size) if start <= a < end]
    bar = _progress_bar(end - start, spec.name, progress)
    chunks, failed = [], []

    def decode(batch):
        a, b = batch
        problems = validate_images(image_paths[a:b])
        bad = [(a + k, image_paths[a + k], why) for k, why in enumerate(problems) if why]
        good = [a + k for k, why in enumerate(problems) if not why]
        if not good:
            return good, bad, None
        try:
            images = next(iter(image_dataset([image_paths[i] for i in good], image_size=spec.image_size,
                                             batch_size=len(good))))
        except tf.errors.OpError:
            images = None  # a file TensorFlow cannot decode although Pillow could: done image by image
        return good, bad, images

    # Decoding the next batch overlaps the current forward pass (TensorFlow releases the GIL).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(decode, plan[0]) if plan else None
        for k, batch in enumerate(plan):
            good, bad, images = pending.result()
            pending = pool.submit(decode, plan[k + 1]) if k + 1 < len(plan) else None
            failed += bad
            if images is not None:
                chunks.append((good, forward(images).numpy()))
            elif good:
                chunks.append(_one_by_one(good, image_paths, spec, forward, failed))
            bar.update(batch[1] - batch[0])
            if heartbeat is not None:
                _beat(heartbeat, batch[1] - start, end - start)
    bar.close()
    dim = next((c.shape[1] for _, c in chunks if len(c)), 0) or spec.feature_dim or int(
        forward(tf.zeros([1, spec.image_size, spec.image_size, 3])).shape[1])
    features = np.zeros((end - start, dim), np.float32)
    for index, values in chunks:
        if len(index):
            features[np.asarray(index) - start] = values
    failed.sort()
    for i, path, why in failed:
        log.warning("image skipped: %s (%s)", path, why)
    return features, failed


def _beat(path, done, total) -> None:
    """Shows other shards this one is alive (they give up on a shard whose file stops changing)."""
    with atomic_path(str(path)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"done": done, "total": total, "pid": os.getpid()}, f)


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
