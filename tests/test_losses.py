"""Each loss term against an independent numpy computation with explicit loops."""

import math

import numpy as np
import pytest
import tensorflow as tf

from chtn_tf import losses


def numpy_mmd(source, target, kernel_mul=2.0, kernel_num=1, gamma=None):
    """Biased MMD² by loops: γ from the pooled batch, bandwidths γ / mul^(k - num//2), kernels summed."""
    pooled = np.concatenate([source, target])
    n = len(pooled)
    distance = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            distance[i, j] = np.sum((pooled[i] - pooled[j]) ** 2)
    if gamma is None:
        gamma = (n * n - n) / sum(distance[i, j] for i in range(n) for j in range(n) if i != j)
    kernel = sum(np.exp(-distance * gamma / kernel_mul ** (k - kernel_num // 2)) for k in range(kernel_num))
    m = len(source)
    ss = np.mean([kernel[i, j] for i in range(m) for j in range(m)])
    tt = np.mean([kernel[i, j] for i in range(m, n) for j in range(m, n)])
    st = np.mean([kernel[i, j] for i in range(m) for j in range(m, n)])
    return ss + tt - 2 * st


@pytest.mark.parametrize("kernel_num,kernel_mul", [(1, 2.0), (3, 2.0), (5, 2.0), (4, 1.5)])
def test_gaussian_mmd_matches_numpy(kernel_num, kernel_mul):
    rng = np.random.default_rng(kernel_num)
    source = rng.normal(size=(6, 4))
    target = rng.normal(size=(5, 4)) + 0.7
    value = losses.gaussian_mmd(tf.constant(source, tf.float32), tf.constant(target, tf.float32),
                                kernel_num=kernel_num, kernel_mul=kernel_mul)
    assert value.dtype == tf.float32
    expected = numpy_mmd(source, target, kernel_mul=kernel_mul, kernel_num=kernel_num)
    assert float(value) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_gaussian_mmd_with_fixed_gamma_and_inside_tf_function():
    rng = np.random.default_rng(7)
    source, target = rng.normal(size=(7, 3)), rng.normal(size=(9, 3)) * 2
    graph_mmd = tf.function(lambda s, t: losses.gaussian_mmd(s, t, kernel_num=3, fix_gamma=tf.constant(0.3)))
    value = graph_mmd(tf.constant(source, tf.float32), tf.constant(target, tf.float32))
    assert float(value) == pytest.approx(numpy_mmd(source, target, kernel_num=3, gamma=0.3), rel=1e-4)


def test_mmd_is_zero_for_identical_batches_and_grows_with_shift():
    rng = np.random.default_rng(0)
    # Large activations (like post-ReLU fc7) make the expanded distance formula round; still exactly 0.
    x = tf.constant(rng.normal(size=(16, 64)) * 30 + 100, tf.float32)
    assert float(losses.gaussian_mmd(x, x)) == pytest.approx(0.0, abs=1e-6)
    x = tf.constant(rng.normal(size=(16, 8)), tf.float32)
    near = float(losses.gaussian_mmd(x, x + 0.1))
    far = float(losses.gaussian_mmd(x, x + 2.0))
    assert 0 < near < far


def test_mmd_gradient_is_finite_and_bandwidth_gets_no_gradient():
    rng = np.random.default_rng(1)
    source = tf.Variable(rng.normal(size=(8, 3)), dtype=tf.float64)
    target = tf.constant(rng.normal(size=(8, 3)) + 1.0, tf.float64)
    with tf.GradientTape() as tape:
        value = losses.gaussian_mmd(source, target)
    gradient = tape.gradient(value, source).numpy()
    assert np.all(np.isfinite(gradient)) and np.any(gradient != 0)

    pooled = np.concatenate([source.numpy(), target.numpy()])
    n = len(pooled)
    gamma = (n * n - n) / sum(np.sum((a - b) ** 2) for a in pooled for b in pooled)
    # Finite differences of the loss with γ frozen at its batch value equal the analytic gradient ...
    f = lambda s: numpy_mmd(s, target.numpy(), gamma=gamma)  # noqa: E731
    eps = 1e-5
    for i, j in [(2, 1), (0, 0), (7, 2)]:
        up, down = source.numpy().copy(), source.numpy().copy()
        up[i, j] += eps
        down[i, j] -= eps
        assert gradient[i, j] == pytest.approx((f(up) - f(down)) / (2 * eps), rel=1e-5, abs=1e-9)
    # ... and differ from those of the loss with γ recomputed from each perturbed batch.
    g = lambda s: numpy_mmd(s, target.numpy())  # noqa: E731
    up, down = source.numpy().copy(), source.numpy().copy()
    up[2, 1] += eps
    down[2, 1] -= eps
    assert abs(gradient[2, 1] - (g(up) - g(down)) / (2 * eps)) > 1e-4


def test_mmd_accepts_half_precision_and_rejects_bad_kernel_settings():
    x = tf.constant(np.random.default_rng(3).normal(size=(4, 5)), tf.float16)
    assert losses.gaussian_mmd(x, x + 1).dtype == tf.float32
    with pytest.raises(ValueError, match="kernel_num"):
        losses.gaussian_mmd(x, x, kernel_num=0)


def test_pair_loss_by_hand_and_against_loops():
    images = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    texts = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, -1.0]])
    # (4 + 2 + 0) / (2 * 3) = 1
    assert float(losses.pair_loss(tf.constant(images), tf.constant(texts))) == pytest.approx(1.0)
    rng = np.random.default_rng(4)
    images, texts = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    expected = sum((images[i, d] - texts[i, d]) ** 2 for i in range(5) for d in range(7)) / (2 * 5)
    graph_pair = tf.function(losses.pair_loss)
    assert float(graph_pair(tf.constant(images, tf.float32), tf.constant(texts, tf.float32))) == pytest.approx(expected, rel=1e-5)


def test_softmax_cross_entropy_by_hand_and_against_loops():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    labels = np.array([0, 1])
    expected = np.mean([-math.log(math.exp(2) / (math.exp(2) + 2)),
                        -math.log(math.exp(1) / (1 + math.exp(1) + math.exp(3)))])
    value = losses.softmax_cross_entropy(tf.constant(labels), tf.constant(logits, tf.float32))
    assert float(value) == pytest.approx(expected, rel=1e-6)
    rng = np.random.default_rng(5)
    logits, labels = rng.normal(size=(6, 4)) * 3, rng.integers(0, 4, 6)
    expected = np.mean([math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(logits, labels)])
    value = losses.softmax_cross_entropy(tf.constant(labels, tf.int64), tf.constant(logits, tf.float32))
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_squared_distances_against_loops_with_an_exact_zero_diagonal():
    x = np.random.default_rng(6).normal(size=(16, 512)) * 3 + 10
    value = losses.squared_distances(tf.constant(x, tf.float32)).numpy()
    assert np.all(np.diag(value) == 0)  # the expanded formula alone leaves rounding residue here
    expected = np.array([[np.sum((a - b) ** 2) for b in x] for a in x])
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=0.05)
