"""Backbone accuracy: the exported EfficientNet-Lite0/1/2 classification modules on real ImageNet photos.

    CHTN_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/backbone_accuracy.py [--archs efficientnet-lite0 ...]

For each arch, exports the module with ``python -m export.hub_module --kind classification`` into a
temporary folder, loads it with plain ``tensorflow_hub.load`` and classifies the Imagenette validation
photos (500 ImageNet val images of 10 classes) at the arch's own input size (224 / 240 / 260), decoded
exactly as the feature extractor does: the whole image (view ``orig``) and its central 80% crop (view
``crop_center``, one of the cached training views). Reports top-1 and top-5 over all 1,000 ImageNet
classes and top-1 with the argmax restricted to the 10 Imagenette classes, beside the ImageNet top-1
published for these weights. A wrong padding, normalisation, stride or kernel layout drops these far below
the published figures; the acceptance thresholds are 0.70 and 0.98 (whole image). Writes the ``accuracy``
section of ``benchmarks/results/backbones.json`` and the backbone section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.report import backbones_section, command_line, machine, update_results_md  # noqa: E402
from chtn_tf.atomic import write_json_atomic  # noqa: E402
from chtn_tf.backbones.registry import LITE_IMAGE_SIZES  # noqa: E402

RESULTS = os.path.join(HERE, "results", "backbones.json")
# Imagenette wnid -> ImageNet-1k class index (standard order), from the datasets README.
IMAGENETTE = {"n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
              "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701}
THRESHOLDS = {"top1_1000": 0.70, "top1_restricted_10": 0.98}
VIEWS = ("orig", "crop_center")


def update_results(section: str, value: dict) -> None:
    """Replaces one section of ``benchmarks/results/backbones.json`` (atomically), keeping the others."""
    results = {}
    if os.path.isfile(RESULTS):
        with open(RESULTS, encoding="utf-8") as f:
            results = json.load(f)
    results[section] = value
    write_json_atomic(RESULTS, results)
    update_results_md("backbones", backbones_section(results))


def imagenette_val(data_dir: str):
    """``(paths, ImageNet indices)`` of the Imagenette val photos, in a fixed order."""
    val = os.path.join(data_dir, "imagenette", "val")
    paths, truth = [], []
    for wnid, index in sorted(IMAGENETTE.items()):
        folder = os.path.join(val, wnid)
        for name in sorted(os.listdir(folder)):
            paths.append(os.path.join(folder, name))
            truth.append(index)
    return paths, np.array(truth)


def scores(logits: np.ndarray, truth: np.ndarray) -> dict:
    """Top-1 / top-5 over 1,000 classes and top-1 restricted to the Imagenette classes (with per class)."""
    classes = np.array(sorted(IMAGENETTE.values()))
    restricted = classes[logits[:, classes].argmax(1)]
    top5 = np.argsort(-logits, axis=1)[:, :5]
    return {
        "top1_1000": float((logits.argmax(1) == truth).mean()),
        "top5_1000": float((top5 == truth[:, None]).any(1).mean()),
        "top1_restricted_10": float((restricted == truth).mean()),
        "top1_restricted_10_per_class": {w: float((restricted[truth == i] == i).mean())
                                         for w, i in sorted(IMAGENETTE.items())},
    }


def accuracy(arch: str, paths, truth) -> dict:
    import tensorflow as tf
    import tensorflow_hub as hub

    from chtn_tf.backbones.efficientnet_lite import ARCHS
    from chtn_tf.backbones.views import view_images
    from export.hub_module import main as export_main

    size = LITE_IMAGE_SIZES[arch]
    with tempfile.TemporaryDirectory() as tmp:
        module_dir = os.path.join(tmp, f"{arch}-classification")
        export_main(["--arch", arch, "--kind", "classification", "--out", module_dir])
        module = hub.load(module_dir)
        images = (tf.data.Dataset.from_tensor_slices(paths)
                  .map(lambda p: view_images(tf.io.read_file(p), VIEWS, size), num_parallel_calls=tf.data.AUTOTUNE)
                  .batch(25))
        start = time.perf_counter()
        logits = np.concatenate([module(tf.reshape(b, [-1, size, size, 3])).numpy().reshape(-1, len(VIEWS), 1000)
                                 for b in images])
        seconds = time.perf_counter() - start
    result = {"module": f"python -m export.hub_module --arch {arch} --kind classification, loaded with "
                        "tensorflow_hub.load",
              "image_size": size, "images": int(len(truth)), "published_imagenet_top1": ARCHS[arch].published_top1,
              **scores(logits[:, 0], truth),
              "crop_center": {k: v for k, v in scores(logits[:, 1], truth).items() if "per_class" not in k},
              "classify_seconds_both_views": round(seconds, 1), "thresholds": THRESHOLDS}
    result["passed"] = all(result[k] >= v for k, v in THRESHOLDS.items())
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", choices=tuple(LITE_IMAGE_SIZES), default=list(LITE_IMAGE_SIZES))
    args = parser.parse_args(argv)

    from chtn_tf.data import resolve_data_dir

    paths, truth = imagenette_val(str(resolve_data_dir()))
    started_on = machine()
    archs = {}
    for arch in args.archs:
        archs[arch] = accuracy(arch, paths, truth)
        print(arch, json.dumps({k: archs[arch][k] for k in ("top1_1000", "top5_1000", "top1_restricted_10",
                                                             "published_imagenet_top1", "passed")}), flush=True)
    result = {"archs": archs, "date": datetime.date.today().isoformat(), "machine": started_on,
              "command": command_line("backbone_accuracy.py", sys.argv[1:] if argv is None else argv)}
    update_results("accuracy", result)
    return 0 if all(a["passed"] for a in archs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
