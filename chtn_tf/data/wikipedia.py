"""The Wikipedia cross-modal dataset (Rasiwasia et al., ACM MM 2010): 2,866 pairs, 10 classes.

Layout read (``<data dir>/wikipedia/``, as distributed)::

    wikipedia_info/categories.list                      10 class names, line N = class N
    wikipedia_info/{trainset,testset}_txt_img_cat.list  text_id<TAB>image_id<TAB>class (1..10)
    wikipedia_info/raw_features.mat                     I_tr 2173x128, I_te 693x128 SIFT BoW, rows in list order
    wikipedia_dataset/texts/<text_id>.xml               <document ...><text>...</text></document>
    wikipedia_dataset/images/<category>/<image_id>.jpg  (optional: the raw images)

Protocols:
    ``"default"``: the 2,173 training pairs give ``train`` and ``val`` (``val`` = a stratified, seeded
        ``val_fraction`` of them, so ``train`` alone holds fewer than 2,173), ``test`` = all 693 test pairs,
        as the published results on this dataset use.
    ``"231/462"``: ``train`` = all 2,173; the 693 test pairs split stratified (seeded) into 231 ``val`` + 462 ``test``.

Image side (``image_side``): ``"files"`` reads the raw images (a missing or undecodable one drops its pair),
``"features"`` the SIFT rows, ``"auto"`` (default) files when an image exists for every pair, else features
(with a note when the image folder exists but is incomplete).
"""

from __future__ import annotations

import html
import pathlib
import re
from typing import Optional

import numpy as np

from chtn_tf.data.images import drop_bad_images
from chtn_tf.data.listfile import parse_class_index, read_class_names, read_pair_list, read_text_file
from chtn_tf.data.locations import dataset_root
from chtn_tf.data.records import to_split
from chtn_tf.data.splits import assemble, stratified_split
from chtn_tf.data.types import CrossModalDataset, DatasetError, Problem

LAYOUT = ("wikipedia/wikipedia_info/{categories.list, trainset_txt_img_cat.list, testset_txt_img_cat.list, "
          "raw_features.mat} and wikipedia/wikipedia_dataset/texts/<text_id>.xml")
LISTS = {"train": "trainset_txt_img_cat.list", "test": "testset_txt_img_cat.list"}
FEATURE_KEYS = {"train": "I_tr", "test": "I_te"}
PROTOCOLS = ("default", "231/462")

_TEXT_RE = re.compile(r"<text\b[^>]*>(.*?)</text\s*>", re.DOTALL | re.IGNORECASE)
_TAG_RE = re.compile(r"<[^>]+>")
_WIKI_EMPHASIS_RE = re.compile(r"'{2,}")


def article_text(raw: str) -> Optional[str]:
    """The plain text of one article file: the ``<text>`` element's content, entities unescaped, markup stripped.

    A regular expression, not an XML parser: hundreds of the distributed files are not well-formed XML
    (raw ``&`` in the text). Wiki emphasis quotes (``''``, ``'''``) and any remaining tags are removed and
    whitespace is collapsed. None when the file has no ``<text>`` element.
    """
    match = _TEXT_RE.search(raw)
    if match is None:
        return None
    text = _TAG_RE.sub(" ", match.group(1))
    text = html.unescape(text)
    text = _TAG_RE.sub(" ", text)  # markup that was entity-escaped (&lt;ref&gt;)
    text = _WIKI_EMPHASIS_RE.sub("", text)
    return " ".join(text.split())


def _info_dir(root: pathlib.Path) -> pathlib.Path:
    for candidate in (root / "wikipedia_info", root / "wikipedia_dataset"):
        if (candidate / LISTS["train"]).is_file():
            return candidate
    raise DatasetError(f"Wikipedia split lists not found under {root}: expected "
                       f"{root / 'wikipedia_info' / LISTS['train']} (layout: {LAYOUT}). Check the data folder.")


def _load_features(info: pathlib.Path, counts: dict) -> dict:
    path = info / "raw_features.mat"
    if not path.is_file():
        raise DatasetError(f"no Wikipedia images under {info.parent / 'wikipedia_dataset' / 'images'} and no "
                           f"feature file {path}; put the images at wikipedia_dataset/images/<category>/<image_id>.jpg "
                           f"or the shipped raw_features.mat in wikipedia_info/")
    import scipy.io  # only this path needs scipy

    mat = scipy.io.loadmat(str(path))
    features = {}
    for split, key in FEATURE_KEYS.items():
        if key not in mat:
            raise DatasetError(f"{path} has no variable {key} (expected I_tr, I_te: SIFT rows in list order)")
        if mat[key].shape[0] != counts[split]:
            raise DatasetError(f"{path}: {key} has {mat[key].shape[0]} rows but {LISTS[split]} lists "
                               f"{counts[split]} pairs; the rows must follow the list order one to one")
        features[split] = np.asarray(mat[key], np.float32)
    return features


