"""Turning per-pair records (dicts) into :class:`SplitData`."""

from __future__ import annotations

import numpy as np

from chtn_tf.data.types import SplitData


def to_split(records: list, *, features=None) -> SplitData:
    """A split from records with keys ``id``, ``text``, ``label`` and ``image`` (a path) or ``row``.

    With ``features`` (a matrix), the image side is ``features[record["row"]]``; otherwise the ``image`` paths.
    """
    ids = [r["id"] for r in records]
    texts = [r["text"] for r in records]
    labels = np.asarray([r["label"] for r in records], dtype=np.int32)
    if features is not None:
        rows = np.asarray([r["row"] for r in records], dtype=np.int64)
        return SplitData(ids=ids, texts=texts, labels=labels,
                         image_features=np.asarray(features, np.float32)[rows].reshape(len(rows), -1))
    return SplitData(ids=ids, texts=texts, labels=labels, image_paths=[str(r["image"]) for r in records])
