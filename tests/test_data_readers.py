"""Readers on generated trees: splits, bad input, data-dir resolution, Pascal, NUS-WIDE-10k, manifests."""

import http.server
import json
import pathlib
import threading

import numpy as np
import pytest

from chtn_tf.data import DatasetError, load_dataset, load_image_folder, resolve_data_dir
from chtn_tf.data import inspect as inspect_cli
from chtn_tf.data import pascal
from chtn_tf.data.splits import carve, stratified_split
from chtn_tf.data.types import SplitData
from tests.fixtures_data import (make_listed_dataset, make_nuswide_tree, make_pascal_tree, write_image,
                                 write_truncated_jpeg)

# ------------------------------------------------------------------------------------------------ splits


def test_stratified_split_sizes_by_hand():
    labels = np.repeat(np.arange(20), 50)  # Pascal: 20 classes x 50
    parts = stratified_split(labels, [0.8, 0.1, 0.1], seed=3)
    assert [len(p) for p in parts] == [800, 100, 100]
    for part, per_class in zip(parts, (40, 5, 5)):
        assert np.bincount(labels[part], minlength=20).tolist() == [per_class] * 20
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))


def test_stratified_split_uneven_classes_and_seed():
    labels = np.array([0] * 7 + [1] * 3 + [2] * 11 + [3] * 1)
    parts = stratified_split(labels, [0.9, 0.1], seed=0)
    assert [len(p) for p in parts] == [20, 2]  # round(0.1 * 22) = 2
    assert len(set(parts[0]) & set(parts[1])) == 0
    same = stratified_split(labels, [0.9, 0.1], seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, same))
    draws = {tuple(stratified_split(labels, [0.9, 0.1], seed=s)[1]) for s in range(10)}
    assert len(draws) > 1


# ---------------------------------------------------------------------------------------------- locations


def _split(labels, images=None):
    labels = np.asarray(labels, np.int32)
    features = None if images is not None else np.zeros((len(labels), 2), np.float32)
    return SplitData(ids=[f"p{i}" for i in range(len(labels))], texts=["t"] * len(labels), labels=labels,
                     image_paths=images, image_features=features)


def test_carve_tops_up_each_class_to_the_minimum():
    labels = [0] * 60 + [1] * 12 + [2] * 4  # fraction 0.1: 6 / 1 / 0 (largest remainder may give 2 / 0)
    rest, val = carve(_split(labels), 0.1, seed=3, min_per_class=5)
    counts = np.bincount(val.labels, minlength=3).tolist()
    assert counts == [6, 4, 1]  # class 0 keeps its 6; 1: min(5, 12 // 3) = 4; 2: min(5, 4 // 3) = 1
    assert sorted(rest.ids + val.ids, key=lambda i: int(i[1:])) == [f"p{i}" for i in range(len(labels))]
    assert not set(rest.ids) & set(val.ids)
    again = carve(_split(labels), 0.1, seed=3, min_per_class=5)[1]
    assert again.ids == val.ids  # seeded
    plain = carve(_split(labels), 0.1, seed=3, min_per_class=0)[1]
    assert np.bincount(plain.labels, minlength=3).tolist() == [6, 1, 1]  # the fraction alone (hand-counted)
    assert set(plain.ids) <= set(val.ids)  # topping up only adds


def test_carve_minimum_moves_whole_image_groups():
    # Class 1: 9 pairs on 3 images (3 texts each): a third is 3, so one whole image goes to val.
    labels = [0] * 30 + [1] * 9
    images = [f"a{i}.jpg" for i in range(30)] + [f"b{i // 3}.jpg" for i in range(9)]
    rest, val = carve(_split(labels, images), 0.05, seed=0, min_per_class=5)
    val_images = {p for p, y in zip(val.image_paths, val.labels) if y == 1}
    rest_images = {p for p, y in zip(rest.image_paths, rest.labels) if y == 1}
    assert len(val_images) >= 1 and not val_images & rest_images
    assert int(np.sum(val.labels == 1)) == 3 * len(val_images)


