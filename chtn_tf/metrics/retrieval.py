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

import functools

import numpy as np

DEFAULT_KS = (1, 5, 10, 20, 50, 100)
DEFAULT_MAP_KS = (50,)
RECALL_LEVELS = np.linspace(0.0, 1.0, 11)
# Elements of one [queries, gallery] work array (float64: 32 MiB); a chunk holds a few such arrays.
_CHUNK_ELEMENTS = 1 << 22


def l2_normalize(x, dtype=np.float64) -> np.ndarray:
    """The rows of ``x`` scaled to unit L2 length (a zero row stays zero), as ``dtype``.

    Inner products of normalised codes are the cosine similarities retrieval ranks by; every place that
    normalises codes (metrics, the projector, export verification, the search index) uses this one.
    """
    x = np.asarray(x, dtype=dtype)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), dtype(1e-12))


def cosine_similarity(a, b) -> np.ndarray:
    """``[len(a), len(b)]`` cosine similarities of the rows of ``a`` and ``b`` (a zero row scores 0)."""
    return l2_normalize(a) @ l2_normalize(b).T


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
    queries, gallery = l2_normalize(query_codes), l2_normalize(gallery_codes)
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


def _precision_at(relevance, k: int) -> np.ndarray:
    return relevance[:, :k].mean(axis=1)


def _pr_points(relevance, recall_levels) -> np.ndarray:
    """``[q', 2, levels]``: interpolated and raw precision of the queries with at least one relevant item."""
    relevance = relevance[relevance.any(axis=1)]
    hits = np.cumsum(relevance, axis=1)
    precision = hits / np.arange(1, relevance.shape[1] + 1)
    recall = hits / hits[:, -1:]
    # Interpolated precision at recall r: the best precision at any recall >= r (running max from the end).
    interpolated = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(len(relevance))
    first = np.stack([np.argmax(recall >= level - 1e-12, axis=1) for level in recall_levels], axis=1)
    return np.stack([interpolated[rows[:, None], first], precision[rows[:, None], first]], axis=1)


def _per_query(query_codes, query_labels, gallery_codes, gallery_labels, measures: dict) -> dict:
    """``{name: per-query values}`` of each ``measures[name](ranked relevance chunk)``, from one ranking pass."""
    parts = {name: [] for name in measures}
    for relevance in ranked_relevance(query_codes, query_labels, gallery_codes, gallery_labels):
        for name, measure in measures.items():
            parts[name].append(measure(relevance))
    return {name: np.concatenate(values) for name, values in parts.items()}


def _valid_ks(ks, gallery_size: int) -> list:
    return [int(k) for k in ks if 1 <= k <= gallery_size]


def _curve(points: np.ndarray) -> dict:
    """Mean interpolated and raw precision over the queries' ``_pr_points`` (zeros when no query has any)."""
    mean = points.mean(axis=0) if len(points) else np.zeros(points.shape[1:])
    return {"interpolated": [float(p) for p in mean[0]], "raw": [float(p) for p in mean[1]]}


def mean_average_precision(query_codes, query_labels, gallery_codes, gallery_labels, *, k: int | None = None) -> float:
    """MAP@all (``k=None``) or MAP@k of retrieving the gallery for each query (see module conventions)."""
    measure = {"ap": lambda relevance: average_precision_at(relevance, k=k)}
    return float(_per_query(query_codes, query_labels, gallery_codes, gallery_labels, measure)["ap"].mean())


def map_at_r(query_codes, query_labels, gallery_codes, gallery_labels) -> float:
    """MAP@R: for each query, (1/R) Σ_{j≤R} P@j·rel(j), R = number of relevant gallery items."""
    measure = {"ap": _average_precision_at_r}
    return float(_per_query(query_codes, query_labels, gallery_codes, gallery_labels, measure)["ap"].mean())


def precision_at_k(query_codes, query_labels, gallery_codes, gallery_labels, *, ks=DEFAULT_KS) -> dict:
    """``{k: mean precision of the top k}`` for each k no larger than the gallery (larger k are left out)."""
    measures = {k: functools.partial(_precision_at, k=k) for k in _valid_ks(ks, len(gallery_codes))}
    values = _per_query(query_codes, query_labels, gallery_codes, gallery_labels, measures)
    return {k: float(v.mean()) for k, v in values.items()}


def precision_recall_curve(query_codes, query_labels, gallery_codes, gallery_labels,
                           *, recall_levels=RECALL_LEVELS) -> dict:
    """Precision at fixed recall levels, averaged over the queries that have a relevant item.

    Returns ``{"recall": levels, "interpolated": [...], "raw": [...]}``: ``interpolated`` is the highest
    precision at any recall ≥ the level (the usual 11-point curve), ``raw`` the precision at the first rank
    whose recall reaches the level.
    """
    recall_levels = np.asarray(recall_levels, dtype=np.float64)
    measure = {"pr": functools.partial(_pr_points, recall_levels=recall_levels)}
    points = _per_query(query_codes, query_labels, gallery_codes, gallery_labels, measure)["pr"]
    return {"recall": recall_levels.tolist(), **_curve(points)}


def _direction(query_codes, query_labels, gallery_codes, gallery_labels, ks, map_ks, recall_levels) -> dict:
    """Every metric of one retrieval direction, the public functions' measures from a single ranking pass."""
    ks = _valid_ks(ks, len(gallery_codes))
    measures = {"map": average_precision_at, "map_at_r": _average_precision_at_r,
                "pr": functools.partial(_pr_points, recall_levels=recall_levels)}
    measures.update({("map_at_k", int(k)): functools.partial(average_precision_at, k=int(k)) for k in map_ks})
    measures.update({("precision_at_k", k): functools.partial(_precision_at, k=k) for k in ks})
    values = _per_query(query_codes, query_labels, gallery_codes, gallery_labels, measures)
    curve = _curve(values["pr"])
    return {
        "map": float(values["map"].mean()),
        "map_at_r": float(values["map_at_r"].mean()),
        "map_at_k": {str(k): float(values[("map_at_k", int(k))].mean()) for k in map_ks},
        "precision_at_k": {str(k): float(values[("precision_at_k", k)].mean()) for k in ks},
        "pr_interpolated": curve["interpolated"],
        "pr_raw": curve["raw"],
    }


def evaluate_retrieval(image_codes, text_codes, image_labels, text_labels, *, ks=DEFAULT_KS,
                       map_ks=DEFAULT_MAP_KS, recall_levels=RECALL_LEVELS, text_gallery_codes=None) -> dict:
    """Both directions (image→text, text→image) of every metric, as a JSON-serialisable dict.

    ``text_gallery_codes``: the texts' codes as retrieved items (image→text), when a model gives them other
    codes than as queries (see ``model.text_gallery_linear_weight``); default ``text_codes``.

    Keys: ``map_i2t``, ``map_t2i``, ``map_avg`` (MAP@all), ``map_at_r_i2t``, ``map_at_r_t2i``,
    ``map_at_k`` ``{"i2t"|"t2i": {"50": ...}}``, ``precision_at_k`` ``{"i2t"|"t2i": {"1": ..., ...}}``,
    ``pr_curve`` ``{"recall": levels, "i2t": interpolated, "t2i": interpolated, "i2t_raw", "t2i_raw"}``.
    """
    recall_levels = np.asarray(recall_levels, dtype=np.float64)
    gallery = text_codes if text_gallery_codes is None else text_gallery_codes
    i2t = _direction(image_codes, image_labels, gallery, text_labels, ks, map_ks, recall_levels)
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
