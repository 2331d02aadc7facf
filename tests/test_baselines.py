"""Baselines: CCA recovers a planted shared signal; semantic matching beats chance on separable data."""

import numpy as np
import pytest

from benchmarks.baselines import cca_codes, fit_cca, semantic_matching, text_features_tfidf, tune_cca
from chtn_tf.metrics.retrieval import mean_average_precision


def test_cca_recovers_planted_correlations():
    rng = np.random.default_rng(0)
    n = 4000
    shared = rng.normal(size=(n, 2))
    x = np.c_[shared[:, 0] + 0.1 * rng.normal(size=n), shared[:, 1] + 1.0 * rng.normal(size=n), rng.normal(size=(n, 3))]
    y = np.c_[rng.normal(size=(n, 2)), shared[:, 0], shared[:, 1] + 1.0 * rng.normal(size=n)]
    x = x @ rng.normal(size=(5, 5))  # mixing must not matter to CCA
    projection = fit_cca(x, y, n_components=2, reg=1e-6)
    # True canonical correlations: 1/sqrt(1.01) and 1/(sqrt(2)*sqrt(2)) = 0.5.
    np.testing.assert_allclose(projection.correlations, [1 / np.sqrt(1.01), 0.5], atol=0.03)
    # The canonical variates: unit variance, uncorrelated, pairwise correlation ρ.
    u, v = projection.transform_x(x), projection.transform_y(y)
    np.testing.assert_allclose(np.cov(u.T, bias=True), np.eye(2), atol=1e-4)
    np.testing.assert_allclose(np.cov(v.T, bias=True), np.eye(2), atol=1e-4)
    np.testing.assert_allclose(np.mean(u * v, axis=0), projection.correlations, atol=1e-4)


def test_cca_correlations_equal_the_whitened_cross_covariance_singular_values():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 4))
    y = x[:, :2] @ rng.normal(size=(2, 6)) + rng.normal(size=(300, 6))
    xc, yc = x - x.mean(0), y - y.mean(0)
    cxx, cyy, cxy = xc.T @ xc / 300, yc.T @ yc / 300, xc.T @ yc / 300

    def inverse_sqrt(c):
        values, vectors = np.linalg.eigh(c)
        return vectors @ np.diag(values ** -0.5) @ vectors.T

    expected = np.linalg.svd(inverse_sqrt(cxx) @ cxy @ inverse_sqrt(cyy), compute_uv=False)
    np.testing.assert_allclose(fit_cca(x, y, n_components=4, reg=0.0).correlations, expected, rtol=1e-6)


def synthetic_pairs(seed, n=600, classes=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    latent = rng.normal(size=(classes, 3))[labels] * 3 + rng.normal(size=(n, 3))
    images = latent @ rng.normal(size=(3, 12)) + 0.3 * rng.normal(size=(n, 12))
    texts = latent @ rng.normal(size=(3, 80)) + 0.3 * rng.normal(size=(n, 80))
    return images, texts, labels


def test_cca_codes_make_pairs_retrievable():
    images, texts, labels = synthetic_pairs(1)
    img, txt = cca_codes(images[:400], texts[:400], images[400:], texts[400:], n_components=3, text_components=20)
    assert img.shape == txt.shape == (200, 3)
    assert mean_average_precision(img, labels[400:], txt, labels[400:]) > 0.6  # chance ~0.25
    assert mean_average_precision(txt, labels[400:], img, labels[400:]) > 0.6


def test_tune_cca_returns_the_best_validated_setting():
    images, texts, labels = synthetic_pairs(2, n=400)
    tuned = tune_cca(images, texts, labels, n_components=(1, 3), regs=(0.1, 100.0), text_components=(5, None))
    assert len(tuned["grid"]) == 8
    assert tuned["val_map_avg"] == max(score for _, score in tuned["grid"]) > 0.6
    assert tuned["settings"]["n_components"] == 3  # the planted latent has 3 dimensions
    cca_codes(images[:300], texts[:300], images[300:], texts[300:], **tuned["settings"])  # settings fit cca_codes


def test_semantic_matching_beats_chance():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 300)
    images = np.eye(3)[labels] @ rng.normal(size=(3, 8)) * 2 + rng.normal(size=(300, 8))
    words = {0: "red fire hot", 1: "blue sea cold", 2: "green grass leaf"}
    texts = [" ".join(rng.choice(words[k].split(), 4)) for k in labels]
    train_txt, test_txt = text_features_tfidf(texts[:200], texts[200:])
    img, txt = semantic_matching(images[:200], train_txt, labels[:200], images[200:], test_txt)
    assert img.shape == txt.shape == (100, 3) and np.allclose(img.sum(1), 1) and np.allclose(txt.sum(1), 1)
    assert mean_average_precision(img, labels[200:], txt, labels[200:]) > 0.8
    assert mean_average_precision(txt, labels[200:], img, labels[200:]) > 0.8


def test_tfidf_character_terms_for_chinese_and_clear_errors():
    train, test = text_features_tfidf(["今天天气很好", "股市今天大涨"], ["天气很好"], analyzer="char_wb",
                                      max_features=None)
    # Terms: 1-2 character n-grams of the training texts; the test text shares "天气", "很好" and their characters.
    assert train.shape[1] == test.shape[1] > 10 and test[0].max() > 0
    with pytest.raises(TypeError, match=r"other_texts\[0\]\[1\]"):
        text_features_tfidf(["music art"], ["music", None])
    with pytest.raises(ValueError, match="analyzer"):
        text_features_tfidf(["music art"], analyzer="chars")
    with pytest.raises(ValueError, match="same pair"):
        fit_cca(np.zeros((5, 2)), np.zeros((4, 2)))
