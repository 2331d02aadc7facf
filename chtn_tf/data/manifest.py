"""A user's own collection, described by a CSV manifest: how users bring their data.

Format (UTF-8, a header row, any column order)::

    image,text,label[,split][,id]
    photos/cat1.jpg,"A cat on a sofa.",cat,train

- ``image``: image path, relative to the CSV's folder (or absolute).
- ``text``: the text itself. Alternatively a ``text_file`` column: a UTF-8 text file, relative to the CSV.
- ``label``: a class name, or an integer. Class names are the sorted distinct labels (integers sorted
  numerically); label ``k`` is ``class_names[k]``.
- ``split`` (optional): ``train``, ``val`` (or ``validation``/``valid``/``dev``) or ``test``. Without the column
  (or with it empty throughout), ``test`` is a stratified, seeded ``test_fraction`` of all rows; with it but no
  ``val`` rows, or without it, ``val`` is a stratified, seeded ``val_fraction`` of what remains for train.
- ``id`` (optional): the pair id; default ``<csv name>:<line>``.

A row with a missing/undecodable image, an unreadable text file, a wrong number of fields or an unknown split
is reported (``file:line``) and skipped.
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np

from chtn_tf.data.images import drop_bad_images
from chtn_tf.data.listfile import read_text_file
from chtn_tf.data.records import to_split
from chtn_tf.data.splits import assemble, stratified_split
from chtn_tf.data.types import CrossModalDataset, DatasetError, Problem

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "dev": "val", "test": "test"}


def load(manifest, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1,
         validate_images: bool = True) -> CrossModalDataset:
    """Reads a CSV manifest (format: see the module docstring).

    Raises:
        DatasetError: the CSV is missing, not UTF-8, lacks a required column, or a split ends up empty.
    """
    path = pathlib.Path(manifest).expanduser().resolve()
    if not path.is_file():
        raise DatasetError(f"manifest {path} not found; pass --manifest PATH to a CSV with columns "
                           f"image,text,label[,split]")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    except UnicodeDecodeError as err:
        raise DatasetError(f"manifest {path} is not UTF-8 (offset {err.start}); re-save it as UTF-8") from err
    reader = csv.reader(lines)
    header = [h.strip().lower() for h in next(reader, [])]
    text_column = "text" if "text" in header else "text_file" if "text_file" in header else None
    missing = [c for c in ("image", "label") if c not in header] + ([] if text_column else ["text"])
    if missing:
        raise DatasetError(f"{path}:1: header {header} lacks column(s) {missing}; the first row must name the "
                           f"columns image,text,label[,split] (or text_file instead of text)")
    col = {name: header.index(name) for name in header}
    base = path.parent
    problems: list = []
    rows = []
    for number, fields in enumerate(reader, start=2):
        if not any(f.strip() for f in fields):
            continue
        where = f"{path}:{number}"
        pair_id = fields[col["id"]].strip() if "id" in col and len(fields) > col["id"] else f"{path.name}:{number}"
        if len(fields) != len(header):
            problems.append(Problem(kind="bad_line", where=where, pair_id=pair_id, message=(
                f"expected {len(header)} fields ({','.join(header)}), found {len(fields)}; quote texts that contain "
                f"commas, or fix the row")))
            continue
        split = fields[col["split"]].strip().lower() if "split" in col else ""
        if split and split not in SPLIT_NAMES:
            problems.append(Problem(kind="bad_split", where=where, pair_id=pair_id, message=(
                f"split {split!r} is not train, val or test; fix the split column")))
            continue
        label = fields[col["label"]].strip()
        if not label:
            problems.append(Problem(kind="unknown_class", where=where, pair_id=pair_id,
                                    message="empty label; give every row a class name"))
            continue
        if text_column == "text":
            text = fields[col["text"]]
        else:
            text = read_text_file(base / fields[col["text_file"]].strip(), pair_id=pair_id,
                                  split=SPLIT_NAMES.get(split), problems=problems)
            if text is None:
                continue
        image = pathlib.Path(fields[col["image"]].strip())
        image = image if image.is_absolute() else base / image
        rows.append({"id": pair_id, "text": text.strip(), "label_value": label, "image": str(image),
                     "split": SPLIT_NAMES.get(split), "where": where})
    if not rows:
        raise DatasetError(f"manifest {path} has no usable rows (see the problems above: "
                           f"{'; '.join(str(p) for p in problems[:3])})")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"manifest {path}: id {dup!r} appears more than once; ids must be unique")
    if all(_is_int(r["label_value"]) for r in rows):
        keys = [str(int(r["label_value"])) for r in rows]
        class_names = [str(v) for v in sorted({int(k) for k in keys})]
    else:
        keys = [r["label_value"] for r in rows]
        class_names = sorted(set(keys))
    lookup = {name: index for index, name in enumerate(class_names)}
    for r, key in zip(rows, keys):
        r["label"] = lookup[key]

    if validate_images:
        rows = drop_bad_images(rows, problems=problems)
    has_split = any(r["split"] for r in rows)
    if has_split:
        unsplit = [r for r in rows if not r["split"]]
        for r in unsplit:
            problems.append(Problem(kind="bad_split", where=r["where"], pair_id=r["id"],
                                    message="empty split while other rows have one; give this row train, val or test"))
        rows = [r for r in rows if r["split"]]
        splits = {name: to_split([r for r in rows if r["split"] == name]) for name in ("train", "test")}
        val_rows = [r for r in rows if r["split"] == "val"]
        if val_rows:
            splits["val"] = to_split(val_rows)
    else:
        if not 0.0 < test_fraction < 1.0:
            raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}")
        labels = np.asarray([r["label"] for r in rows])
        rest, test = stratified_split(labels, [1.0 - test_fraction, test_fraction], seed=seed)
        splits = {"train": to_split([rows[i] for i in rest]), "test": to_split([rows[i] for i in test])}
    return assemble(f"manifest:{path}", class_names, splits, problems=problems, root=base, seed=seed,
                    val_fraction=val_fraction)


def _is_int(value: str) -> bool:
    try:
        int(value)
        return True
    except ValueError:
        return False
