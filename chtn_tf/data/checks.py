"""Checks across a dataset's pairs: exact duplicates, one image in two splits, and whether the data is usable.

:func:`drop_duplicate_pairs` and :func:`resolve_overlaps` run inside every read (``load_dataset``);
:func:`check_usable` is the one verdict that ``python -m chtn_tf.data.inspect`` and ``python -m training.fit``
both print, so the two commands never disagree.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from chtn_tf.data.types import SPLITS, CrossModalDataset, DatasetError, Problem


def _image_key(split, index: int):
    if split.image_paths is not None:
        return os.path.realpath(split.image_paths[index])
    return split.image_features[index].tobytes()


def drop_duplicate_pairs(records: list, *, problems: list) -> list:
    """``records`` without exact repeats (same image file and same text), each repeat reported and dropped.

    Records are dicts with ``image``, ``text``, ``id`` and ``where`` (``file:line``); the first of each group is
    kept. Run it before splitting, so that copies of a pair cannot land in both train and test.
    """
    first = {}
    kept = []
    for record in records:
        key = (os.path.realpath(record["image"]), record["text"])
        if key in first:
            original = first[key]
            label_note = ("" if record.get("label_value") == original.get("label_value")
                          else f" (with another label, {original.get('label_value')!r})")
            problems.append(Problem(kind="duplicate_pair", where=record["where"], pair_id=record["id"],
                                    split=record.get("split"), message=(
                f"same image and text as {original['where']} (id {original['id']}){label_note}; this copy is "
                f"dropped: remove the repeated row")))
        else:
            first[key] = record
            kept.append(record)
    return kept


def resolve_overlaps(dataset: CrossModalDataset, *, allow_leak: bool = False) -> CrossModalDataset:
    """Drops pairs that repeat a pair of an earlier split, and pairs whose image file is in an earlier split.

    Splits are taken in the order train, val, test; a pair that repeats a pair of an earlier split (same image
    and text) is dropped (``duplicate_pair``). A pair whose image file is also in an earlier split (with another
    text) lets the model see a test image in training: it is dropped (``split_leak``), or with ``allow_leak``
    kept and reported. Every case is added to ``dataset.problems``. Repeats within one split are left to the
    reader (the manifest reader drops them before splitting; a registered dataset keeps its published pairs).

    Raises:
        DatasetError: a split is left empty.
    """
    problems = list(dataset.problems)
    seen_pairs, seen_images = {}, {}
    splits = {}
    for name in SPLITS:
        split = dataset.splits[name]
        keep = []
        for i in range(len(split)):
            image = _image_key(split, i)
            where = split.image_paths[i] if split.image_paths is not None else dataset.root or dataset.name
            earlier = seen_pairs.get((image, split.texts[i]))
            if earlier is not None and earlier[0] != name:
                problems.append(Problem(kind="duplicate_pair", where=where, pair_id=split.ids[i], split=name, message=(
                    f"same image and text as pair {earlier[1]} ({earlier[0]}); this copy is dropped: remove the "
                    f"repeated pair")))
                continue
            owner = seen_images.get(image)
            if owner is not None and owner[0] != name and split.image_paths is not None:
                problems.append(Problem(kind="split_leak", where=where, pair_id=split.ids[i], split=name,
                                        dropped=not allow_leak, message=(
                    f"the same image file is in {owner[0]} (pair {owner[1]}), so {name} would not be unseen data; "
                    + ("kept (--allow-leak)" if allow_leak else
                       "this pair is dropped: give the image to one split only, or pass --allow-leak to keep it"))))
                if not allow_leak:
                    continue
            seen_pairs[(image, split.texts[i])] = (name, split.ids[i])
            seen_images.setdefault(image, (name, split.ids[i]))
            keep.append(i)
        splits[name] = split if len(keep) == len(split) else split.subset(keep)
    for name in SPLITS:
        if len(splits[name]) == 0:
            raise DatasetError(f"{dataset.name}: split '{name}' is empty after dropping duplicate and leaked pairs "
                               f"(see `python -m chtn_tf.data.inspect`); give that split pairs of its own")
    return dataclasses.replace(dataset, splits=splits, problems=problems)


@dataclasses.dataclass
class Verdict:
    """Whether a dataset can be trained on: ``errors`` refuse it, ``warnings`` are printed and training goes on."""

    errors: list
    warnings: list

    @property
    def usable(self) -> bool:
        return not self.errors


def check_usable(dataset: CrossModalDataset, *, max_dropped: float = 0.05) -> Verdict:
    """The verdict on a dataset as read (after its bad pairs were dropped).

    Refused: an empty split; more than ``max_dropped`` of the listed pairs dropped; a class with no training
    pair (the model cannot learn it, yet validation and test would score it: usually a misspelt label).
    Warned: a class with a single pair; a class with no validation or no test pair (it is not measured there);
    image files shared between splits that ``allow_leak`` kept.
    """
    errors, warnings = [], []
    errors += [f"split '{s}' is empty" for s in SPLITS if len(dataset.splits[s]) == 0]
    kept = sum(len(dataset.splits[s]) for s in SPLITS)
    dropped = sum(1 for p in dataset.problems if p.dropped)
    if kept + dropped and dropped / (kept + dropped) > max_dropped:
        errors.append(f"{dropped} of {kept + dropped} pairs were dropped (more than {max_dropped:.0%}); fix the "
                      f"problems listed, or raise --max-dropped")
    counts = {s: np.bincount(dataset.splits[s].labels, minlength=dataset.num_classes) for s in SPLITS}
    untrained = [k for k in range(dataset.num_classes) if counts["train"][k] == 0]
    if untrained:
        listed = ", ".join(f"{dataset.class_names[k]!r} (val {counts['val'][k]}, test {counts['test'][k]})"
                           for k in untrained[:10])
        errors.append(f"class(es) with no training pair: {listed}; the model cannot learn a class it never sees: "
                      f"check the label spelling, add training pairs, or remove those pairs")
    total = sum(counts.values())
    single = [dataset.class_names[k] for k in range(dataset.num_classes) if total[k] == 1]
    if single:
        warnings.append(f"class(es) with a single pair: {', '.join(map(repr, single[:10]))}; one pair cannot be "
                        f"both learnt and measured: add pairs or merge the class")
    for split in ("val", "test"):
        absent = [dataset.class_names[k] for k in range(dataset.num_classes)
                  if counts[split][k] == 0 and counts["train"][k] > 0 and total[k] > 1]
        if absent:
            warnings.append(f"class(es) with no {split} pair: {', '.join(map(repr, absent[:10]))}"
                            f"{' ...' if len(absent) > 10 else ''}; {split} MAP does not measure them")
    leaks = [p for p in dataset.problems if p.kind == "split_leak" and not p.dropped]
    if leaks:
        warnings.append(f"{len(leaks)} pair(s) share an image file with an earlier split (kept by --allow-leak): "
                        f"test MAP is optimistic")
    return Verdict(errors=errors, warnings=warnings)
