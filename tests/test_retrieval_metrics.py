"""Retrieval metrics against a naive pure-Python reference and hand-computed examples."""

import json
import math

import numpy as np
import pytest

from chtn_tf.metrics import retrieval
from chtn_tf.metrics.retrieval import (average_precision_at, cosine_similarity, evaluate_retrieval, map_at_r,
                                       mean_average_precision, precision_at_k, precision_recall_curve)


def naive_rankings(queries, query_labels, gallery, gallery_labels):
    """Per query, relevance flags in ranked order: cosine descending, ties by gallery index."""
    out = []
    for q, ql in zip(queries, query_labels):
        scores = []
        for j, g in enumerate(gallery):
            cosine = sum(a * b for a, b in zip(q, g)) / (math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in g)))
            scores.append((-cosine, j))
        scores.sort()
        if np.ndim(ql) == 0:
            out.append([bool(gallery_labels[j] == ql) for _, j in scores])
        else:
            out.append([bool(any(a and b for a, b in zip(ql, gallery_labels[j]))) for _, j in scores])
    return out


def naive_ap(relevant, k=None):
    relevant = relevant[:k] if k else relevant
    hits, total = 0, 0.0
    for rank, rel in enumerate(relevant, 1):
        if rel:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def naive_ap_at_r(relevant):
    r = sum(relevant)
    return naive_ap(relevant[:r]) * sum(relevant[:r]) / r if r else 0.0


def naive_pr(relevant, levels):
    r = sum(relevant)
    points = []  # (recall, precision) at each rank
    hits = 0
    for rank, rel in enumerate(relevant, 1):
        hits += rel
        points.append((hits / r, hits / rank))
    interpolated = [max(p for rc, p in points if rc >= level - 1e-12) for level in levels]
    raw = [next(p for rc, p in points if rc >= level - 1e-12) for level in levels]
    return interpolated, raw


def flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in flatten(value, f"{prefix}/{key}").items()}
    if isinstance(tree, list):
        return {f"{prefix}/{i}": v for i, v in enumerate(tree)}
    return {prefix: tree}


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    queries, query_labels = rng.normal(size=(40, 6)), rng.integers(0, 4, 40)
    gallery, gallery_labels = rng.normal(size=(55, 6)), rng.integers(0, 4, 55)
    assert_no_near_ties(queries, gallery)
    return queries, query_labels, gallery, gallery_labels


def assert_no_near_ties(queries, gallery):
    """Rankings from numpy's matmul and from the naive loop may differ only where two cosines of a query are
    within rounding error; data without such pairs give the same rankings on any CPU's BLAS kernel."""
    gaps = np.diff(np.sort(cosine_similarity(queries, gallery), axis=1), axis=1)
    assert gaps.min() > 1e-9


def test_cosine_similarity_against_loops(data):
    a, _, b, _ = data
    expected = [[np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)) for y in b] for x in a]
    np.testing.assert_allclose(cosine_similarity(a, b), expected, rtol=1e-10, atol=1e-14)


def test_map_at_all_and_at_k_match_a_naive_loop(data):
    rankings = naive_rankings(*data)
    assert mean_average_precision(*data) == pytest.approx(np.mean([naive_ap(r) for r in rankings]), rel=1e-12)
    for k in (1, 10, 50):
        assert mean_average_precision(*data, k=k) == pytest.approx(np.mean([naive_ap(r, k) for r in rankings]), rel=1e-12)


def test_map_at_r_and_precision_at_k_match_a_naive_loop(data):
    rankings = naive_rankings(*data)
    assert map_at_r(*data) == pytest.approx(np.mean([naive_ap_at_r(r) for r in rankings]), rel=1e-12)
    p = precision_at_k(*data, ks=(1, 5, 10, 100))
    assert set(p) == {1, 5, 10}  # k beyond the 55-item gallery is left out
    for k in (1, 5, 10):
        assert p[k] == pytest.approx(np.mean([sum(r[:k]) / k for r in rankings]), rel=1e-12)


