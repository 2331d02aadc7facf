"""Multi-worker throughput on this machine: training steps/s and pairs/s for one process vs two workers on
127.0.0.1 (MultiWorkerMirroredStrategy), and backbone feature extraction per worker, one process vs two shards.

    CHTN_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/distributed.py [--epochs 3] [--images 192]

Training: ``training.fit``'s own model and loop on Wikipedia (its registered defaults: 1024-wide layers, batch
64; cached features), timed per step by a callback, epoch 1 (tracing) left out; medians. The two workers split
each global batch of 64 (32 each) and all-reduce gradients, BatchNorm moments and loss terms every step over
gRPC on the loopback interface. Extraction: EfficientNet-Lite0 on Imagenette validation photos with a fresh
feature cache, one process vs ``--shard 0/2`` and ``1/2`` in two processes sharing the cache.

This machine has 2 cores: two workers share them, so no speed-up can show here; the figures measure what
distribution costs (communication, duplicated per-process work) and that extraction is split evenly. On
machines with their own cores each worker would run at about the one-process rate.
Writes ``benchmarks/results/distributed.json`` and the ``distributed`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def part_train(args) -> dict:
    """Per-step times of ``fit_model`` on Wikipedia under the strategy ``TF_CONFIG`` implies."""
    from training.strategy import select_strategy

    distribution = select_strategy("auto")
    import keras

    from chtn_tf.model.config import dataset_config
    from training.inputs import prepare_inputs
    from training.run import build_model, fit_model

    config = dataset_config("wikipedia")
    inputs = prepare_inputs(config, progress=False, shard=(distribution.worker_index, distribution.num_workers))
    model = build_model(config, inputs, strategy=distribution.strategy)

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps, self.epoch = [], 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            self.started, self.cpu = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch > 0:  # epoch 1 traces the step function
                self.steps.append((time.perf_counter() - self.started, time.process_time() - self.cpu))

    timer = StepTimer()
    fit_model(model, inputs, epochs=args.epochs, callbacks=[timer], verbose=0)
    wall = statistics.median(s for s, _ in timer.steps)
    batch = config.train.batch_size
    parameters = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
    return {"strategy": distribution.name, "workers": distribution.num_workers, "global_batch": batch,
            "trainable_parameters": parameters,
            "timed_steps": len(timer.steps), "step_ms_p50": round(1000 * wall, 1),
            "steps_per_s": round(1 / wall, 2), "pairs_per_s": round(batch / wall, 1),
            "cpu_ms_per_step": round(1000 * statistics.median(c for _, c in timer.steps), 1)}


def part_extract(args) -> dict:
    """Extraction of the first ``--images`` Imagenette validation photos: this process's shard."""
    from chtn_tf.backbones import extract_features, resolve_backbone
    from chtn_tf.backbones.feature_cache import parse_shard
    from chtn_tf.data import load_image_folder, resolve_data_dir

    folder = os.path.join(str(resolve_data_dir(None)), "imagenette", "val")
    paths = load_image_folder(folder).image_paths
    paths = paths[:: max(1, len(paths) // args.images)][:args.images]
    spec = resolve_backbone("efficientnet-lite0")
    shard = parse_shard(args.shard)
    started, cpu = time.perf_counter(), time.process_time()
    result = extract_features(paths, spec, cache_dir=args.cache, progress=False, shard=shard)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"shard": args.shard, "images": len(paths), "computed": result.computed, "seconds": round(seconds, 1),
            "images_per_s": round(result.computed / seconds, 1),
            "cpu_s_per_image": round(cpu / max(1, result.computed), 3),
            "features": result.features.shape[0]}


def _free_ports(count: int) -> list:
    ports = []
    while len(ports) < count:
        port = random.randint(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def _run_parts(part: str, extra: list, workers: int, env_extra=None) -> list:
    """Runs ``--part part`` in ``workers`` processes (a TF_CONFIG cluster when more than one); their results."""
    ports = _free_ports(workers)
    processes = []
    for i in range(workers):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, **(env_extra or {}))
        env.pop("TF_CONFIG", None)
        if part == "train" and workers > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                           "task": {"type": "worker", "index": i}})
        shard = ["--shard", f"{i}/{workers}"] if part == "extract" else []
        processes.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--part", part, *extra, *shard],
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          start_new_session=True))
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=3600)
            if process.returncode != 0:
                sys.stderr.write(err[-4000:])
                raise SystemExit(f"part {part!r} failed (exit {process.returncode}); its error is above")
            results.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, 9)
    return results


