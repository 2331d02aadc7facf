"""Cross-modal retrieval metrics (numpy): MAP@all, MAP@k, MAP@R, precision@K, precision-recall.

Conventions (those of the CHTN / DSCMR evaluation code):
- the gallery is ranked by cosine similarity to the query, descending; ties keep gallery order (stable sort);
- an item is relevant when its class label equals the query's;
- AP@all = (1/R) Σ_k P@k·rel(k) over the full ranked list, R = number of relevant items;
- AP@k uses the same sum over the top k divided by the number of relevant items within the top k;
- a query with no relevant item has AP 0.
Queries are processed in chunks, so large galleries stay within memory.
"""

from __future__ import annotations

import numpy as np

DEFAULT_KS = (1, 5, 10, 20, 50, 100)
RECALL_LEVELS = np.linspace(0.0, 1.0, 11)


def _normalise(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_similarity(a, b) -> np.ndarray:
    """``[len(a), len(b)]`` cosine similarities."""
    return _normalise(a) @ _normalise(b).T


def _relevance_chunks(query_codes, query_labels, gallery_codes, gallery_labels, chunk: int = 1024):
    """Yields ``[q, g]`` boolean relevance matrices in ranked order, a chunk of queries at a time."""
    queries = _normalise(query_codes)
    gallery = _normalise(gallery_codes)
    query_labels = np.asarray(query_labels)
    gallery_labels = np.asarray(gallery_labels)
    for start in range(0, len(queries), chunk):
        similarity = queries[start:start + chunk] @ gallery.T
        order = np.argsort(-similarity, axis=1, kind="stable")
        yield gallery_labels[order] == query_labels[start:start + chunk, None]


def _average_precisions(relevant: np.ndarray, k=None) -> np.ndarray:
    if k is not None:
        relevant = relevant[:, :k]
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, relevant.shape[1] + 1)
    n_relevant = relevant.sum(axis=1)
    return np.where(n_relevant > 0, (precision * relevant).sum(axis=1) / np.maximum(n_relevant, 1), 0.0)


def mean_average_precision(query_codes, query_labels, gallery_codes, gallery_labels, *, k=None) -> float:
    """MAP@all (``k=None``) or MAP@k of retrieving the gallery for each query (see module conventions)."""
    aps = [_average_precisions(rel, k) for rel in _relevance_chunks(query_codes, query_labels, gallery_codes, gallery_labels)]
    return float(np.concatenate(aps).mean()) if aps else 0.0


def map_at_r(query_codes, query_labels, gallery_codes, gallery_labels) -> float:
    """MAP@R: for each query, (1/R) Σ_{k≤R} P@k·rel(k), R = number of relevant gallery items."""
    scores = []
    for relevant in _relevance_chunks(query_codes, query_labels, gallery_codes, gallery_labels):
        r = relevant.sum(axis=1)
        within = np.arange(relevant.shape[1])[None, :] < r[:, None]
        rel = relevant & within
        precision = np.cumsum(rel, axis=1) / np.arange(1, relevant.shape[1] + 1)
        scores.append(np.where(r > 0, (precision * rel).sum(axis=1) / np.maximum(r, 1), 0.0))
    return float(np.concatenate(scores).mean())


def precision_at_k(query_codes, query_labels, gallery_codes, gallery_labels, *, ks=DEFAULT_KS) -> dict:
    """``{k: mean precision of the top k}`` for each k no larger than the gallery."""
    ks = [k for k in ks if k <= len(gallery_codes)]
    sums = {k: 0.0 for k in ks}
    for relevant in _relevance_chunks(query_codes, query_labels, gallery_codes, gallery_labels):
        for k in ks:
            sums[k] += relevant[:, :k].mean(axis=1).sum()
    return {k: float(v / len(query_codes)) for k, v in sums.items()}


def precision_recall_curve(query_codes, query_labels, gallery_codes, gallery_labels,
                           *, recall_levels=RECALL_LEVELS) -> np.ndarray:
    """Interpolated precision (max precision at recall ≥ level) at each recall level, averaged over queries."""
    total = np.zeros(len(recall_levels))
    for relevant in _relevance_chunks(query_codes, query_labels, gallery_codes, gallery_labels):
        hits = np.cumsum(relevant, axis=1)
        n_relevant = np.maximum(relevant.sum(axis=1, keepdims=True), 1)
        precision = hits / np.arange(1, relevant.shape[1] + 1)
        recall = hits / n_relevant
        # Interpolated precision: the running max from the end of the list.
        interpolated = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        for j, level in enumerate(recall_levels):
            first = np.argmax(recall >= level - 1e-12, axis=1)
            total[j] += interpolated[np.arange(len(first)), first].sum()
    return total / len(query_codes)


def evaluate_retrieval(image_codes, text_codes, image_labels, text_labels, *, ks=DEFAULT_KS) -> dict:
    """Both directions (image→text, text→image) of every metric, as a JSON-serialisable dict."""
    i2t = (image_codes, image_labels, text_codes, text_labels)
    t2i = (text_codes, text_labels, image_codes, image_labels)
    map_i2t, map_t2i = mean_average_precision(*i2t), mean_average_precision(*t2i)
    return {
        "map_i2t": map_i2t, "map_t2i": map_t2i, "map_avg": (map_i2t + map_t2i) / 2,
        "map_at_r_i2t": map_at_r(*i2t), "map_at_r_t2i": map_at_r(*t2i),
        "precision_at_k": {
            "i2t": {str(k): v for k, v in precision_at_k(*i2t, ks=ks).items()},
            "t2i": {str(k): v for k, v in precision_at_k(*t2i, ks=ks).items()},
        },
        "pr_curve": {
            "recall": [float(r) for r in RECALL_LEVELS],
            "i2t": [float(p) for p in precision_recall_curve(*i2t)],
            "t2i": [float(p) for p in precision_recall_curve(*t2i)],
        },
    }
