"""The examples page: query choice, ranking and AP against a naive loop, and what the HTML shows (parsed back)."""

import base64
import io
import math

import numpy as np
import pytest
from PIL import Image

from chtn_tf.metrics import examples_page
from chtn_tf.metrics.examples_page import (Item, Query, Result, Section, rank_examples, select_queries,
                                           split_examples, write_examples_page)
from tests.fixtures_data import write_image, write_truncated_jpeg
from tests.fixtures_pages import parse_examples_page

CLASSES = ["art", "biology", "sport"]


def naive_rank(query, gallery):
    """Gallery indices by cosine descending, ties by index, with the cosines (pure Python)."""
    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
    scored = sorted((-cosine(query, g), j) for j, g in enumerate(gallery))
    return [j for _, j in scored], [-s for s, _ in scored]


def naive_ap(relevant):
    hits, total = 0, 0.0
    for rank, rel in enumerate(relevant, 1):
        if rel:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def test_select_queries_is_seeded_distinct_and_spread_over_the_classes():
    labels = np.repeat(np.arange(10), 7)
    chosen = select_queries(labels, count=8, seed=3)
    assert len(chosen) == 8 and len(set(chosen.tolist())) == 8
    assert len(set(labels[chosen].tolist())) == 8  # 10 classes: 8 different ones
    assert np.array_equal(chosen, select_queries(labels, count=8, seed=3))
    assert not np.array_equal(chosen, select_queries(labels, count=8, seed=4))

    few = np.array([0] * 20 + [1] * 20 + [2] * 2)  # 3 classes, one of them small
    chosen = select_queries(few, count=8, seed=0)
    counts = np.bincount(few[chosen], minlength=3)
    assert len(set(chosen.tolist())) == 8 and counts.tolist() == [3, 3, 2]  # round robin until class 2 runs out
    assert len(select_queries(np.array([0, 1, 1]), count=8, seed=0)) == 3  # fewer items than queries


def test_rank_examples_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(30, 5))
    gallery[7] = gallery[3] * 2.0  # a tie (same direction): gallery order decides
    gallery_labels = rng.integers(0, 3, size=30)
    queries = rng.normal(size=(6, 5))
    queries[0] = gallery[3]
    query_labels = rng.integers(0, 3, size=6)
    top, scores, aps = rank_examples(queries, query_labels, gallery, gallery_labels, top_k=5)
    for q in range(6):
        order, cosines = naive_rank(queries[q].tolist(), gallery.tolist())
        if q == 0:
            assert order[:2] == [3, 7]
        assert top[q].tolist() == order[:5]
        np.testing.assert_allclose(scores[q], cosines[:5], atol=1e-9)
        assert aps[q] == pytest.approx(naive_ap([gallery_labels[j] == query_labels[q] for j in order]))


def _fixture_split(tmp_path, n_per_class=4, *, with_images=True):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), n_per_class)
    centres = np.eye(3) * 4
    image_codes = centres[labels] + rng.normal(size=(len(labels), 3))
    text_codes = centres[labels] + rng.normal(size=(len(labels), 3))
    ids = [f"p{i}" for i in range(len(labels))]
    texts = [f"text <b>{i}</b> about {CLASSES[c]} & more " + "word " * 200 for i, c in enumerate(labels)]
    paths = None
    if with_images:
        colors = [(220, 40, 40), (40, 180, 60), (40, 60, 220)]
        paths = [str(write_image(tmp_path / f"img{i}.jpg", size=300, color=colors[c])) for i, c in enumerate(labels)]
    return image_codes, text_codes, labels, ids, texts, paths


