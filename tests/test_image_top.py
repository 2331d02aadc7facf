"""CHTN with ImageNet-initialised, trainable image layers (``model.image_top_blocks``): the source branch on
ImageNet labels, training on cached feature maps, and an export that runs the whole image path on raw bytes."""

from __future__ import annotations

import csv
import json
import os
import pathlib
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from chtn_tf.backbones.split import SplitBackbone
from chtn_tf.data.image_folder import IMAGENET_INDEX, imagenet_labels, load_image_folder
from chtn_tf.model.chtn import CHTNModel, make_optimizer
from chtn_tf.model.config import ExperimentConfig
from chtn_tf.model.text import build_text_vectorizer

# Imagenette's wnids and ImageNet-1k indices as the dataset's README lists them (an independent copy).
README_INDICES = {"n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
                  "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701}
WORDS = {"n01440764": "fish river angler", "n03028079": "church tower bells", "n03888257": "parachute sky jump"}


def test_imagenette_source_labels_are_its_imagenet_classes(real_data_dir):
    assert IMAGENET_INDEX == README_INDICES
    source = load_image_folder(pathlib.Path(real_data_dir) / "imagenette" / "train")
    labels = imagenet_labels(source)
    assert labels.shape == (len(source.image_paths),)
    for path, label in zip(source.image_paths[::97], labels[::97]):
        assert label == README_INDICES[pathlib.Path(path).parent.name]


def test_a_source_folder_of_other_classes_has_no_imagenet_labels(tmp_path):
    from PIL import Image

    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "a.jpg")
    assert imagenet_labels(load_image_folder(tmp_path)) is None


def _config(top_blocks: int = 1) -> ExperimentConfig:
    config = ExperimentConfig()
    config.model.branch_widths = (16, 16)
    config.model.shared_widths = (16, 8)
    config.model.image_top_blocks = top_blocks
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 0.0
    return config


def _model(config, split, num_source_classes=1000):
    vectorizer = build_text_vectorizer(config.model, ["fish river", "church bells", "sky jump"] * 4)
    model = CHTNModel(config, image_feature_dim=1280, num_classes=3, text_vectorizer=vectorizer,
                      num_source_classes=num_source_classes, split_backbone=split)
    model.compile(optimizer=make_optimizer(config.optimizer))
    model.build_all()
    return model


def test_source_branch_is_the_imagenet_classifier_and_its_top_trains_with_imagenet_statistics(real_data_dir, tmp_path):
    split = SplitBackbone("efficientnet-lite0")
    model = _model(_config(), split)
    source = load_image_folder(pathlib.Path(real_data_dir) / "imagenette" / "val")
    pick = np.arange(0, len(source.image_paths), 25)[:16]
    paths = [source.image_paths[i] for i in pick]
    labels = imagenet_labels(source)[pick]
    maps = split.extract(paths, cache_dir=str(tmp_path / "cache"), progress=False).features
    # Before training the source branch is the ImageNet network: it names these photos' ImageNet classes.
    logits = model.source_classifier(model.source_top(maps)["features"])
    assert np.mean(np.argmax(logits, axis=1) == labels) >= 0.6  # Lite0: top-1 0.72 on Imagenette val
    assert model.source_classifier.kernel.shape == (1280, 1000)

    watched = {v.path: np.array(v) for v in model.source_top.weights + model.image_top.weights
               if v.path.endswith(("project_conv/kernel", "head_bn/moving_mean", "head_bn/gamma"))}
    assert len(watched) == 6
    batch = {"target": {"image": tf.constant(maps[:8]), "text": tf.constant(["fish river"] * 8),
                        "label": tf.zeros([8], tf.int32)},
             "source": {"image": tf.constant(maps[8:]), "label": tf.constant(labels[8:])}}
    terms = model.train_step(batch)
    assert 0 < float(terms["source_ce"]) < 2.0  # the ImageNet classifier already knows these classes
    assert float(terms["mmd_fc6"]) > 0 and float(terms["mmd_fc7"]) > 0
    now = {v.path: np.array(v) for v in model.source_top.weights + model.image_top.weights}
    for path, before in watched.items():
        moved = not np.allclose(before, now[path])
        # Convolutions train; BatchNorm keeps ImageNet's statistics and affine (frozen, inference mode).
        assert moved == path.endswith("project_conv/kernel"), path


