"""Speed benchmark: training throughput (cached features vs backbone in the loop), exported encoder latency
and throughput vs the Keras model, with the peak memory of each measurement.

    CHTN_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/speed.py --run runs/webnews --serving serving

``--run`` is a Web News ``training.fit`` run folder and ``--serving`` its export (``python -m
export.saved_model``). Each part runs in its own process so its peak resident memory is its own. Medians
over repeats. Writes ``benchmarks/results/speed.json`` and the speed section of ``benchmarks/RESULTS.md``.
Feature extraction speed is measured by ``benchmarks/feature_speed.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

PARTS = ("train_cached", "train_backbone", "encoder_keras", "encoder_savedmodel")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _batch(model, features, texts, labels, size, rng):
    import tensorflow as tf

    idx = rng.choice(len(texts), size)
    batch = {"target": {"image": tf.constant(features[idx]), "text": tf.constant([texts[i] for i in idx]),
                        "label": tf.constant(labels[idx])}}
    if model.use_source:
        batch["source"] = {"image": tf.constant(features[rng.choice(len(texts), size)]),
                           "label": tf.constant(rng.integers(0, model.num_source_classes, size).astype(np.int32))}
    return batch


def part_train_cached(run_dir, serving_dir, data_dir):
    """Training steps per second on cached features (the default path)."""
    import tensorflow as tf

    from chtn_tf.data import load_dataset
    from chtn_tf.model.chtn import make_optimizer
    from chtn_tf.model.persist import build_model_from_run

    model, info = build_model_from_run(run_dir)
    model.compile(optimizer=make_optimizer(model.config.optimizer))
    dataset = load_dataset("webnews", data_dir=data_dir)
    train = dataset.splits["train"]
    rng = np.random.default_rng(0)
    features = rng.normal(size=(len(train), info["image_feature_dim"])).astype(np.float32)
    size = model.config.train.batch_size
    step = tf.function(model.train_step)
    batch = _batch(model, features, train.texts, train.labels, size, rng)
    step(batch)  # trace
    times = _timed(lambda: step(batch), 20)
    return {"pairs_per_s": size / statistics.median(times), "batch": size, "step_ms_p50": 1000 * statistics.median(times)}


def part_train_backbone(run_dir, serving_dir, data_dir):
    """Training steps per second with the frozen backbone computing features from raw images in the step."""
    import tensorflow as tf

    from chtn_tf.backbones import HubImageLayer
    from chtn_tf.data import load_dataset
    from chtn_tf.data.pipeline import load_image
    from chtn_tf.model.chtn import make_optimizer
    from chtn_tf.model.persist import build_model_from_run

    model, info = build_model_from_run(run_dir)
    model.compile(optimizer=make_optimizer(model.config.optimizer))
    backbone = HubImageLayer(info["backbone"]["handle"], trainable=False)
    dataset = load_dataset("webnews", data_dir=data_dir)
    train = dataset.splits["train"]
    size = model.config.train.batch_size
    rng = np.random.default_rng(0)
    idx = rng.choice(len(train), size)
    images = tf.stack([load_image(tf.constant(train.image_paths[i]), info["backbone"]["image_size"]) for i in idx])
    source_images = tf.stack([load_image(tf.constant(train.image_paths[i]), info["backbone"]["image_size"])
                              for i in rng.choice(len(train), size)])

    @tf.function
    def step():
        batch = {"target": {"image": backbone(images), "text": tf.constant([train.texts[i] for i in idx]),
                            "label": tf.constant(train.labels[idx])}}
        if model.use_source:
            batch["source"] = {"image": backbone(source_images), "label": tf.zeros([size], tf.int32)}
        return model.train_step(batch)

    step()
    times = _timed(step, 3)
    return {"pairs_per_s": size / statistics.median(times), "batch": size, "step_ms_p50": 1000 * statistics.median(times)}


def _encoder_measure(embed_image, embed_text, image_bytes, texts):
    out = {}
    for name, fn, one, many in (("image", embed_image, image_bytes[:1], image_bytes[:64]),
                                ("text", embed_text, texts[:1], texts[:64])):
        fn(one)
        fn(many)
        single = [1000 * t for t in _timed(lambda: fn(one), 50)]
        batched = _timed(lambda: fn(many), 5)
        out[name] = {"batch1_p50_ms": statistics.median(single), "batch1_p99_ms": float(np.percentile(single, 99)),
                     "batch64_items_per_s": 64 / statistics.median(batched)}
    return out


def _inputs(data_dir):
    from chtn_tf.data import load_dataset

    test = load_dataset("webnews", data_dir=data_dir).splits["test"]
    return [open(p, "rb").read() for p in test.image_paths[:64]], list(test.texts[:64]), test


def part_encoder_keras(run_dir, serving_dir, data_dir):
    """The live Keras model: backbone + image encoder on decoded bytes; text encoder on strings."""
    import tensorflow as tf

    from chtn_tf.backbones import HubImageLayer
    from chtn_tf.data.pipeline import decode_image
    from chtn_tf.model.persist import load_trained_model

    model, info = load_trained_model(run_dir)
    backbone = HubImageLayer(info["backbone"]["handle"])
    size = info["backbone"]["image_size"]

    @tf.function(reduce_retracing=True)
    def image_fn(raw):
        images = tf.map_fn(lambda b: decode_image(b, size), raw, fn_output_signature=tf.TensorSpec([size, size, 3]))
        return model.image_encoder(backbone(images))

    image_bytes, texts, _ = _inputs(data_dir)
    return _encoder_measure(lambda x: image_fn(tf.constant(x)).numpy(),
                            lambda x: model.encode_texts(x), image_bytes, texts)


def part_encoder_savedmodel(run_dir, serving_dir, data_dir):
    """The exported SavedModels (what TF Serving runs), loaded with tf.saved_model.load."""
    import tensorflow as tf

    from export.layout import version_dirs

    image_dir, text_dir = version_dirs(serving_dir)
    image = tf.saved_model.load(image_dir).signatures["serving_default"]
    text = tf.saved_model.load(text_dir).signatures["serving_default"]
    image_bytes, texts, _ = _inputs(data_dir)
    return _encoder_measure(lambda x: image(image_bytes=tf.constant(x))["embedding"].numpy(),
                            lambda x: text(text=tf.constant(x))["embedding"].numpy(), image_bytes, texts)


def speed_section(report: dict) -> str:
    """The RESULTS.md section for a speed report (the content of ``benchmarks/results/speed.json``)."""
    results = report["results"]
    cached, loop = results["train_cached"], results["train_backbone"]
    keras_enc, saved = results["encoder_keras"], results["encoder_savedmodel"]
    lines = [
        "## Speed", "", f"Command: `{report['command']}` (a Web News run and its export) — {report['date']}, "
        f"{report['machine']}. Medians; each part in its own process (peak RSS is that process's).", "",
        "| training | pairs/s | step (ms) | peak RSS (MB) |", "|---|---|---|---|",
        f"| cached backbone features (default) | {cached['pairs_per_s']:.0f} | {cached['step_ms_p50']:.0f} | {cached['peak_rss_mb']:.0f} |",
        f"| frozen backbone in the loop | {loop['pairs_per_s']:.1f} | {loop['step_ms_p50']:.0f} | {loop['peak_rss_mb']:.0f} |",
        f"| ratio | {cached['pairs_per_s'] / loop['pairs_per_s']:.0f}x | | |", "",
        "| encoder | batch 1 p50 / p99 (ms) | batch 64 items/s | peak RSS (MB) |", "|---|---|---|---|",
    ]
    for kind in ("image", "text"):
        for name, r in (("Keras model", keras_enc), ("exported SavedModel", saved)):
            lines.append(f"| {kind}, {name} | {r[kind]['batch1_p50_ms']:.1f} / {r[kind]['batch1_p99_ms']:.1f} | "
                         f"{r[kind]['batch64_items_per_s']:.0f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "Peak RSS of an encoder row is that of the process that ran both encoders of its kind. Feature "
              "extraction speed (first run and cached) is in the backbone section (`benchmarks/feature_speed.py`)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--serving", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        result = globals()[f"part_{args.part}"](args.run, args.serving, args.data_dir)
        result["peak_rss_mb"] = _peak_mb()
        print("RESULT " + json.dumps(result))
        return 0

    from benchmarks.report import machine, update_results_md
    from chtn_tf.atomic import write_json_atomic

    results = {}
    for part in PARTS:
        command = [sys.executable, os.path.abspath(__file__), "--run", args.run, "--serving", args.serving, "--part", part]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        process = subprocess.run(command, capture_output=True, text=True)
        if process.returncode != 0:
            sys.stderr.write(process.stderr[-4000:])
            raise SystemExit(f"speed part {part!r} failed (exit {process.returncode}); its error is above")
        output = process.stdout
        results[part] = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])
        print(part, results[part], flush=True)
    report = {"date": datetime.date.today().isoformat(), "machine": machine(),
              "command": "python benchmarks/speed.py --run RUN --serving SERVING", "results": results}
    write_json_atomic(os.path.join(HERE, "results", "speed.json"), report)
    update_results_md("speed", speed_section(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
