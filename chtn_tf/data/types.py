"""The common description every dataset reader produces.

A reader turns a dataset's own distributed layout into a :class:`CrossModalDataset`: per split, the
pair ids, raw texts, integer labels and the image side (file paths, or precomputed feature vectors),
plus the class names and every problem found while reading.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

SPLITS = ("train", "val", "test")


class DatasetError(Exception):
    """The data cannot be used at all (missing folder, malformed list, ...).

    The message always says what was wrong, where (file, line, id) and what to do.
    """


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem found in a dataset: reported, counted, and (when it concerns one pair) skipped.

    Attributes:
        kind: short machine-readable tag, e.g. ``missing_image``, ``undecodable_image``,
            ``bad_text_encoding``, ``unknown_class``, ``bad_line``, ``ambiguous_image``.
        where: the file (and ``:line`` when it comes from a list) the problem is in.
        message: what is wrong and what to do, for humans.
        pair_id: id of the affected pair, when there is one.
        split: split of the affected pair, when there is one.
        dropped: whether the pair was dropped because of it (False: resolved, only noted).
    """

    kind: str
    where: str
    message: str
    pair_id: Optional[str] = None
    split: Optional[str] = None
    dropped: bool = True

    def __str__(self) -> str:
        ident = f" [id {self.pair_id}{', ' + self.split if self.split else ''}]" if self.pair_id else ""
        return f"{self.kind}{ident}: {self.where}: {self.message}"


@dataclasses.dataclass
class SplitData:
    """One split of a cross-modal dataset; every field is aligned by position.

    Attributes:
        ids: pair ids (strings, unique within the dataset).
        texts: raw texts (markup stripped), one per pair.
        labels: int32 class indices in ``[0, num_classes)``.
        image_paths: absolute image file paths, or None when the image side is features.
        image_features: float32 ``[n, d]`` precomputed image features, or None when it is files.
    """

    ids: list
    texts: list
    labels: np.ndarray
    image_paths: Optional[list] = None
    image_features: Optional[np.ndarray] = None

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int32)
        n = len(self.ids)
        if len(self.texts) != n or len(self.labels) != n:
            raise ValueError(f"SplitData fields disagree in length: ids {n}, texts {len(self.texts)}, labels {len(self.labels)}")
        if (self.image_paths is None) == (self.image_features is None):
            raise ValueError("SplitData needs exactly one of image_paths or image_features")
        if self.image_paths is not None and len(self.image_paths) != n:
            raise ValueError(f"SplitData: {len(self.image_paths)} image paths for {n} pairs")
        if self.image_features is not None:
            self.image_features = np.asarray(self.image_features, dtype=np.float32)
            if self.image_features.shape[0] != n:
                raise ValueError(f"SplitData: {self.image_features.shape[0]} feature rows for {n} pairs")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index) -> "SplitData":
        """The pairs at the given positions, in that order."""
        index = np.asarray(index, dtype=np.int64)
        return SplitData(
            ids=[self.ids[i] for i in index],
            texts=[self.texts[i] for i in index],
            labels=self.labels[index],
            image_paths=None if self.image_paths is None else [self.image_paths[i] for i in index],
            image_features=None if self.image_features is None else self.image_features[index],
        )


class _Classes:
    """``num_classes`` of a labelled collection with ``class_names`` (label ``k`` is ``class_names[k]``)."""

    class_names: list

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclasses.dataclass
class CrossModalDataset(_Classes):
    """A labelled image/text pair collection with train / val / test splits.

    Attributes:
        name: dataset name (``wikipedia``, ``webnews``, ..., or ``manifest:<path>``).
        class_names: class names; label ``k`` is ``class_names[k]``.
        splits: ``{"train": SplitData, "val": SplitData, "test": SplitData}``.
        problems: every problem found while reading (dropped pairs and resolved oddities).
        root: the folder the data was read from.
    """

    name: str
    class_names: list
    splits: dict
    problems: list = dataclasses.field(default_factory=list)
    root: Optional[str] = None

    @property
    def image_kind(self) -> str:
        """``"files"`` when images are read from disk, ``"features"`` when they are feature vectors."""
        first = next(iter(self.splits.values()))
        return "files" if first.image_paths is not None else "features"

    @property
    def image_feature_dim(self) -> Optional[int]:
        first = next(iter(self.splits.values()))
        return None if first.image_features is None else int(first.image_features.shape[1])

    def dropped(self, split: Optional[str] = None) -> list:
        """Ids of the pairs dropped because of a problem (optionally of one split)."""
        return [p.pair_id for p in self.problems if p.dropped and p.pair_id is not None and (split is None or p.split == split)]


@dataclasses.dataclass
class ImageFolderDataset(_Classes):
    """A single-modal labelled image set (the source domain): ``<root>/<class>/<file>``.

    Attributes:
        image_paths: absolute file paths.
        labels: int32 class indices.
        class_names: folder names, sorted; label ``k`` is ``class_names[k]``.
        problems: files that could not be used.
    """

    image_paths: list
    labels: np.ndarray
    class_names: list
    problems: list = dataclasses.field(default_factory=list)
    root: Optional[str] = None
