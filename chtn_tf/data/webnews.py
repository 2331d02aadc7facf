"""Web News: 2,200 Chinese news image/text pairs, 10 classes, split 1,699 / 499 as published.

Layout read (``<data dir>/webnews/``)::

    categories.list                      10 class names, line N = class N (also the image folder names)
    {trainset,testset}_txt_img_cat.list  text_id<TAB>image_id<TAB>class (1..10)
    texts/<text_id>.txt                  UTF-8 text
    images/<category name>/<image_id>.jpg

The distribution has dirt; each case is resolved when unambiguous (a ``dropped=False`` problem notes it) and
the pair is dropped (and reported by id) otherwise:

- a file name with whitespace before the extension (``images/culture/22 .jpg``): resolved to that file;
- the image under the listed class folder *and* another one: the listed class folder decides;
- the image only under one other class folder: that file is used (the list's class stays the label);
- no image anywhere (ids 72, 162, 1106, 1180 in train; 1729, 1730, 1784 in test): dropped.

``val`` is a stratified, seeded ``val_fraction`` of the listed training pairs (so ``train`` + ``val`` = the
training pairs kept).
"""

from __future__ import annotations

import collections
import pathlib
from typing import Optional

from chtn_tf.data.images import IMAGE_EXTENSIONS, drop_bad_images
from chtn_tf.data.listfile import parse_class_index, read_class_names, read_pair_list, read_text_file
from chtn_tf.data.locations import dataset_root
from chtn_tf.data.records import to_split
from chtn_tf.data.splits import assemble
from chtn_tf.data.types import CrossModalDataset, DatasetError, Problem

LAYOUT = ("webnews/{categories.list, trainset_txt_img_cat.list, testset_txt_img_cat.list}, "
          "webnews/texts/<text_id>.txt, webnews/images/<category>/<image_id>.jpg")
LISTS = {"train": "trainset_txt_img_cat.list", "test": "testset_txt_img_cat.list"}


def index_images(images_dir: pathlib.Path) -> dict:
    """``{normalised image id: [paths]}`` over every class folder; the id is the file stem without whitespace."""
    index = collections.defaultdict(list)
    for folder in sorted(p for p in images_dir.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                index["".join(path.stem.split())].append(path)
    return index


def resolve_image(image_id: str, class_folder: str, index: dict, *, where: str, pair_id: str, split: str,
                  problems: list) -> Optional[pathlib.Path]:
    """The image file of a listed pair, following the rules of the module docstring; None when dropped."""
    candidates = index.get("".join(image_id.split()), [])
    in_class = [p for p in candidates if p.parent.name == class_folder]
    if len(in_class) > 1:
        exact = [p for p in in_class if p.stem == image_id]
        in_class = exact or in_class
    if in_class:
        chosen = in_class[0]
        others = [p for p in candidates if p.parent.name != class_folder]
        if chosen.stem != image_id:
            problems.append(Problem(
                kind="renamed_image", where=str(chosen), pair_id=pair_id, split=split, dropped=False,
                message=f"file name {chosen.name!r} differs from the listed id {image_id!r} (whitespace); "
                        f"resolved to this file"))
        if others:
            problems.append(Problem(
                kind="ambiguous_image", where=str(chosen), pair_id=pair_id, split=split, dropped=False,
                message=f"image id also filed under {', '.join(sorted(p.parent.name for p in others))}; "
                        f"the list's class folder {class_folder!r} decides"))
        return chosen
    if len(candidates) == 1:
        chosen = candidates[0]
        problems.append(Problem(
            kind="misfiled_image", where=str(chosen), pair_id=pair_id, split=split, dropped=False,
            message=f"image found only under {chosen.parent.name!r}, not the listed class {class_folder!r}; "
                    f"using it (the label stays the list's class)"))
        return chosen
    if candidates:
        problems.append(Problem(
            kind="ambiguous_image", where=where, pair_id=pair_id, split=split,
            message=f"image {image_id} is under several other class folders "
                    f"({', '.join(sorted(p.parent.name for p in candidates))}) and not under {class_folder!r}; "
                    f"move the right file to images/{class_folder}/"))
        return None
    problems.append(Problem(
        kind="missing_image", where=where, pair_id=pair_id, split=split,
        message=f"no image file for image id {image_id} under any images/<category>/ folder; "
                f"add images/{class_folder}/{image_id}.jpg or remove the line"))
    return None


def load(data_dir=None, *, seed: int = 0, val_fraction: float = 0.1, validate_images: bool = True) -> CrossModalDataset:
    """Reads Web News (see the module docstring for the layout and how dirt is resolved).

    Args:
        data_dir: the data folder holding ``webnews/`` (else ``$CHTN_DATA_DIR``, else the user cache).
        seed: seed of the stratified validation draw.
        val_fraction: fraction of the kept training pairs carved out as ``val``.
        validate_images: fully decode every image with Pillow and drop the undecodable ones (~1-2 s).
    """
    root = dataset_root("webnews", data_dir, layout=LAYOUT)
    class_file = root / "categories.list"
    class_names = read_class_names(class_file)
    images_dir, texts_dir = root / "images", root / "texts"
    for folder in (images_dir, texts_dir):
        if not folder.is_dir():
            raise DatasetError(f"Web News folder {folder} not found (layout: {LAYOUT}); check the data folder")
    index = index_images(images_dir)
    problems: list = []
    splits = {}
    for split, name in LISTS.items():
        records = []
        for _, entry in read_pair_list(root / name, fields=("text_id", "image_id", "class"), split=split,
                                       problems=problems):
            text_id, image_id, cls = entry.fields
            label = parse_class_index(cls, num_classes=len(class_names), where=entry.where, pair_id=text_id,
                                      split=split, class_file=class_file, problems=problems)
            if label is None:
                continue
            image = resolve_image(image_id, class_names[label], index, where=entry.where, pair_id=text_id,
                                  split=split, problems=problems)
            if image is None:
                continue
            text = read_text_file(texts_dir / f"{text_id}.txt", pair_id=text_id, split=split, problems=problems)
            if text is None:
                continue
            records.append({"id": text_id, "text": text.strip(), "label": label, "image": str(image), "split": split})
        if validate_images:
            records = drop_bad_images(records, problems=problems)
        splits[split] = to_split(records)
    return assemble("webnews", class_names, splits, problems=problems, root=root, seed=seed, val_fraction=val_fraction)
