"""Backbone features of image files, computed once and cached on disk.

A frozen backbone (or the frozen bottom of one) maps the same image to the same output every epoch and
every run, so outputs are computed once per (backbone, image files, preprocessing, view) and stored in one
``.npz`` per combination. The key covers the backbone's identity (handle and weight files, or the weights
file's content and the split point), each image's path, size and modification time, the preprocessing
(image size, resize method) and the view (see :mod:`chtn_tf.backbones.views`): changing any of them
computes afresh. Several views missing from the cache are computed in one pass that decodes each image
once. Files are written atomically, so an interrupted extraction leaves no half-written cache entry.

Images go through the backbone in fixed batches of the path list (:func:`batch_plan`), whoever runs them:
several processes (the workers of a cluster) can share one extraction, each computing a shard of whole
batches, and the shards are merged through the cache folder, which they must share (``CHTN_CACHE_DIR``);
the merged outputs equal a one-process extraction bit for bit.
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
        computed: how many images this process ran through the backbone (a shard's part; 0 when cached).
    """

    features: np.ndarray
    failed: list
    cache_file: Optional[str] = None
    from_cache: bool = False
    views: Optional[tuple] = None
    cache_files: tuple = ()
    compute_seconds: float = 0.0
    computed_views: tuple = ()
    computed: int = 0


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
                     cache_dir: Optional[str] = None, progress: bool = True, shard: tuple = (0, 1),
                     parts: Optional[list] = None, stall_seconds: float = 600.0) -> FeatureSet:
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
        shard: ``(index, num_shards)``: compute only this shard's batches, wait for the other shards in
            ``cache_dir`` (written by other processes sharing it) and merge them; every shard returns all rows.
        parts: every shard's ``(start, end)`` range of whole batches (default :func:`shard_bounds`; see
            :func:`plan_shards` for sharing several image sets); the same on every shard.
        stall_seconds: give up waiting for a missing shard that has shown no progress for this long.
    Raises:
        TimeoutError: a missing shard made no progress for ``stall_seconds`` (its process died or never ran).
    """
    def make_forward():
        from chtn_tf.backbones.hub_layer import load_module

        module = load_module(spec.handle)
        return lambda images: module(images, training=False)  # already a tf.function

    return extract_cached(image_paths, name=spec.name.replace("/", "_")[:40],
                          backbone={"name": spec.name, **_module_fingerprint(spec.handle)},
                          image_size=spec.image_size, make_forward=make_forward, views=views,
                          batch_size=batch_size, cache_dir=cache_dir, progress=progress, shard=shard, parts=parts,
                          stall_seconds=stall_seconds)


def batch_plan(count: int, batch_size: int) -> list:
    """``[(start, end), ...]``: the fixed batches of ``batch_size`` paths an extraction runs, whoever runs them.

    A batch's forward pass sees exactly the decodable images among its paths, so one process and N shards
    feed the backbone identical tensors and get identical outputs, bit for bit.
    """
    return [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


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


def shard_bounds(count: int, batch_size: int, shard: tuple) -> tuple:
    """The path range ``[start, end)`` shard ``(index, num_shards)`` extracts: a contiguous run of whole batches."""
    return plan_shards({"": count}, batch_size, shard[1])[""][shard[0]]


def parse_shard(text: str) -> tuple:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N; raises ValueError saying what is expected."""
    try:
        index, num_shards = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 0/2 and 1/2 for two workers") from None
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"--shard {text!r}: need 0 <= I < N")
    return index, num_shards