def test_precision_recall_curves_match_a_naive_loop(data):
    rankings = naive_rankings(*data)
    levels = np.linspace(0, 1, 11)
    curves = [naive_pr(r, levels) for r in rankings]
    result = precision_recall_curve(*data)
    np.testing.assert_allclose(result["interpolated"], np.mean([c[0] for c in curves], axis=0), rtol=1e-12)
    np.testing.assert_allclose(result["raw"], np.mean([c[1] for c in curves], axis=0), rtol=1e-12)
    assert np.all(np.diff(result["interpolated"]) <= 1e-12)  # interpolated precision never rises with recall


def test_multi_hot_labels_match_a_naive_loop():
    rng = np.random.default_rng(3)
    query_labels, gallery_labels = rng.random((20, 5)) < 0.3, rng.random((30, 5)) < 0.3
    queries, gallery = rng.normal(size=(20, 4)), rng.normal(size=(30, 4))
    assert_no_near_ties(queries, gallery)
    rankings = naive_rankings(queries, query_labels, gallery, gallery_labels)
    assert mean_average_precision(queries, query_labels, gallery, gallery_labels) == pytest.approx(
        np.mean([naive_ap(r) for r in rankings]), rel=1e-12)


def test_chunked_ranking_gives_the_same_figures(data, monkeypatch):
    whole = evaluate_retrieval(data[0][:40], data[2][:40], data[1], data[3][:40])
    monkeypatch.setattr(retrieval, "_CHUNK_ELEMENTS", 3 * 40)  # 3 queries per chunk
    chunked = evaluate_retrieval(data[0][:40], data[2][:40], data[1], data[3][:40])
    assert flatten(chunked) == pytest.approx(flatten(whole), rel=1e-12)
    assert len(list(retrieval.ranked_relevance(data[0], data[1], data[2][:40], data[3][:40]))) == math.ceil(40 / 3)


def test_hand_computed_average_precision():
    # Query of class 0; cosines rank gallery items 0 (rel), 1 (not), 2 (rel), 3 (not).
    query, query_label = np.array([[1.0, 0.0]]), np.array([0])
    gallery = np.array([[1.0, 0.0], [0.9, 0.3], [0.5, 0.6], [0.0, 1.0]])
    labels = np.array([0, 1, 0, 1])
    # AP@all = (1/2) (1/1 + 2/3) = 5/6; AP@2 = (1/1) / 1 = 1; AP@R (R = 2): (1/1) / 2 = 1/2.
    assert mean_average_precision(query, query_label, gallery, labels) == pytest.approx(5 / 6)
    assert mean_average_precision(query, query_label, gallery, labels, k=2) == pytest.approx(1.0)
    assert map_at_r(query, query_label, gallery, labels) == pytest.approx(0.5)
    assert precision_at_k(query, query_label, gallery, labels, ks=(1, 2, 3)) == pytest.approx({1: 1, 2: 0.5, 3: 2 / 3})
    curve = precision_recall_curve(query, query_label, gallery, labels, recall_levels=[0.0, 0.5, 0.6, 1.0])
    assert curve["interpolated"] == pytest.approx([1, 1, 2 / 3, 2 / 3])
    assert curve["raw"] == pytest.approx([1, 1, 2 / 3, 2 / 3])
    assert average_precision_at([[False, True, True, False]]) == pytest.approx([(1 / 2 + 2 / 3) / 2])


def test_map_matches_a_hand_computation_of_two_queries():
    # Query 0 (label 0) ranks the gallery [g0 (0), g2 (1), g1 (0)]: AP = (1/1 + 2/3) / 2.
    # Query 1 (label 1) ranks [g2 (1), g0, g1]: AP = 1.
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = np.array([[1.0, 0.2], [1.0, 1.1]])
    got = mean_average_precision(queries, np.array([0, 1]), gallery, np.array([0, 0, 1]))
    assert got == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_ties_keep_gallery_order():
    # Items 0 and 1 point the same way: the irrelevant item 0 stays ahead of the relevant item 1. Their
    # normalised coordinates are 0 and 1 and the query's too, so both cosines are exactly 1 on any CPU kernel
    # (a tie of, say, [1, 1] and [2, 2] could differ in the last bit after normalisation and matmul).
    gallery = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    labels = np.array([1, 0, 0])
    # Ranking: 0 (not), 1 (rel), 2 (rel): AP = (1/2 + 2/3) / 2.
    assert mean_average_precision(np.array([[1.0, 0.0]]), np.array([0]), gallery, labels) == pytest.approx(7 / 12)
    assert mean_average_precision(np.array([[1.0, 0.0]]), np.array([1]), gallery, labels) == pytest.approx(1.0)


