"""Cross-modal retrieval metrics (numpy): MAP@all, MAP@k, MAP@R, precision@K, precision-recall.

Conventions (those of the CHTN / DSCMR evaluation code):
- the gallery is ranked by cosine similarity to the query, descending. Ties keep gallery order (a stable
  sort of the negated similarities), so results are deterministic; exact ties are rare with float codes;
- an item is relevant when its class label equals the query's; with 2-D multi-hot labels, when the two
  share at least one label;
- AP@all = (1/R) Σ_k P@k·rel(k) over the full ranked list, R = number of relevant gallery items;
- AP@k (MAP@k) sums P@j·rel(j) over the top k and divides by the number of relevant items within the
  top k (the DSCMR convention), not by min(R, k);
- AP@R (MAP@R) sums P@j·rel(j) over the top R and divides by R;
- a query with no relevant item has AP 0 and is left out of the precision-recall curves.
Queries are processed in chunks sized to the gallery, so large galleries stay within memory; a chunk is
ranked once and every metric is read from that ranking.
"""

from __future__ import annotations

import numpy as np

DEFAULT_KS = (1, 5, 10, 20, 50, 100)
DEFAULT_MAP_KS = (50,)
RECALL_LEVELS = np.linspace(0.0, 1.0, 11)
# Elements of one [queries, gallery] work array (float64: 32 MiB); a chunk holds a few such arrays.
_CHUNK_ELEMENTS = 1 << 22