def images_per_batch(batch_size: int, views) -> int:
    """Images per forward pass when each image gives ``len(views)`` inputs (the unit of :func:`batch_plan`)."""
    return max(1, batch_size // len(views or ("orig",)))


def extract_cached(image_paths, *, name: str, backbone: dict, image_size: int, make_forward: Callable,
                   views=None, batch_size: int = 32, cache_dir: Optional[str] = None, progress: bool = True,
                   what: str = "features", shard: tuple = (0, 1), parts: Optional[list] = None,
                   stall_seconds: float = 600.0) -> FeatureSet:
    """Outputs of a frozen image function on ``image_paths``, one cache entry per view.

    The engine behind :func:`extract_features` and :func:`chtn_tf.backbones.split.SplitBackbone.extract`.

    Args:
        image_paths: image files.
        name: prefix of the cache files (say which backbone and part).
        backbone: JSON-able identity of the function: any change of it must change this dict.
        image_size: the side images are resized to.
        make_forward: returns ``forward(images [b, S, S, 3] in [0, 1]) -> [b, ...]``; called only when some
            view is not cached (by a shard: only when its part is not done yet).
        views, batch_size, cache_dir, progress, shard, parts, stall_seconds: as for :func:`extract_features`.
        what: what the outputs are, for the progress bar and the log.
    """
    image_paths = [str(p) for p in image_paths]
    index, num_shards = shard
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"shard must be (index, num_shards) with 0 <= index < num_shards, got {shard}")
    asked = None if views is None else check_views(views)
    views = asked or ("orig",)
    folder = pathlib.Path(cache_dir) if cache_dir else chtn_cache_dir() / "features"
    files = _file_identity(image_paths)
    cache_files = {v: folder / (f"{name}-{_key(backbone, files, image_size, v)}.npz" if v == "orig" else
                                f"{name}-{v}-{_key(backbone, files, image_size, v)}.npz") for v in views}
    arrays, failed = {}, None
    for view, path in cache_files.items():
        if path.is_file():
            arrays[view], failed = _read_entry(path)
    missing = tuple(v for v in views if v not in arrays)
    seconds, computed = 0.0, 0
    if not image_paths:
        index, num_shards = 0, 1  # nothing to share out
    if missing:
        per_batch = images_per_batch(batch_size, missing)
        if parts is None:
            parts = [shard_bounds(len(image_paths), per_batch, (i, num_shards)) for i in range(num_shards)]
        if num_shards == 1:
            parts = [(0, len(image_paths))]
        if len(parts) != num_shards:
            raise ValueError(f"parts must give a range for each of the {num_shards} shards, got {len(parts)}")
        start, end = parts[index]
        stems = {v: cache_files[v].name[:-len(".npz")] for v in missing}
        shard_files = {v: _shard_file(folder, stems[v], index, num_shards) for v in missing}
        folder.mkdir(parents=True, exist_ok=True)
        if num_shards == 1 or (end > start and not all(f.is_file() for f in shard_files.values())):
            heartbeat = _heartbeat_file(folder, stems[missing[0]], index, num_shards) if num_shards > 1 else None
            began = time.perf_counter()
            outputs, part_failed = _compute(
                image_paths, start, end, missing, image_size, make_forward(), per_batch, progress=progress,
                desc=f"{name} {what}" + (f", {len(missing)} views" if len(missing) > 1 else ""), heartbeat=heartbeat)
            seconds = time.perf_counter() - began
            computed = end - start
            good = computed - len(part_failed)
            log.info("%s %s: %d image(s) x %d view(s) (%s) in %.1f s, %.1f images/s per view", name, what, good,
                     len(missing), ", ".join(missing), seconds, good * len(missing) / max(seconds, 1e-9))
            for i, path, why in part_failed:
                log.warning("image skipped: %s (%s)", path, why)
            for view, values in zip(missing, outputs):
                target = cache_files[view] if num_shards == 1 else shard_files[view]
                _write_entry(target, values, part_failed, **({} if num_shards == 1 else {"start": start, "end": end}))
                if num_shards == 1:
                    arrays[view], failed = values, part_failed
        if num_shards > 1:
            owners = [i for i, (a, b) in enumerate(parts) if b > a]
            for view in missing:
                arrays[view], failed = _merge_shards(folder, stems[view], num_shards, owners, len(image_paths),
                                                     stall_seconds, heartbeat_stem=stems[missing[0]])
    features = arrays[views[0]] if asked is None else np.stack([arrays.pop(v) for v in views], axis=1)
    return FeatureSet(features, failed, str(cache_files[views[0]]), not missing, asked,
                      tuple(str(cache_files[v]) for v in views), round(seconds, 3), missing, computed)


def _shard_file(folder, stem, index, num_shards) -> pathlib.Path:
    return folder / f"{stem}.shard-{index}-of-{num_shards}.npz"


def _heartbeat_file(folder, stem, index, num_shards) -> pathlib.Path:
    return folder / f"{stem}.shard-{index}-of-{num_shards}.progress"


