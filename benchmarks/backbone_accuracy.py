"""Backbone accuracy: the exported EfficientNet-Lite0 classification module on real ImageNet photos.

    CHTN_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/backbone_accuracy.py

Exports the module with ``python -m export.hub_module --kind classification`` into a temporary folder,
loads it with plain ``tensorflow_hub.load`` and classifies the Imagenette validation photos (500 ImageNet
val images of 10 classes, decoded exactly as the feature extractor does). Reports top-1 and top-5 over all
1,000 ImageNet classes and top-1 with the argmax restricted to the 10 Imagenette classes. A wrong padding,
normalisation or kernel layout drops these far below the published Lite0 top-1 (75%); the acceptance
thresholds are 0.70 and 0.98. Writes the ``accuracy`` section of ``benchmarks/results/backbones.json`` and the backbone section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.report import backbones_section, machine, update_results_md  # noqa: E402
from chtn_tf.atomic import write_json_atomic  # noqa: E402

RESULTS = os.path.join(HERE, "results", "backbones.json")
# Imagenette wnid -> ImageNet-1k class index (standard order), from the datasets README.
IMAGENETTE = {"n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
              "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701}
THRESHOLDS = {"top1_1000": 0.70, "top1_restricted_10": 0.98}


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


def accuracy(paths, truth) -> dict:
    import tensorflow_hub as hub

    from chtn_tf.data.pipeline import image_dataset
    from export.hub_module import main as export_main

    with tempfile.TemporaryDirectory() as tmp:
        module_dir = os.path.join(tmp, "lite0-classification")
        export_main(["--arch", "efficientnet-lite0", "--kind", "classification", "--out", module_dir])
        module = hub.load(module_dir)
        start = time.perf_counter()
        logits = np.concatenate([module(batch).numpy() for batch in image_dataset(paths, batch_size=50)])
        seconds = time.perf_counter() - start
    classes = np.array(sorted(IMAGENETTE.values()))
    restricted = classes[logits[:, classes].argmax(1)]
    top5 = np.argsort(-logits, axis=1)[:, :5]
    per_class = {wnid: float((restricted[truth == i] == i).mean()) for wnid, i in sorted(IMAGENETTE.items())}
    result = {
        "module": "python -m export.hub_module --arch efficientnet-lite0 --kind classification, "
                  "loaded with tensorflow_hub.load",
        "images": int(len(truth)),
        "top1_1000": float((logits.argmax(1) == truth).mean()),
        "top5_1000": float((top5 == truth[:, None]).any(1).mean()),
        "top1_restricted_10": float((restricted == truth).mean()),
        "top1_restricted_10_per_class": per_class,
        "classify_seconds": round(seconds, 1),
        "thresholds": THRESHOLDS,
    }
    result["passed"] = all(result[k] >= v for k, v in THRESHOLDS.items())
    return result


def main() -> int:
    from chtn_tf.data import resolve_data_dir

    paths, truth = imagenette_val(str(resolve_data_dir()))
    result = accuracy(paths, truth)
    result.update({"date": datetime.date.today().isoformat(), "machine": machine(),
                   "command": "python benchmarks/backbone_accuracy.py"})
    update_results("accuracy", result)
    print(json.dumps({k: result[k] for k in ("images", "top1_1000", "top5_1000", "top1_restricted_10", "passed")}))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
