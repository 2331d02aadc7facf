"""Reading the plain-text files the list-format datasets share: class names, pair lists, text files."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional

from chtn_tf.data.types import DatasetError, Problem


@dataclasses.dataclass(frozen=True)
class ListEntry:
    """One well-formed line of a pair list: its fields and where it came from (``file:line``)."""

    fields: tuple
    where: str
    line: int


def read_class_names(path: pathlib.Path) -> list:
    """The class names of a ``categories.list`` file: line N (1-based) names class N."""
    if not path.is_file():
        raise DatasetError(f"class list {path} not found; it must hold one class name per line "
                           f"(line N = class N). Check the dataset folder.")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DatasetError(f"class list {path} is empty; it must hold one class name per line")
    if len(set(names)) != len(names):
        raise DatasetError(f"class list {path} names a class twice; class names must be unique")
    return names


def read_pair_list(path: pathlib.Path, *, fields: tuple, split: str, problems: list) -> list:
    """The lines of a whitespace-separated list file with the given field names.

    Blank lines are skipped. A line with the wrong number of fields is reported (``bad_line``, ``file:line``)
    and skipped; the rest of the file is still read.

    Returns:
        ``(position, ListEntry)`` tuples, ``position`` counting non-blank lines from 0 (the row of a feature
        matrix stored in list order).
    """
    if not path.is_file():
        raise DatasetError(f"pair list {path} not found; expected one `{' '.join(fields)}` line per pair "
                           f"(tab separated). Check the dataset folder.")
    entries = []
    position = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        parts = tuple(raw.split("\t")) if "\t" in raw else tuple(raw.split())
        parts = tuple(p.strip() for p in parts)
        where = f"{path}:{number}"
        if len(parts) != len(fields) or not all(parts):
            problems.append(Problem(
                kind="bad_line", where=where, split=split, pair_id=parts[0] if parts and parts[0] else None,
                message=f"expected {len(fields)} tab-separated fields ({', '.join(fields)}), found {len(parts)}: "
                        f"{raw.strip()[:80]!r}; fix or delete this line"))
        else:
            entries.append((position, ListEntry(fields=parts, where=where, line=number)))
        position += 1
    return entries


def parse_class_index(value: str, *, num_classes: int, where: str, pair_id: str, split: str,
                      class_file: pathlib.Path, problems: list) -> Optional[int]:
    """0-based label of a 1-based class index, or None after reporting an ``unknown_class`` problem."""
    try:
        index = int(value)
    except ValueError:
        index = None
    if index is None or not 1 <= index <= num_classes:
        problems.append(Problem(
            kind="unknown_class", where=where, pair_id=pair_id, split=split,
            message=f"class {value!r} is not a class index 1..{num_classes} of {class_file}; "
                    f"fix the class column of this line (or add the class to {class_file.name})"))
        return None
    return index - 1


def read_text_file(path: pathlib.Path, *, pair_id: str, split: str, problems: list) -> Optional[str]:
    """The UTF-8 text of ``path`` (a BOM is ignored), or None after reporting the problem."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        problems.append(Problem(kind="missing_text", where=str(path), pair_id=pair_id, split=split,
                                message="text file not found; restore it or remove the pair from the list"))
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        problems.append(Problem(
            kind="bad_text_encoding", where=str(path), pair_id=pair_id, split=split,
            message=f"not valid UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}); "
                    f"re-save the file as UTF-8 (e.g. `iconv -f GB18030 -t UTF-8`)"))
        return None
