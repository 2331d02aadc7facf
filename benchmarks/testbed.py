"""Small unseen collections drawn from the real datasets: the test bed for defaults meant for new data.

A user's own collection is typically a few hundred labelled pairs in a handful of classes with its own
train / validation / test split. :func:`draw_collection` makes such collections out of a full dataset whose
features are already computed (Web News: backbone features of the raw photos; Wikipedia: the shipped SIFT):
it picks ``n_classes`` classes at random, ``per_class`` pairs of each from all of the dataset's pairs, and
splits them stratified (70 / 10 / 20 by default, like the collection the issue was measured on: 246 / 35 / 71).
Optionally the texts are cut to their first characters (tweet-like short texts).

Each draw depends only on the parent dataset and ``draw``; nothing in it was looked at when the defaults
were chosen beyond what :mod:`benchmarks.quality` reports.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from chtn_tf.data.splits import stratified_split
from chtn_tf.data.types import CrossModalDataset, SplitData

SPLIT_FRACTIONS = (0.7, 0.1, 0.2)


@dataclasses.dataclass(frozen=True)
class CollectionSpec:
    """How to draw one kind of small collection from a parent dataset.

    Attributes:
        name: the collection family's name in reports (e.g. ``webnews-350``).
        parent: the registered dataset drawn from.
        n_classes: classes per draw (at most the parent's).
        per_class: pairs per class (fewer when the parent has fewer).
        text_chars: cut every text to its first this many characters (0: keep whole texts).
    """

    name: str
    parent: str
    n_classes: int = 7
    per_class: int = 50
    text_chars: int = 0


SMALL_COLLECTIONS = (
    CollectionSpec("webnews-350", "webnews"),
    CollectionSpec("webnews-short-350", "webnews", text_chars=40),
    CollectionSpec("wikipedia-350", "wikipedia"),
)


def _pool(inputs):
    """All pairs of a prepared dataset, splits concatenated: (ids, texts, labels, features, image paths or None)."""
    splits = inputs.dataset.splits
    ids = [i for s in splits.values() for i in s.ids]
    texts = [t for s in splits.values() for t in s.texts]
    labels = np.concatenate([s.labels for s in splits.values()])
    features = np.concatenate([inputs.features[name] for name in splits])
    raw = all(s.image_paths is not None for s in splits.values())
    paths = [p for s in splits.values() for p in s.image_paths] if raw else None
    return ids, texts, labels, features, paths


def draw_collection(inputs, spec: CollectionSpec, draw: int):
    """A small collection drawn from ``inputs`` (a :class:`training.inputs.PreparedInputs` of ``spec.parent``).

    Returns a new ``PreparedInputs`` whose dataset has its own train / val / test split and classes relabelled
    ``0..n_classes-1`` (with the parent's image files, when it has raw images: views of them can be added with
    :func:`training.inputs.add_train_views`); the source domain (if any) is the parent's.
    """
    ids, texts, labels, features, paths = _pool(inputs)
    rng = np.random.default_rng(10_000 + draw)
    classes = np.sort(rng.choice(np.unique(labels), size=min(spec.n_classes, len(np.unique(labels))),
                                 replace=False))
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        chosen.append(np.sort(rng.choice(members, size=min(spec.per_class, len(members)), replace=False)))
    chosen = np.concatenate(chosen)
    relabel = {int(c): k for k, c in enumerate(classes)}
    new_labels = np.asarray([relabel[int(labels[i])] for i in chosen], np.int32)
    cut = (lambda t: t[:spec.text_chars]) if spec.text_chars else (lambda t: t)
    parts = stratified_split(new_labels, SPLIT_FRACTIONS, seed=draw)
    splits, split_features = {}, {}
    for name, part in zip(("train", "val", "test"), parts):
        rows = chosen[part]
        image = ({"image_paths": [paths[i] for i in rows]} if paths is not None
                 else {"image_features": features[rows]})
        splits[name] = SplitData(ids=[ids[i] for i in rows], texts=[cut(texts[i]) for i in rows],
                                 labels=new_labels[part], **image)
        split_features[name] = features[rows]
    class_names = [inputs.dataset.class_names[int(c)] for c in classes]
    dataset = CrossModalDataset(name=f"{spec.name}#{draw}", class_names=class_names, splits=splits,
                                root=inputs.dataset.root)
    return dataclasses.replace(inputs, dataset=dataset, features=split_features)
