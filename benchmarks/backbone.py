"""Backbone benchmark: ImageNet accuracy of the offline EfficientNet-Lite0 module, and extraction speed.

    CHTN_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/backbone.py

Accuracy: the exported ``classification`` module, loaded with plain ``tensorflow_hub.load``, on the
Imagenette validation photos (500 ImageNet val images of 10 classes): top-1 over all 1,000 classes, and
top-1 with the argmax restricted to the 10 Imagenette classes. A wrong padding, normalisation or kernel
layout drops these far below the published Lite0 top-1 (75%).
Speed: feature extraction images/s for the first (uncached) run and a cached run, medians of repeats.
Writes ``benchmarks/results/backbone.json`` and the backbone section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.quality import update_results_md  # noqa: E402
from chtn_tf.atomic import write_json_atomic  # noqa: E402
from chtn_tf.data import load_image_folder, resolve_data_dir  # noqa: E402

# Imagenette wnid -> ImageNet-1k index (standard order).
IMAGENETTE = {"n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
              "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701}


def accuracy(val_dir: str) -> dict:
    import tensorflow as tf
    import tensorflow_hub as hub

    from chtn_tf.backbones.efficientnet_lite import write_hub_module
    from chtn_tf.data.pipeline import image_dataset

    with tempfile.TemporaryDirectory() as tmp:
        module_dir = write_hub_module(os.path.join(tmp, "lite0-classification"), kind="classification")
        module = hub.load(module_dir)
        data = load_image_folder(val_dir)
        truth = np.array([IMAGENETTE[data.class_names[k]] for k in data.labels])
        logits = np.concatenate([module(batch).numpy() for batch in image_dataset(data.image_paths, batch_size=50)])
    restricted = np.array(list(IMAGENETTE.values()))[logits[:, list(IMAGENETTE.values())].argmax(1)]
    return {"images": int(len(truth)), "top1_1000": float((logits.argmax(1) == truth).mean()),
            "top1_restricted_10": float((restricted == truth).mean())}


def speed(paths, repeats: int = 3) -> dict:
    from chtn_tf.backbones import extract_features, resolve_backbone

    spec = resolve_backbone("efficientnet-lite0")
    first, cached = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            extract_features(paths, spec, cache_dir=cache, progress=False)
            first.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = extract_features(paths, spec, cache_dir=cache, progress=False)
            cached.append(time.perf_counter() - start)
            assert result.from_cache
    return {"images": len(paths), "first_run_images_per_s": len(paths) / statistics.median(first),
            "cached_run_images_per_s": len(paths) / statistics.median(cached),
            "first_run_seconds": first, "cached_run_seconds": cached}


def main() -> int:
    data_dir = resolve_data_dir()
    report = {"date": datetime.date.today().isoformat(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "command": "python benchmarks/backbone.py"}
    report["accuracy"] = accuracy(str(data_dir / "imagenette" / "val"))
    print("accuracy", report["accuracy"], flush=True)
    train = load_image_folder(str(data_dir / "imagenette" / "train"))
    report["speed"] = speed(train.image_paths[:500])
    print("speed", {k: v for k, v in report["speed"].items() if "per_s" in k}, flush=True)
    write_json_atomic(os.path.join(HERE, "results", "backbone.json"), report)
    a, s = report["accuracy"], report["speed"]
    update_results_md("backbone", "\n".join([
        "## Backbone: EfficientNet-Lite0 from the offline weights", "",
        f"Command: `{report['command']}` — {report['date']}, {report['machine']}.", "",
        "| check | value |", "|---|---|",
        f"| ImageNet top-1 over 1,000 classes, Imagenette val ({a['images']} images) | {a['top1_1000']:.3f} |",
        f"| top-1 with argmax restricted to the 10 Imagenette classes | {a['top1_restricted_10']:.3f} |",
        f"| feature extraction, first run (decode + forward, {s['images']} images, median of 3) | {s['first_run_images_per_s']:.1f} images/s |",
        f"| feature extraction, cached run | {s['cached_run_images_per_s']:.0f} images/s |",
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