def _write_entry(path, values, failed, **extra) -> None:
    with atomic_path(str(path), suffix=".npz") as tmp:
        np.savez(tmp, features=values, failed=json.dumps(failed), **extra)


def _read_entry(path) -> tuple:
    with np.load(path, allow_pickle=False) as saved:
        return saved["features"], [(int(i), p, r) for i, p, r in json.loads(str(saved["failed"]))]


def _merge_shards(folder, stem, num_shards, owners, count, stall_seconds, *, heartbeat_stem) -> tuple:
    """Waits until the entries of shards ``owners`` are in ``folder``, then writes (or reads) the merged entry.

    Returns ``(values, failed)`` of all ``count`` images.
    """
    cache_file = folder / f"{stem}.npz"
    waiting_since = time.monotonic()
    reported = False
    while True:
        if cache_file.is_file():  # another shard merged first
            return _read_entry(cache_file)
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
            values = np.concatenate([v for _, _, v, _ in pieces], axis=0)
            failed = sorted((int(i), p, r) for _, _, _, f in pieces for i, p, r in f)
            _write_entry(cache_file, values, failed)
            for i in owners:
                for leftover in (_shard_file(folder, stem, i, num_shards),
                                 _heartbeat_file(folder, stem, i, num_shards),
                                 _heartbeat_file(folder, heartbeat_stem, i, num_shards)):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
            return values, failed
        now = time.monotonic()
        for i in missing:
            beat = _heartbeat_file(folder, heartbeat_stem, i, num_shards)
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


def _compute(image_paths, start, end, views, image_size, forward, per_batch, *, desc, progress, heartbeat=None):
    """``([array [end - start, ...] per view], failed)``: ``forward`` on every view of the decodable images
    among ``image_paths[start:end]``, batch by batch of :func:`batch_plan` (``failed`` has global indices)."""
    if heartbeat is not None:
        _beat(heartbeat, 0, end - start)

    def run(images):  # [b, views, S, S, 3] -> [b, views, ...]
        out = forward(tf.reshape(images, [-1, image_size, image_size, 3]))
        return np.asarray(out).reshape(-1, len(views), *out.shape[1:])

    def decode(batch):
        a, b = batch
        problems = validate_images(image_paths[a:b])
        bad = [(a + k, image_paths[a + k], why) for k, why in enumerate(problems) if why]
        good = [a + k for k, why in enumerate(problems) if not why]
        if not good:
            return good, bad, None
        paths = tf.data.Dataset.from_tensor_slices(tf.constant([image_paths[i] for i in good], dtype=tf.string))
        ds = paths.map(lambda p: view_images(tf.io.read_file(p), views, image_size),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        try:
            return good, bad, next(iter(ds.batch(len(good))))
        except tf.errors.OpError:
            return good, bad, None  # a file TensorFlow cannot decode although Pillow could: one by one

    plan = [(a, b) for a, b in batch_plan(len(image_paths), per_batch) if start <= a < end]
    bar = _progress_bar(end - start, desc, progress)
    chunks, failed = [], []
    # Decoding the next batch overlaps the current forward pass (TensorFlow releases the GIL).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(decode, plan[0]) if plan else None
        for k, batch in enumerate(plan):
            good, bad, images = pending.result()
            pending = pool.submit(decode, plan[k + 1]) if k + 1 < len(plan) else None
            failed += bad
            if images is not None:
                chunks.append((good, run(images)))
            elif good:
                chunks.append(_one_by_one(good, image_paths, views, image_size, run, failed))
            bar.update(batch[1] - batch[0])
            if heartbeat is not None:
                _beat(heartbeat, batch[1] - start, end - start)
    bar.close()
    failed.sort()
    shape = next((c.shape[2:] for _, c in chunks if len(c)), None)
    if shape is None:  # no image decoded: the output shape from a blank image
        shape = tuple(forward(tf.zeros([1, image_size, image_size, 3])).shape[1:])
    outputs = [np.zeros((end - start, *shape), np.float32) for _ in views]
    for index, values in chunks:
        if len(index):
            for v, out in enumerate(outputs):
                out[np.asarray(index) - start] = values[:, v]
    return outputs, failed


def _beat(path, done, total) -> None:
    """Shows other shards this one is alive (they give up on a shard whose file stops changing)."""
    with atomic_path(str(path)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"done": done, "total": total, "pid": os.getpid()}, f)


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