def _normalise(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_similarity(a, b) -> np.ndarray:
    """``[len(a), len(b)]`` cosine similarities of the rows of ``a`` and ``b`` (a zero row scores 0)."""
    return _normalise(a) @ _normalise(b).T


def _check(query_codes, query_labels, gallery_codes, gallery_labels):
    arrays = {"query_codes": np.asarray(query_codes), "gallery_codes": np.asarray(gallery_codes)}
    for name, codes in arrays.items():
        if codes.ndim != 2 or len(codes) == 0:
            raise ValueError(f"{name} must be a non-empty [items, dim] matrix, got shape {codes.shape}")
        if not np.all(np.isfinite(codes)):
            raise ValueError(f"{name} contains NaN or infinite values (check the encoder's output)")
    if arrays["query_codes"].shape[1] != arrays["gallery_codes"].shape[1]:
        raise ValueError(f"query_codes have dim {arrays['query_codes'].shape[1]} but gallery_codes have dim "
                         f"{arrays['gallery_codes'].shape[1]}: both modalities must be in the same common space")
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    for name, labels, codes in (("query_labels", query_labels, arrays["query_codes"]),
                                ("gallery_labels", gallery_labels, arrays["gallery_codes"])):
        if len(labels) != len(codes) or labels.ndim not in (1, 2):
            raise ValueError(f"{name} must hold one label (or one multi-hot row) per code: got shape "
                             f"{labels.shape} for {len(codes)} codes")
    if query_labels.ndim != gallery_labels.ndim:
        raise ValueError("query_labels and gallery_labels must both be class ids (1-D) or both multi-hot (2-D)")
    return arrays["query_codes"], query_labels, arrays["gallery_codes"], gallery_labels


def ranked_relevance(query_codes, query_labels, gallery_codes, gallery_labels, *, chunk: int | None = None):
    """Yields ``[q, g]`` boolean relevance matrices, each row in ranked order, a chunk of queries at a time.

    ``chunk`` queries per block; by default as many as keep one ``[q, g]`` float64 array near 32 MiB.
    """
    query_codes, query_labels, gallery_codes, gallery_labels = _check(
        query_codes, query_labels, gallery_codes, gallery_labels)
    queries, gallery = _normalise(query_codes), _normalise(gallery_codes)
    chunk = chunk or max(1, _CHUNK_ELEMENTS // len(gallery))
    for start in range(0, len(queries), chunk):
        similarity = queries[start:start + chunk] @ gallery.T
        order = np.argsort(-similarity, axis=1, kind="stable")
        if query_labels.ndim == 1:
            yield gallery_labels[order] == query_labels[start:start + chunk, None]
        else:
            shared = (query_labels[start:start + chunk].astype(np.float64) @ gallery_labels.T.astype(np.float64)) > 0
            yield np.take_along_axis(shared, order, axis=1)


def average_precision_at(relevance, *, k: int | None = None) -> np.ndarray:
    """Per-query average precision from ranked relevance ``[q, g]`` (row j = the j-th ranked item).

    ``k=None``: AP@all = (1/R) Σ_j P@j·rel(j). ``k``: the sum over the top k divided by the number of
    relevant items in the top k (0 when there is none).
    """
    relevance = np.asarray(relevance, dtype=bool)
    if relevance.ndim == 1:
        relevance = relevance[None, :]
    if k is not None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        relevance = relevance[:, :k]
    precision = np.cumsum(relevance, axis=1) / np.arange(1, relevance.shape[1] + 1)
    n_relevant = relevance.sum(axis=1)
    return np.where(n_relevant > 0, (precision * relevance).sum(axis=1) / np.maximum(n_relevant, 1), 0.0)


def _average_precision_at_r(relevance) -> np.ndarray:
    r = relevance.sum(axis=1)
    within = relevance & (np.arange(relevance.shape[1])[None, :] < r[:, None])
    precision = np.cumsum(within, axis=1) / np.arange(1, relevance.shape[1] + 1)
    return np.where(r > 0, (precision * within).sum(axis=1) / np.maximum(r, 1), 0.0)


def _pr_points(relevance, recall_levels):
    """``(interpolated, raw)`` precision ``[q', levels]`` of the queries with at least one relevant item."""
    relevance = relevance[relevance.any(axis=1)]
    hits = np.cumsum(relevance, axis=1)
    precision = hits / np.arange(1, relevance.shape[1] + 1)
    recall = hits / hits[:, -1:]
    # Interpolated precision at recall r: the best precision at any recall >= r (running max from the end).
    interpolated = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(len(relevance))
    first = np.stack([np.argmax(recall >= level - 1e-12, axis=1) for level in recall_levels], axis=1)
    return interpolated[rows[:, None], first], precision[rows[:, None], first]


def mean_average_precision(query_codes, query_labels, gallery_codes, gallery_labels, *, k: int | None = None) -> float:
    """MAP@all (``k=None``) or MAP@k of retrieving the gallery for each query (see module conventions)."""
    aps = [average_precision_at(rel, k=k)
           for rel in ranked_relevance(query_codes, query_labels, gallery_codes, gallery_labels)]
    return float(np.concatenate(aps).mean())


def map_at_r(query_codes, query_labels, gallery_codes, gallery_labels) -> float:
    """MAP@R: for each query, (1/R) Σ_{j≤R} P@j·rel(j), R = number of relevant gallery items."""
    aps = [_average_precision_at_r(rel)
           for rel in ranked_relevance(query_codes, query_labels, gallery_codes, gallery_labels)]
    return float(np.concatenate(aps).mean())


def precision_at_k(query_codes, query_labels, gallery_codes, gallery_labels, *, ks=DEFAULT_KS) -> dict:
    """``{k: mean precision of the top k}`` for each k no larger than the gallery (larger k are left out)."""
    ks = [int(k) for k in ks if 1 <= k <= len(gallery_codes)]
    sums = dict.fromkeys(ks, 0.0)
    for relevance in ranked_relevance(query_codes, query_labels, gallery_codes, gallery_labels):
        for k in ks:
            sums[k] += relevance[:, :k].mean(axis=1).sum()
    return {k: float(v / len(query_codes)) for k, v in sums.items()}


def precision_recall_curve(query_codes, query_labels, gallery_codes, gallery_labels,
                           *, recall_levels=RECALL_LEVELS) -> dict:
    """Precision at fixed recall levels, averaged over the queries that have a relevant item.

    Returns ``{"recall": levels, "interpolated": [...], "raw": [...]}``: ``interpolated`` is the highest
    precision at any recall ≥ the level (the usual 11-point curve), ``raw`` the precision at the first rank
    whose recall reaches the level.
    """
    recall_levels = np.asarray(recall_levels, dtype=np.float64)
    interpolated, raw, n = np.zeros(len(recall_levels)), np.zeros(len(recall_levels)), 0
    for relevance in ranked_relevance(query_codes, query_labels, gallery_codes, gallery_labels):
        chunk_interpolated, chunk_raw = _pr_points(relevance, recall_levels)
        interpolated += chunk_interpolated.sum(axis=0)
        raw += chunk_raw.sum(axis=0)
        n += len(chunk_raw)
    n = max(n, 1)
    return {"recall": recall_levels.tolist(), "interpolated": (interpolated / n).tolist(), "raw": (raw / n).tolist()}


def _direction(query_codes, query_labels, gallery_codes, gallery_labels, ks, map_ks, recall_levels) -> dict:
    """Every metric of one retrieval direction from a single ranking pass."""
    ks = [int(k) for k in ks if 1 <= k <= len(gallery_codes)]
    aps, aps_r, aps_k = [], [], {int(k): [] for k in map_ks}
    p_at_k = dict.fromkeys(ks, 0.0)
    interpolated, raw, n_pr = np.zeros(len(recall_levels)), np.zeros(len(recall_levels)), 0
    for relevance in ranked_relevance(query_codes, query_labels, gallery_codes, gallery_labels):
        aps.append(average_precision_at(relevance))
        aps_r.append(_average_precision_at_r(relevance))
        for k in aps_k:
            aps_k[k].append(average_precision_at(relevance, k=k))
        for k in ks:
            p_at_k[k] += relevance[:, :k].mean(axis=1).sum()
        chunk_interpolated, chunk_raw = _pr_points(relevance, recall_levels)
        interpolated += chunk_interpolated.sum(axis=0)
        raw += chunk_raw.sum(axis=0)
        n_pr += len(chunk_raw)
    n_queries, n_pr = len(query_codes), max(n_pr, 1)
    return {
        "map": float(np.concatenate(aps).mean()),
        "map_at_r": float(np.concatenate(aps_r).mean()),
        "map_at_k": {str(k): float(np.concatenate(v).mean()) for k, v in aps_k.items()},
        "precision_at_k": {str(k): float(v / n_queries) for k, v in p_at_k.items()},
        "pr_interpolated": [float(p) for p in interpolated / n_pr],
        "pr_raw": [float(p) for p in raw / n_pr],
    }


def evaluate_retrieval(image_codes, text_codes, image_labels, text_labels, *, ks=DEFAULT_KS,
                       map_ks=DEFAULT_MAP_KS, recall_levels=RECALL_LEVELS) -> dict:
    """Both directions (image→text, text→image) of every metric, as a JSON-serialisable dict.

    Keys: ``map_i2t``, ``map_t2i``, ``map_avg`` (MAP@all), ``map_at_r_i2t``, ``map_at_r_t2i``,
    ``map_at_k`` ``{"i2t"|"t2i": {"50": ...}}``, ``precision_at_k`` ``{"i2t"|"t2i": {"1": ..., ...}}``,
    ``pr_curve`` ``{"recall": levels, "i2t": interpolated, "t2i": interpolated, "i2t_raw", "t2i_raw"}``.
    """
    recall_levels = np.asarray(recall_levels, dtype=np.float64)
    i2t = _direction(image_codes, image_labels, text_codes, text_labels, ks, map_ks, recall_levels)
    t2i = _direction(text_codes, text_labels, image_codes, image_labels, ks, map_ks, recall_levels)
    return {
        "map_i2t": i2t["map"], "map_t2i": t2i["map"], "map_avg": (i2t["map"] + t2i["map"]) / 2,
        "map_at_r_i2t": i2t["map_at_r"], "map_at_r_t2i": t2i["map_at_r"],
        "map_at_k": {"i2t": i2t["map_at_k"], "t2i": t2i["map_at_k"]},
        "precision_at_k": {"i2t": i2t["precision_at_k"], "t2i": t2i["precision_at_k"]},
        "pr_curve": {
            "recall": [float(r) for r in recall_levels],
            "i2t": i2t["pr_interpolated"], "t2i": t2i["pr_interpolated"],
            "i2t_raw": i2t["pr_raw"], "t2i_raw": t2i["pr_raw"],
        },
    }
