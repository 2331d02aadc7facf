"""The TF Serving layout of a chtn export: the two model names and their integer version folders.

``SERVING_DIR/chtn_image/<version>/`` and ``SERVING_DIR/chtn_text/<version>/`` (each a SavedModel), as
:mod:`export.saved_model` writes them and a server, :mod:`export.client` and :mod:`export.local` read them.
No TensorFlow import: the client uses these names without it.
"""

from __future__ import annotations

import os

IMAGE_MODEL = "chtn_image"
TEXT_MODEL = "chtn_text"
# The text model's signature for texts as items to find (image->text); ``serving_default`` embeds texts as queries.
TEXT_GALLERY_SIGNATURE = "serving_gallery"


def existing_versions(model_dir: str) -> list:
    """Sorted integer versions in a TF Serving model folder (other entries, e.g. temporary ones, ignored)."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(v) for v in os.listdir(model_dir)
                  if v.isdigit() and os.path.isfile(os.path.join(model_dir, v, "saved_model.pb")))


def next_version(serving_dir: str) -> int:
    """One more than the highest version in either model folder (1 for a new folder)."""
    folders = [os.path.join(serving_dir, name) for name in (IMAGE_MODEL, TEXT_MODEL)]
    taken = [v for folder in folders if os.path.isdir(folder) for v in os.listdir(folder) if v.isdigit()]
    return max([0] + [int(v) for v in taken]) + 1


def version_dirs(serving_dir: str, version: int | None = None) -> tuple:
    """``(image version folder, text version folder)``: ``version`` of both, or the highest of each."""
    dirs = []
    for name in (IMAGE_MODEL, TEXT_MODEL):
        folder = os.path.join(serving_dir, name)
        versions = existing_versions(folder)
        if not versions:
            raise FileNotFoundError(f"no SavedModel version under {folder}; run python -m export.saved_model "
                                    f"--run RUN --out {serving_dir} first")
        chosen = versions[-1] if version is None else int(version)
        if chosen not in versions:
            raise FileNotFoundError(f"{folder} has no version {chosen} (versions: {versions})")
        dirs.append(os.path.join(folder, str(chosen)))
    return tuple(dirs)
