"""Input pipelines: images decoded and resized in the graph; the tf.data batches a run trains on.

:func:`decode_image` is the one decode + resize of an image (feature extraction, cached views and the
exported image encoder all use it); :func:`image_dataset` decodes files in order. :func:`target_batches`
deals a run's prepared arrays (image features, bag-of-words rows, labels; the source domain's images) into
the batches ``CHTNModel`` trains on; the order of epoch ``e`` depends only on the seed and ``e``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import tensorflow as tf

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
                  labels: Optional[Sequence[int]] = None) -> tf.data.Dataset:
    """Batches of decoded images, in the order of ``paths``: ``images`` or ``(images, labels)``.

    Args:
        paths: image file paths.
        image_size: output side (int) or ``(height, width)``.
        batch_size: images per batch (the last batch may be smaller).
        labels: int labels aligned with ``paths``, or None.
    """
    paths = tf.constant([str(p) for p in paths], dtype=tf.string)
    if labels is None:
        ds = tf.data.Dataset.from_tensor_slices(paths)
        ds = ds.map(lambda p: load_image(p, image_size), num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int32)))
        ds = ds.map(lambda p, y: (load_image(p, image_size), y), num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


# ---------------------------------------------------------------- training batches

def batches_per_epoch(n: int, batch_size: int, *, shuffle: bool) -> int:
    """Batches :func:`target_batches` gives per epoch for ``n`` pairs."""
    if shuffle and n > batch_size:
        return n // batch_size
    return -(-n // batch_size)


def _permutation(n: int, seed) -> tf.Tensor:
    """A permutation of ``0..n-1`` that depends only on ``seed`` (a pair of int64), the same in every process."""
    return tf.argsort(tf.random.stateless_uniform([n], seed=seed))


class _SparseRows:
    """The rows of a ``tf.SparseTensor`` ``[n, width]``, gathered per batch into a ``SparseTensor`` ``[b, width]``.

    Held as two ragged tensors (column ids and values per row), which ``tf.gather`` can index.
    """

    def __init__(self, matrix: tf.SparseTensor):
        matrix = tf.sparse.reorder(matrix)
        rows, n = matrix.indices[:, 0], matrix.dense_shape[0]
        self.columns = tf.RaggedTensor.from_value_rowids(matrix.indices[:, 1], rows, nrows=n)
        self.values = tf.RaggedTensor.from_value_rowids(matrix.values, rows, nrows=n)
        self.width = matrix.dense_shape[1]

    def __len__(self) -> int:
        return int(self.columns.nrows())

    def gather(self, index) -> tf.SparseTensor:
        columns, values = tf.gather(self.columns, index), tf.gather(self.values, index)
        indices = tf.stack([columns.value_rowids(), columns.flat_values], axis=1)
        return tf.SparseTensor(indices, values.flat_values, tf.stack([tf.size(index, tf.int64), self.width]))


def _rows(values):
    """A column of per-pair values as something :func:`_gather` indexes: a tensor, or sparse rows."""
    if isinstance(values, tf.SparseTensor):
        return _SparseRows(values)
    if isinstance(values, (list, tuple)) and values and isinstance(values[0], str):
        return tf.constant(list(values), dtype=tf.string)
    return tf.convert_to_tensor(values)


def _gather(columns: dict, index) -> dict:
    return {key: value.gather(index) if isinstance(value, _SparseRows) else tf.gather(value, index)
            for key, value in columns.items()}


def _view_choice(n: int, views: int, seed: int, epoch) -> tf.Tensor:
    """Which view each of ``n`` pairs shows in ``epoch``: int32 ``[n]`` in ``0..views-1``, from the seed and epoch
    only (the same in every process, and in a resumed run)."""
    return tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed + 2, tf.int64) * 1_000_003, epoch]),
                                       minval=0, maxval=views, dtype=tf.int32)


def _show_view(batch: dict, view) -> dict:
    """``batch`` with its ``image_views`` ``[b, views, ...]`` replaced by ``image``: row i's view ``view[i]``."""
    batch = dict(batch)
    batch["image"] = tf.gather(batch.pop("image_views"), view, batch_dims=1)
    return batch


