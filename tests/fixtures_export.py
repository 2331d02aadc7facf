"""Builders of small trained runs and their exports, and of the tiny TF-Hub backbone they use.

:func:`build_feature_run` trains on a Wikipedia-layout fixture (precomputed image features);
:func:`build_image_run` trains on a CSV manifest of coloured JPEG/PNG images with a tiny TF-Hub-format
backbone. Each is exported as version 1 of its own serving folder. ``tests/conftest.py`` builds each once
per test session (the ``feature_run`` and ``image_run`` fixtures); tests that add versions export into
folders of their own.
"""

from __future__ import annotations

import csv
import os
from unittest import mock

import numpy as np
import tensorflow as tf
from PIL import Image

from chtn_tf.model.config import ExperimentConfig
from export.saved_model import export_run
from tests.fixtures_data import make_wikipedia_fixture

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
WORDS = {"red": "fire tomato apple", "green": "grass forest leaf", "blue": "sea sky water"}


def small_config(path, *, members: int = 1) -> str:
    config = ExperimentConfig()
    config.model.branch_widths = (16, 16)
    config.model.shared_widths = (16, 8)
    config.model.members = members
    config.model.text_gallery_linear_weight = 0.5  # the exports have distinct text query and gallery codes
    config.train.batch_size = 8
    config.to_json(str(path))
    return str(path)


def make_manifest(folder, per_class: int = 8) -> str:
    """A CSV manifest of coloured JPEG/PNG images (odd sizes) and matching texts; 2 test pairs per class."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    rows = []
    for name, colour in COLOURS.items():
        for i in range(per_class):
            shape = (20 + 3 * i, 28, 3)
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)
            ext = "png" if i % 3 == 0 else "jpg"
            Image.fromarray(pixels).save(folder / "img" / f"{name}{i}.{ext}")
            text = " ".join(rng.choice(WORDS[name].split() + ["a", "the"], 6))
            split = "test" if i < 2 else "val" if i < 4 else "train"
            rows.append({"image": f"img/{name}{i}.{ext}", "text": text, "label": name, "split": split})
    with open(folder / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "text", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return str(folder / "pairs.csv")


def build_feature_run(root) -> dict:
    """``{"root", "run", "serving", "data_dir", "written"}`` of a precomputed-features run trained in ``root``."""
    from training import fit

    make_wikipedia_fixture(root / "data")
    assert fit.main(["--dataset", "wikipedia", "--data-dir", str(root / "data"), "--config",
                     small_config(root / "c.json"), "--out", str(root / "run"), "--epochs", "2", "--quiet"]) == 0
    written = export_run(str(root / "run"), str(root / "serving"))
    return {"root": root, "run": str(root / "run"), "serving": str(root / "serving"), "data_dir": str(root / "data"),
            "written": written}


def build_image_run(root) -> dict:
    """``{"root", "run", "serving", "manifest", "backbone", "written"}`` of an image-backbone run trained in ``root``
    (two ensemble members, as a manifest's defaults have: the export path of a packed ensemble is tested too)."""
    from training import fit

    backbone = write_tiny_hub_module(root / "tiny_backbone")
    manifest = make_manifest(root / "data")
    with mock.patch.dict(os.environ, {"CHTN_CACHE_DIR": str(root / "cache")}):
        assert fit.main(["--manifest", manifest, "--backbone", backbone, "--source", "none", "--config",
                         small_config(root / "c.json", members=2), "--out", str(root / "run"), "--epochs", "2",
                         "--quiet"]) == 0
    written = export_run(str(root / "run"), str(root / "serving"))
    return {"root": root, "run": str(root / "run"), "serving": str(root / "serving"), "manifest": manifest,
            "backbone": backbone, "written": written}


def write_tiny_hub_module(path):
    """A tiny TF-Hub reusable-format module: conv (trainable) + a moving mean (not trainable) + pooling."""
    kernel = tf.Variable(tf.random.stateless_normal([3, 3, 3, 4], seed=[1, 2]), name="conv/kernel")
    scale = tf.Variable(tf.ones([4]), name="conv/scale")
    moving_mean = tf.Variable(tf.zeros([4]), trainable=False, name="bn/moving_mean")

    def forward(images, training=False):
        x = tf.nn.conv2d(images, kernel, 2, "SAME") * scale
        if training:
            mean = tf.reduce_mean(x, axis=[0, 1, 2])
            moving_mean.assign(0.9 * moving_mean + 0.1 * mean)
        else:
            mean = moving_mean
        return tf.reduce_mean(tf.nn.relu(x - mean), axis=[1, 2])

    module = tf.__internal__.tracking.AutoTrackable()
    module.variables = [kernel, scale, moving_mean]
    module.trainable_variables = [kernel, scale]
    call = tf.function(forward)
    for training in (False, True):
        call.get_concrete_function(tf.TensorSpec([None, None, None, 3], tf.float32), training=training)
    module.__call__ = call
    tf.saved_model.save(module, str(path))
    return str(path)
