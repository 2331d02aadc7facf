"""Builders of small dataset trees in the real distributed layouts, for the data tests."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import scipy.io
from PIL import Image

REAL_DATA_ENV = "CHTN_DATA_DIR"


def real_data_dir():
    """The real datasets folder from ``$CHTN_DATA_DIR`` as an absolute path, or None when it is unset or missing.

    Absolute because CI sets a relative value (``../shared/datasets``) and tests write manifests elsewhere, whose
    relative image paths would then resolve against the manifest's folder.
    """
    value = os.environ.get(REAL_DATA_ENV)
    return pathlib.Path(value).resolve() if value and pathlib.Path(value).is_dir() else None


def write_image(path, *, size=32, color=(200, 30, 60), fmt=None, mode="RGB"):
    """A solid-colour image (JPEG or PNG by the extension unless ``fmt``) with a small gradient stripe."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = color if mode in ("RGB", "RGBA") else color[0]
    if mode == "RGBA":
        fill = (*color, 255)
    Image.new(mode, (size, size), fill).save(path, format=fmt or ("PNG" if path.suffix.lower() == ".png" else "JPEG"),
                                             quality=95)
    return path


def write_truncated_jpeg(path, *, size=64):
    """A JPEG cut off halfway: opens (the header is intact) but cannot be decoded."""
    path = write_image(path, size=size, color=(10, 120, 240))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, format="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_listed_dataset(root, *, classes=("alpha", "beta", "gamma"), train_per_class=10, test_per_class=4,
                        text_ext=".txt"):
    """A Web News-style tree: categories.list, {trainset,testset}_txt_img_cat.list, texts/, images/<class>/.

    Ids are ``1..n``; pair ``i`` has class ``(i % len(classes)) + 1`` and text ``"text <i>"``.
    Returns ``{"train": [(id, class_index_1based)], "test": [...]}``.
    """
    root = pathlib.Path(root)
    (root / "texts").mkdir(parents=True, exist_ok=True)
    (root / "categories.list").write_text("\n".join(classes) + "\n", encoding="utf-8")
    listed = {"train": [], "test": []}
    next_id = 1
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for _ in range(per_class):
            for c in range(len(classes)):
                listed[split].append((str(next_id), c + 1))
                write_image(root / "images" / classes[c] / f"{next_id}.jpg", size=16, color=(20 * c, 50, 90))
                (root / "texts" / f"{next_id}{text_ext}").write_text(f"text {next_id}", encoding="utf-8")
                next_id += 1
    for split, name in (("train", "trainset_txt_img_cat.list"), ("test", "testset_txt_img_cat.list")):
        (root / name).write_text("".join(f"{i}\t{i}\t{c}\n" for i, c in listed[split]), encoding="utf-8")
    return listed


def make_pascal_tree(data_dir, captions: dict, *, with_images=True, size=32):
    """The official Pascal Sentences layout under ``<data_dir>/pascal_sentences/`` from a captions dict."""
    root = pathlib.Path(data_dir) / "pascal_sentences"
    root.mkdir(parents=True, exist_ok=True)
    (root / "pascal_sentences.json").write_text(json.dumps(captions), encoding="utf-8")
    if with_images:
        for k, (image, entry) in enumerate(sorted(captions.items())):
            write_image(root / entry["category"] / image, size=size, color=(k % 256, 80, 160))
    return root


def make_nuswide_tree(data_dir, *, classes=("animal", "clouds", "flowers"), per_class=(8, 2, 2), with_val=True):
    """A ``nuswide10k/`` tree in the documented layout; ids ``n<k>``; returns the list contents per split."""
    root = pathlib.Path(data_dir) / "nuswide10k"
    (root / "tags").mkdir(parents=True, exist_ok=True)
    (root / "categories.list").write_text("\n".join(classes) + "\n", encoding="utf-8")
    listed = {}
    k = 0
    for split, n in zip(("train", "val", "test"), per_class):
        listed[split] = []
        for _ in range(n):
            for c, name in enumerate(classes):
                pair_id = f"n{k}"
                write_image(root / "images" / name / f"{pair_id}.jpg", size=16, color=(30 * c, 10, 10))
                (root / "tags" / f"{pair_id}.txt").write_text(f"{name}  tag{k}\nsky", encoding="utf-8")
                listed[split].append((pair_id, c + 1))
                k += 1
        if split != "val" or with_val:
            (root / f"{split}.list").write_text("".join(f"{i}\t{c}\n" for i, c in listed[split]), encoding="utf-8")
    return listed


