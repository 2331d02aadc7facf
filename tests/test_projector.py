"""Projector files, read back by TensorBoard itself: its config parser and its projector plugin's HTTP routes."""

import io
import json
import os

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image

from chtn_tf.metrics.projector import first_words, write_projector
from tests.fixtures_data import write_image

CLASSES = ["art", "biology", "sport"]
COLORS = [(230, 30, 30), (30, 200, 40), (30, 40, 230)]


def _pairs(tmp_path, n=10, *, with_images=True):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    image_codes = rng.normal(size=(n, 4))
    text_codes = rng.normal(size=(n, 4))
    ids = [f"id{i}" for i in range(n)]
    texts = [f"first\tsecond\nthird {i} " + "词" * 100 for i in range(n)]
    paths = [str(write_image(tmp_path / "img" / f"{i}.jpg", size=80, color=COLORS[c])) for i, c in enumerate(labels)] \
        if with_images else None
    return dict(image_codes=image_codes, text_codes=text_codes, labels=labels, class_names=CLASSES, ids=ids,
                texts=texts, image_paths=paths)


def _tensorboard_client(logdir):
    """TensorBoard's projector plugin over ``logdir``, served in-process (its own run discovery and readers)."""
    from tensorboard.backend import application
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector import projector_plugin
    from werkzeug import test as werkzeug_test
    from werkzeug import wrappers

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    context = base_plugin.TBContext(logdir=str(logdir), data_provider=provider, multiplexer=multiplexer)
    plugin = projector_plugin.ProjectorPlugin(context)
    return werkzeug_test.Client(application.TensorBoardWSGI([plugin]), wrappers.Response)


def test_tensorboard_projector_serves_the_embeddings_metadata_and_sprite(tmp_path):
    pairs = _pairs(tmp_path)
    logdir = tmp_path / "runs"
    folder = logdir / "demo" / "logs" / "projector"
    info = write_projector(str(folder), description="about", **pairs)
    assert info["points"] == 20 and info["dim"] == 4 and info["sprite"]

    # The config, read the way TensorBoard reads it; every path it names exists beside it.
    from tensorboard.plugins.projector import ProjectorConfig
    config = text_format.Parse((folder / "projector_config.pbtxt").read_text(), ProjectorConfig())
    (embedding,) = config.embeddings
    for path in (embedding.tensor_path, embedding.metadata_path, embedding.sprite.image_path):
        assert not os.path.isabs(path) and (folder / path).is_file()

    client = _tensorboard_client(logdir)
    runs = json.loads(client.get("/data/plugin/projector/runs").get_data())
    assert runs == ["demo/logs/projector"]
    run = runs[0]
    served = json.loads(client.get("/data/plugin/projector/info", query_string={"run": run}).get_data())
    (served_embedding,) = served["embeddings"]
    name = served_embedding["tensorName"]
    assert [int(s) for s in served_embedding["tensorShape"]] == [20, 4]

    tensor = client.get("/data/plugin/projector/tensor", query_string={"run": run, "name": name})
    assert tensor.status_code == 200
    values = np.frombuffer(tensor.get_data(), dtype=np.float32).reshape(20, 4)
    expected = np.concatenate([pairs["image_codes"], pairs["text_codes"]])
    expected /= np.sqrt((expected ** 2).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(values, expected, atol=1e-5)

    metadata = client.get("/data/plugin/projector/metadata", query_string={"run": run, "name": name})
    rows = [line.split("\t") for line in metadata.get_data().decode("utf-8").splitlines()]
    assert rows[0] == ["class", "modality", "id", "text"]
    assert len(rows) - 1 == values.shape[0]  # one metadata row per tensor row, after the header
    for k, row in enumerate(rows[1:]):
        i = k % 10
        assert row[:3] == [CLASSES[i % 3], "image" if k < 10 else "text", f"id{i}"]
        assert row[3] == f"first second third {i} " + "词" * (60 - len(f"first second third {i} ")) + "…"

    sprite = client.get("/data/plugin/projector/sprite_image", query_string={"run": run, "name": name})
    assert sprite.status_code == 200 and sprite.headers["Content-Type"] == "image/jpeg"
    image = Image.open(io.BytesIO(sprite.get_data())).convert("RGB")
    tile = list(embedding.sprite.single_image_dim)
    per_side = int(np.ceil(np.sqrt(20)))
    assert image.size == (per_side * tile[0], per_side * tile[1])
    for k in range(20):  # tile k, row-major: the photo of point k (its colour), or the text tile
        x, y = (k % per_side) * tile[0] + tile[0] // 2, (k // per_side) * tile[1] + tile[1] // 4
        pixel = np.array(image.getpixel((x, y)))
        if k < 10:
            assert np.abs(pixel - COLORS[k % 3]).max() < 40, (k, pixel)
        else:
            assert all(np.abs(pixel - c).max() > 60 for c in COLORS), (k, pixel)


def test_feature_only_images_have_no_sprite_and_large_splits_are_subsampled(tmp_path):
    pairs = _pairs(tmp_path, n=30, with_images=False)
    folder = tmp_path / "runs" / "r" / "logs" / "projector"
    info = write_projector(str(folder), max_pairs=12, seed=1, **pairs)
    assert info["points"] == 24 and not info["sprite"]
    config = (folder / "projector_config.pbtxt").read_text()
    assert "sprite" not in config
    rows = (folder / "metadata.tsv").read_text(encoding="utf-8").splitlines()[1:]
    image_ids = [r.split("\t")[2] for r in rows[:12]]
    assert image_ids == [r.split("\t")[2] for r in rows[12:]]  # the same pairs for both modalities
    tensor = np.loadtxt(folder / "embeddings.tsv", delimiter="\t")
    kept = [int(i[2:]) for i in image_ids]
    expected = pairs["image_codes"][kept] / np.linalg.norm(pairs["image_codes"][kept], axis=1, keepdims=True)
    np.testing.assert_allclose(tensor[:12], expected, atol=1e-5)

    again = write_projector(str(folder), max_pairs=12, seed=1, **pairs)  # rewriting replaces the folder
    assert again["points"] == 24
    assert sorted(p for p in os.listdir(folder) if not p.startswith("events")) == \
        ["embeddings.tsv", "metadata.tsv", "projector_config.pbtxt"]
    assert len([p for p in os.listdir(folder) if p.startswith("events")]) == 1
    assert os.listdir(folder.parent) == ["projector"]  # no temporary folder left behind


def test_first_words_is_one_short_line():
    assert first_words("a\tb\nc d") == "a b c d"
    assert first_words(" ".join(str(i) for i in range(40))) == " ".join(str(i) for i in range(12))
    assert first_words("国" * 100) == "国" * 60 + "…"


def test_misaligned_pairs_are_a_clear_error(tmp_path):
    pairs = _pairs(tmp_path, with_images=False)
    pairs["ids"] = pairs["ids"][:-1]
    with pytest.raises(ValueError, match="aligned"):
        write_projector(str(tmp_path / "p"), **pairs)
