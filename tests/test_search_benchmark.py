"""benchmarks/search.py's measuring parts: the streamed exact top-k, the tie-aware recall, the generated galleries."""

import numpy as np
import pytest

from benchmarks import search
from export.index import normalise


def test_streamed_top_k_equals_a_scan_of_the_whole_gallery():
    rng = np.random.default_rng(0)
    gallery, queries = normalise(rng.normal(size=(2500, 12))), normalise(rng.normal(size=(7, 12)))
    top = search.StreamedTopK(queries)
    for start in range(0, 2500, 700):  # uneven blocks, the last one short
        top.add(gallery[start:start + 700], start)
    scores = queries.astype(np.float64) @ gallery.T.astype(np.float64)
    for q in range(7):  # reference: a full sort in float64; the order of near-equal scores is not asserted
        want = np.sort(scores[q])[::-1][:search.TRUTH_K]
        np.testing.assert_allclose(top.scores[q], want, atol=1e-5, rtol=0)
        np.testing.assert_allclose(scores[q][top.ids[q]], want, atol=1e-5, rtol=0)
    assert all(len(set(ids.tolist())) == search.TRUTH_K for ids in top.ids)


def test_recalls_count_ties_as_found():
    # Rows 0-3 are one vector; row 4 is orthogonal, row 5 opposite. Any 2 of rows 0-3 are a correct top-2.
    gallery = normalise(np.array([[1, 0], [1, 0], [1, 0], [1, 0], [0, 1], [-1, 0]], np.float32))
    query = np.array([[1.0, 0.0]], np.float32)
    recall = search.recall_in_memory(gallery, query, k=2)
    assert recall(np.array([[3, 2]])) == 1.0
    assert recall(np.array([[3, 4]])) == 0.5
    assert recall(np.array([[-1, 0]])) == 0.5  # -1: a slot the index left empty
    top = search.StreamedTopK(query)
    top.add(np.repeat(gallery[:4], 30, axis=0), 0)  # 120 tied rows: more than the TRUTH_K = 100 kept
    with pytest.raises(ValueError, match="raise TRUTH_K"):
        search.recall_streamed(top, k=2)  # rows beyond the kept 100 might tie too: refused, not guessed
    top = search.StreamedTopK(query)
    top.add(np.repeat(gallery, 16, axis=0)[:100], 0)  # 64 tied rows, the rest lower: all within the kept 100
    streamed = search.recall_streamed(top, k=2)
    assert streamed(np.array([[5, 40]])) == 1.0 and streamed(np.array([[5, 70]])) == 0.5


def test_generated_rows_do_not_depend_on_how_they_are_asked_for():
    stats = {"mean": np.full(6, 0.3), "between_components": np.eye(6)[:3], "between_std": np.array([0.5, 0.3, 0.1]),
             "within_components": np.eye(6)[:2], "within_std": np.array([0.05, 0.02]), "floor_std": 0.01,
             "radius_scale": np.array([0.5, 1.0, 1.5]), "sizes": np.array([1.0, 5.0, 10.0])}
    for source in (search.ClusteredCodes(stats, blobs=40, seed=3), search.RandomCodes(6, seed=3)):
        whole = search.materialise(source, 10, stream=0)
        assert whole.shape == (10, 6) and np.allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-6)
        assert np.array_equal(whole, source.block(0, 0, 10))  # same seed, same block: same rows
        assert not np.allclose(whole, search.materialise(source, 10, stream=1))  # queries: other draws
    clustered = search.ClusteredCodes(stats, blobs=40, seed=3)
    codes = clustered.block(0, 0, 4000)
    # Codes lie near their blob's centre: a code's nearest centre explains it far better than the mean does.
    centres = normalise(clustered.centres)
    nearest = np.max(codes @ centres.T, axis=1)
    assert np.median(nearest) > 0.99 and np.median(codes @ normalise(stats["mean"][None])[0]) < np.median(nearest)


def test_code_statistics_of_a_known_mixture():
    # Two tight clusters around orthogonal directions; noise 0.01 per coordinate, of which normalising to unit
    # length removes the radial part: within-cluster variance ~ 7 x 0.01^2.
    rng = np.random.default_rng(1)
    centres = np.eye(8)[:2]
    codes = np.repeat(centres, 300, axis=0) + 0.01 * rng.normal(size=(600, 8))
    stats = search.code_statistics(codes, clusters=2, within_rank=4)
    assert stats["clusters"] == 2 and stats["codes"] == 600 and sorted(stats["sizes"]) == [300, 300]
    total_within = np.sum(stats["within_std"] ** 2) + 4 * stats["floor_std"] ** 2
    assert total_within == pytest.approx(7 * 0.01 ** 2, rel=0.3)
    # Between clusters: one direction (centre 1 minus centre 0), each centre 1/sqrt(2) from their mean.
    assert stats["between_std"][0] == pytest.approx(np.sqrt(0.5), rel=0.02) and stats["between_std"][1] < 1e-6
    np.testing.assert_allclose(np.abs(stats["between_components"][0][:2]), [np.sqrt(0.5)] * 2, atol=0.01)
    np.testing.assert_allclose(stats["mean"], [0.5, 0.5, 0, 0, 0, 0, 0, 0], atol=0.01)
