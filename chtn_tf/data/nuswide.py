"""NUS-WIDE-10k: the common 10-class, 10,000-pair subset of NUS-WIDE (images and their user tags).

There is no single official distribution of this subset, so this is the layout read
(``<data dir>/nuswide10k/``)::

    categories.list              10 class names, line N = class N (e.g. animal, clouds, flowers, food, grass,
                                 person, sky, toy, water, window)
    train.list, test.list        one pair a line: id<TAB>class (class 1..10); usually 8,000 and 1,000 lines
    val.list                     (optional) usually 1,000 lines; when absent, val is carved from train
    images/<class name>/<id>.jpg (or images/<id>.jpg)
    tags/<id>.txt                the image's tags, whitespace separated (UTF-8); this raw text is the text side

A missing or undecodable image, a missing or non-UTF-8 tag file, an unknown class or a malformed line drops
that pair (reported by id).
"""

from __future__ import annotations

import pathlib

from chtn_tf.data.images import drop_bad_images
from chtn_tf.data.listfile import parse_class_index, read_class_names, read_pair_list, read_text_file
from chtn_tf.data.locations import dataset_root
from chtn_tf.data.records import to_split
from chtn_tf.data.splits import assemble
from chtn_tf.data.types import CrossModalDataset, Problem

FOLDER = "nuswide10k"
LAYOUT = (f"{FOLDER}/{{categories.list, train.list, [val.list,] test.list}} (id<TAB>class), "
          f"{FOLDER}/images/<class>/<id>.jpg, {FOLDER}/tags/<id>.txt")


def load(data_dir=None, *, seed: int = 0, val_fraction: float = 0.1, validate_images: bool = True) -> CrossModalDataset:
    """Reads NUS-WIDE-10k in the layout of the module docstring.

    Args:
        data_dir: the data folder holding ``nuswide10k/`` (else ``$CHTN_DATA_DIR``, else the user cache).
        seed: seed of the stratified validation draw (only without ``val.list``).
        val_fraction: fraction of train carved out as ``val`` (only without ``val.list``).
        validate_images: fully decode every image with Pillow and drop the undecodable ones.
    """
    root = dataset_root(FOLDER, data_dir, layout=LAYOUT)
    class_file = root / "categories.list"
    class_names = read_class_names(class_file)
    problems: list = []
    splits = {}
    for split in ("train", "val", "test"):
        list_path = root / f"{split}.list"
        if split == "val" and not list_path.is_file():
            continue
        records = []
        for _, entry in read_pair_list(list_path, fields=("id", "class"), split=split, problems=problems):
            pair_id, cls = entry.fields
            label = parse_class_index(cls, num_classes=len(class_names), where=entry.where, pair_id=pair_id,
                                      split=split, class_file=class_file, problems=problems)
            if label is None:
                continue
            image = _find_image(root, class_names[label], pair_id)
            if image is None:
                problems.append(Problem(kind="missing_image", where=entry.where, pair_id=pair_id, split=split,
                                        message=f"no images/{class_names[label]}/{pair_id}.jpg (nor images/{pair_id}.jpg); "
                                                f"add the image or remove the line"))
                continue
            text = read_text_file(root / "tags" / f"{pair_id}.txt", pair_id=pair_id, split=split, problems=problems)
            if text is None:
                continue
            records.append({"id": pair_id, "text": " ".join(text.split()), "label": label, "image": str(image),
                            "split": split})
        if validate_images:
            records = drop_bad_images(records, problems=problems)
        splits[split] = to_split(records)
    return assemble("nuswide10k", class_names, splits, problems=problems, root=root, seed=seed,
                    val_fraction=val_fraction)


def _find_image(root: pathlib.Path, class_name: str, pair_id: str):
    for candidate in (root / "images" / class_name / f"{pair_id}.jpg", root / "images" / f"{pair_id}.jpg"):
        if candidate.is_file():
            return candidate
    return None
