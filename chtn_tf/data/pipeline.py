"""tf.data input pipelines: images decoded and resized in the graph, texts kept as raw ``tf.string``.

Order is deterministic: maps run in parallel with ``deterministic=True``, and shuffling uses a fixed seed
(each epoch reshuffles, the sequence of epochs is the same for the same seed).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from chtn_tf.data.types import SplitData

AUTOTUNE = tf.data.AUTOTUNE


def _size(image_size: Union[int, Sequence[int]]) -> tuple:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    height, width = image_size
    return int(height), int(width)


def decode_image(image_bytes: tf.Tensor, image_size: Union[int, Sequence[int]] = 224) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF/BMP bytes to float32 ``[H, W, 3]`` in ``[0, 1]``, resized (bilinear) to ``image_size``.

    Grey and RGBA images become 3-channel RGB; an animated GIF gives its first frame.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return resize_image(image, image_size)


def resize_image(image: tf.Tensor, image_size: Union[int, Sequence[int]] = 224) -> tf.Tensor:
    """A decoded uint8 ``[H, W, 3]`` image as float32 in ``[0, 1]``, resized (bilinear, antialiased)."""
    height, width = _size(image_size)
    image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, [height, width], method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 1.0)


def load_image(path: tf.Tensor, image_size: Union[int, Sequence[int]] = 224) -> tf.Tensor:
    """Reads and decodes one image file (see :func:`decode_image`)."""
    return decode_image(tf.io.read_file(path), image_size)


def image_dataset(paths: Sequence[str], *, image_size: Union[int, Sequence[int]] = 224, batch_size: int = 32,
                  labels: Optional[Sequence[int]] = None, skip_errors: bool = False) -> tf.data.Dataset:
    """Batches of decoded images, in the order of ``paths``: ``images`` or ``(images, labels)``.

    Args:
        paths: image file paths.
        image_size: output side (int) or ``(height, width)``.
        batch_size: images per batch (the last batch may be smaller).
        labels: int labels aligned with ``paths``, or None.
        skip_errors: drop a file that fails to decode instead of failing; positions then shift, so leave it
            off when the output must stay aligned with ``paths`` (the readers already drop undecodable images).
    """
    paths = tf.constant([str(p) for p in paths], dtype=tf.string)
    if labels is None:
        ds = tf.data.Dataset.from_tensor_slices(paths)
        ds = ds.map(lambda p: load_image(p, image_size), num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int32)))
        ds = ds.map(lambda p, y: (load_image(p, image_size), y), num_parallel_calls=AUTOTUNE, deterministic=True)
    if skip_errors:
        ds = ds.ignore_errors(log_warning=True)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def pair_dataset(split: SplitData, *, image_size: Union[int, Sequence[int]] = 224, batch_size: int = 32,
                 shuffle: bool = False, seed: int = 0, drop_remainder: bool = False,
                 skip_errors: bool = True) -> tf.data.Dataset:
    """Batches of ``{"image", "text", "label", "id"}`` from one split.

    ``image`` is the decoded image (float32 ``[B, H, W, 3]``) when the split has image files, or the feature
    vector (float32 ``[B, d]``) when it has precomputed features; ``text`` and ``id`` are raw ``tf.string``.

    Args:
        split: the split to read.
        image_size: output side (int) or ``(height, width)``.
        batch_size: pairs per batch.
        shuffle: shuffle the whole split each epoch (before decoding, so it is cheap), with ``seed``.
        seed: shuffle seed: the same seed gives the same order, epoch after epoch.
        drop_remainder: drop a final short batch.
        skip_errors: a file that fails to decode drops its pair instead of stopping the epoch (logged).
    """
    columns = {
        "text": tf.constant(list(split.texts), dtype=tf.string),
        "label": np.asarray(split.labels, np.int32),
        "id": tf.constant([str(i) for i in split.ids], dtype=tf.string),
    }
    from_files = split.image_paths is not None
    columns["image"] = (tf.constant([str(p) for p in split.image_paths], dtype=tf.string) if from_files
                        else np.asarray(split.image_features, np.float32))
    ds = tf.data.Dataset.from_tensor_slices(columns)
    if shuffle:
        ds = ds.shuffle(max(len(split), 1), seed=seed, reshuffle_each_iteration=True)
    if from_files:
        ds = ds.map(lambda x: {**x, "image": load_image(x["image"], image_size)}, num_parallel_calls=AUTOTUNE,
                    deterministic=True)
        if skip_errors:
            ds = ds.ignore_errors(log_warning=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)
