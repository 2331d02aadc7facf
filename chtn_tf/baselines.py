"""Reference methods for cross-modal retrieval, computed on the same inputs as CHTN (numpy / scikit-learn).

- :func:`semantic_matching`: per-modality logistic regression; each item is represented by its class
  probabilities and ranked by cosine (the "SM" baseline of Rasiwasia et al. 2010).
- :func:`cca_codes`: regularised canonical correlation analysis; items are projected onto the top
  canonical directions and ranked by cosine.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def text_tfidf(train_texts, *other_texts, analyzer: str = "word", max_features: int = 5000):
    """TF-IDF matrices (dense float32) fitted on ``train_texts``: ``word`` or ``char`` (uni+bi-gram) terms."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if analyzer == "char":
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), max_features=max_features, sublinear_tf=True)
    else:
        vectorizer = TfidfVectorizer(analyzer="word", max_features=max_features, sublinear_tf=True,
                                     stop_words="english")
    train = vectorizer.fit_transform(list(train_texts)).toarray().astype(np.float32)
    return (train, *[vectorizer.transform(list(t)).toarray().astype(np.float32) for t in other_texts])


def semantic_matching(train_images, train_texts, train_labels, test_images, test_texts, *, C: float = 1.0):
    """Class-probability codes of the test images and texts from per-modality logistic regressions.

    Args:
        train_images, test_images: image feature matrices.
        train_texts, test_texts: text feature matrices (e.g. from :func:`text_tfidf`).
        train_labels: int labels of the training pairs.
        C: inverse L2 regularisation strength.
    Returns:
        ``(image_codes, text_codes)``, each ``[n_test, num_classes]``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    image_model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    text_model = LogisticRegression(C=C * 10, max_iter=2000)
    image_model.fit(train_images, train_labels)
    text_model.fit(train_texts, train_labels)
    return image_model.predict_proba(test_images), text_model.predict_proba(test_texts)


def fit_cca(x, y, *, n_components: int = 10, reg: float = 1e-3):
    """Regularised CCA: ``(mean_x, W_x, mean_y, W_y, correlations)``.

    Solves the generalised eigenproblem  Cxy Cyy⁻¹ Cyx w = ρ² Cxx w  with ridge ``reg``·trace/d added to
    both covariances; W_y follows as Cyy⁻¹ Cyx W_x / ρ.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mean_x, mean_y = x.mean(0), y.mean(0)
    x, y = x - mean_x, y - mean_y
    n = len(x)
    cxx = x.T @ x / n
    cyy = y.T @ y / n
    cxy = x.T @ y / n
    cxx += reg * (np.trace(cxx) / len(cxx) + 1e-12) * np.eye(len(cxx))
    cyy += reg * (np.trace(cyy) / len(cyy) + 1e-12) * np.eye(len(cyy))
    cyy_inv_cyx = scipy.linalg.solve(cyy, cxy.T, assume_a="pos")
    k = min(n_components, x.shape[1], y.shape[1])
    values, vectors = scipy.linalg.eigh(cxy @ cyy_inv_cyx, cxx, subset_by_index=[len(cxx) - k, len(cxx) - 1])
    order = np.argsort(values)[::-1]
    rho = np.sqrt(np.clip(values[order], 1e-12, None))
    w_x = vectors[:, order]
    w_y = cyy_inv_cyx @ w_x / rho
    return mean_x, w_x, mean_y, w_y, rho


def cca_codes(train_images, train_texts, test_images, test_texts, *, n_components: int = 10, reg: float = 1e-3):
    """Test images and texts projected onto the top canonical directions learned on the training pairs."""
    mean_x, w_x, mean_y, w_y, _ = fit_cca(train_images, train_texts, n_components=n_components, reg=reg)
    return (np.asarray(test_images) - mean_x) @ w_x, (np.asarray(test_texts) - mean_y) @ w_y