def distributed_section(report: dict) -> str:
    """The RESULTS.md section of ``benchmarks/results/distributed.json``."""
    one, two = report["train"]["one_process"][0], report["train"]["two_workers"]
    lines = ["## Distributed (tf.distribute, 2 workers on 127.0.0.1)", "",
             f"Command: `{report['command']}` — {report['date']}, {report['machine']}.", "",
             "**This machine has 2 cores: the two workers share them, so no speed-up can show here.** The figures "
             "measure what distribution costs on one machine; on machines with cores of their own each worker "
             "runs its half of every batch at about the one-process rate.", "",
             f"Training on Wikipedia (registered defaults, global batch {one['global_batch']}, cached features), "
             f"medians over {one['timed_steps']} steps after the first epoch:", "",
             "| setup | strategy | step (ms) | steps/s | pairs/s | CPU ms per step (per process) |",
             "|---|---|---|---|---|---|",
             f"| 1 process | {one['strategy']} | {one['step_ms_p50']:.0f} | {one['steps_per_s']:.2f} | "
             f"{one['pairs_per_s']:.0f} | {one['cpu_ms_per_step']:.0f} |"]
    for i, w in enumerate(two):
        lines.append(f"| 2 workers, worker {i} | {w['strategy']} | {w['step_ms_p50']:.0f} | {w['steps_per_s']:.2f} | "
                     f"{w['pairs_per_s']:.0f} | {w['cpu_ms_per_step']:.0f} |")
    parameters = one["trainable_parameters"]
    lines += ["", f"Every step of the 2 workers all-reduces the gradients ({parameters / 1e6:.1f} M float32 values, "
              f"{4 * parameters / 2**20:.0f} MiB), the BatchNorm moments (global-batch "
              "statistics) and the loss terms over gRPC on the loopback interface. Each worker computes half a "
              "batch (about half the one-process CPU time); the rest of its CPU time per step goes to that "
              "traffic. pairs/s counts the global batch.", "",
              f"Feature extraction, EfficientNet-Lite0, {report['extract']['one_process'][0]['images']} Imagenette "
              "validation photos, fresh cache:", "",
              "| setup | images computed | wall s (load + compute + wait) | images/s | CPU s per image |",
              "|---|---|---|---|---|"]
    for name, rows in (("1 process", report["extract"]["one_process"]), ("2 shards", report["extract"]["two_shards"])):
        for r in rows:
            label = name if len(rows) == 1 else f"{name}, shard {r['shard']}"
            lines.append(f"| {label} | {r['computed']} | {r['seconds']:.1f} | {r['images_per_s']:.1f} | "
                         f"{r['cpu_s_per_image']:.3f} |")
    lines += ["", "Each shard computes whole batches of 32 and waits for the other's shard in the shared cache "
              "before merging (the merged features equal the one-process features bit for bit); its seconds "
              "include that wait and loading the backbone."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per setup (the first is not timed)")
    parser.add_argument("--images", type=int, default=192, help="photos to extract")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the RESULTS.md section from benchmarks/results/distributed.json")
    parser.add_argument("--part", choices=("train", "extract"), help=argparse.SUPPRESS)
    parser.add_argument("--shard", default="0/1", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        result = globals()[f"part_{args.part}"](args)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    from benchmarks.report import command_line, machine, update_results_md
    from chtn_tf.atomic import write_json_atomic

    if args.report_only:
        with open(os.path.join(HERE, "results", "distributed.json"), encoding="utf-8") as f:
            update_results_md("distributed", distributed_section(json.load(f)))
        return 0

    started_on = machine()
    train_args = ["--epochs", str(args.epochs)]
    report = {"date": datetime.date.today().isoformat(), "machine": started_on,
              "command": command_line("distributed.py", argv if argv is not None else sys.argv[1:]),
              "train": {"one_process": _run_parts("train", train_args, 1)}}
    print("train, 1 process:", report["train"]["one_process"], flush=True)
    report["train"]["two_workers"] = _run_parts("train", train_args, 2)
    print("train, 2 workers:", report["train"]["two_workers"], flush=True)
    report["extract"] = {}
    for name, workers in (("one_process", 1), ("two_shards", 2)):
        with tempfile.TemporaryDirectory() as cache:
            report["extract"][name] = _run_parts("extract", ["--images", str(args.images), "--cache", cache], workers)
        print(f"extract, {name}:", report["extract"][name], flush=True)
    write_json_atomic(os.path.join(HERE, "results", "distributed.json"), report)
    update_results_md("distributed", distributed_section(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
