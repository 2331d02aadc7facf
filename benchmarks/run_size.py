"""Disk size of a default run folder and of its export, for a small manifest and for Web News.

    CHTN_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/run_size.py [--pairs-per-class 35] \
        [--manifest-epochs N] [--skip-webnews]

Case 1, "manifest": a CSV manifest of real Web News photos and texts (``--pairs-per-class`` per class, 4/5
train, 1/5 test: 350 pairs by default), trained with the defaults a user's manifest gets, full schedule unless
``--manifest-epochs`` (sizes do not depend on the number of epochs: every checkpoint is replaced, not added).
Case 2, "webnews": ``--dataset webnews`` with its registered defaults and full schedule (its test MAP is
reported too). Each run folder is exported with ``python -m export.saved_model``.

Reported per case: the run folder by part (``checkpoints/best``, ``checkpoints/last``, TensorBoard logs, the rest),
the export by model, the parameter and optimiser-state bytes behind them, and what the same run took under the
earlier layout (best and last weights each with the optimiser state, plus a second copy of the optimiser state),
computed from those byte counts. Writes ``benchmarks/results/run_size.json`` and the run_size section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.report import command_line, machine, update_results_md  # noqa: E402
from chtn_tf.atomic import write_json_atomic  # noqa: E402
from export.layout import IMAGE_MODEL, TEXT_MODEL  # noqa: E402

RESULTS_JSON = os.path.join(HERE, "results", "run_size.json")
MB = 1e6


def folder_bytes(path: str) -> int:
    """Bytes of every file under ``path`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def write_photo_manifest(path: str, per_class: int) -> int:
    """A manifest of the first Web News pairs of each class (4/5 of them train, 1/5 test); returns its rows."""
    from chtn_tf.data import load_dataset

    dataset = load_dataset("webnews")
    rows = []
    for split_name, share in (("train", per_class - per_class // 5), ("test", per_class // 5)):
        split = dataset.splits[split_name]
        for label, name in enumerate(dataset.class_names):
            chosen = [i for i in range(len(split)) if split.labels[i] == label][:share]
            rows += [(split.image_paths[i], split.texts[i], name, split_name) for i in chosen]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "text", "label", "split"])
        writer.writerows(rows)
    return len(rows)


def variable_bytes(run_dir: str) -> dict:
    """Bytes of the model's variables (all, and the two encoders') and of its optimiser's state."""
    from chtn_tf.model.chtn import make_optimizer
    from chtn_tf.model.persist import build_model_from_run, encoder_variables, model_variables, optimizer_variables

    model, _ = build_model_from_run(run_dir)
    model.compile(optimizer=make_optimizer(model.config.optimizer))
    model.optimizer.build(model.trainable_variables)

    def size(named):
        return int(sum(v.numpy().nbytes for v in named.values()))

    return {"model": size(model_variables(model)), "encoders": size(encoder_variables(model)),
            "optimizer": size(optimizer_variables(model.optimizer))}


def measure(name: str, fit_argv: list, work: str) -> dict:
    """Trains, exports and measures one case."""
    from export.saved_model import export_run
    from training import fit

    run_dir, serving = os.path.join(work, name, "run"), os.path.join(work, name, "serving")
    print(f"{name}: python -m training.fit {' '.join(fit_argv)}", flush=True)
    status = fit.main(fit_argv + ["--out", run_dir, "--quiet"])
    if status != 0:
        raise SystemExit(f"{name}: training.fit failed with status {status}")
    with contextlib.redirect_stdout(sys.stderr):
        export_run(run_dir, serving)
    with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    from training.checkpoint import BEST_DIR, LAST_DIR

    parts = {part: folder_bytes(os.path.join(run_dir, part)) for part in (BEST_DIR, LAST_DIR, "logs")}
    total = folder_bytes(run_dir)
    parts["other files"] = total - sum(parts.values())
    variables = variable_bytes(run_dir)
    return {
        "fit_argv": fit_argv, "n_train": results["n_train"], "n_val": results["n_val"], "n_test": results["n_test"],
        "epochs_run": results["epochs_run"], "map_avg": results["map_avg"], "val_map_avg": results["val_map_avg"],
        "widths": [config["model"]["branch_widths"], config["model"]["shared_widths"]],
        "vocabulary": config["model"]["text_vocab_size"], "optimizer": config["optimizer"]["name"],
        "source": results["source"], "run_bytes": total, "run_parts": parts,
        "export_bytes": {m: folder_bytes(os.path.join(serving, m)) for m in (IMAGE_MODEL, TEXT_MODEL)},
        "variable_bytes": variables,
        # Earlier layout: best.weights.h5 and checkpoints/last/model.weights.h5 each held every model variable
        # and the optimiser state; checkpoints/last/optimizer.npz held the optimiser state once more.
        "earlier_layout_bytes": 2 * variables["model"] + 3 * variables["optimizer"],
    }


def section(report: dict) -> str:
    lines = ["## Run folder and export size", "",
             f"Command: `{report['command']}` — {report['date']}, {report['machine']}.", "",
             "Default settings of each case (the config a user gets without flags). A run folder holds the best "
             "encoders (`checkpoints/best`: no optimiser state, no training-only source branch), the resumable "
             "last epoch (`checkpoints/last`: every variable and the optimiser state, once), TensorBoard logs and "
             "small JSON/PNG files. *Earlier layout* is what the same variables took before this layout (best "
             "and last weights each carrying the optimiser state, plus a second copy of it), computed from the "
             "byte counts.", "",
             "| case | pairs (train/val/test) | widths, vocabulary, optimiser | run folder | best | last | logs | "
             "earlier layout | export (image + text) | test MAP |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, case in report["cases"].items():
        parts = case["run_parts"]
        export = case["export_bytes"]
        lines.append(
            f"| {name} | {case['n_train']}/{case['n_val']}/{case['n_test']} | {case['widths'][0]} + "
            f"{case['widths'][1]}, {case['vocabulary']}, {case['optimizer']} | **{case['run_bytes'] / MB:.0f} MB** | "
            f"{parts['checkpoints/best'] / MB:.0f} MB | {parts['checkpoints/last'] / MB:.0f} MB | "
            f"{parts['logs'] / MB:.1f} MB | {case['earlier_layout_bytes'] / MB:.0f} MB | "
            f"{(export['chtn_image'] + export['chtn_text']) / MB:.0f} MB ({export['chtn_image'] / MB:.0f} + "
            f"{export['chtn_text'] / MB:.0f}) | {case['map_avg']:.3f} after {case['epochs_run']} epochs |")
    lines += ["", "Sizes do not grow with epochs (each checkpoint replaces the previous one). The manifest case "
              "uses the defaults for a new collection (widths and ensemble members chosen from its training "
              "pairs: 5 members 128 wide here, `chtn_tf/model/sizing.py`); with the released model's 4096-wide "
              "layers the same manifest took 1194 MB."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs-per-class", type=int, default=35)
    parser.add_argument("--manifest-epochs", type=int, default=None,
                        help="epochs of the manifest case (default: its full default schedule)")
    parser.add_argument("--skip-webnews", action="store_true", help="measure the manifest case only")
    parser.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from run_size.json")
    args = parser.parse_args(argv)
    if args.report_only:
        with open(RESULTS_JSON, encoding="utf-8") as f:
            report = json.load(f)
    else:
        report = {"command": command_line("run_size.py", argv if argv is not None else sys.argv[1:]),
                  "date": datetime.date.today().isoformat(), "machine": machine(), "cases": {}}
        with tempfile.TemporaryDirectory(prefix="chtn-size-") as work:
            manifest = os.path.join(work, "webnews_photos.csv")
            pairs = write_photo_manifest(manifest, args.pairs_per_class)
            epochs = ["--epochs", str(args.manifest_epochs)] if args.manifest_epochs else []
            report["cases"][f"manifest of {pairs} Web News photos"] = measure(
                "manifest", ["--manifest", manifest, *epochs], work)
            if not args.skip_webnews:
                report["cases"]["Web News (--dataset webnews)"] = measure("webnews", ["--dataset", "webnews"], work)
            elif os.path.exists(RESULTS_JSON):  # keep the Web News case measured by an earlier run
                with open(RESULTS_JSON, encoding="utf-8") as f:
                    earlier = json.load(f)["cases"]
                report["cases"].update({k: v for k, v in earlier.items() if k.startswith("Web News")})
        os.makedirs(os.path.dirname(RESULTS_JSON), exist_ok=True)
        write_json_atomic(RESULTS_JSON, report)
    update_results_md("run_size", section(report))
    print(section(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
