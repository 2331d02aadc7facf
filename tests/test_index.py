"""Retrieval index over the exported SavedModels: build + query on fixtures, FAISS exact search against a naive
loop, the approximate indexes' recall against exact search, sharded index files searched as one, the run's own
split, and the CLI's answers to misuse.

Rankings are checked tie-robustly (:func:`assert_valid_top_k`): scores from FAISS, numpy and a Python loop
differ in the last bits depending on the CPU's kernels, so the order of (near-)equal scores is never asserted.
"""

import csv
import json
import os
import shutil

import faiss
import numpy as np
import pytest
import tensorflow as tf

from chtn_tf.data import load_dataset
from chtn_tf.model.config import ExperimentConfig
from export import index as retrieval_index

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def wiki_index(feature_run, tmp_path_factory):
    """An index of the whole Wikipedia fixture (90 pairs) through the features run's SavedModels."""
    out = str(tmp_path_factory.mktemp("wiki_index") / "index")
    retrieval_index.build(feature_run["serving"], out, dataset="wikipedia", data_dir=feature_run["data_dir"],
                          split="all")
    return out


def naive_scores(gallery, query) -> np.ndarray:
    """Reference: the cosine of every gallery row with ``query``, by a Python loop in float64."""
    query = np.asarray(query, np.float64)
    return np.array([float(np.dot(g, query) / (np.linalg.norm(g) * np.linalg.norm(query)))
                     for g in np.asarray(gallery, np.float64)])


def assert_valid_top_k(ids, scores, reference, k):
    """``ids`` / ``scores`` (one query's results) are a correct top-``k`` by the ``reference`` scores of every
    gallery row: best first, no repeats, each id's true score equal (within TOLERANCE) to the k best true scores
    rank by rank. Items tied within the tolerance may come in any order."""
    ids = [int(i) for i in ids]
    want = np.sort(reference)[::-1][:k]
    assert len(ids) == len(want) and len(set(ids)) == len(ids)
    np.testing.assert_allclose(reference[ids], want, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(scores, want, atol=TOLERANCE, rtol=0)


def clustered(rng, n, *, dim=16, clusters=50, spread=0.3):
    centres = rng.normal(size=(clusters, dim))
    return retrieval_index.normalise(centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim)))


