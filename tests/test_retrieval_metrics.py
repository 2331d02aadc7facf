"""Retrieval metrics against a naive pure-Python reference and a hand-computed example."""

import numpy as np
import pytest

from chtn_tf.metrics.retrieval import (evaluate_retrieval, map_at_r, mean_average_precision, precision_at_k,
                                       precision_recall_curve)


def naive_rankings(queries, query_labels, gallery, gallery_labels):
    out = []
    for q, ql in zip(queries, query_labels):
        scores = []
        for j, g in enumerate(gallery):
            cosine = float(np.dot(q, g) / (np.linalg.norm(q) * np.linalg.norm(g)))
            scores.append((-cosine, j))
        scores.sort()
        out.append([gallery_labels[j] == ql for _, j in scores])
    return out


def naive_ap(relevant, k=None):
    relevant = relevant[:k] if k else relevant
    hits, total = 0, 0.0
    for rank, rel in enumerate(relevant, 1):
        if rel:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(40, 6)), rng.integers(0, 4, 40), rng.normal(size=(55, 6)), rng.integers(0, 4, 55))


def test_map_at_all_and_at_k_match_a_naive_loop(data):
    rankings = naive_rankings(*data)
    assert mean_average_precision(*data) == pytest.approx(np.mean([naive_ap(r) for r in rankings]), rel=1e-9)
    assert mean_average_precision(*data, k=10) == pytest.approx(np.mean([naive_ap(r, 10) for r in rankings]), rel=1e-9)


def test_map_at_r_and_precision_at_k_match_a_naive_loop(data):
    rankings = naive_rankings(*data)
    expected_r = np.mean([sum(sum(r[:i + 1]) / (i + 1) for i in range(sum(r)) if r[i]) / max(sum(r), 1) for r in rankings])
    assert map_at_r(*data) == pytest.approx(expected_r, rel=1e-9)
    p = precision_at_k(*data, ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert p[k] == pytest.approx(np.mean([sum(r[:k]) / k for r in rankings]), rel=1e-9)


def test_hand_computed_average_precision():
    # Query of class 0; gallery cosines rank items 0 (rel), 1 (not), 2 (rel), 3 (not).
    query = np.array([[1.0, 0.0]])
    gallery = np.array([[1.0, 0.0], [0.9, 0.3], [0.5, 0.6], [0.0, 1.0]])
    labels = np.array([0, 1, 0, 1])
    # AP = (1/2) * (1/1 + 2/3) = 0.8333
    assert mean_average_precision(query, np.array([0]), gallery, labels) == pytest.approx(5 / 6)
    curve = precision_recall_curve(query, np.array([0]), gallery, labels)
    assert curve[0] == pytest.approx(1.0) and curve[-1] == pytest.approx(2 / 3)


def test_evaluate_retrieval_is_json_ready_and_symmetric(data):
    import json

    image, labels, text, _ = data[0], data[1], data[0] + 0.1, data[1]
    result = evaluate_retrieval(image, text, labels, labels)
    json.dumps(result)
    assert result["map_avg"] == pytest.approx((result["map_i2t"] + result["map_t2i"]) / 2)
    assert result["map_i2t"] == pytest.approx(mean_average_precision(image, labels, text, labels))
    assert len(result["pr_curve"]["recall"]) == len(result["pr_curve"]["i2t"]) == 11
