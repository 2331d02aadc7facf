"""The functional building blocks of CHTN: the branches and the shared correlation head.

Layer names follow the released Caffe model (``fc6_s``, ``fc7_i``, ``fc8`` ...) so weights and
TensorBoard graphs read like the paper.
"""

from __future__ import annotations

import keras
from keras import ops


class MemberDense(keras.layers.EinsumDense):
    """``EinsumDense`` for the members' layers (``bi,kio->bko`` and ``bki,kio->bko``), computed as one batched matmul.

    Same weights, same outputs; written by hand because TensorFlow runs these two einsums through a generic
    path that is 2-3x slower on CPU, forward and backward, than the batched matmul they are (measured on
    [32, 5000] -> 5 x 128: 67 ms vs 25 ms per forward + backward), and a run's steps are mostly these layers.
    """

    def call(self, inputs, training=None):
        # [k, b, i] @ [k, i, o] -> [k, b, o]; a [b, i] input (every member's) broadcasts over k.
        members_first = inputs[None] if len(inputs.shape) == 2 else ops.transpose(inputs, (1, 0, 2))
        x = ops.transpose(ops.matmul(members_first, self.kernel), (1, 0, 2))
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x


def _dense(x, width: int, name: str, members: int, activation=None):
    """``Dense(width)``; with ``members`` > 1 one independent layer per member: ``[b, d]`` (the input every member
    shares) or ``[b, members, d]`` (each member's own) to ``[b, members, width]``, as one einsum."""
    if members == 1:
        return keras.layers.Dense(width, activation=activation, name=name)(x)
    equation = "bi,kio->bko" if len(x.shape) == 2 else "bki,kio->bko"
    return MemberDense(equation, output_shape=(members, width), bias_axes="ko", activation=activation, name=name)(x)


def _dense_bn_relu(x, width: int, name: str, dropout: float, members: int = 1):
    # Caffe branch layers: InnerProduct -> BatchNorm -> ReLU.
    x = _dense(x, width, name, members)
    if members == 1:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    else:  # statistics per member and unit: normalise the flattened [b, members * width]
        x = keras.layers.Reshape((members * width,), name=f"{name}_flat")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        x = keras.layers.Reshape((members, width), name=f"{name}_members")(x)
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def build_image_branch(feature_dim: int, *, widths=(4096, 4096), suffix: str = "i", dropout: float = 0.0,
                       input_bn: bool = True, input_dropout: float = 0.0, members: int = 1,
                       name: str = "image_branch") -> keras.Model:
    """Image features -> ``fc6_<suffix>`` -> ``fc7_<suffix>``; outputs ``[fc6, fc7]`` (post-ReLU).

    Args:
        feature_dim: width of the backbone features (or precomputed features) the branch takes.
        widths: widths of fc6 and fc7.
        suffix: ``i`` for the target image branch, ``s`` for the source image branch.
        dropout: dropout after each layer (training only).
        input_bn: BatchNorm on the input features first (precomputed features such as SIFT histograms
            come on arbitrary scales; the released model fed conv5 activations directly).
        input_dropout: dropout on the (normalised) input features (training only).
        members: independent copies of fc6/fc7 side by side (outputs ``[b, members, width]``); see
            :class:`~chtn_tf.model.config.ModelConfig`.
    """
    inputs = keras.Input(shape=(feature_dim,), name=f"{name}_features")
    x = keras.layers.BatchNormalization(name=f"image_input_bn_{suffix}")(inputs) if input_bn else inputs
    if input_dropout:
        x = keras.layers.Dropout(input_dropout, name=f"image_input_dropout_{suffix}")(x)
    fc6 = _dense_bn_relu(x, widths[0], f"fc6_{suffix}", dropout, members)
    fc7 = _dense_bn_relu(fc6, widths[1], f"fc7_{suffix}", dropout, members)
    return keras.Model(inputs, [fc6, fc7], name=name)


def build_text_branch(vocab_size: int, *, widths=(4096, 4096), dropout: float = 0.0, input_norm: str = "batchnorm",
                      input_dropout: float = 0.0, members: int = 1, name: str = "text_branch") -> keras.Model:
    """Bag-of-words vector -> input normalisation -> ``fc6_t`` -> ``fc7_t``; outputs ``[fc6, fc7]``.

    ``input_norm``: ``batchnorm`` (the released model: BatchNorm with learnable scale on the raw vector) or
    ``l2`` (sublinear term weights log(1 + w) scaled to unit length per document, as TF-IDF is usually fed to
    linear models; column 0, the count of out-of-vocabulary tokens, is left out: in long texts it dwarfs
    every term and would take most of the unit length). ``members``: as in :func:`build_image_branch`.
    """
    inputs = keras.Input(shape=(vocab_size,), name="bag_of_words")
    if input_norm == "l2":
        x = keras.layers.UnitNormalization(name="text_input_l2")(keras.ops.log1p(inputs[:, 1:]))
    else:
        x = keras.layers.BatchNormalization(name="text_input_bn")(inputs)
    if input_dropout:
        x = keras.layers.Dropout(input_dropout, name="text_input_dropout")(x)
    fc6 = _dense_bn_relu(x, widths[0], "fc6_t", dropout, members)
    fc7 = _dense_bn_relu(fc6, widths[1], "fc7_t", dropout, members)
    return keras.Model(inputs, [fc6, fc7], name=name)


def build_correlation_head(input_dim: int, num_classes: int, *, widths=(4096, 4096), members: int = 1,
                           name: str = "shared_head") -> keras.Model:
    """The layer-sharing correlation subnetwork: ``fc8`` -> ``fc9`` -> ``fc10`` logits.

    Dense -> ReLU for fc8 and fc9 (no BatchNorm in the released CHTN). Outputs ``[fc9, fc10_logits]``.
    The same instance is applied to both modalities; the "no shared layers" ablation builds two. With
    ``members`` > 1 each member has its own head on its own fc7 (``[b, members, ...]`` in and out).
    """
    prefix = "" if name == "shared_head" else f"{name}_"
    inputs = keras.Input(shape=(input_dim,) if members == 1 else (members, input_dim), name=f"{name}_input")
    fc8 = _dense(inputs, widths[0], f"{prefix}fc8", members, activation="relu")
    fc9 = _dense(fc8, widths[1], f"{prefix}fc9", members, activation="relu")
    logits = _dense(fc9, num_classes, f"{prefix}fc10", members)
    return keras.Model(inputs, [fc9, logits], name=name)


def build_source_classifier(input_dim: int, num_source_classes: int, *, members: int = 1,
                            name: str = "source_classifier") -> keras.Model:
    """``fc8_s``: source-domain class logits from ``fc7_s`` (per member with ``members`` > 1)."""
    inputs = keras.Input(shape=(input_dim,) if members == 1 else (members, input_dim), name="fc7_s_input")
    logits = _dense(inputs, num_source_classes, "fc8_s", members)
    return keras.Model(inputs, logits, name=name)
