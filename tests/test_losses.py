"""Each loss term against an independent numpy computation with explicit loops."""

import math

import numpy as np
import pytest
import tensorflow as tf

from chtn_tf import losses


def numpy_mmd(source, target, kernel_mul=2.0, kernel_num=1):
    pooled = np.concatenate([source, target])
    n = len(pooled)
    distance = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            distance[i, j] = np.sum((pooled[i] - pooled[j]) ** 2)
    gamma = (n * n - n) / distance.sum()
    kernel = sum(np.exp(-distance * gamma / kernel_mul ** (k - kernel_num // 2)) for k in range(kernel_num))
    m = len(source)
    ss = np.mean([kernel[i, j] for i in range(m) for j in range(m)])
    tt = np.mean([kernel[i, j] for i in range(m, n) for j in range(m, n)])
    st = np.mean([kernel[i, j] for i in range(m) for j in range(m, n)])
    return ss + tt - 2 * st


@pytest.mark.parametrize("kernel_num", [1, 3, 5])
def test_gaussian_mmd_matches_numpy(kernel_num):
    rng = np.random.default_rng(kernel_num)
    source = rng.normal(size=(6, 4))
    target = rng.normal(size=(5, 4)) + 0.7
    value = losses.gaussian_mmd(tf.constant(source, tf.float32), tf.constant(target, tf.float32), kernel_num=kernel_num)
    assert float(value) == pytest.approx(numpy_mmd(source, target, kernel_num=kernel_num), rel=1e-4, abs=1e-6)


def test_mmd_is_zero_for_identical_batches_and_grows_with_shift():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(16, 8)), tf.float32)
    assert float(losses.gaussian_mmd(x, x)) == pytest.approx(0.0, abs=1e-6)
    near = float(losses.gaussian_mmd(x, x + 0.1))
    far = float(losses.gaussian_mmd(x, x + 2.0))
    assert 0 < near < far


def test_mmd_gradient_is_finite_and_bandwidth_is_constant():
    rng = np.random.default_rng(1)
    source = tf.Variable(rng.normal(size=(8, 3)), dtype=tf.float32)
    target = tf.constant(rng.normal(size=(8, 3)) + 1.0, tf.float32)
    with tf.GradientTape() as tape:
        value = losses.gaussian_mmd(source, target)
    gradient = tape.gradient(value, source).numpy()
    assert np.all(np.isfinite(gradient)) and np.any(gradient != 0)
    # Finite differences with the bandwidth frozen at its batch value equal the analytic gradient.
    pooled = np.concatenate([source.numpy(), target.numpy()])
    n = len(pooled)
    gamma = (n * n - n) / sum(np.sum((a - b) ** 2) for a in pooled for b in pooled)
    base = source.numpy().astype(np.float64)
    eps = 1e-3
    bumped = base.copy()
    bumped[2, 1] += eps
    lower = base.copy()
    lower[2, 1] -= eps
    f = lambda s: float(losses.gaussian_mmd(tf.constant(s, tf.float64), tf.constant(target.numpy(), tf.float64),  # noqa: E731
                                            fix_gamma=gamma))
    assert gradient[2, 1] == pytest.approx((f(bumped) - f(lower)) / (2 * eps), rel=2e-2, abs=1e-5)


def test_pair_loss_by_hand():
    images = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    texts = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, -1.0]])
    # (4 + 2 + 0) / (2 * 3) = 1
    assert float(losses.pair_loss(tf.constant(images), tf.constant(texts))) == pytest.approx(1.0)


def test_softmax_cross_entropy_by_hand():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    labels = np.array([0, 1])
    expected = np.mean([-math.log(math.exp(2) / (math.exp(2) + 2)),
                        -math.log(math.exp(1) / (1 + math.exp(1) + math.exp(3)))])
    assert float(losses.softmax_cross_entropy(tf.constant(labels), tf.constant(logits, tf.float32))) == pytest.approx(expected, rel=1e-6)
