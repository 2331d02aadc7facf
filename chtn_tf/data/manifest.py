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

A row with a missing/undecodable image, a text that is empty or not UTF-8, an unreadable text file, a wrong
number of fields or an unknown split is reported (``file:line``) and skipped. A row that repeats an earlier
one (same image, same text) is reported and dropped. Without a ``split`` column, rows that share an image file
are kept in the same split.
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np

from chtn_tf.data.checks import drop_duplicate_pairs
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
    # Undecodable bytes become lone surrogates, so that one bad cell costs its row, not the whole file.
    try:
        text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    except OSError as err:
        raise DatasetError(f"manifest {path} cannot be read ({err.strerror}); check its permissions") from err
    reader = csv.reader(text.splitlines(keepends=True))
    header = next(reader, [])
    if _undecodable(",".join(header)):
        raise DatasetError(f"{path}:1: the header is not UTF-8 text; re-save the manifest as UTF-8 "
                           f"(e.g. `iconv -f GB18030 -t UTF-8 in.csv > out.csv`)")
    header = [h.strip().lower() for h in header]
    if not any(header):
        raise DatasetError(f"manifest {path} is empty; its first row must name the columns image,text,label[,split], "
                           f"then one row per pair")
    text_column = "text" if "text" in header else "text_file" if "text_file" in header else None
    missing = [c for c in ("image", "label") if c not in header] + ([] if text_column else ["text"])
    if missing:
        raise DatasetError(f"{path}:1: header {header} lacks column(s) {missing}; the first row must name the "
                           f"columns image,text,label[,split] (or text_file instead of text)")
    col = {name: header.index(name) for name in header}
    base = path.parent
    problems: list = []
    rows = []
    seen_rows = 0
    start = reader.line_num + 1
    for fields in reader:
        # A quoted cell may span lines: a row is named by the line it starts on.
        number, start = start, reader.line_num + 1
        if not any(f.strip() for f in fields):
            continue
        seen_rows += 1
        row = _parse_row(fields, header, col, text_column, where=f"{path}:{number}", default_id=f"{path.name}:{number}",
                         base=base, problems=problems)
        if row is not None:
            rows.append(row)
    if not rows:
        if not seen_rows:
            raise DatasetError(f"manifest {path} has a header but no rows; add one row per pair: "
                               f"{','.join(header)}")
        raise DatasetError(f"manifest {path}: none of its {seen_rows} rows is usable; the first problems: "
                           + "; ".join(str(p) for p in problems[:3]))
    rows = drop_duplicate_pairs(rows, problems=problems)
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        lines = [r["where"].rsplit(":", 1)[1] for r in rows if r["id"] == dup]
        raise DatasetError(f"manifest {path}: id {dup!r} is used by lines {', '.join(lines)}; ids must be unique: "
                           f"fix the id column")
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
        # Pairs that share an image file go to the same split.
        rest, test = stratified_split(labels, [1.0 - test_fraction, test_fraction], seed=seed,
                                      groups=[r["image"] for r in rows])
        splits = {"train": to_split([rows[i] for i in rest]), "test": to_split([rows[i] for i in test])}
    return assemble(f"manifest:{path}", class_names, splits, problems=problems, root=base, seed=seed,
                    val_fraction=val_fraction)


def _undecodable(value: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in value)


def _parse_row(fields: list, header: list, col: dict, text_column: str, *, where: str, default_id: str, base,
               problems: list):
    """One manifest row as a record dict, or None after reporting why it is skipped."""
    pair_id = fields[col["id"]].strip() if "id" in col and len(fields) > col["id"] else default_id
    if _undecodable(pair_id):
        pair_id = default_id
    if len(fields) != len(header):
        problems.append(Problem(kind="bad_line", where=where, pair_id=pair_id, message=(
            f"expected {len(header)} fields ({','.join(header)}), found {len(fields)}; quote texts that contain "
            f"commas, or fix the row")))
        return None
    bad = [name for name, value in zip(header, fields) if _undecodable(value)]
    if bad:
        byte = next(ord(c) - 0xDC00 for c in fields[col[bad[0]]] if "\udc80" <= c <= "\udcff")
        problems.append(Problem(kind="bad_text_encoding", where=where, pair_id=pair_id, message=(
            f"{' and '.join(bad)} not valid UTF-8 (byte 0x{byte:02x}); pair skipped: re-save the manifest as UTF-8 "
            f"(e.g. `iconv -f GB18030 -t UTF-8 in.csv > out.csv`)")))
        return None
    split = fields[col["split"]].strip().lower() if "split" in col else ""
    if split and split not in SPLIT_NAMES:
        problems.append(Problem(kind="bad_split", where=where, pair_id=pair_id, message=(
            f"split {split!r} is not train, val or test; fix the split column")))
        return None
    label = fields[col["label"]].strip()
    if not label:
        problems.append(Problem(kind="unknown_class", where=where, pair_id=pair_id,
                                message="empty label; give every row a class name"))
        return None
    if text_column == "text":
        text = fields[col["text"]]
    else:
        text = read_text_file(base / fields[col["text_file"]].strip(), pair_id=pair_id,
                              split=SPLIT_NAMES.get(split), problems=problems)
        if text is None:
            return None
    if not text.strip():
        problems.append(Problem(kind="empty_text", where=where, pair_id=pair_id, split=SPLIT_NAMES.get(split),
                                message="the text is empty; give the pair a text or remove the row"))
        return None
    image = pathlib.Path(fields[col["image"]].strip())
    image = image if image.is_absolute() else base / image
    return {"id": pair_id, "text": text.strip(), "label_value": label, "image": str(image),
            "split": SPLIT_NAMES.get(split), "where": where}


def _is_int(value: str) -> bool:
    try:
        int(value)
        return True
    except ValueError:
        return False
