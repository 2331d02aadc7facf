"""The readers on the real datasets ($CHTN_DATA_DIR): exact counts, dropped ids, text content, determinism."""

import collections

import numpy as np
import pytest
import scipy.io

from chtn_tf.data import load_dataset, source_domain
from chtn_tf.data import inspect as inspect_cli

WEBNEWS_DROPPED = {"train": {"72", "162", "1106", "1180"}, "test": {"1729", "1730", "1784"}}


@pytest.fixture(scope="module")
def wikipedia(real_data_dir):
    return load_dataset("wikipedia", data_dir=str(real_data_dir))


@pytest.fixture(scope="module")
def webnews(real_data_dir):
    return load_dataset("webnews", data_dir=str(real_data_dir))


def _list_lines(path):
    return [line.split("\t") for line in path.read_text().splitlines() if line.strip()]


def test_wikipedia_counts_and_classes(wikipedia):
    s = wikipedia.splits
    assert len(s["train"]) + len(s["val"]) == 2173
    assert len(s["test"]) == 693
    assert wikipedia.num_classes == 10
    assert wikipedia.class_names[0] == "art" and wikipedia.class_names[-1] == "warfare"
    assert wikipedia.image_kind == "features" and wikipedia.image_feature_dim == 128
    assert wikipedia.problems == []
    all_ids = s["train"].ids + s["val"].ids + s["test"].ids
    assert len(set(all_ids)) == 2866