def test_a_model_without_its_split_backbone_is_a_clear_error():
    config = _config()
    vectorizer = build_text_vectorizer(config.model, ["a b", "c d"])
    with pytest.raises(ValueError, match="image_top_blocks=1 needs the EfficientNet-Lite backbone"):
        CHTNModel(config, image_feature_dim=1280, num_classes=2, text_vectorizer=vectorizer)


def _photo_manifest(real_data_dir, folder) -> tuple:
    """A manifest of 36 Imagenette photos of 3 classes with short texts, and a 3-class ImageNet source folder."""
    val = pathlib.Path(real_data_dir) / "imagenette" / "val"
    train = pathlib.Path(real_data_dir) / "imagenette" / "train"
    rows = []
    for wnid, words in WORDS.items():
        photos = sorted(p for p in (val / wnid).iterdir())[:12]
        for i, photo in enumerate(photos):
            split = "test" if i < 4 else "val" if i < 6 else "train"
            rows.append({"image": str(photo), "text": f"{words} {i}", "label": wnid, "split": split})
        (folder / "source" / wnid).mkdir(parents=True)
        for photo in sorted(p for p in (train / wnid).iterdir())[:8]:
            os.symlink(photo, folder / "source" / wnid / photo.name)
    with open(folder / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "text", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return str(folder / "pairs.csv"), str(folder / "source")


@pytest.mark.slow  # ~30-60 s on 2 cores: in `pytest -m slow` (CI runs both)
def test_fit_with_a_trainable_top_exports_encoders_that_reproduce_its_results(real_data_dir, tmp_path):
    from export import verify
    from export.saved_model import export_run
    from training import fit

    manifest, source = _photo_manifest(real_data_dir, tmp_path)
    config = _config()
    config.train.batch_size = 8
    config.to_json(str(tmp_path / "c.json"))
    run = tmp_path / "run"
    with mock.patch.dict(os.environ, {"CHTN_CACHE_DIR": str(tmp_path / "cache")}):
        assert fit.main(["--manifest", manifest, "--source", source, "--backbone", "efficientnet-lite0", "--config",
                         str(tmp_path / "c.json"), "--out", str(run), "--epochs", "2", "--quiet"]) == 0
    info = json.loads((run / "model_info.json").read_text())
    assert info["backbone"]["top_blocks"] == 1 and info["backbone"]["map_shape"] == [7, 7, 192]
    assert info["num_source_classes"] == 1000
    history = json.loads((run / "history.json").read_text())
    assert all(0 < v < 3 for v in history["source_ce"])  # ImageNet labels, ImageNet classifier
    export_run(str(run), str(tmp_path / "serving"))
    checked = verify.verify(str(run), str(tmp_path / "serving"))  # its documented 0.005: rounding may flip a near-tie
    assert checked["ok"], checked
    results = json.loads((run / "results.json").read_text())
    assert checked["n_test"] == results["n_test"] == 12


def test_fit_refuses_a_trainable_top_on_precomputed_features(tmp_path):
    from tests.fixtures_data import make_wikipedia_fixture
    from training import fit

    make_wikipedia_fixture(tmp_path / "data")
    config = _config()
    config.to_json(str(tmp_path / "c.json"))
    assert fit.main(["--dataset", "wikipedia", "--data-dir", str(tmp_path / "data"), "--config",
                     str(tmp_path / "c.json"), "--out", str(tmp_path / "run"), "--quiet"]) == 2
