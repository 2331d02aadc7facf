"""Feature extraction speed per EfficientNet-Lite arch and per cached view, first (uncached) run vs cached run.

    CHTN_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/feature_speed.py [--images 300] \\
        [--archs efficientnet-lite0 ...] [--repeats 1]

On real photos (Imagenette train, 224 px JPEGs, and Web News images, JPEGs up to 320 px), each with a
fresh feature cache, for each arch it times:

- ``features``: :func:`chtn_tf.backbones.extract_features`, the whole network's pooled 1280-d features
  through the TF-Hub-format module (today's input to the CHTN image layers), view ``orig``;
- ``maps, 1 view``: :meth:`chtn_tf.backbones.SplitBackbone.extract` (``top_blocks=1``), the frozen bottom's
  feature maps, view ``orig``;
- ``maps, 4 views``: the same for ``orig, flip, crop_center, crop_top_left`` in one pass (each image decoded
  once, every view through the bottom), reported per image-view;
- the cached run (the 4-view maps read back from the cache) and the cache's size per image and view.

A first run includes building the model, tracing, decoding, resizing, the forward pass and writing the
cache. Besides wall-clock images/s it records this process's CPU seconds per image and the load average:
the machine is shared, and on 2 cores wall-clock figures drop sharply when other jobs run; CPU time much
less so. From the figures it estimates, per arch and number of views, the extraction time of a default
Web News run on an empty cache (2,193 Web News images + 1,500 Imagenette train images). Writes the
``speed`` section of ``benchmarks/results/backbones.json``.
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
from chtn_tf.backbones.registry import LITE_IMAGE_SIZES  # noqa: E402

VIEWS = ("orig", "flip", "crop_center", "crop_top_left")
# A default Web News run on an empty cache extracts these images (target and source domain).
RUN_IMAGES = {"webnews_up_to_320px": 2193, "imagenette_train_224px": 1500}


def image_sets(data_dir: str, count: int) -> dict:
    from chtn_tf.data import load_image_folder

    imagenette = load_image_folder(os.path.join(data_dir, "imagenette", "train")).image_paths
    webnews_root = os.path.join(data_dir, "webnews", "images")
    webnews = sorted(os.path.join(root, name) for root, _, names in os.walk(webnews_root) for name in names
                     if name.lower().endswith((".jpg", ".jpeg", ".png")))
    # Spread the selection over all classes (the lists are sorted by class).
    pick = lambda paths: paths[:: max(1, len(paths) // count)][:count]  # noqa: E731
    return {"imagenette_train_224px": pick(imagenette), "webnews_up_to_320px": pick(webnews)}


def timed(extract, repeats: int) -> dict:
    """Medians of ``repeats`` fresh-cache runs of ``extract(cache_dir)`` and one cached run after each."""
    first, first_cpu, cached, loads = [], [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            loads.append(os.getloadavg()[0])
            start, start_cpu = time.perf_counter(), time.process_time()
            computed = extract(cache)
            first.append(time.perf_counter() - start)
            first_cpu.append(time.process_time() - start_cpu)
            start = time.perf_counter()
            again = extract(cache)
            cached.append(time.perf_counter() - start)
            assert again.from_cache and not computed.from_cache
            size = sum(os.path.getsize(f) for f in computed.cache_files)
    features = computed.features
    n, views = features.shape[0], (features.shape[1] if computed.views else 1)
    work = (n - len(computed.failed)) * views
    return {"images": n, "views": views, "failed": len(computed.failed),
            "output_shape_per_view": list(features.shape[2:] if computed.views else features.shape[1:]),
            "images_per_s_per_view": round(work / statistics.median(first), 1),
            "cpu_seconds_per_image_view": round(statistics.median(first_cpu) / work, 4),
            "cached_images_per_s": round(n / statistics.median(cached)),
            "cache_bytes_per_image_view": round(size / (n * views)),
            "first_run_seconds": [round(s, 2) for s in first], "cached_run_seconds": [round(s, 3) for s in cached],
            "load_average_1min": [round(x, 1) for x in loads]}


def budget(sets: dict) -> dict:
    """Seconds to extract a default Web News run's images on an empty cache, from the measured rates."""
    def seconds(kind, views=1):
        return round(sum(n * views / sets[name][kind]["images_per_s_per_view"] for name, n in RUN_IMAGES.items()))

    return {"features_1_view": seconds("features"), "maps_1_view": seconds("maps_1_view"),
            **{f"maps_{v}_views": seconds("maps_4_views", v) for v in (2, 3, 4)}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="images per set")
    parser.add_argument("--archs", nargs="+", choices=tuple(LITE_IMAGE_SIZES), default=list(LITE_IMAGE_SIZES))
    parser.add_argument("--repeats", type=int, default=1, help="fresh-cache repeats (medians are reported)")
    args = parser.parse_args(argv)

    from chtn_tf.backbones import SplitBackbone, extract_features, resolve_backbone
    from chtn_tf.data import resolve_data_dir

    started_on = machine()
    sets = image_sets(str(resolve_data_dir()), args.images)
    result = {"batch_size": 32, "views_pass": list(VIEWS), "run_images": RUN_IMAGES, "archs": {}}
    for arch in args.archs:
        with tempfile.TemporaryDirectory() as hub_dir:
            start = time.perf_counter()
            spec = resolve_backbone(arch, cache_dir=hub_dir)
            entry = {"image_size": spec.image_size, "build_module_seconds_once": round(time.perf_counter() - start, 1),
                     "sets": {}}
            split = SplitBackbone(arch, top_blocks=1)
            for name, paths in sets.items():
                entry["sets"][name] = {
                    "features": timed(lambda c: extract_features(paths, spec, cache_dir=c, progress=False),
                                      args.repeats),
                    "maps_1_view": timed(lambda c: split.extract(paths, cache_dir=c, progress=False), args.repeats),
                    "maps_4_views": timed(lambda c: split.extract(paths, views=VIEWS, cache_dir=c, progress=False),
                                          args.repeats),
                }
                print(arch, name, {k: v["images_per_s_per_view"] for k, v in entry["sets"][name].items()}, flush=True)
        entry["run_extraction_seconds"] = budget(entry["sets"])
        print(arch, "default Web News run, extraction seconds:", entry["run_extraction_seconds"], flush=True)
        result["archs"][arch] = entry
    result.update({"date": datetime.date.today().isoformat(), "machine": started_on,
                   "load_average_at_end": round(os.getloadavg()[0], 1),
                   "command": command_line("feature_speed.py", sys.argv[1:] if argv is None else argv)})
    update_results("speed", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
