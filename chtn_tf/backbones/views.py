"""Deterministic views of an image (whole, mirrored, cropped) whose backbone features are cached.

With a frozen backbone, random augmentation would mean a backbone pass per training step. Instead a few
fixed views of each training image are computed once (and cached, see
:func:`chtn_tf.backbones.extract_features`), and the trainer draws one view per image per step.

Every view is decoded and resized exactly as the serving path does (:func:`chtn_tf.data.pipeline.decode_image`):
``orig`` *is* that image; the crops cut a box of ``CROP_SIDE`` of each side out of the decoded image at its
own resolution, then resize it the same way.
"""

from __future__ import annotations

import tensorflow as tf

from chtn_tf.data.pipeline import resize_image

# Each side of a crop view, as a fraction of the image's side (64% of the area).
CROP_SIDE = 0.8
VIEWS = {
    "orig": "the whole image (what serving sees)",
    "flip": "the whole image mirrored left-right",
    "crop_center": f"the central {CROP_SIDE:.0%} of each side",
    "crop_top_left": f"the top-left {CROP_SIDE:.0%} of each side",
    "crop_top_right": f"the top-right {CROP_SIDE:.0%} of each side",
    "crop_bottom_left": f"the bottom-left {CROP_SIDE:.0%} of each side",
    "crop_bottom_right": f"the bottom-right {CROP_SIDE:.0%} of each side",
}
# The views a run trains on, in the order ``train.image_views`` takes them: the served image first, then its
# mirror, then crops spread over the image.
TRAIN_VIEW_ORDER = ("orig", "flip", "crop_center", "crop_top_left", "crop_bottom_right", "crop_top_right",
                    "crop_bottom_left")
# Where each crop's box starts, as a fraction of the room left beside it (0 = top/left, 1 = bottom/right).
_CROP_ANCHORS = {"crop_center": (0.5, 0.5), "crop_top_left": (0.0, 0.0), "crop_top_right": (0.0, 1.0),
                 "crop_bottom_left": (1.0, 0.0), "crop_bottom_right": (1.0, 1.0)}


def check_views(views) -> tuple:
    """``views`` as a tuple of known, distinct view names.

    Raises:
        ValueError: an unknown or repeated name; the message lists the known ones.
    """
    views = tuple(views)
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views or len(set(views)) != len(views):
        raise ValueError(f"views must be distinct names out of {', '.join(VIEWS)}; got {list(views)}")
    return views


def _crop(image: tf.Tensor, anchor: tuple) -> tf.Tensor:
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    crop_h = tf.maximum(1, tf.cast(tf.round(CROP_SIDE * tf.cast(height, tf.float32)), tf.int32))
    crop_w = tf.maximum(1, tf.cast(tf.round(CROP_SIDE * tf.cast(width, tf.float32)), tf.int32))
    top = tf.cast(tf.round(anchor[0] * tf.cast(height - crop_h, tf.float32)), tf.int32)
    left = tf.cast(tf.round(anchor[1] * tf.cast(width - crop_w, tf.float32)), tf.int32)
    return image[top:top + crop_h, left:left + crop_w]


def view_images(image_bytes: tf.Tensor, views, image_size) -> tf.Tensor:
    """The ``views`` of one encoded image, decoded once: float32 ``[len(views), S, S, 3]`` in [0, 1]."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    whole = None
    out = []
    for view in check_views(views):
        if view in ("orig", "flip"):
            whole = resize_image(image, image_size) if whole is None else whole
            out.append(whole if view == "orig" else tf.image.flip_left_right(whole))
        else:
            out.append(resize_image(_crop(image, _CROP_ANCHORS[view]), image_size))
    return tf.stack(out)
