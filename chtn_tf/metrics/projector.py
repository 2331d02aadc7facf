"""TensorBoard projector files of a split's embeddings: images and texts as points in one common space.

:func:`write_projector` writes a folder that ``tensorboard --logdir`` lists as a run and whose Projector
tab shows the embeddings (PCA, t-SNE, UMAP; colour by modality or class, search the text):

- ``embeddings.tsv``: one row per point, the unit-normalised common-representation code (images first,
  then the texts of the same pairs in the same order), tab-separated;
- ``metadata.tsv``: a header row, then per point its class (the label shown by default), modality, pair
  id and the first words of the pair's text;
- ``sprite.jpg``: a thumbnail per point (the photo for an image, a text tile for a text), when the images
  are files;
- ``projector_config.pbtxt``: the :class:`tensorboard.plugins.projector.ProjectorConfig` tying them together,
  with paths relative to the folder (TensorBoard resolves them there, so the run folder can move);
- an event file with a text summary saying what the points are: TensorBoard only treats folders holding an
  event file as runs, and only looks for a projector config in a run's folder.

The tensor goes in a TSV file rather than a TF checkpoint: the projector reads both, but a checkpoint in
``logs/`` would also be picked up (without metadata) by the sibling ``train``/``validation`` runs, which look
for checkpoints in their parent folder.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from chtn_tf.atomic import atomic_dir
from chtn_tf.metrics.retrieval import l2_normalize
from chtn_tf.metrics.thumbnails import thumbnail

TENSOR_FILE = "embeddings.tsv"
METADATA_FILE = "metadata.tsv"
SPRITE_FILE = "sprite.jpg"
TENSOR_NAME = "test_embeddings"
MAX_SPRITE_SIDE = 8192  # px: the projector's (WebGL texture) limit for the whole sprite
SPRITE_TILE = 64
MAX_PAIRS = 5000
TEXT_WORDS = 12
TEXT_CHARS = 60


def first_words(text: str, *, words: int = TEXT_WORDS, chars: int = TEXT_CHARS) -> str:
    """The start of ``text`` on one line: at most ``words`` words and ``chars`` characters (Chinese has no
    spaces, so the character limit is what cuts it), without tabs or newlines."""
    clipped = " ".join(str(text).split()[:words])
    return clipped if len(clipped) <= chars else clipped[:chars].rstrip() + "…"


def _tsv_cell(value) -> str:
    return " ".join(str(value).split()) or "-"


def _text_tile(size: int) -> Image.Image:
    tile = Image.new("RGB", (size, size), (222, 231, 245))
    draw = ImageDraw.Draw(tile)
    try:
        font = ImageFont.load_default(size=size // 2)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    draw.text((size / 2, size / 2), "Aa", fill=(40, 70, 140), font=font, anchor="mm")
    draw.rectangle((0, 0, size - 1, size - 1), outline=(40, 70, 140))
    return tile


def _missing_tile(size: int) -> Image.Image:
    tile = Image.new("RGB", (size, size), (200, 200, 200))
    ImageDraw.Draw(tile).line((0, 0, size, size), fill=(150, 40, 40), width=3)
    return tile


def _sprite(image_paths: list, n_texts: int) -> tuple[Image.Image, int, list]:
    """One sprite for ``len(image_paths) + n_texts`` points, row-major, square; ``(sprite, tile, unreadable)``."""
    n = len(image_paths) + n_texts
    per_side = int(np.ceil(np.sqrt(n)))
    tile = min(SPRITE_TILE, MAX_SPRITE_SIDE // per_side)
    sprite = Image.new("RGB", (per_side * tile, per_side * tile), (255, 255, 255))
    tiles, unreadable = [], []
    for path in image_paths:
        image, reason = thumbnail(path, size=tile)
        if image is None:
            unreadable.append((path, reason))
            image = _missing_tile(tile)
        square = Image.new("RGB", (tile, tile), (255, 255, 255))
        square.paste(image, ((tile - image.width) // 2, (tile - image.height) // 2))
        tiles.append(square)
    tiles += [_text_tile(tile)] * n_texts
    for k, square in enumerate(tiles):
        sprite.paste(square, ((k % per_side) * tile, (k // per_side) * tile))
    return sprite, tile, unreadable


def write_projector(log_dir: str, *, image_codes, text_codes, labels, class_names, ids, texts,
                    image_paths=None, description: str = "", max_pairs: int = MAX_PAIRS, seed: int = 0) -> dict:
    """Writes the projector folder ``log_dir`` (replaced atomically) for a split's aligned pairs.

    Args:
        image_codes, text_codes: ``[n, d]`` common-representation codes of the pairs (normalised here).
        labels: int ``[n]`` class indices into ``class_names``.
        ids, texts: pair ids and raw texts.
        image_paths: image files (the sprite), or None when the image side is features (no sprite).
        description: markdown shown in TensorBoard's Text tab for this run.
        max_pairs: above this many pairs a seeded random subset is written (the projector stays responsive).
        seed: seed of that subset.

    Returns ``{"dir", "points", "dim", "sprite", "unreadable"}``.
    """
    from tensorboard.plugins import projector

    image_codes, text_codes = np.asarray(image_codes, np.float64), np.asarray(text_codes, np.float64)
    labels = np.asarray(labels)
    n = len(labels)
    if not (len(image_codes) == len(text_codes) == len(ids) == len(texts) == n) or \
            (image_paths is not None and len(image_paths) != n):
        raise ValueError("write_projector: image_codes, text_codes, labels, ids, texts (and image_paths) must "
                         "be aligned by pair")
    keep = np.arange(n)
    if n > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_pairs, replace=False))
    codes = np.concatenate([image_codes[keep], text_codes[keep]])
    codes = l2_normalize(codes)

    with atomic_dir(log_dir) as tmp:
        np.savetxt(os.path.join(tmp, TENSOR_FILE), codes, fmt="%.6g", delimiter="\t")
        with open(os.path.join(tmp, METADATA_FILE), "w", encoding="utf-8") as f:
            f.write("class\tmodality\tid\ttext\n")  # the first column labels the points
            for modality in ("image", "text"):
                for i in keep.tolist():
                    f.write("\t".join([_tsv_cell(class_names[int(labels[i])]), modality, _tsv_cell(ids[i]),
                                       _tsv_cell(first_words(texts[i]))]) + "\n")
        config = projector.ProjectorConfig()
        embedding = config.embeddings.add()
        embedding.tensor_name = TENSOR_NAME
        embedding.tensor_path = TENSOR_FILE
        embedding.metadata_path = METADATA_FILE
        unreadable = []
        if image_paths is not None:
            sprite, tile, unreadable = _sprite([image_paths[i] for i in keep], len(keep))
            sprite.save(os.path.join(tmp, SPRITE_FILE), format="JPEG", quality=85)
            embedding.sprite.image_path = SPRITE_FILE
            embedding.sprite.single_image_dim.extend([tile, tile])
        projector.visualize_embeddings(tmp, config)
        _write_description(tmp, description)
    return {"dir": log_dir, "points": int(len(codes)), "dim": int(codes.shape[1]),
            "sprite": image_paths is not None, "unreadable": unreadable}


def _write_description(folder: str, description: str) -> None:
    import tensorflow as tf

    writer = tf.summary.create_file_writer(folder)
    try:
        with writer.as_default():
            tf.summary.text("projector", description or "Embeddings: open the Projector tab.", step=0)
    finally:
        writer.close()
