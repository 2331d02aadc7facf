"""Small trained runs and their exports, built once per test session and shared by the export tests.

``feature_run`` trains on a Wikipedia-layout fixture (precomputed image features); ``image_run`` trains
on a CSV manifest of coloured JPEG/PNG images with a tiny TF-Hub-format backbone. Each is exported once
as version 1 of its own serving folder; tests that add versions export into folders of their own.
"""

from __future__ import annotations

import csv
import os
from unittest import mock

import numpy as np
from PIL import Image

from chtn_tf.model.config import ExperimentConfig
from export.saved_model import export_run
from tests.test_backbones import write_tiny_hub_module
from tests.fixtures_data import make_wikipedia_fixture

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
WORDS = {"red": "fire tomato apple", "green": "grass forest leaf", "blue": "sea sky water"}
_BUILT = {}


def small_config(path) -> str:
    config = ExperimentConfig()
    config.model.branch_widths = (16, 16)
    config.model.shared_widths = (16, 8)
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


def feature_run(tmp_path_factory) -> dict:
    """``{"root", "run", "serving", "data_dir", "written"}`` of the precomputed-features run (built once)."""
    if "features" not in _BUILT:
        from training import fit

        root = tmp_path_factory.mktemp("export_features")
        make_wikipedia_fixture(root / "data")
        assert fit.main(["--dataset", "wikipedia", "--data-dir", str(root / "data"), "--config",
                         small_config(root / "c.json"), "--out", str(root / "run"), "--epochs", "2", "--quiet"]) == 0
        written = export_run(str(root / "run"), str(root / "serving"))
        _BUILT["features"] = {"root": root, "run": str(root / "run"), "serving": str(root / "serving"),
                              "data_dir": str(root / "data"), "written": written}
    return _BUILT["features"]


def image_run(tmp_path_factory) -> dict:
    """``{"root", "run", "serving", "manifest", "backbone", "written"}`` of the image-backbone run (built once)."""
    if "images" not in _BUILT:
        from training import fit

        root = tmp_path_factory.mktemp("export_images")
        backbone = write_tiny_hub_module(root / "tiny_backbone")
        manifest = make_manifest(root / "data")
        with mock.patch.dict(os.environ, {"CHTN_CACHE_DIR": str(root / "cache")}):
            assert fit.main(["--manifest", manifest, "--backbone", backbone, "--source", "none", "--config",
                             small_config(root / "c.json"), "--out", str(root / "run"), "--epochs", "2",
                             "--quiet"]) == 0
        written = export_run(str(root / "run"), str(root / "serving"))
        _BUILT["images"] = {"root": root, "run": str(root / "run"), "serving": str(root / "serving"),
                            "manifest": manifest, "backbone": backbone, "written": written}
    return _BUILT["images"]
