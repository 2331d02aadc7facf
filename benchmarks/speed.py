"""Speed benchmark: training throughput on cached features (the default path) and with the backbone in the loop,
exported encoder latency and throughput vs the Keras model, with the peak memory of each measurement.

    CHTN_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/speed.py [--config FILE ...] [--map]
        [--run runs/webnews --serving serving]

Training (always): ``training.run.fit_model``, the loop ``training.fit`` runs (tf.data batches of the cached
Web News features and of the texts vectorised once, train step, validation loss and validation MAP each epoch),
for the Web News defaults and for each ``--config FILE`` (a config as ``training.fit --config`` takes it;
its data section is replaced by Web News). One epoch warms up (tracing, XLA compilation), the next
``--epochs`` are timed. ``--map`` also trains each config's whole schedule in a temporary run folder
(``training.run.train_and_evaluate``: checkpoints, best epoch by validation MAP) and records its test MAP.
The first text layer is timed on its own with dense and sparse input, which is why the batches' bag-of-words
rows are made dense before it. ``--run`` (a Web News ``training.fit`` run folder) and ``--serving`` (its export,
``python -m export.saved_model``) add the backbone-in-the-loop and encoder parts; without them the previous
figures of those parts are kept. Each part runs in its own process so its peak resident memory is its own.
Medians over repeats. Writes ``benchmarks/results/speed.json`` and the speed section of ``benchmarks/RESULTS.md``.
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

PARTS = ("train_cached", "train_backbone", "encoder_keras", "encoder_savedmodel")  # train_cached first


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _webnews_config(config_file):
    """The Web News defaults, or ``config_file``'s config reading Web News."""
    from chtn_tf.model.config import ExperimentConfig, dataset_config

    if not config_file:
        return dataset_config("webnews")
    config = ExperimentConfig.from_json(config_file)
    config.data = dataset_config("webnews").data
    return config


def describe(config) -> str:
    """A config in a few words: ensemble members, widths, text input, optimiser, batch, epochs."""
    m, o = config.model, config.optimizer
    members = f"{m.members} members, " if m.members > 1 else ""
    return (f"{members}fc6/fc7 {'/'.join(map(str, m.branch_widths))}, fc8/fc9 {'/'.join(map(str, m.shared_widths))}, "
            f"{m.text_vocab_size} terms ({m.text_input_norm}), {o.name} {o.learning_rate:g} {o.schedule}, "
            f"batch {config.train.batch_size}, {config.train.epochs} epochs")