def test_image_query_finds_texts_as_ranked_by_the_saved_models(image_run, tmp_path):
    out = str(tmp_path / "index")
    info = retrieval_index.build(image_run["serving"], out, manifest=image_run["manifest"], split="test")
    assert info["n"] == 6 and set(info["recall_at_10"]) == {"images", "texts"} and info["dropped"] == []
    query_file = str(image_run["root"] / "data" / "img" / "green6.png")  # a train image, not in the gallery
    rows = retrieval_index.query(out, image=query_file, k=4)

    meta = json.loads(open(f"{out}/index.json", encoding="utf-8").read())
    image_model = tf.saved_model.load(image_run["written"]["image"]).signatures["serving_default"]
    # The text gallery holds the texts' gallery codes (serving_gallery), not their query codes.
    text_model = tf.saved_model.load(image_run["written"]["text"]).signatures["serving_gallery"]
    test = load_dataset(manifest=image_run["manifest"]).splits["test"]
    gallery = text_model(text=tf.constant(list(test.texts)))["embedding"].numpy()
    query = image_model(image_bytes=tf.constant([open(query_file, "rb").read()]))["embedding"].numpy()[0]
    positions = [list(test.ids).index(r["id"]) for r in rows]
    assert_valid_top_k(positions, [r["score"] for r in rows], naive_scores(gallery, query), 4)
    assert [r["text"] for r in rows] == [test.texts[i] for i in positions]
    assert [r["item"] for r in rows] == [" ".join(test.texts[i].split())[:60] for i in positions]
    assert [r["image_path"] for r in rows] == [test.image_paths[i] for i in positions]
    assert [r["label"] for r in rows] == [load_dataset(manifest=image_run["manifest"]).class_names[test.labels[i]]
                                          for i in positions]
    assert [r["kind"] for r in rows] == ["text"] * 4 and [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert meta["image_model"] == image_run["written"]["image"]
    assert meta["approximate"] == {"kind": "ivf", "nprobe": retrieval_index.DEFAULT_NPROBE,
                                   "ef_search": retrieval_index.DEFAULT_EF_SEARCH,
                                   "recall_at_10": info["recall_at_10"]}
    assert retrieval_index.DEFAULT_NPROBE == 32
    for files in meta["files"].values():  # FAISS's own files, readable by plain faiss.read_index
        assert faiss.read_index(os.path.join(out, files["exact"][0])).ntotal == 6


def test_text_query_on_a_features_index_and_the_cli(feature_run, wiki_index, capsys):
    assert retrieval_index.main(["query", "--index", wiki_index, "--text", "football match goal", "-k", "5"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    exact = retrieval_index.query(wiki_index, text="football match goal", k=5)
    assert [(int(rank), float(score), id_) for rank, score, _, id_, *_ in lines] == [
        (r["rank"], round(r["score"], 4), r["id"]) for r in exact]
    # Labels shown are the dataset's own labels of those pairs.
    data = load_dataset("wikipedia", data_dir=feature_run["data_dir"])
    truth = {i: data.class_names[label] for split in data.splits.values() for i, label in zip(split.ids, split.labels)}
    assert [line[2] for line in lines] == [truth[line[3]] for line in lines]
    # Every cell scanned: the IVF index finds what exact search finds (scores equal within rounding).
    approx = retrieval_index.query(wiki_index, text="football match goal", k=5, approximate=True, nprobe=10 ** 6)
    np.testing.assert_allclose([r["score"] for r in approx], [r["score"] for r in exact], atol=TOLERANCE, rtol=0)
    assert all(r["image_path"] is None and r["kind"] == "image" for r in exact)  # a features gallery

    with pytest.raises(ValueError, match="takes precomputed features"):
        retrieval_index.query(wiki_index, image=__file__)


def test_query_misuse_is_refused_with_exit_code_2(wiki_index, tmp_path, capsys):
    for text in ("", "   ", "\t\n"):
        assert retrieval_index.main(["query", "--index", wiki_index, "--text", text]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and "--text is empty" in captured.err and "Traceback" not in captured.err
    assert retrieval_index.main(["query", "--index", str(tmp_path / "nope"), "--text", "x"]) == 2
    assert "not an index folder" in capsys.readouterr().err
    assert retrieval_index.main(["query", "--index", wiki_index, "--text", "x", "-k", "0"]) == 2
    assert "-k must be at least 1" in capsys.readouterr().err
    assert retrieval_index.main(["query", "--index", wiki_index, "--image", str(tmp_path / "no.jpg")]) == 2
    assert "no.jpg: no such file" in capsys.readouterr().err
    assert retrieval_index.main(["query", "--index", wiki_index, "--text", "x", "--approximate", "--nprobe", "0"]) == 2
    assert "--nprobe must be at least 1, got 0" in capsys.readouterr().err
    assert retrieval_index.main(["build", "--serving", "nowhere", "--dataset", "wikipedia", "--cells", "0",
                                 "--out", str(tmp_path / "i")]) == 2
    assert "--cells must be at least 1, got 0" in capsys.readouterr().err


def test_build_reads_the_runs_own_split(feature_run, tmp_path, capsys):
    # A run on Wikipedia's 231/462 protocol with seed 3: its test split is a seeded 2/3 of the test pairs.
    config = ExperimentConfig.from_json(os.path.join(feature_run["run"], "config.json"))
    config.train.seed = 3
    config.data.options = {"protocol": "231/462"}
    run = tmp_path / "run"
    run.mkdir()
    config.to_json(str(run / "config.json"))
    out = str(tmp_path / "index")
    assert retrieval_index.main(["build", "--serving", feature_run["serving"], "--run", str(run),
                                 "--out", out]) == 0
    assert "index of 12 image/text pairs" in capsys.readouterr().out
    meta = json.loads(open(f"{out}/index.json", encoding="utf-8").read())

    data_dir = feature_run["data_dir"]
    runs_test = load_dataset("wikipedia", data_dir=data_dir, seed=3, protocol="231/462").splits["test"]
    assert meta["ids"] == list(runs_test.ids) and meta["run"] == str(run)
    assert meta["labels"] == [int(v) for v in runs_test.labels]
    # Both the option and the seed matter, so reading without either gives another split.
    assert len(load_dataset("wikipedia", data_dir=data_dir).splits["test"]) == 18
    assert set(load_dataset("wikipedia", data_dir=data_dir, seed=0, protocol="231/462").splits["test"].ids) != \
        set(runs_test.ids)

    assert retrieval_index.main(["build", "--serving", feature_run["serving"], "--run", str(tmp_path / "none"),
                                 "--out", out]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_build_names_the_pairs_the_reader_dropped(image_run, tmp_path, capsys):
    base = os.path.dirname(image_run["manifest"])
    with open(image_run["manifest"], encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["image"] = os.path.join(base, row["image"])
    rows.append({"image": str(tmp_path / "gone.jpg"), "text": "sea sky", "label": "blue", "split": "test"})
    manifest = tmp_path / "pairs.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "text", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    out = str(tmp_path / "index")
    assert retrieval_index.main(["build", "--serving", image_run["serving"], "--manifest", str(manifest),
                                 "--split", "test", "--out", out]) == 0
    printed = capsys.readouterr().out
    dropped_id = f"pairs.csv:{len(rows) + 1}"  # the manifest reader's id: file name and line
    assert "index of 6 image/text pairs" in printed
    assert f"1 pairs dropped by the reader (see `python -m chtn_tf.data.inspect`): {dropped_id}" in printed
    assert json.loads(open(f"{out}/index.json", encoding="utf-8").read())["dropped"] == [dropped_id]


def test_a_rebuild_replaces_the_index_and_pins_the_version(feature_run, tmp_path):
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


def test_sharded_and_hnsw_indexes_answer_like_exact_search(feature_run, wiki_index, tmp_path):
    out = str(tmp_path / "sharded")
    info = retrieval_index.build(feature_run["serving"], out, dataset="wikipedia", data_dir=feature_run["data_dir"],
                                 split="all", approximate="hnsw", shard_size=7, ef_search=200)
    meta = json.loads(open(f"{out}/index.json", encoding="utf-8").read())
    assert [len(meta["files"]["images"][kind]) for kind in ("exact", "hnsw")] == [13, 13]  # 90 rows, 7 per file
    assert info["recall_at_10"] == {"images": 1.0, "texts": 1.0}  # 7 rows per graph: every node is reached
    for text in ("football match goal", "music band album"):
        whole = retrieval_index.query(wiki_index, text=text, k=20)
        for approximate in (False, True):
            rows = retrieval_index.query(out, text=text, k=20, approximate=approximate)
            np.testing.assert_allclose([r["score"] for r in rows], [r["score"] for r in whole], atol=TOLERANCE, rtol=0)
            same_score = {r["id"]: r["score"] for r in whole}
            assert all(abs(same_score.get(r["id"], -9) - r["score"]) <= TOLERANCE for r in rows)


def test_exact_search_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    gallery = retrieval_index.normalise(rng.normal(size=(300, 8)))
    gallery[7] = gallery[3]  # an exact tie: either order is right
    queries = retrieval_index.normalise(rng.normal(size=(20, 8)))
    queries[0] = gallery[3]
    for k in (1, 10, 300, 400):
        indices, scores = retrieval_index.exact_search(gallery, queries, k)
        assert indices.shape == (20, min(k, 300))
        for q in range(len(queries)):
            assert_valid_top_k(indices[q], scores[q], naive_scores(gallery, queries[q]), k)
    assert sorted(retrieval_index.exact_search(gallery, queries, 2)[0][0].tolist()) == [3, 7]


def test_shards_searched_as_one_index(tmp_path):
    rng = np.random.default_rng(1)
    gallery, queries = clustered(rng, 3000), clustered(rng, 40)
    reference = [naive_scores(gallery, q) for q in queries]
    for kind, parameters in (("exact", {}), ("ivf", {"nprobe": 10 ** 6}), ("hnsw", {"ef_search": 3000})):
        files = retrieval_index.write_shards(gallery, kind, str(tmp_path), kind, shard_size=1000, cells=64)
        assert files == [f"{kind}.{kind}.{i}.faiss" for i in range(3)]
        index = retrieval_index.open_index([str(tmp_path / f) for f in files], kind)
        assert isinstance(index, faiss.IndexShardsIVF if kind == "ivf" else faiss.IndexShards)
        assert index.ntotal == 3000
        retrieval_index.set_search_parameters(index, **parameters)
        scores, ids = index.search(queries, 10)
        for q in range(len(queries)):  # shard i's rows come after shard i-1's: ids are gallery rows
            assert_valid_top_k(ids[q], scores[q], reference[q], 10)
    # IVF shards share one coarse quantizer, and nprobe reaches every shard: the shards answer as one IVF
    # index holding all rows in those cells does.
    paths = [str(tmp_path / f"ivf.ivf.{i}.faiss") for i in range(3)]
    index = retrieval_index.open_index(paths, "ivf")
    retrieval_index.set_search_parameters(index, nprobe=5)
    shards = [faiss.extract_index_ivf(index.at(i)) for i in range(3)]
    assert [s.nprobe for s in shards] == [5, 5, 5] and [s.nlist for s in shards] == [64] * 3
    whole = retrieval_index.open_index(paths[:1], "ivf", mmap=False)  # shard 0's cells, emptied
    whole.reset()
    whole.add(gallery)
    whole.nprobe = 5
    scores, ids = index.search(queries, 10)
    whole_scores, whole_ids = whole.search(queries, 10)
    np.testing.assert_allclose(scores, whole_scores, atol=TOLERANCE, rtol=0)
    assert retrieval_index.recall_at_k(ids, whole_ids) > 0.99  # same items (up to the order of exact ties)
    with pytest.raises(ValueError, match="--nprobe must be at least 1"):
        retrieval_index.set_search_parameters(index, nprobe=0)
    # A shard of another build (other cells) is refused.
    retrieval_index.write_shards(gallery[:100], "ivf", str(tmp_path), "other", cells=8)
    with pytest.raises(ValueError, match="must be written together"):
        retrieval_index.open_index(paths[:1] + [str(tmp_path / "other.ivf.0.faiss")], "ivf")


def test_approximate_recall_against_exact_search(tmp_path):
    rng = np.random.default_rng(0)
    gallery, queries = clustered(rng, 5000), clustered(rng, 100)
    files = retrieval_index.write_shards(gallery, "ivf", str(tmp_path), "g", cells=100)
    ivf = retrieval_index.open_index([str(tmp_path / files[0])], "ivf", mmap=False)
    assert ivf.nlist == 100 and ivf.ntotal == 5000 and ivf.invlists.compute_ntotal() == 5000
    recall = {}
    for nprobe in (1, 8, 100):
        retrieval_index.set_search_parameters(ivf, nprobe=nprobe)
        recall[nprobe] = retrieval_index.measure_recall(ivf, gallery, queries)
    assert 0.0 < recall[1] < recall[8] <= recall[100] == 1.0 and recall[8] > 0.8
    # With distinct scores (continuous random data), tie-aware recall = recall of ids.
    retrieval_index.set_search_parameters(ivf, nprobe=8)
    exact, _ = retrieval_index.exact_search(gallery, queries, 10)
    assert recall[8] == pytest.approx(retrieval_index.recall_at_k(ivf.search(queries, 10)[1], exact))
    # The memory-mapped file answers as the index in memory did (same code, same data).
    mapped = retrieval_index.open_index([str(tmp_path / files[0])], "ivf")
    retrieval_index.set_search_parameters(mapped, nprobe=8)
    assert np.array_equal(mapped.search(queries, 10)[1], ivf.search(queries, 10)[1])
    # recall_at_k by hand: 2 of 3 found, then 3 of 3.
    found, exact = np.array([[1, 2, 9], [4, 5, 6]]), np.array([[1, 2, 3], [6, 5, 4]])
    assert retrieval_index.recall_at_k(found, exact) == pytest.approx(5 / 6)


class FixedAnswers:
    """Stands in for a FAISS index: answers every search with the given ids (scores unused by measure_recall)."""

    def __init__(self, ids):
        self.ids = np.asarray(ids, np.int64)

    def search(self, queries, k):
        return np.zeros(self.ids.shape, np.float32), self.ids


def test_recall_counts_tied_scores_as_found():
    # Rows 0-3 are one vector (a saturated one-hot embedding); any 2 of them are a correct top-2.
    gallery = retrieval_index.normalise(np.array([[1, 0], [1, 0], [1, 0], [1, 0], [0, 1]], np.float32))
    query = np.array([[1.0, 0.0]], np.float32)
    assert retrieval_index.measure_recall(FixedAnswers([[2, 3]]), gallery, query, k=2) == 1.0
    assert retrieval_index.recall_at_k(np.array([[2, 3]]), np.array([[0, 1]])) == 0.0  # by ids: nothing found
    assert retrieval_index.measure_recall(FixedAnswers([[2, 4]]), gallery, query, k=2) == 0.5
    assert retrieval_index.measure_recall(FixedAnswers([[2, -1]]), gallery, query, k=2) == 0.5  # -1: not found
    assert retrieval_index.measure_recall(FixedAnswers([[0]]), gallery, np.array([[0.0, 1.0]], np.float32),
                                          k=1) == 0.0