def test_page_shows_each_query_its_top_results_with_marks_and_ap(tmp_path):
    image_codes, text_codes, labels, ids, texts, paths = _fixture_split(tmp_path)
    sections = split_examples(image_codes, text_codes, labels, ids=ids, texts=texts, class_names=CLASSES,
                              image_paths=paths, seed=0)
    out = tmp_path / "examples.html"
    info = write_examples_page(str(out), sections, title="t <x>", notes=["a note"])
    page = parse_examples_page(out)
    assert info["bytes"] == out.stat().st_size < 5 * 1024 * 1024
    assert [s["title"] for s in page["sections"]] == ["Image → text", "Text → image"]
    label_of = dict(zip(ids, (CLASSES[c] for c in labels)))
    for section, query_codes, gallery_codes in zip(page["sections"], (image_codes, text_codes),
                                                   (text_codes, image_codes)):
        assert len(section["queries"]) == 8
        for query in section["queries"]:
            q = ids.index(query["item"]["id"])
            assert query["item"]["label"] == label_of[query["item"]["id"]]
            order, cosines = naive_rank(query_codes[q].tolist(), gallery_codes.tolist())
            shown = [r["id"] for r in query["results"]]
            assert shown == [ids[j] for j in order[:5]]
            assert [float(r["score"]) for r in query["results"]] == pytest.approx(cosines[:5], abs=6e-4)
            expected_ap = naive_ap([labels[j] == labels[q] for j in order])
            assert float(query["item"]["ap"].split()[1]) == pytest.approx(expected_ap, abs=6e-4)
            for result in query["results"]:
                right = label_of[result["id"]] == label_of[query["item"]["id"]]
                assert result["label"] == label_of[result["id"]]
                assert result["mark"] == ("✓" if right else "✗")
                assert ("right" if right else "wrong") in result["classes"]
    # 8 query images + 8 x 5 result images, each a decodable small JPEG embedded in the page.
    assert len(page["images"]) == 48 == info["thumbnails"]
    for attrs in page["images"]:
        assert attrs["src"].startswith("data:image/jpeg;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(attrs["src"].split(",", 1)[1])))
        assert image.format == "JPEG" and max(image.size) <= examples_page.QUERY_THUMBNAIL
        assert (int(attrs["width"]), int(attrs["height"])) == image.size
    html = out.read_text(encoding="utf-8")
    assert "<b>" not in html and "&lt;b&gt;" in html and "t &lt;x&gt;" in html  # texts are escaped
    assert "http://" not in html and "https://" not in html and "<script" not in html  # nothing fetched


def test_feature_only_images_show_their_id(tmp_path):
    image_codes, text_codes, labels, ids, texts, _ = _fixture_split(tmp_path, with_images=False)
    sections = split_examples(image_codes, text_codes, labels, ids=ids, texts=texts, class_names=CLASSES,
                              image_paths=None, seed=0)
    out = tmp_path / "examples.html"
    write_examples_page(str(out), sections, title="features")
    page = parse_examples_page(out)
    assert page["images"] == []
    image_queries = page["sections"][0]["queries"]
    assert all(q["item"]["noimage"].startswith(f"image {q['item']['id']}") for q in image_queries)
    image_results = [r for q in page["sections"][1]["queries"] for r in q["results"]]
    assert len(image_results) == 40 and all(r["noimage"].startswith(f"image {r['id']}") for r in image_results)


def test_unreadable_image_is_reported_and_shown_as_its_id(tmp_path):
    good = str(write_image(tmp_path / "good.jpg", size=64))
    bad = str(write_truncated_jpeg(tmp_path / "bad.jpg"))
    query = Query(Item("text", "q1", "art", text="a query"),
                  [Result(Item("image", "a", "art", image_path=good), 0.9),
                   Result(Item("image", "b", "sport", image_path=bad), 0.8),
                   Result(Item("image", "c", "art", image_path=str(tmp_path / "gone.jpg")), 0.7)])
    out = tmp_path / "page.html"
    info = write_examples_page(str(out), [Section("Text → image", [query])], title="x")
    assert [u[0] for u in info["unreadable"]] == ["b", "c"]
    results = parse_examples_page(out)["sections"][0]["queries"][0]["results"]
    assert len(results[0]["images"]) == 1
    assert results[1]["images"] == [] and "cannot be decoded" in results[1]["noimage"]
    assert results[2]["images"] == [] and "file not found" in results[2]["noimage"]


def test_unlabelled_query_gets_no_marks_and_no_ap(tmp_path):
    query = Query(Item("text", "my query", None, text="足球比赛"),
                  [Result(Item("text", "x", "sport", text="t"), 0.5)])
    out = tmp_path / "page.html"
    write_examples_page(str(out), [Section("Text → text", [query])], title="ad hoc")
    parsed = parse_examples_page(out)["sections"][0]["queries"][0]
    assert "ap" not in parsed["item"] and parsed["results"][0]["mark"] == ""
    assert "unmarked" in parsed["results"][0]["classes"]
    assert "足球比赛" in out.read_text(encoding="utf-8")


def test_misaligned_inputs_are_a_clear_error():
    with pytest.raises(ValueError, match="aligned"):
        split_examples(np.zeros((3, 2)), np.zeros((2, 2)), [0, 1, 2], ids=["a", "b", "c"], texts=["x"] * 3,
                       class_names=CLASSES)
    with pytest.raises(ValueError, match="modality"):
        Item("audio", "a")


def test_index_query_writes_the_page_of_its_matches(image_run, tmp_path, capsys):
    import csv

    from export import index as retrieval_index

    out = str(tmp_path / "index")
    assert retrieval_index.main(["build", "--serving", image_run["serving"], "--manifest", image_run["manifest"],
                                 "--split", "test", "--out", out]) == 0
    with open(image_run["manifest"], encoding="utf-8") as f:
        label_of_text = {row["text"]: row["label"] for row in csv.DictReader(f) if row["split"] == "test"}
    page = tmp_path / "text.html"
    assert retrieval_index.main(["query", "--index", out, "--text", "grass leaf green", "-k", "4",
                                 "--html", str(page)]) == 0
    assert f"page written to {page}" in capsys.readouterr().out
    rows = retrieval_index.query(out, text="grass leaf green", k=4)
    (section,) = parse_examples_page(page)["sections"]
    (query,) = section["queries"]
    assert section["title"] == "Text → image" and query["item"]["text"] == "grass leaf green"
    assert "ap" not in query["item"]  # an ad-hoc query has no class: no AP, no marks
    assert [r["id"] for r in query["results"]] == [r["id"] for r in rows]
    assert [float(r["score"]) for r in query["results"]] == pytest.approx([r["score"] for r in rows], abs=6e-4)
    for shown, row in zip(query["results"], rows):
        assert shown["label"] == row["label"] and shown["mark"] == "" and len(shown["images"]) == 1
        image = Image.open(io.BytesIO(base64.b64decode(shown["images"][0]["src"].split(",", 1)[1])))
        assert image.size[0] > 0

    query_file = str(image_run["root"] / "data" / "img" / "green6.png")
    page = tmp_path / "image.html"
    assert retrieval_index.main(["query", "--index", out, "--image", query_file, "-k", "3", "--html", str(page)]) == 0
    (section,) = parse_examples_page(page)["sections"]
    (query,) = section["queries"]
    assert section["title"] == "Image → text" and len(query["item"]["images"]) == 1
    assert query["item"]["id"] == "green6.png"
    assert len(query["results"]) == 3
    for shown in query["results"]:
        assert label_of_text[shown["text"]] == shown["label"]  # each text shown with its own class