def part_train_cached(args):
    """Training pairs/s of the fit loop on cached Web News features; optionally the whole run's test MAP."""
    import keras

    from training.inputs import prepare_inputs
    from training.run import build_model, fit_model

    config_file = args.config[-1] if args.config else None  # a part measures one config
    config = _webnews_config(config_file)
    inputs = prepare_inputs(config, progress=False)
    model = build_model(config, inputs)

    class EpochTimer(keras.callbacks.Callback):
        """Wall seconds of each epoch: its training steps, and the whole epoch with validation."""

        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_test_begin(self, logs=None):
            self.trained = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append((self.trained - self.started, time.perf_counter() - self.started))

    timer = EpochTimer()
    fit_model(model, inputs, epochs=1 + args.epochs, callbacks=[timer], verbose=0)
    batch = config.train.batch_size
    pairs = len(inputs.dataset.splits["train"]) // batch * batch  # full batches only
    steps, whole = (statistics.median(t[k] for t in timer.epochs[1:]) for k in (0, 1))
    result = {"config": describe(config), "config_file": config_file, "batch": batch, "pairs_per_epoch": pairs,
              "pairs_per_s": pairs / steps, "step_ms": 1000 * steps / (pairs // batch),
              "epoch_pairs_per_s": pairs / whole, "first_epoch_s": timer.epochs[0][1],
              "parameters": int(model.count_params())}
    result["text_layer"] = _time_text_layer(model, inputs, batch)
    if args.map:
        result.update(_whole_run(config, inputs))
    return result


def _time_text_layer(model, inputs, batch: int) -> dict:
    """Forward + kernel gradient of the first text layer on real batches: dense input vs TF's sparse matmuls."""
    import keras
    import tensorflow as tf

    from chtn_tf.model.text import vectorize_texts

    texts = list(inputs.dataset.splits["train"].texts[:batch])
    sparse = vectorize_texts(model.text_vectorizer, texts)
    dense = tf.sparse.to_dense(sparse)
    kernel = tf.Variable(tf.random.normal([int(dense.shape[1]), model.config.model.branch_widths[0]], stddev=0.01))

    def timed(matmul, x):
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                y = matmul(x, kernel)
            return tape.gradient(tf.reduce_sum(y * y), kernel)
        return 1000 * statistics.median(_timed(lambda: step(x), 20)[2:])

    return {"nonzero_share": float(tf.size(sparse.values)) / float(tf.size(dense)),
            "dense_ms": timed(tf.matmul, dense),
            "sparse_dense_matmul_ms": timed(tf.sparse.sparse_dense_matmul, sparse),
            "keras_sparse_matmul_ms": timed(keras.ops.matmul, sparse)}


def _whole_run(config, inputs) -> dict:
    """The config's whole schedule as ``training.fit`` runs it (temporary run folder): test MAP and seconds."""
    import contextlib
    import tempfile

    from training.run import train_and_evaluate

    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(sys.stderr):
        results = train_and_evaluate(config, inputs, run_dir, resume=False, verbose=0)
    return {"run_seconds": results["train_seconds"], "epochs_run": results["epochs_run"],
            "best_epoch": results["best_epoch"], "val_map_avg": results["val_map_avg"],
            "map_i2t": results["map_i2t"], "map_t2i": results["map_t2i"], "map_avg": results["map_avg"]}


def part_train_backbone(args):
    """Training steps per second with the frozen backbone computing features from raw images in the step."""
    import tensorflow as tf

    from chtn_tf.backbones import HubImageLayer
    from chtn_tf.data import load_dataset
    from chtn_tf.data.pipeline import load_image
    from chtn_tf.model.chtn import make_optimizer
    from chtn_tf.model.persist import build_model_from_run

    run_dir, data_dir = args.run, args.data_dir
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


def part_encoder_keras(args):
    """The live Keras model: backbone + image encoder on decoded bytes; text encoder on strings."""
    import tensorflow as tf

    from chtn_tf.backbones import HubImageLayer
    from chtn_tf.data.pipeline import decode_image
    from chtn_tf.model.persist import load_trained_model

    run_dir, data_dir = args.run, args.data_dir
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


def part_encoder_savedmodel(args):
    """The exported SavedModels (what TF Serving runs), loaded with tf.saved_model.load."""
    import tensorflow as tf

    from export.layout import version_dirs

    serving_dir, data_dir = args.serving, args.data_dir
    image_dir, text_dir = version_dirs(serving_dir)
    image = tf.saved_model.load(image_dir).signatures["serving_default"]
    text = tf.saved_model.load(text_dir).signatures["serving_default"]
    image_bytes, texts, _ = _inputs(data_dir)
    return _encoder_measure(lambda x: image(image_bytes=tf.constant(x))["embedding"].numpy(),
                            lambda x: text(text=tf.constant(x))["embedding"].numpy(), image_bytes, texts)


BEFORE = ("219 pairs/s (step 292 ms, batch 64) on 2026-11-29, measured on the code before issue 14 (texts "
          "vectorised in every step, the optimiser update not compiled) as one repeated `train_step` on the Web News "
          "defaults")


def speed_section(report: dict) -> str:
    """The RESULTS.md section for a speed report (the content of ``benchmarks/results/speed.json``)."""
    results = report["results"]
    rows = results["train_cached"]
    with_map = any("map_avg" in r for r in rows)
    lines = [
        "## Speed", "", f"Command: `{report['command']}` — {report['date']}, {report['machine']}. Medians; each part "
        f"in its own process (peak RSS is that process's).", "",
        "Training on cached backbone features, Web News (the default path): the loop `training.fit` runs, "
        "tf.data batches of the cached image features and of the texts' bag-of-words rows (vectorised once per "
        "run), the train step with its optimiser update compiled by XLA. *steps*: the training steps of an "
        "epoch; *epoch*: with the validation loss and validation MAP; *first epoch*: with tracing and "
        "compilation. Before: " + BEFORE + ".", "",
        "| config | parameters | pairs/s (steps) | step (ms) | pairs/s (epoch) | first epoch (s) | peak RSS (MB) |"
        + (" test MAP (val) | whole run (s) |" if with_map else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if with_map else ""),
    ]
    for r in rows:
        line = (f"| {r['config']} | {r['parameters'] / 1e6:.1f} M | {r['pairs_per_s']:.0f} | {r['step_ms']:.1f} | "
                f"{r['epoch_pairs_per_s']:.0f} | {r['first_epoch_s']:.1f} | {r['peak_rss_mb']:.0f} |")
        if with_map:
            line += (f" {r['map_avg']:.3f} ({r['val_map_avg']:.3f}), best epoch {r['best_epoch']} of "
                     f"{r['epochs_run']} | {r['run_seconds']:.0f} |" if "map_avg" in r else " | |")
        lines.append(line)
    lines += ["", "The first text layer alone (forward and kernel gradient, one batch of real texts): the "
              "bag-of-words rows are a few percent non-zero, yet TensorFlow's sparse kernels on CPU are slower "
              "than oneDNN's dense matmul, so the batches' sparse rows are made dense before the layer.", "",
              "| config | non-zero | dense (ms) | tf.sparse.sparse_dense_matmul (ms) | keras.ops.matmul, sparse (ms) |",
              "|---|---|---|---|---|"]
    for r in rows:
        t = r["text_layer"]
        lines.append(f"| {r['config']} | {100 * t['nonzero_share']:.1f}% | {t['dense_ms']:.1f} | "
                     f"{t['sparse_dense_matmul_ms']:.1f} | {t['keras_sparse_matmul_ms']:.1f} |")
    loop = results.get("train_backbone")
    if loop:
        lines += ["", "| training, raw images | pairs/s | step (ms) | peak RSS (MB) |", "|---|---|---|---|",
                  f"| frozen backbone in the loop (measured {loop.get('date', report['date'])}) | "
                  f"{loop['pairs_per_s']:.1f} | {loop['step_ms_p50']:.0f} | {loop['peak_rss_mb']:.0f} |"]
    keras_enc, saved = results.get("encoder_keras"), results.get("encoder_savedmodel")
    if keras_enc and saved:
        lines += ["", f"| encoder (measured {saved.get('date', report['date'])}) | batch 1 p50 / p99 (ms) | "
                  f"batch 64 items/s | peak RSS (MB) |", "|---|---|---|---|"]
        for kind in ("image", "text"):
            for name, r in (("Keras model", keras_enc), ("exported SavedModel", saved)):
                lines.append(f"| {kind}, {name} | {r[kind]['batch1_p50_ms']:.1f} / {r[kind]['batch1_p99_ms']:.1f} | "
                             f"{r[kind]['batch64_items_per_s']:.0f} | {r['peak_rss_mb']:.0f} |")
        lines += ["", "Peak RSS of an encoder row is that of the process that ran both encoders of its kind. The "
                  "backbone and encoder parts need a run and its export (`--run`, `--serving`); without them "
                  "their last figures are kept, with their date."]
    lines += ["Feature extraction speed (first run and cached) is in the backbone section "
              "(`benchmarks/feature_speed.py`)."]
    return "\n".join(lines)


def _run_part(part: str, args, config_file=None) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--part", part, "--epochs", str(args.epochs)]
    for flag, value in (("--run", args.run), ("--serving", args.serving), ("--data-dir", args.data_dir),
                        ("--config", config_file)):
        if value:
            command += [flag, value]
    if args.map:
        command.append("--map")
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        sys.stderr.write(process.stderr[-4000:])
        raise SystemExit(f"speed part {part!r} failed (exit {process.returncode}); its error is above")
    return json.loads(next(line for line in process.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=[],
                        help="also measure this config (a training.fit --config file), on Web News; repeatable")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per config, after one warm-up epoch")
    parser.add_argument("--map", action="store_true", help="also train each config's whole schedule: test MAP")
    parser.add_argument("--run", help="a Web News training.fit run folder (backbone-in-the-loop and encoder parts)")
    parser.add_argument("--serving", help="its export (python -m export.saved_model)")
    parser.add_argument("--data-dir")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        result = globals()[f"part_{args.part}"](args)
        result["peak_rss_mb"] = _peak_mb()
        print("RESULT " + json.dumps(result))
        return 0
    if bool(args.run) != bool(args.serving):
        parser.error("--run and --serving go together")

    from benchmarks.report import command_line, machine, update_results_md
    from chtn_tf.atomic import write_json_atomic

    path = os.path.join(HERE, "results", "speed.json")
    previous = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        # Parts not measured now keep their figures and their date.
        previous = {part: {**value, "date": value.get("date", old["date"])}
                    for part, value in old["results"].items() if part != "train_cached"}
    results = {"train_cached": []}
    for config_file in [None] + args.config:
        results["train_cached"].append(_run_part("train_cached", args, config_file))
        print("train_cached", results["train_cached"][-1], flush=True)
    for part in PARTS[1:]:
        if args.run:
            results[part] = _run_part(part, args)
            print(part, results[part], flush=True)
        elif part in previous:
            results[part] = previous[part]
    report = {"date": datetime.date.today().isoformat(), "machine": machine(),
              "command": command_line("speed.py", sys.argv[1:] if argv is None else argv), "results": results}
    write_json_atomic(path, report)
    update_results_md("speed", speed_section(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
