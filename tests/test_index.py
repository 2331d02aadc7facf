"""Retrieval index over the exported SavedModels: build + query on fixtures, exact search against a naive
loop, the IVF index's recall against exact search."""

import json

import numpy as np
import pytest
import tensorflow as tf

from chtn_tf.data import load_dataset
from export import index as retrieval_index
from tests import fixtures_export


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory):
    return fixtures_export.feature_run(tmp_path_factory)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    return fixtures_export.image_run(tmp_path_factory)


def naive_top_k(gallery, query, k):
    """Reference: cosine of every gallery row by a Python loop, sorted (ties by gallery order)."""
    scored = [(-float(np.dot(g, query) / (np.linalg.norm(g) * np.linalg.norm(query))), i)
              for i, g in enumerate(gallery)]
    return [i for _, i in sorted(scored)[:k]], [-s for s, _ in sorted(scored)[:k]]


def test_image_query_finds_texts_as_ranked_by_the_saved_models(image_run, tmp_path):
    out = str(tmp_path / "index")
    info = retrieval_index.build(image_run["serving"], out, manifest=image_run["manifest"], split="test")
    assert info["n"] == 6 and set(info["recall_at_10"]) == {"images", "texts"}
    query_file = str(image_run["root"] / "data" / "img" / "green6.png")  # a train image, not in the gallery
    rows = retrieval_index.query(out, image=query_file, k=4)

    meta = json.loads(open(f"{out}/index.json", encoding="utf-8").read())
    image_model = tf.saved_model.load(image_run["written"]["image"]).signatures["serving_default"]
    text_model = tf.saved_model.load(image_run["written"]["text"]).signatures["serving_default"]
    texts = [line.split(",")[1] for line in open(image_run["manifest"], encoding="utf-8").read().splitlines()[1:]
             if line.endswith(",test")]
    gallery = text_model(text=tf.constant(texts))["embedding"].numpy()
    query = image_model(image_bytes=tf.constant([open(query_file, "rb").read()]))["embedding"].numpy()[0]
    want_ids, want_scores = naive_top_k(gallery, query, 4)
    assert [r["item"] for r in rows] == [" ".join(texts[i].split())[:60] for i in want_ids]
    np.testing.assert_allclose([r["score"] for r in rows], want_scores, rtol=1e-5, atol=1e-6)
    assert [r["kind"] for r in rows] == ["text"] * 4 and [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert all(r["label"] in ("red", "green", "blue") for r in rows)
    assert meta["image_model"] == image_run["written"]["image"]
    assert meta["ivf"]["nprobe"] == retrieval_index.DEFAULT_NPROBE == 32


def test_text_query_on_a_features_index_and_the_cli(feature_run, tmp_path, capsys):
    out = str(tmp_path / "wiki_index")
    assert retrieval_index.main(["build", "--serving", feature_run["serving"], "--dataset", "wikipedia",
                                 "--data-dir", feature_run["data_dir"], "--split", "all", "--out", out]) == 0
    assert "index of 90 image/text pairs" in capsys.readouterr().out
    assert retrieval_index.main(["query", "--index", out, "--text", "football match goal", "-k", "5"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    exact = retrieval_index.query(out, text="football match goal", k=5)
    assert [(int(rank), float(score), id_) for rank, score, _, id_, *_ in lines] == [
        (r["rank"], round(r["score"], 4), r["id"]) for r in exact]
    # Labels shown are the dataset's own labels of those pairs.
    data = load_dataset("wikipedia", data_dir=feature_run["data_dir"])
    truth = {i: data.class_names[label] for split in data.splits.values() for i, label in zip(split.ids, split.labels)}
    assert [line[2] for line in lines] == [truth[line[3]] for line in lines]
    approx = retrieval_index.query(out, text="football match goal", k=5, approximate=True, nprobe=10 ** 6)
    assert [r["id"] for r in approx] == [r["id"] for r in exact]  # every cell scanned = exact

    with pytest.raises(ValueError, match="takes precomputed features"):
        retrieval_index.query(out, image=__file__)
    assert retrieval_index.main(["query", "--index", str(tmp_path / "nope"), "--text", "x"]) == 2
    assert "not an index folder" in capsys.readouterr().err


def test_a_rebuild_replaces_the_index_and_pins_the_version(feature_run, tmp_path):
    import shutil

    serving = tmp_path / "serving"
    shutil.copytree(feature_run["serving"], serving)
    out = str(tmp_path / "index")
    retrieval_index.build(str(serving), out, dataset="wikipedia", data_dir=feature_run["data_dir"], split="test")
    shutil.copytree(serving / "chtn_image" / "1", serving / "chtn_image" / "2")  # a newer export appears
    shutil.copytree(serving / "chtn_text" / "1", serving / "chtn_text" / "2")
    meta = json.loads(open(f"{out}/index.json", encoding="utf-8").read())
    assert meta["text_model"] == str(serving / "chtn_text" / "1")
    retrieval_index.build(str(serving), out, dataset="wikipedia", data_dir=feature_run["data_dir"], split="train")
    meta = json.loads(open(f"{out}/index.json", encoding="utf-8").read())
    assert meta["split"] == "train" and meta["text_model"] == str(serving / "chtn_text" / "2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "serving"]  # no temporary folders left


def test_exact_search_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    gallery = retrieval_index.normalise(rng.normal(size=(300, 8)))
    gallery[7] = gallery[3]  # a tie: the earlier row ranks first
    queries = retrieval_index.normalise(rng.normal(size=(20, 8)))
    queries[0] = gallery[3]
    for k in (1, 10, 300, 400):
        indices, scores = retrieval_index.exact_search(gallery, queries, k)
        for q in range(len(queries)):
            want_ids, want_scores = naive_top_k(gallery, queries[q], k)
            assert indices[q].tolist() == want_ids
            np.testing.assert_allclose(scores[q], want_scores, rtol=1e-5, atol=1e-6)
    assert retrieval_index.exact_search(gallery, queries, 2)[0][0].tolist() == [3, 7]


def test_ivf_recall_against_exact_search():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 16))
    gallery = retrieval_index.normalise(centres[rng.integers(0, 50, 5000)] + 0.3 * rng.normal(size=(5000, 16)))
    queries = retrieval_index.normalise(centres[rng.integers(0, 50, 100)] + 0.3 * rng.normal(size=(100, 16)))
    ivf = retrieval_index.IVFIndex(gallery, seed=0)
    assert sorted(np.concatenate(ivf.cells).tolist()) == list(range(5000))  # every row in exactly one cell
    assert retrieval_index.measure_recall(ivf, queries, nprobe=len(ivf.cells)) == 1.0
    few = retrieval_index.measure_recall(ivf, queries, nprobe=1)
    some = retrieval_index.measure_recall(ivf, queries, nprobe=8)
    assert 0.0 < few < some <= 1.0 and some > 0.8
    exact, _ = retrieval_index.exact_search(gallery, queries, 10)
    assert some == retrieval_index.recall_at_k(ivf.search(queries, 10, nprobe=8)[0], exact)  # no ties here
    restored = retrieval_index.IVFIndex.from_arrays(gallery, ivf.centroids, ivf.assignments)
    assert np.array_equal(restored.search(queries, 10)[0], ivf.search(queries, 10)[0])
    # recall_at_k by hand: 2 of 3 found, then 3 of 3.
    found, exact = np.array([[1, 2, 9], [4, 5, 6]]), np.array([[1, 2, 3], [6, 5, 4]])
    assert retrieval_index.recall_at_k(found, exact) == pytest.approx(5 / 6)


def test_recall_counts_tied_scores_as_found():
    # Rows 0-3 are one vector (a saturated one-hot embedding); any 2 of them are a correct top-2.
    gallery = retrieval_index.normalise(np.array([[1, 0], [1, 0], [1, 0], [1, 0], [0, 1]], np.float32))
    ivf = retrieval_index.IVFIndex.from_arrays(gallery, np.array([[1, 0], [0, 1]], np.float32),
                                               np.array([1, 1, 0, 0, 1]))  # rows 0, 1 put in the far cell
    query = np.array([[1.0, 0.0]], np.float32)
    found, _ = ivf.search(query, 2, nprobe=1)
    assert sorted(found[0].tolist()) == [2, 3]  # exact search says [0, 1]: ids differ, scores tie
    assert retrieval_index.recall_at_k(found, np.array([[0, 1]])) == 0.0
    assert retrieval_index.measure_recall(ivf, query, k=2, nprobe=1) == 1.0
    missing = retrieval_index.IVFIndex.from_arrays(gallery, ivf.centroids, np.array([1, 1, 0, 0, 0]))
    assert missing.search(np.array([[0.0, 1.0]], np.float32), 1, nprobe=1)[0].tolist() == [[0]]  # not row 4
    assert retrieval_index.measure_recall(missing, np.array([[0.0, 1.0]], np.float32), k=1, nprobe=1) == 0.0