def test_resolve_data_dir_order(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    explicit.mkdir(), env.mkdir()
    monkeypatch.setenv("CHTN_DATA_DIR", str(env))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_dir(str(explicit)) == explicit.resolve()
    assert resolve_data_dir() == env.resolve()
    monkeypatch.delenv("CHTN_DATA_DIR")
    assert resolve_data_dir() == tmp_path / "cache" / "chtn" / "datasets"
    with pytest.raises(DatasetError, match=r"--data-dir .*does not exist"):
        resolve_data_dir(str(tmp_path / "nope"))


def test_missing_data_folder_message(tmp_path, monkeypatch):
    monkeypatch.setenv("CHTN_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetError) as err:
        load_dataset("webnews")
    message = str(err.value)
    assert str(tmp_path / "webnews") in message and "$CHTN_DATA_DIR" in message and "--data-dir" in message
    monkeypatch.delenv("CHTN_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DatasetError, match="user cache folder"):
        load_dataset("wikipedia")
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


# -------------------------------------------------------------------------------------------- bad input


@pytest.fixture()
def dirty_webnews(tmp_path):
    root = tmp_path / "webnews"
    listed = make_listed_dataset(root)
    train_list = root / "trainset_txt_img_cat.list"
    lines = train_list.read_text().splitlines()
    lines[2] = "3\t3"  # wrong number of fields (line 3)
    lines[4] = "5\t5\t9"  # unknown class index (line 5)
    train_list.write_text("\n".join(lines) + "\n")
    (root / "images" / "alpha" / "7.jpg").unlink()  # id 7 (class 1 = alpha): missing image
    write_truncated_jpeg(root / "images" / "beta" / "8.jpg")  # id 8 (class 2): truncated JPEG
    (root / "texts" / "9.txt").write_bytes("caf\u00e9 \u6587".encode("gb18030"))  # id 9: not UTF-8
    write_image(root / "images" / "alpha" / "10 .jpg", size=16)  # id 10: space before the extension
    (root / "images" / "alpha" / "10.jpg").unlink()
    return tmp_path, listed


def test_bad_input_reported_and_skipped(dirty_webnews):
    data_dir, listed = dirty_webnews
    data = load_dataset("webnews", data_dir=str(data_dir), val_fraction=0.2)
    by_id = {p.pair_id: p for p in data.problems}
    list_file = str(data_dir / "webnews" / "trainset_txt_img_cat.list")
    assert by_id["3"].kind == "bad_line" and by_id["3"].where == f"{list_file}:3"
    assert by_id["5"].kind == "unknown_class" and by_id["5"].where == f"{list_file}:5"
    assert "1..3" in by_id["5"].message and "categories.list" in by_id["5"].message
    assert by_id["7"].kind == "missing_image" and "alpha/7.jpg" in by_id["7"].message
    assert by_id["8"].kind == "undecodable_image" and by_id["8"].where.endswith("beta/8.jpg")
    assert "replace the file" in by_id["8"].message
    assert by_id["9"].kind == "bad_text_encoding" and by_id["9"].where.endswith("9.txt")
    assert "UTF-8" in by_id["9"].message
    assert by_id["10"].kind == "renamed_image" and not by_id["10"].dropped
    assert sorted(data.dropped("train"), key=int) == ["3", "5", "7", "8", "9"]
    kept = data.splits["train"].ids + data.splits["val"].ids
    assert len(kept) == len(listed["train"]) - 5 and "10" in kept
    assert len(data.splits["test"]) == len(listed["test"])


def test_inspect_exit_status(dirty_webnews, capsys):
    data_dir, _ = dirty_webnews
    assert inspect_cli.main(["--dataset", "webnews", "--data-dir", str(data_dir)]) == 1  # 5/42 dropped > 5%
    captured = capsys.readouterr()
    assert "train: 3, 5, 7, 8, 9" in captured.out and "NOT USABLE" in captured.err
    assert inspect_cli.main(["--dataset", "webnews", "--data-dir", str(data_dir), "--max-dropped", "0.5"]) == 0
    assert inspect_cli.main(["--dataset", "webnews", "--data-dir", str(data_dir / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_every_pair_dropped_is_an_error(tmp_path):
    root = tmp_path / "webnews"
    make_listed_dataset(root, train_per_class=2, test_per_class=1)
    for path in (root / "images").rglob("*.jpg"):
        path.unlink()
    with pytest.raises(DatasetError, match="split 'train' is empty"):
        load_dataset("webnews", data_dir=str(tmp_path))


# ------------------------------------------------------------------------------------------------ pascal


@pytest.fixture(scope="module")
def pascal_captions(real_data_dir):
    return json.loads((real_data_dir / "pascal_sentences" / "pascal_sentences.json").read_text())


@pytest.fixture(scope="module")
def pascal_dir(tmp_path_factory, pascal_captions):
    data_dir = tmp_path_factory.mktemp("pascal")
    make_pascal_tree(data_dir, pascal_captions)
    return data_dir


def test_pascal_join(pascal_dir, pascal_captions):
    data = load_dataset("pascal", data_dir=str(pascal_dir))
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [800, 100, 100]
    assert data.num_classes == 20 and data.class_names[0] == "aeroplane"
    for split, per_class in (("train", 40), ("val", 5), ("test", 5)):
        assert np.bincount(data.splits[split].labels, minlength=20).tolist() == [per_class] * 20
    k = data.splits["test"].ids.index(data.splits["test"].ids[0])
    image = data.splits["test"].ids[k]
    assert data.splits["test"].texts[k] == " ".join(pascal_captions[image]["captions"])
    assert data.class_names[data.splits["test"].labels[k]] == pascal_captions[image]["category"]
    assert data.splits["test"].image_paths[k].endswith(f"pascal_sentences/{pascal_captions[image]['category']}/{image}")
    again = load_dataset("pascal", data_dir=str(pascal_dir))
    assert again.splits["val"].ids == data.splits["val"].ids
    assert load_dataset("pascal", data_dir=str(pascal_dir), seed=5).splits["val"].ids != data.splits["val"].ids


def test_pascal_each_and_sentence_files(pascal_dir, pascal_captions):
    joined = load_dataset("pascal", data_dir=str(pascal_dir), validate_images=False)
    each = load_dataset("pascal", data_dir=str(pascal_dir), sentences="each", validate_images=False)
    for s in ("train", "val", "test"):  # the captions file holds 4,998 sentences: 3 images have 4, one has 6
        assert len(each.splits[s]) == sum(len(pascal_captions[i]["captions"]) for i in joined.splits[s].ids)
    assert sum(len(each.splits[s]) for s in ("train", "val", "test")) == 4998
    notes = {p.pair_id for p in joined.problems if p.kind == "caption_count"}
    assert notes == {"2008_003858.jpg", "2008_008748.jpg", "2008_007742.jpg", "2008_006210.jpg"}
    assert {i.split("#")[0] for i in each.splits["test"].ids} == set(joined.splits["test"].ids)
    image = joined.splits["val"].ids[0]
    texts = [t for i, t in zip(each.splits["val"].ids, each.splits["val"].texts) if i.startswith(image + "#")]
    assert texts == pascal_captions[image]["captions"]


def test_pascal_sentence_file_wins(tmp_path, pascal_captions):
    make_pascal_tree(tmp_path, pascal_captions, size=8)
    image = "2008_000716.jpg"
    sentence = tmp_path / "pascal_sentences" / "sentence" / "aeroplane" / "2008_000716.txt"
    sentence.parent.mkdir(parents=True)
    sentence.write_text("First line.\nSecond line.\n")
    data = load_dataset("pascal", data_dir=str(tmp_path), validate_images=False)
    split = next(s for s in data.splits.values() if image in s.ids)
    assert split.texts[split.ids.index(image)] == "First line. Second line."


def test_pascal_without_images_says_how_to_download(tmp_path, pascal_captions):
    make_pascal_tree(tmp_path, pascal_captions, with_images=False)
    with pytest.raises(DatasetError) as err:
        load_dataset("pascal", data_dir=str(tmp_path))
    message = str(err.value)
    assert "python -m chtn_tf.data.pascal --download" in message and "CHTN_DATA_DIR" in message
    assert "pascal_sentences/<category>/<image>.jpg" in message


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support (the stdlib handler has none); counts ranged requests."""

    ranged = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = pathlib.Path(self.translate_path(self.path))
        path = path / "index.html" if path.is_dir() else path
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            _RangeHandler.ranged.append((self.path, start))
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


def test_pascal_download_resumes_from_a_local_server(tmp_path):
    site = tmp_path / "site"
    rows = []
    for category, image in (("cat", "2008_000001.jpg"), ("dog", "2008_000002.jpg")):
        write_image(site / category / image, size=40)
        rows.append(f'<tr><td><img src="{category}/{image}"></td><td><table><tr><td> A {category}. </td></tr>'
                    f'<tr><td>Another {category}.</td></tr></table></td></tr>')
    (site / "index.html").write_text("<html><body><table>" + "".join(rows) + "</table></body></html>")
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(site), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        dest = tmp_path / "data" / "pascal_sentences"
        partial = (site / "cat" / "2008_000001.jpg").read_bytes()[:100]
        (dest / "cat").mkdir(parents=True)
        (dest / "cat" / "2008_000001.jpg.part").write_bytes(partial)  # an interrupted earlier download
        root = pascal.download_pascal(tmp_path / "data", base_url=url, log=lambda *_: None)
    finally:
        server.shutdown()
    assert ("/cat/2008_000001.jpg", 100) in _RangeHandler.ranged
    for category, image in (("cat", "2008_000001.jpg"), ("dog", "2008_000002.jpg")):
        assert (root / category / image).read_bytes() == (site / category / image).read_bytes()
    assert (root / "sentence" / "cat" / "2008_000001.txt").read_text() == "A cat.\nAnother cat.\n"
    assert len((root / "SHA256SUMS").read_text().splitlines()) == 2
    assert not list(root.rglob("*.part"))


def test_pascal_download_offline_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="cannot reach .*offline"):
        pascal.download_pascal(tmp_path, base_url="http://127.0.0.1:9/", timeout=2)


# ---------------------------------------------------------------------------------------------- nuswide


def test_nuswide_with_val_list(tmp_path):
    listed = make_nuswide_tree(tmp_path)
    data = load_dataset("nuswide10k", data_dir=str(tmp_path))
    for split in ("train", "val", "test"):
        assert data.splits[split].ids == [i for i, _ in listed[split]]
        assert data.splits[split].labels.tolist() == [c - 1 for _, c in listed[split]]
    assert data.splits["train"].texts[0] == "animal tag0 sky"
    assert data.class_names == ["animal", "clouds", "flowers"]


def test_nuswide_val_carved_when_absent(tmp_path):
    listed = make_nuswide_tree(tmp_path, per_class=(10, 0, 2), with_val=False)
    data = load_dataset("nuswide10k", data_dir=str(tmp_path), val_fraction=0.2)
    # 0.2 of 10 pairs a class is 2; the minimum per class (5, at most a third of the class's 10) makes it 3.
    assert len(data.splits["val"]) == 9 and len(data.splits["train"]) == 21
    assert np.bincount(data.splits["val"].labels).tolist() == [3, 3, 3]
    assert set(data.splits["train"].ids) | set(data.splits["val"].ids) == {i for i, _ in listed["train"]}


# --------------------------------------------------------------------------------------------- manifest


def _manifest(tmp_path, rows, header="image,text,label,split"):
    for row in rows:
        image = row.split(",")[0]
        if image.startswith("img/") and "missing" not in image:
            write_image(tmp_path / image, size=8)
    path = tmp_path / "data.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_manifest_with_split_column(tmp_path):
    rows = [f"img/{s}{k}.png,\"text, {s} {k}\",{'cat' if k % 2 else 'dog'},{s}"
            for s in ("train", "val", "test") for k in range(4)]
    data = load_dataset(manifest=str(_manifest(tmp_path, rows)))
    assert data.class_names == ["cat", "dog"]
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [4, 4, 4]
    assert data.splits["test"].texts[1] == "text, test 1" and data.splits["test"].labels[1] == 0
    assert data.splits["val"].image_paths[0] == str(tmp_path / "img" / "val0.png")


def test_manifest_without_split_is_stratified(tmp_path):
    rows = [f"img/{k}.jpg,text {k},{k % 5 + 1}" for k in range(100)]
    data = load_dataset(manifest=str(_manifest(tmp_path, rows, header="image,text,label")), seed=2)
    assert data.class_names == ["1", "2", "3", "4", "5"]
    # test: 2 of each class's 20; val: 0.1 of the other 90 gives 1-2 a class, topped up to 5 a class.
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [65, 25, 10]
    assert np.bincount(data.splits["val"].labels).tolist() == [5] * 5
    assert np.bincount(data.splits["test"].labels).tolist() == [2] * 5
    k = data.splits["test"].ids.index(data.splits["test"].ids[0])
    line = int(data.splits["test"].ids[k].split(":")[1])
    assert data.splits["test"].texts[k] == f"text {line - 2}"


def test_manifest_bad_rows(tmp_path):
    rows = [f"img/{k}.jpg,text {k},{'a' if k % 2 else 'b'},{'test' if k < 4 else 'train'}" for k in range(12)]
    rows.append("img/missing.jpg,lost,a,train")
    rows.append("img/x.jpg,too,many,fields,here")
    rows.append("img/1.jpg,odd split,a,holdout")
    path = _manifest(tmp_path, rows)
    data = load_dataset(manifest=str(path), val_fraction=0.25)
    problems = {p.where: p for p in data.problems}
    assert problems[f"{path}:14"].kind == "missing_image"
    assert problems[f"{path}:15"].kind == "bad_line"
    assert problems[f"{path}:16"].kind == "bad_split"
    assert len(data.splits["train"]) + len(data.splits["val"]) == 8
    (tmp_path / "bad.csv").write_text("picture,text,label\nimg/0.jpg,t,a\n")
    with pytest.raises(DatasetError, match=r"bad\.csv:1: .*lacks column"):
        load_dataset(manifest=str(tmp_path / "bad.csv"))
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(manifest=str(tmp_path / "none.csv"))


# ------------------------------------------------------------------------------------------ image folder


def test_image_folder(tmp_path):
    write_image(tmp_path / "zebra" / "b.JPEG")
    write_image(tmp_path / "zebra" / "a.jpg")
    write_image(tmp_path / "ant" / "c.png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    write_truncated_jpeg(tmp_path / "ant" / "d.jpg")
    data = load_image_folder(tmp_path, validate=True)
    assert data.class_names == ["ant", "zebra"]
    assert [pathlib.Path(p).name for p in data.image_paths] == ["c.png", "a.jpg", "b.JPEG"]
    assert data.labels.tolist() == [0, 1, 1]
    assert [p.pair_id for p in data.problems] == ["d.jpg"]
    with pytest.raises(DatasetError, match="not found"):
        load_image_folder(tmp_path / "missing")


# ------------------------------------------------------------------------------------------- wikipedia


def _wikipedia_tree(data_dir, n_train=6, n_test=3):
    import scipy.io

    root = data_dir / "wikipedia"
    info, texts = root / "wikipedia_info", root / "wikipedia_dataset" / "texts"
    info.mkdir(parents=True), texts.mkdir(parents=True)
    (info / "categories.list").write_text("art\nbiology\n")
    features = {}
    for split, n, list_name, key in (("train", n_train, "trainset_txt_img_cat.list", "I_tr"),
                                     ("test", n_test, "testset_txt_img_cat.list", "I_te")):
        lines = []
        for k in range(n):
            text_id, image_id, cls = f"{split}{k}-1", f"img{split}{k}", k % 2 + 1
            lines.append(f"{text_id}\t{image_id}\t{cls}")
            (texts / f"{text_id}.xml").write_text(
                f'<document id="{text_id}" cat="9">\n<text>\nA &amp; B &ndash; \'\'{split} {k}\'\'\' R&D <ref>x</ref>\n'
                f'</text>\n<imageset><image id="{image_id}">../img/{image_id}.jpg</image></imageset>\n</document>')
            write_image(root / "wikipedia_dataset" / "images" / ("art", "biology")[k % 2] / f"{image_id}.jpg", size=8)
        (info / list_name).write_text("\n".join(lines) + "\n")
        features[key] = np.arange(n * 4, dtype=np.float64).reshape(n, 4) + (100 if split == "test" else 0)
    scipy.io.savemat(str(info / "raw_features.mat"), features)
    return root


def test_wikipedia_images_when_present_else_features(tmp_path):
    root = _wikipedia_tree(tmp_path)
    data = load_dataset("wikipedia", data_dir=str(tmp_path), val_fraction=0.34)
    assert data.image_kind == "files" and len(data.splits["test"]) == 3
    k = data.splits["test"].ids.index("test1-1")
    assert data.splits["test"].texts[k] == "A & B \u2013 test 1 R&D x"
    assert data.splits["test"].image_paths[k] == str(root / "wikipedia_dataset" / "images" / "biology" / "imgtest1.jpg")
    (root / "wikipedia_dataset" / "images" / "art" / "imgtest0.jpg").unlink()
    auto = load_dataset("wikipedia", data_dir=str(tmp_path), val_fraction=0.34)
    assert auto.image_kind == "features" and [p.kind for p in auto.problems] == ["images_incomplete"]
    k = auto.splits["test"].ids.index("test2-1")
    np.testing.assert_array_equal(auto.splits["test"].image_features[k], [108, 109, 110, 111])
    files = load_dataset("wikipedia", data_dir=str(tmp_path), val_fraction=0.34, image_side="files")
    assert files.dropped("test") == ["test0-1"] and len(files.splits["test"]) == 2