def test_query_without_relevant_items_scores_zero_and_is_left_out_of_pr():
    gallery, labels = np.eye(3), np.array([0, 0, 1])
    queries, query_labels = np.array([[1.0, 0, 0], [0, 0, 1.0]]), np.array([0, 2])
    assert mean_average_precision(queries, query_labels, gallery, labels) == pytest.approx(0.5)
    assert precision_recall_curve(queries, query_labels, gallery, labels)["interpolated"][0] == pytest.approx(1.0)


def test_bad_inputs_name_the_argument():
    codes = np.zeros((3, 2))
    with pytest.raises(ValueError, match="gallery_codes have dim"):
        mean_average_precision(codes, [0, 1, 2], np.zeros((3, 4)), [0, 1, 2])
    with pytest.raises(ValueError, match="gallery_labels"):
        mean_average_precision(codes, [0, 1, 2], codes, [0, 1])
    with pytest.raises(ValueError, match="query_codes contains NaN"):
        mean_average_precision(codes + np.nan, [0, 1, 2], codes, [0, 1, 2])


def test_evaluate_retrieval_is_json_ready_and_matches_the_single_metrics(data):
    image, labels = data[0], data[1]
    text = image + np.random.default_rng(1).normal(size=image.shape)
    result = evaluate_retrieval(image, text, labels, labels)
    assert json.loads(json.dumps(result)) == result
    assert result["map_avg"] == pytest.approx((result["map_i2t"] + result["map_t2i"]) / 2)
    assert result["map_i2t"] == pytest.approx(mean_average_precision(image, labels, text, labels), rel=1e-12)
    assert result["map_t2i"] == pytest.approx(mean_average_precision(text, labels, image, labels), rel=1e-12)
    assert result["map_at_r_t2i"] == pytest.approx(map_at_r(text, labels, image, labels), rel=1e-12)
    assert result["map_at_k"]["i2t"]["50"] == pytest.approx(mean_average_precision(image, labels, text, labels, k=50))
    assert result["precision_at_k"]["t2i"]["10"] == pytest.approx(precision_at_k(text, labels, image, labels)[10])
    assert "100" not in result["precision_at_k"]["i2t"]  # only 40 items to retrieve
    curve = precision_recall_curve(image, labels, text, labels)
    assert result["pr_curve"]["i2t"] == pytest.approx(curve["interpolated"])
    assert result["pr_curve"]["i2t_raw"] == pytest.approx(curve["raw"])
    assert len(result["pr_curve"]["recall"]) == len(result["pr_curve"]["t2i"]) == 11


def test_plots_write_png_files_atomically(tmp_path, data):
    from chtn_tf.metrics import plots

    results = evaluate_retrieval(data[0], data[0] + 0.5, data[1], data[1])
    plots.plot_pr_curves(results, str(tmp_path / "pr.png"))
    history = {"loss": [3.0, 2.0, 1.5], "val_loss": [3.1, 2.4, 2.0], "mmd_fc7": [0.0, 0.0, 0.0],
               "pair_fc7": [0.5, 0.2, 0.1], "val_map_avg": [0.2, 0.25, 0.3]}
    plots.plot_training_curves(history, str(tmp_path / "sub" / "curves.png"))
    plots.plot_training_curves({}, str(tmp_path / "empty.png"))
    for name in ("pr.png", "sub/curves.png", "empty.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["curves.png", "empty.png", "pr.png"]
