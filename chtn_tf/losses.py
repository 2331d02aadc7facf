"""The terms of CHTN's hybrid objective, as pure TensorFlow functions of activations.

Each function takes batches of activations and returns a scalar; they work eagerly and inside
``tf.function`` and are differentiable. The weighted sum lives in one place:
:meth:`chtn_tf.model.chtn.CHTNModel.total_loss`.
"""

from __future__ import annotations

import tensorflow as tf


def softmax_cross_entropy(labels, logits):
    """Mean softmax cross-entropy of integer ``labels`` ``[b]`` under ``logits`` ``[b, classes]``."""
    labels = tf.cast(labels, tf.int32)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def pair_loss(image_codes, text_codes):
    """The pair constraint (1/2N) Σ_i ‖img_i − txt_i‖² between each image and its own text.

    This is Caffe's ContrastiveLoss with every pair similar, as in the released CHTN model.
    """
    n = tf.cast(tf.shape(image_codes)[0], image_codes.dtype)
    return tf.reduce_sum(tf.square(image_codes - text_codes)) / (2.0 * n)


def squared_distances(x):
    """``[n, n]`` matrix of ‖x_i − x_j‖², clipped at 0 against rounding."""
    sq = tf.reduce_sum(tf.square(x), axis=1)
    return tf.maximum(sq[:, None] + sq[None, :] - 2.0 * tf.matmul(x, x, transpose_b=True), 0.0)


def gaussian_mmd(source, target, *, kernel_mul: float = 2.0, kernel_num: int = 1, fix_gamma=None):
    """Squared maximum mean discrepancy between two batches under a Gaussian kernel.

    The biased (V-statistic) quadratic estimate mean K(s, s') + mean K(t, t') − 2 mean K(s, t) over all
    pairs, with K(x, y) = Σ_k exp(−γ_k ‖x − y‖²). The bandwidth comes from the batch as in the released
    code: γ = (N² − N) / Σ_{i≠j} ‖x_i − x_j‖² over the pooled source + target batch of N rows, and
    γ_k = γ / kernel_mul^(k − kernel_num // 2) for the multi-kernel form (``kernel_num`` > 1). γ is a
    constant for the gradient, as in Caffe.

    Args:
        source: ``[m, d]`` source-domain activations.
        target: ``[n, d]`` target-domain activations (``n`` may differ from ``m``).
        kernel_mul: ratio between neighbouring bandwidths.
        kernel_num: number of kernels (1 = the released single kernel).
        fix_gamma: use this γ instead of the batch estimate.
    """
    source = tf.convert_to_tensor(source)
    target = tf.cast(target, source.dtype)
    pooled = tf.concat([source, target], axis=0)
    distances = squared_distances(pooled)
    n = tf.cast(tf.shape(pooled)[0], source.dtype)
    if fix_gamma is None:
        # The diagonal is zero, so the full sum is the sum over i != j.
        gamma = (n * n - n) / tf.maximum(tf.reduce_sum(distances), 1e-12)
        gamma = tf.stop_gradient(gamma)
    else:
        gamma = tf.constant(fix_gamma, source.dtype)
    kernel = tf.add_n([tf.exp(-distances * gamma / (kernel_mul ** (k - kernel_num // 2)))
                       for k in range(kernel_num)])
    m = tf.shape(source)[0]
    return (tf.reduce_mean(kernel[:m, :m]) + tf.reduce_mean(kernel[m:, m:])
            - 2.0 * tf.reduce_mean(kernel[:m, m:]))
