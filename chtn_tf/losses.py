"""The terms of CHTN's hybrid objective, as pure TensorFlow functions of activations.

Each function takes batches of activations and returns a float scalar; they work eagerly and inside
``tf.function`` and are differentiable. The weighted sum lives in one place:
:meth:`chtn_tf.model.chtn.CHTNModel.total_loss`. Weight decay is not a term here: the optimiser applies it.
"""

from __future__ import annotations

import tensorflow as tf


def _as_float(x, dtype=None):
    """``x`` as a float tensor; half precision is promoted to float32 (squared distances overflow float16)."""
    x = tf.convert_to_tensor(x)
    if dtype is None:
        dtype = x.dtype if x.dtype in (tf.float32, tf.float64) else tf.float32
    return tf.cast(x, dtype)


def softmax_cross_entropy(labels, logits, *, label_smoothing: float = 0.0):
    """Mean softmax cross-entropy of integer ``labels`` ``[b]`` under ``logits`` ``[b, classes]``.

    ``label_smoothing`` ε: the target puts 1 − ε on the label and ε / classes on every class.
    """
    logits = _as_float(logits)
    labels = tf.cast(labels, tf.int32)
    if not label_smoothing:
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    classes = tf.shape(logits)[-1]
    targets = (tf.one_hot(labels, classes, dtype=logits.dtype) * (1.0 - label_smoothing)
               + label_smoothing / tf.cast(classes, logits.dtype))
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits))


def pair_loss(image_codes, text_codes):
    """The pair constraint (1/2N) Σ_i ‖img_i − txt_i‖² between each image and its own text.

    This is Caffe's ContrastiveLoss with every pair similar, as in the released CHTN model. Rows are
    paired by position: ``image_codes[i]`` and ``text_codes[i]`` belong to the same pair.
    """
    image_codes = _as_float(image_codes)
    text_codes = _as_float(text_codes, image_codes.dtype)
    n = tf.cast(tf.shape(image_codes)[0], image_codes.dtype)
    return tf.reduce_sum(tf.square(image_codes - text_codes)) / (2.0 * n)


def squared_distances(x):
    """``[n, n]`` matrix of ‖x_i − x_j‖²: exactly 0 on the diagonal, clipped at 0 against rounding."""
    sq = tf.reduce_sum(tf.square(x), axis=1)
    distances = tf.maximum(sq[:, None] + sq[None, :] - 2.0 * tf.matmul(x, x, transpose_b=True), 0.0)
    # The expanded form leaves rounding residue on the diagonal; it would bias γ and K(x, x).
    return tf.linalg.set_diag(distances, tf.zeros_like(sq))


def mmd_bandwidth(pooled_distances):
    """γ = (N² − N) / Σ_{i≠j} ‖x_i − x_j‖² from the ``[N, N]`` squared distances of the pooled batch.

    The inverse of the mean off-diagonal squared distance (the released MMD layer's rule).
    """
    n = tf.cast(tf.shape(pooled_distances)[0], pooled_distances.dtype)
    # The diagonal is zero, so the full sum is the sum over i != j. The floor keeps a batch of identical
    # rows finite (every distance is then 0 and γ is irrelevant).
    return (n * n - n) / tf.maximum(tf.reduce_sum(pooled_distances), 1e-12)


def gaussian_mmd(source, target, *, kernel_mul: float = 2.0, kernel_num: int = 1, fix_gamma=None):
    """Squared maximum mean discrepancy between two batches under a Gaussian kernel.

    The biased (V-statistic) full quadratic estimate

        MMD² = mean_{i,i'} K(s_i, s_i') + mean_{j,j'} K(t_j, t_j') − 2 mean_{i,j} K(s_i, t_j)

    over all pairs, diagonal included (so it is ≥ 0 up to rounding and exactly 0 for identical batches),
    with K(x, y) = Σ_k exp(−γ_k ‖x − y‖²). The bandwidth comes from the batch as in the released code:
    γ = (N² − N) / Σ_{i≠j} ‖x_i − x_j‖² over the pooled source + target batch of N rows, and for the
    multi-kernel form γ_k = γ / kernel_mul^(k − kernel_num // 2), k = 0 … kernel_num − 1 (the DAN/Caffe
    convention; the kernels are summed, not averaged). γ is a constant for the gradient (stop_gradient),
    as in Caffe.

    Args:
        source: ``[m, d]`` source-domain activations.
        target: ``[n, d]`` target-domain activations (``n`` may differ from ``m``).
        kernel_mul: ratio between neighbouring bandwidths.
        kernel_num: number of kernels (1 = the released single kernel).
        fix_gamma: use this γ (python float or scalar tensor) instead of the batch estimate.
    Returns:
        A scalar of the inputs' float dtype (float32 for half-precision inputs).
    """
    if int(kernel_num) < 1:
        raise ValueError(f"gaussian_mmd: kernel_num must be >= 1, got {kernel_num}")
    if float(kernel_mul) <= 0:
        raise ValueError(f"gaussian_mmd: kernel_mul must be > 0, got {kernel_mul}")
    source = _as_float(source)
    target = _as_float(target, source.dtype)
    pooled = tf.concat([source, target], axis=0)
    distances = squared_distances(pooled)
    if fix_gamma is None:
        gamma = tf.stop_gradient(mmd_bandwidth(distances))
    else:
        gamma = tf.stop_gradient(tf.cast(fix_gamma, source.dtype))
    kernel = tf.add_n([tf.exp(-distances * (gamma / float(kernel_mul) ** (k - int(kernel_num) // 2)))
                       for k in range(int(kernel_num))])
    m = tf.shape(source)[0]
    return (tf.reduce_mean(kernel[:m, :m]) + tf.reduce_mean(kernel[m:, m:])
            - 2.0 * tf.reduce_mean(kernel[:m, m:]))
