"""Baselines: CCA recovers a planted shared signal; semantic matching beats chance on separable data."""

import numpy as np

from chtn_tf.baselines import cca_codes, fit_cca, semantic_matching, text_tfidf
from chtn_tf.metrics.retrieval import mean_average_precision


def test_cca_recovers_planted_correlations():
    rng = np.random.default_rng(0)
    n = 4000
    shared = rng.normal(size=(n, 2))
    x = np.c_[shared[:, 0] + 0.1 * rng.normal(size=n), shared[:, 1] + 1.0 * rng.normal(size=n), rng.normal(size=(n, 3))]
    y = np.c_[rng.normal(size=(n, 2)), shared[:, 0], shared[:, 1] + 1.0 * rng.normal(size=n)]
    x = x @ rng.normal(size=(5, 5))  # mixing must not matter to CCA
    *_, rho = fit_cca(x, y, n_components=2, reg=1e-6)
    # True canonical correlations: 1/sqrt(1.01) and 1/(sqrt(2)*sqrt(2)) = 0.5.
    np.testing.assert_allclose(rho, [1 / np.sqrt(1.01), 0.5], atol=0.03)


def test_cca_codes_make_pairs_retrievable():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 600)
    centres = rng.normal(size=(4, 3)) * 3
    latent = centres[labels] + rng.normal(size=(600, 3))
    images = latent @ rng.normal(size=(3, 12)) + 0.3 * rng.normal(size=(600, 12))
    texts = latent @ rng.normal(size=(3, 20)) + 0.3 * rng.normal(size=(600, 20))
    img, txt = cca_codes(images[:400], texts[:400], images[400:], texts[400:], n_components=3)
    assert mean_average_precision(img, labels[400:], txt, labels[400:]) > 0.6  # chance ~0.25


def test_semantic_matching_beats_chance():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 300)
    images = np.eye(3)[labels] @ rng.normal(size=(3, 8)) * 2 + rng.normal(size=(300, 8))
    words = {0: "red fire hot", 1: "blue sea cold", 2: "green grass leaf"}
    texts = [" ".join(rng.choice(words[k].split(), 4)) for k in labels]
    train_txt, test_txt = text_tfidf(texts[:200], texts[200:])
    img, txt = semantic_matching(images[:200], train_txt, labels[:200], images[200:], test_txt)
    assert img.shape == (100, 3) and np.allclose(img.sum(1), 1)
    assert mean_average_precision(img, labels[200:], txt, labels[200:]) > 0.8
