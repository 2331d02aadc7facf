"""Writing benchmark figures into ``benchmarks/RESULTS.md``, one marked section per benchmark."""

from __future__ import annotations

import os
import platform

from chtn_tf.atomic import write_text_atomic

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_MD = os.path.join(HERE, "RESULTS.md")


def machine() -> str:
    """The machine in words: CPU model, cores, memory, Python and TensorFlow versions, and its load when the
    run started (other jobs on the same cores slow wall-clock timings down)."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if models:
            cpu = f"{models[0]} ({platform.machine()})"
    except OSError:
        pass
    memory = ""
    try:
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import tensorflow as tf
        tf_version = f", TensorFlow {tf.__version__}"
    except ImportError:
        tf_version = ""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores{memory}, Python {platform.python_version()}{tf_version}, "
            f"load average {load}")


def command_line(script: str, argv) -> str:
    """How a benchmark was invoked, for the results: ``python benchmarks/<script> [args]``."""
    return " ".join(["python", f"benchmarks/{script}", *argv])


def update_results_md(section: str, body: str, path: str = RESULTS_MD) -> None:
    """Replaces the text between ``<!-- section:begin -->`` and ``<!-- section:end -->`` (appends it if new).

    Other sections are kept, so each benchmark script rewrites only its own figures. Written atomically.
    """
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmark results\n"
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{begin}\n{body}\n{end}"
    if begin in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_text_atomic(path, text)


def backbones_section(results: dict) -> str:
    """The RESULTS.md section for ``benchmarks/results/backbones.json`` (accuracy and feature speed per arch)."""
    lines = ["## Backbones: EfficientNet-Lite0/1/2 (offline ImageNet weights)", ""]
    acc = results.get("accuracy")
    if acc and "archs" in acc:  # (figures in the earlier single-arch format are not shown)
        archs = acc["archs"]
        lines += [f"Command: `{acc['command']}` — {acc['date']}, {acc['machine']}.", "",
                  f"Exported `classification` modules loaded with `tensorflow_hub.load`, "
                  f"{next(iter(archs.values()))['images']} Imagenette validation photos (ImageNet val images of 10 "
                  "classes) at each arch's input size; whole image (the serving decode), and in brackets its "
                  "central 80% crop (the cached `crop_center` view). Published: ImageNet top-1 of these weights "
                  "on the full 50,000-image validation set (TensorFlow's EfficientNet-Lite README).", "",
                  "| arch | px | top-1 / 1,000 | top-5 / 1,000 | top-1 / 10 Imagenette classes | published top-1 "
                  "(ImageNet val) |", "|---|---|---|---|---|---|"]
        for arch, a in archs.items():
            c = a["crop_center"]
            lines.append(f"| {arch} | {a['image_size']} | {a['top1_1000']:.3f} ({c['top1_1000']:.3f}) | "
                         f"{a['top5_1000']:.3f} ({c['top5_1000']:.3f}) | {a['top1_restricted_10']:.3f} "
                         f"({c['top1_restricted_10']:.3f}) | {a['published_imagenet_top1']:.3f} |")
        thresholds = next(iter(archs.values()))["thresholds"]
        lines += ["", f"Required (whole image): top-1 / 1,000 ≥ {thresholds['top1_1000']}, top-1 / 10 classes ≥ "
                      f"{thresholds['top1_restricted_10']}. Reading the figures: the 10-way choice is far easier "
                      "than full ImageNet; the 1,000-way top-1 on this sample is not (a few of its classes have "
                      "close ImageNet neighbours: church/monastery, cassette player/tape player). The sample's "
                      "photos are stored at 224x224, so Lite1 and Lite2 see them upsampled and cannot use their "
                      "larger input; 500 photos give a standard error of about 2 points per figure.", ""]
    speed = results.get("speed")
    if speed and "archs" in speed:
        lines += [f"Command: `{speed['command']}` — {speed['date']}, {speed['machine']}.", "",
                  f"First (uncached) extraction run, batch {speed['batch_size']} forward images, decode + resize + "
                  "network + cache write, images/s per view (CPU seconds per image-view in brackets): `features` = "
                  "the whole network's pooled 1280-d vector (TF-Hub-format module); `maps` = the frozen bottom's "
                  "feature maps (split before the last MBConv block), one view (`orig`) and four views in one pass "
                  f"({', '.join(speed['views_pass'])}). Cache: bytes per image and view (float32). Wall-clock "
                  "rates fall with the machine's load (given above; the script runs under `nice`); CPU seconds "
                  "much less, so compare archs by those. `chtn_tf.backbones.registry.EXTRACTION_IMAGES_PER_S` "
                  "holds the idle-machine rates `--backbone auto` plans with, and their source.", "",
                  "| arch | image set | images | features | maps, 1 view | maps, 4 views (per view) | map shape | "
                  "cache / image-view | cached read (img/s) |", "|---|---|---|---|---|---|---|---|---|"]
        for arch, a in speed["archs"].items():
            for name, s in a["sets"].items():
                f, m1, m4 = s["features"], s["maps_1_view"], s["maps_4_views"]
                lines.append(
                    f"| {arch} | {name} | {f['images']} | {f['images_per_s_per_view']:.1f} "
                    f"({f['cpu_seconds_per_image_view']:.3f}) | {m1['images_per_s_per_view']:.1f} "
                    f"({m1['cpu_seconds_per_image_view']:.3f}) | {m4['images_per_s_per_view']:.1f} "
                    f"({m4['cpu_seconds_per_image_view']:.3f}) | {'x'.join(map(str, m1['output_shape_per_view']))} | "
                    f"{m1['cache_bytes_per_image_view'] / 1024:.1f} KiB | {m4['cached_images_per_s']:,} |")
        run = speed["run_images"]
        lines += ["", f"Extraction time of a default Web News run on an empty cache ({run['webnews_up_to_320px']:,} "
                      f"Web News + {run['imagenette_train_224px']:,} Imagenette train images), estimated from the "
                      "rates above (seconds):", "",
                  "| arch | features, 1 view | maps, 1 view | maps, 2 views | maps, 3 views | maps, 4 views | "
                  "writing the TF-Hub module (once) |", "|---|---|---|---|---|---|---|"]
        for arch, a in speed["archs"].items():
            b = a["run_extraction_seconds"]
            lines.append(f"| {arch} | {b['features_1_view']} | {b['maps_1_view']} | {b['maps_2_views']} | "
                         f"{b['maps_3_views']} | {b['maps_4_views']} | {a['build_module_seconds_once']:.1f} |")
    return "\n".join(lines)