PHOTO_CLASSES = ("sports", "culture", "economy")
PHOTO_WORDS = {"sports": "match goal team player", "culture": "museum art music film",
               "economy": "market bank trade price"}


def real_photos(data_dir, classes=PHOTO_CLASSES, *, per_class: int = 8) -> dict:
    """``{class: [absolute paths]}``: the first photos of Web News classes (real JPEGs), ``per_class`` each."""
    images = pathlib.Path(data_dir) / "webnews" / "images"
    return {name: [str(p) for p in sorted((images / name).glob("*.jpg"))[:per_class]] for name in classes}


def write_manifest(path, rows, *, columns=("image", "text", "label", "split"), encoding="utf-8") -> str:
    """A CSV manifest from row tuples (cells are quoted; a ``bytes`` cell is written as it is)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(columns).encode(encoding)]
    for row in rows:
        cells = [cell if isinstance(cell, bytes) else str(cell).encode(encoding) for cell in row]
        lines.append(b",".join(b'"' + cell.replace(b'"', b'""') + b'"' for cell in cells))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def photo_rows(photos: dict, *, splits=("test", "val", "train", "train", "train", "train"), seed: int = 0) -> list:
    """Manifest rows ``(image, text, label, split)``: photo ``i`` of a class goes to ``splits[i % len(splits)]``
    and gets a text of its class's words."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, paths in photos.items():
        for i, path in enumerate(paths):
            text = " ".join(rng.choice(PHOTO_WORDS[name].split() + ["the", "a"], 6))
            rows.append((path, text, name, splits[i % len(splits)]))
    return rows


WIKIPEDIA_CLASSES = ["art", "biology", "sport"]
WIKIPEDIA_WORDS = {0: "painting museum canvas artist", 1: "cell species gene organism", 2: "football match goal team"}


def make_wikipedia_fixture(data_dir, *, per_class=(24, 6), seed=0):
    """The Wikipedia layout (lists, XML texts, raw_features.mat) with class-separable features and texts."""
    rng = np.random.default_rng(seed)
    info = data_dir / "wikipedia" / "wikipedia_info"
    texts = data_dir / "wikipedia" / "wikipedia_dataset" / "texts"
    info.mkdir(parents=True)
    texts.mkdir(parents=True)
    (info / "categories.list").write_text("\n".join(WIKIPEDIA_CLASSES) + "\n")
    centres = rng.normal(size=(len(WIKIPEDIA_CLASSES), 16)) * 3
    features = {}
    for split, count, key in (("trainset", per_class[0], "I_tr"), ("testset", per_class[1], "I_te")):
        lines, rows = [], []
        for c in range(len(WIKIPEDIA_CLASSES)):
            for k in range(count):
                text_id = f"{split}-{c}-{k}"
                words = WIKIPEDIA_WORDS[c].split()
                body = " ".join(rng.choice(words + ["the", "of", "and"], size=12))
                (texts / f"{text_id}.xml").write_text(f'<document id="{text_id}"><text>{body} &amp; more</text></document>')
                lines.append(f"{text_id}\timg{text_id}\t{c + 1}")
                rows.append(centres[c] + rng.normal(size=16))
        (info / f"{split}_txt_img_cat.list").write_text("\n".join(lines) + "\n")
        features[key] = np.asarray(rows)
    scipy.io.savemat(str(info / "raw_features.mat"), features)
