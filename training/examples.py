"""What a trained run retrieves, to look at: ``examples.html`` and the TensorBoard projector of its test split."""

from __future__ import annotations

import logging
import os
import time

from chtn_tf.metrics.examples_page import split_examples, write_examples_page
from chtn_tf.metrics.projector import write_projector
from training.inputs import PreparedInputs

log = logging.getLogger("chtn")

EXAMPLES_PAGE = "examples.html"
PROJECTOR_DIR = os.path.join("logs", "projector")


def write_run_examples(model, inputs: PreparedInputs, run_dir: str, *, results: dict, seed: int,
                       split: str = "test") -> dict:
    """Writes ``run_dir/examples.html`` and ``run_dir/logs/projector/`` from ``model``'s codes of ``split``.

    The page shows 8 query images and 8 query texts of the split (fixed by ``seed``, spread over the
    classes), each with its top 5 of the other modality and its AP; the projector holds every pair's image
    and text code. ``results``: the run's results dict (its MAPs head the page). Returns
    ``{"page": ..., "projector": ..., "seconds": ...}``.
    """
    started = time.time()
    data = inputs.dataset.splits[split]
    image_codes = model.encode_images(inputs.features[split])
    text_codes = model.encode_texts(data.texts)
    class_names = inputs.dataset.class_names
    pairs = dict(ids=data.ids, texts=data.texts, class_names=class_names, image_paths=data.image_paths)

    sections = split_examples(image_codes, text_codes, data.labels, seed=seed,
                              text_gallery_codes=model.encode_text_gallery(data.texts), **pairs)
    representation = model.config.model.representation
    notes = [
        f"{inputs.dataset.name}, {split} split ({len(data)} pairs), run {os.path.abspath(run_dir)}; "
        f"image input: {inputs.backbone.get('name')}.",
        f"Test MAP: image→text {results['map_i2t']:.4f}, text→image {results['map_t2i']:.4f}, "
        f"mean {results['map_avg']:.4f} (best epoch {results['best_epoch']}).",
        f"8 query images and 8 query texts chosen with seed {seed} across the classes; each shows its top 5 of "
        f"the other modality among all {len(data)} {split} pairs, by cosine similarity of the {representation} "
        f"representation. ✓ same class as the query, ✗ another class; AP: the query's average precision over "
        f"the whole ranking.",
    ]
    page = write_examples_page(os.path.join(run_dir, EXAMPLES_PAGE), sections,
                               title=f"chtn retrieval examples: {inputs.dataset.name}", notes=notes)
    for pair_id, path, reason in page["unreadable"]:
        log.warning("examples page: image of pair %s (%s) shown as its id: %s", pair_id, path, reason)

    description = (f"**{len(data)} {split} pairs of {inputs.dataset.name}**: each pair's image and text as "
                   f"points in the common space ({representation}, unit-normalised; {image_codes.shape[1]}-d). "
                   f"In the Projector tab, colour by `modality` or `class`; search `text` to find a pair.")
    projector = write_projector(os.path.join(run_dir, PROJECTOR_DIR), image_codes=image_codes,
                                text_codes=text_codes, labels=data.labels, description=description, seed=seed,
                                **pairs)
    return {"page": page, "projector": projector, "seconds": round(time.time() - started, 2)}
