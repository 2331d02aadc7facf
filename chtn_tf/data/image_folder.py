"""A single-modal labelled image set, the source domain: an ImageNet-style ``<root>/<class>/<file>`` tree."""

from __future__ import annotations

import pathlib
from typing import Optional

import numpy as np

from chtn_tf.data.images import IMAGE_EXTENSIONS, validate_images
from chtn_tf.data.locations import resolve_data_dir
from chtn_tf.data.types import DatasetError, ImageFolderDataset, Problem

NAMED_SOURCES = {"imagenette": "imagenette/train"}
# ImageNet-1k class indices (0-based, the standard order) of the ImageNet classes (WordNet ids) a source
# folder may be named after: Imagenette's ten.
IMAGENET_INDEX = {"n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
                  "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701}


def imagenet_labels(source: ImageFolderDataset) -> Optional[np.ndarray]:
    """The ImageNet-1k class index of each source image (int32 ``[n]``), or None when a class folder is not named
    after an ImageNet class listed in :data:`IMAGENET_INDEX`."""
    if not all(name in IMAGENET_INDEX for name in source.class_names):
        return None
    index = np.asarray([IMAGENET_INDEX[name] for name in source.class_names], np.int32)
    return index[np.asarray(source.labels, np.int64)]


def load_image_folder(root, *, validate: bool = False) -> ImageFolderDataset:
    """Reads ``<root>/<class>/<file>.jpg|jpeg|png`` (any case); class names are the sorted folder names.

    Args:
        root: the folder holding one sub-folder per class.
        validate: fully decode every image with Pillow and leave out (and report) the undecodable ones.

    Raises:
        DatasetError: ``root`` is missing or holds no class folder with images.
    """
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"image folder {root} not found; expected an ImageNet-style tree <class>/<file>.jpg")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    class_names = []
    for folder in class_dirs:
        files = sorted(str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            continue
        class_names.append(folder.name)
        paths.extend(files)
        labels.extend([len(class_names) - 1] * len(files))
    if not paths:
        raise DatasetError(f"no images under {root}: expected <class>/<file>.jpg|jpeg|png sub-folders")
    problems = []
    if validate:
        verdicts = validate_images(paths)
        keep = [v is None for v in verdicts]
        problems = [Problem(kind="undecodable_image", where=p, pair_id=pathlib.Path(p).name,
                            message=f"image {v}; replace or delete the file") for p, v in zip(paths, verdicts) if v]
        paths = [p for p, k in zip(paths, keep) if k]
        labels = [lab for lab, k in zip(labels, keep) if k]
    return ImageFolderDataset(image_paths=paths, labels=np.asarray(labels, np.int32), class_names=class_names,
                              problems=problems, root=str(root))


def source_domain(spec: str, data_dir: Optional[str] = None, *, validate: bool = False) -> ImageFolderDataset:
    """The source domain named by ``spec``: ``"imagenette"`` (``<data dir>/imagenette/train``) or a folder path."""
    if spec in NAMED_SOURCES:
        return load_image_folder(resolve_data_dir(data_dir) / NAMED_SOURCES[spec], validate=validate)
    return load_image_folder(spec, validate=validate)