def target_batches(target: dict, *, source: Optional[dict] = None, batch_size: int, seed: int, shuffle: bool,
                   epochs: tuple = (0, 1)) -> tf.data.Dataset:
    """Batches ``{"target": {...}, "source": {...}}`` for ``CHTNModel``: one source batch per target batch.

    Args:
        target: the pairs of one split, ``{column: values}`` with one row per pair: numpy arrays, lists of
            strings, or a ``tf.SparseTensor`` (e.g. the bag-of-words rows of the texts, vectorised once),
            each batch of which is a ``tf.SparseTensor`` too. ``CHTNModel`` reads ``image``, ``label`` and
            ``bag_of_words`` (or raw ``text``). ``image_views`` ``[n, views, ...]`` instead of ``image``: several
            views of each image; with ``shuffle`` each epoch shows one per pair, drawn from ``(seed, epoch)``
            (see :func:`_view_choice`), without it the first.
        source: the source domain, ``{"image", "label"}`` with one row per image, or None.
        batch_size: pairs per batch (and source images per batch).
        seed: the order's seed.
        shuffle: shuffle the pairs (training): each epoch a permutation that depends only on ``(seed, epoch)``,
            and a ragged last batch is dropped (a batch of one breaks BatchNorm and the MMD bandwidth) unless
            the split fits in one batch. Without it, the pairs in order, the last batch possibly smaller.
        epochs: ``(first, end)``: with ``shuffle``, the batches of epochs ``first`` to ``end - 1`` follow one
            another (fit with ``steps_per_epoch=batches_per_epoch(...)``): a run resumed at epoch ``e`` sees
            exactly the batches an uninterrupted run sees from there.

    Returns:
        the batches, with a known cardinality (Keras needs it), prefetched. The source images come in a fresh
        permutation per pass over them, as many passes as an epoch needs, each depending only on the seed,
        the epoch and the pass.
    """
    target = {key: _rows(values) for key, values in target.items()}
    n = len(next(iter(target.values())))
    if source is not None:
        source = {key: _rows(values) for key, values in source.items()}
        m = len(next(iter(source.values())))
    drop_remainder = shuffle and n > batch_size
    views = int(target["image_views"].shape[1]) if "image_views" in target else 0

    def one_epoch(epoch):
        epoch = tf.cast(epoch, tf.int64)
        order = _permutation(n, tf.stack([tf.constant(seed, tf.int64), epoch])) if shuffle else tf.range(n)
        pairs = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=drop_remainder)
        if views:
            shown = _view_choice(n, views, seed, epoch) if shuffle else tf.zeros([n], tf.int32)
            pairs = pairs.map(lambda index: _show_view(_gather(target, index), tf.gather(shown, index)))
        else:
            pairs = pairs.map(lambda index: _gather(target, index))
        if source is None:
            return pairs.map(lambda t: {"target": t})
        source_seed = tf.constant(seed + 1, tf.int64) * 1_000_003 + epoch
        sources = tf.data.Dataset.counter().flat_map(
            lambda k: tf.data.Dataset.from_tensor_slices(_permutation(m, tf.stack([source_seed, k]))))
        sources = sources.batch(batch_size, drop_remainder=True).map(lambda index: _gather(source, index))
        return tf.data.Dataset.zip(pairs, sources).map(lambda t, s: {"target": t, "source": s})

    # The batch count is known, but not to tf.data once a source stream is zipped in; Keras needs it.
    batches = batches_per_epoch(n, batch_size, shuffle=shuffle)
    if not shuffle:
        dataset = one_epoch(0).apply(tf.data.experimental.assert_cardinality(batches))
    else:
        dataset = tf.data.Dataset.range(*epochs).flat_map(one_epoch)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches * max(0, epochs[1] - epochs[0])))
    return dataset.prefetch(AUTOTUNE)