def test_wikipedia_features_and_labels_follow_list_order(wikipedia, real_data_dir):
    info = real_data_dir / "wikipedia" / "wikipedia_info"
    mat = scipy.io.loadmat(str(info / "raw_features.mat"))
    for split, list_name, key in (("train", "trainset_txt_img_cat.list", "I_tr"), ("test", "testset_txt_img_cat.list", "I_te")):
        rows = {fields[0]: (i, int(fields[2]) - 1) for i, fields in enumerate(_list_lines(info / list_name))}
        for part in ((split, "val") if split == "train" else (split,)):
            data = wikipedia.splits[part]
            for k in (0, len(data) // 2, len(data) - 1):
                row, label = rows[data.ids[k]]
                assert data.labels[k] == label
                np.testing.assert_allclose(data.image_features[k], mat[key][row], rtol=1e-6)


def test_wikipedia_text_markup_stripped(wikipedia, real_data_dir):
    # This file is not well-formed XML (raw "&"); its text is read by hand here.
    data = wikipedia.splits["train"] if "038574999a443cd4acf16e40a9ab1b9e-3" in wikipedia.splits["train"].ids \
        else wikipedia.splits["val"]
    k = data.ids.index("038574999a443cd4acf16e40a9ab1b9e-3")
    text = data.texts[k]
    assert data.labels[k] == 0  # class 1 = art
    assert text.startswith("In the Early Iron Age, Maiden Castle was generally unexceptional;")
    assert "Sharples (1991a), pp. 83\u201384." in text  # &ndash; unescaped
    assert "Payne, Corney, & Cunliffe (2007), p. 58." in text  # the raw & kept
    assert text.endswith("\u20137.")
    assert "<" not in text and "imageset" not in text and "../img" not in text and "\n" not in text


def test_wikipedia_wiki_emphasis_stripped(real_data_dir):
    from chtn_tf.data.wikipedia import article_text

    raw = (real_data_dir / "wikipedia" / "wikipedia_dataset" / "texts" / "004606b82f7609592a76c2108e56e0fb-3.1.xml").read_text()
    text = article_text(raw)
    assert text.startswith("When, in September 1943, Goebbels was informed")
    assert 'reads: "Unfortunately we have had to give up Katyn.' in text
    assert "''" not in text


def test_wikipedia_val_is_stratified_and_seeded(wikipedia, real_data_dir):
    train, val = wikipedia.splits["train"], wikipedia.splits["val"]
    assert len(val) == round(0.1 * 2173)
    union = np.concatenate([train.labels, val.labels])
    for k in range(10):
        expected = 0.1 * np.sum(union == k)
        assert abs(np.sum(val.labels == k) - expected) <= 1.0
    again = load_dataset("wikipedia", data_dir=str(real_data_dir), seed=0)
    other = load_dataset("wikipedia", data_dir=str(real_data_dir), seed=1)
    assert again.splits["val"].ids == val.ids
    assert set(other.splits["val"].ids) != set(val.ids)
    assert again.splits["test"].ids == wikipedia.splits["test"].ids


def test_wikipedia_231_462_protocol(real_data_dir):
    data = load_dataset("wikipedia", data_dir=str(real_data_dir), protocol="231/462")
    assert (len(data.splits["train"]), len(data.splits["val"]), len(data.splits["test"])) == (2173, 231, 462)
    full_test = _list_lines(real_data_dir / "wikipedia" / "wikipedia_info" / "testset_txt_img_cat.list")
    assert set(data.splits["val"].ids) | set(data.splits["test"].ids) == {f[0] for f in full_test}
    counts = collections.Counter(int(f[2]) - 1 for f in full_test)
    for k, n in counts.items():
        assert abs(np.sum(data.splits["val"].labels == k) - n / 3) <= 1.0


def test_webnews_kept_and_dropped(webnews, real_data_dir):
    s = webnews.splits
    # The lists hold 1,700 and 500 lines (their last line has no newline, so `wc -l` says 1,699 / 499).
    assert len(s["train"]) + len(s["val"]) == 1700 - 4 == 1696
    assert len(s["test"]) == 500 - 3 == 497
    assert set(webnews.dropped("train")) == WEBNEWS_DROPPED["train"]
    assert set(webnews.dropped("test")) == WEBNEWS_DROPPED["test"]
    assert all(p.kind == "missing_image" for p in webnews.problems if p.dropped)
    resolved = collections.defaultdict(set)
    for p in webnews.problems:
        if not p.dropped:
            resolved[p.kind].add(p.pair_id)
    assert resolved["renamed_image"] == {"22", "1138", "444"}
    assert resolved["ambiguous_image"] == {"745", "941", "1125", "935", "1733", "1732", "1781"}
    assert webnews.image_kind == "files" and webnews.num_classes == 10


def test_webnews_resolution_and_text(webnews, real_data_dir):
    root = real_data_dir.resolve() / "webnews"
    everything = {}
    for split in ("train", "val", "test"):
        d = webnews.splits[split]
        everything.update({i: (p, t, y) for i, p, t, y in zip(d.ids, d.image_paths, d.texts, d.labels)})
    assert everything["22"][0] == str(root / "images" / "culture" / "22 .jpg")
    class_names = webnews.class_names
    path, _, label = everything["745"]
    assert path == str(root / "images" / class_names[label] / "745.jpg")
    listed = {f[0]: int(f[2]) - 1 for f in _list_lines(root / "trainset_txt_img_cat.list")}
    assert label == listed["745"]
    assert everything["1"][1] == (root / "texts" / "1.txt").read_text(encoding="utf-8").strip()
    assert everything["1"][1].startswith("龙里河大桥的建设者们")


def test_inspect_webnews_lists_dropped_ids(capsys, real_data_dir):
    assert inspect_cli.main(["--dataset", "webnews", "--data-dir", str(real_data_dir)]) == 0
    out = capsys.readouterr().out
    assert "train: 72, 162, 1106, 1180" in out
    assert "test: 1729, 1730, 1784" in out
    assert "usable: yes" in out and "1526" in out


def test_imagenette_source_domain(real_data_dir):
    source = source_domain("imagenette", data_dir=str(real_data_dir))
    assert source.num_classes == 10 and source.class_names == sorted(source.class_names)
    assert source.class_names[0] == "n01440764" and len(source.image_paths) == 1500
    assert np.bincount(source.labels).tolist() == [150] * 10
    assert all(p.split("/")[-2] == source.class_names[y] for p, y in zip(source.image_paths, source.labels))
