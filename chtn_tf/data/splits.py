"""Stratified, seeded splitting, and the final assembly of a dataset's train / val / test splits."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from chtn_tf.data.types import CrossModalDataset, DatasetError, Problem, SplitData


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` summing exactly to ``total`` (Hamilton's method, ties by position)."""
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def stratified_split(labels: Sequence[int], fractions: Sequence[float], *, seed: int = 0, groups=None) -> list:
    """Splits positions ``0..n-1`` into parts of the given fractions, each part keeping the class proportions.

    Part sizes are ``round(fraction * n)`` overall (exactly, by largest remainder), shared out over the classes
    by largest remainder too, so a class of 50 split 0.8/0.1/0.1 gives exactly 40/5/5. The draw depends only on
    ``labels`` and ``seed``.

    ``groups`` (one key per position, e.g. the image file) keeps the positions of a group together: the groups
    are split (each with the label of its first position) and every position follows its group. With all keys
    distinct the result is the ungrouped one.

    Returns:
        one sorted int64 index array per fraction.
    """
    labels = np.asarray(labels)
    if groups is not None and len(labels):
        _, first, inverse = np.unique(np.asarray(groups, dtype=object).astype(str), return_index=True,
                                      return_inverse=True)
        # Number the groups by first appearance, so that distinct keys reproduce the ungrouped draw.
        rank = np.empty(len(first), np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        group_of = rank[inverse.reshape(-1)]
        parts = stratified_split(labels[np.sort(first)], fractions, seed=seed)
        return [np.flatnonzero(np.isin(group_of, part)) for part in parts]
    fractions = np.asarray(fractions, dtype=np.float64)
    if np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions.tolist()}")
    n = len(labels)
    rng = np.random.default_rng(seed)
    classes, class_sizes = np.unique(labels, return_counts=True)
    totals = _largest_remainder(n, fractions) if n else np.zeros(len(fractions), np.int64)
    # per_class[c, p]: how many of class c go to part p; rows sum to the class size, columns to totals.
    per_class = np.zeros((len(classes), len(fractions)), dtype=np.int64)
    for c, size in enumerate(class_sizes):
        per_class[c] = _largest_remainder(int(size), fractions)
    # Rounding per class can miss the overall totals by a few: move single items between parts to fix it.
    for p in range(len(fractions)):
        while per_class[:, p].sum() > totals[p]:
            q = int(np.argmax(totals - per_class.sum(0)))
            c = int(np.argmax(np.where(per_class[:, p] > 0, per_class[:, p] - class_sizes * fractions[p], -np.inf)))
            per_class[c, p] -= 1
            per_class[c, q] += 1
    parts = [[] for _ in fractions]
    for c, cls in enumerate(classes):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        start = 0
        for p, count in enumerate(per_class[c]):
            parts[p].append(members[start:start + count])
            start += count
    return [np.sort(np.concatenate(part)) if part else np.zeros(0, np.int64) for part in parts]


# A validation split picks the checkpoint: with 1-2 pairs of a class its MAP is noise. Carving takes at least
# this many pairs of every class (never more than a third of the class) even when the fraction gives fewer.
VAL_MIN_PER_CLASS = 5


def carve(split: SplitData, fraction: float, *, seed: int, min_per_class: int = VAL_MIN_PER_CLASS) -> tuple:
    """``(rest, carved)``: a stratified, seeded ``fraction`` of ``split`` taken out (e.g. validation from train).

    Every class gives at least ``min(min_per_class, size // 3)`` pairs to the carved part: a class that the
    fraction leaves short is topped up with more of its pairs, drawn by ``seed``. Pairs that share an image file
    stay on the same side.
    """
    rest, carved = stratified_split(split.labels, [1.0 - fraction, fraction], seed=seed, groups=split.image_paths)
    if min_per_class > 0 and len(split):
        carved = _top_up(split, rest, carved, min_per_class, seed)
        rest = np.setdiff1d(np.arange(len(split)), carved)
    return split.subset(rest), split.subset(carved)


def _top_up(split: SplitData, rest: np.ndarray, carved: np.ndarray, min_per_class: int, seed: int) -> np.ndarray:
    """``carved`` plus whole image groups of ``rest`` until each class has its minimum (see :func:`carve`)."""
    labels = np.asarray(split.labels)
    groups = (np.asarray(split.image_paths, dtype=object).astype(str) if split.image_paths is not None
              else np.arange(len(labels)).astype(str))
    rng = np.random.default_rng([seed, 1])
    carved = list(carved)
    for cls in np.unique(labels):
        want = min(min_per_class, int(np.sum(labels == cls)) // 3)
        candidates = [i for i in rest if labels[i] == cls]
        candidates = [candidates[k] for k in rng.permutation(len(candidates))]
        for i in candidates:
            if int(np.sum(labels[carved] == cls)) >= want:
                break
            if i not in carved:
                carved.extend(int(j) for j in np.flatnonzero(groups == groups[i]) if j not in carved)
    return np.sort(np.asarray(carved, dtype=np.int64))


def assemble(name: str, class_names: list, splits: dict, *, problems: list, root, seed: int,
             val_fraction: float) -> CrossModalDataset:
    """Builds the dataset, carving ``val`` out of ``train`` (stratified, seeded) when ``splits`` has none.

    A pair whose text is empty or blank is dropped and reported (``empty_text``): it gives the text branch
    nothing to learn from and, as a query, matches nothing.

    Raises:
        DatasetError: a split ends up empty (nothing usable was read).
    """
    problems = list(problems)
    splits = {part: _drop_blank_texts(part, split, problems, root) for part, split in splits.items()}
    if "val" not in splits:
        if not 0.0 < val_fraction < 1.0:
            raise DatasetError(f"{name}: val_fraction must be in (0, 1) to carve validation from train, got {val_fraction}")
        splits["train"], splits["val"] = carve(splits["train"], val_fraction, seed=seed)
    for split_name in ("train", "val", "test"):
        if len(splits[split_name]) == 0:
            dropped = sum(1 for p in problems if p.dropped and p.split == split_name)
            raise DatasetError(f"{name}: split '{split_name}' is empty ({dropped} pairs dropped, see the problems: "
                               f"`python -m chtn_tf.data.inspect`); check the data folder {root}")
    ordered = {k: splits[k] for k in ("train", "val", "test")}
    return CrossModalDataset(name=name, class_names=list(class_names), splits=ordered, problems=problems,
                             root=None if root is None else str(root))


def _drop_blank_texts(split_name: str, split: SplitData, problems: list, root) -> SplitData:
    blank = [i for i, text in enumerate(split.texts) if not text.strip()]
    for i in blank:
        where = split.image_paths[i] if split.image_paths is not None else str(root)
        problems.append(Problem(kind="empty_text", where=where, pair_id=split.ids[i], split=split_name,
                                message="the pair's text is empty; give it a text or remove the pair"))
    if not blank:
        return split
    return split.subset(np.setdiff1d(np.arange(len(split)), blank))