def load(data_dir=None, *, seed: int = 0, val_fraction: float = 0.1, protocol: str = "default",
         image_side: str = "auto") -> CrossModalDataset:
    """Reads the Wikipedia dataset (see the module docstring for layout, protocols and image side).

    Args:
        data_dir: the data folder holding ``wikipedia/`` (else ``$CHTN_DATA_DIR``, else the user cache).
        seed: seed of the stratified validation draw.
        val_fraction: fraction of the training pairs carved out as ``val`` (default protocol).
        protocol: ``"default"`` or ``"231/462"``.
        image_side: ``"auto"``, ``"files"`` or ``"features"``.
    """
    if protocol not in PROTOCOLS and protocol != "2173/231/462":
        raise DatasetError(f"wikipedia: unknown protocol {protocol!r}; use one of {PROTOCOLS}")
    if image_side not in ("auto", "files", "features"):
        raise DatasetError(f"wikipedia: image_side must be 'auto', 'files' or 'features', got {image_side!r}")
    root = dataset_root("wikipedia", data_dir, layout=LAYOUT)
    info = _info_dir(root)
    class_file = info / "categories.list"
    class_names = read_class_names(class_file)
    texts_dir = root / "wikipedia_dataset" / "texts"
    images_dir = root / "wikipedia_dataset" / "images"
    if not texts_dir.is_dir():
        raise DatasetError(f"Wikipedia texts folder {texts_dir} not found (layout: {LAYOUT})")
    problems: list = []

    records = {}
    list_sizes = {}
    for split, name in LISTS.items():
        entries = read_pair_list(info / name, fields=("text_id", "image_id", "class"), split=split, problems=problems)
        list_sizes[split] = _count_nonblank(info / name)
        records[split] = []
        for position, entry in entries:
            text_id, image_id, cls = entry.fields
            label = parse_class_index(cls, num_classes=len(class_names), where=entry.where, pair_id=text_id,
                                      split=split, class_file=class_file, problems=problems)
            if label is None:
                continue
            raw = read_text_file(texts_dir / f"{text_id}.xml", pair_id=text_id, split=split, problems=problems)
            if raw is None:
                continue
            text = article_text(raw)
            if text is None:
                problems.append(Problem(kind="bad_text", where=str(texts_dir / f"{text_id}.xml"), pair_id=text_id,
                                        split=split, message="no <text>...</text> element; restore the file"))
                continue
            records[split].append({"id": text_id, "text": text, "label": label, "row": position, "split": split,
                                   "image": images_dir / class_names[label] / f"{image_id}.jpg"})

    use_files = image_side == "files"
    if image_side == "auto" and images_dir.is_dir():
        missing = sum(not r["image"].is_file() for rs in records.values() for r in rs)
        use_files = missing == 0
        if missing:
            problems.append(Problem(
                kind="images_incomplete", where=str(images_dir), dropped=False,
                message=f"{missing} listed images are missing, so the SIFT features are used; pass "
                        f"image_side='files' to use the images and drop those pairs"))
    if use_files:
        if not images_dir.is_dir():
            raise DatasetError(f"image_side='files' but {images_dir} does not exist; expected "
                               f"wikipedia_dataset/images/<category>/<image_id>.jpg, or use image_side='features'")
        splits = {s: to_split(drop_bad_images(rs, problems=problems)) for s, rs in records.items()}
    else:
        features = _load_features(info, list_sizes)
        splits = {s: to_split(rs, features=features[s]) for s, rs in records.items()}

    if protocol != "default":
        val_idx, test_idx = stratified_split(splits["test"].labels, [1 / 3, 2 / 3], seed=seed)
        splits["val"], splits["test"] = splits["test"].subset(val_idx), splits["test"].subset(test_idx)
    return assemble("wikipedia", class_names, splits, problems=problems, root=root, seed=seed,
                    val_fraction=val_fraction)


def _count_nonblank(path: pathlib.Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
