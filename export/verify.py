"""Check an export against its run: the SavedModels, fed the test split's raw inputs, reproduce the run's MAP.

    python -m export.verify --run RUN_DIR --serving SERVING_DIR [--version N] [--data-dir DIR]

Loads both encoders with plain ``tf.saved_model.load`` (no chtn model code), feeds the raw JPEG/PNG bytes
(or, for a precomputed-features run, the feature vectors) and the raw texts of the run's test split,
computes MAP@all (:func:`chtn_tf.metrics.retrieval.mean_average_precision`, the metric the run was scored
with), and compares with the run's ``results.json``. Exit status 0 when both directions agree within
``--tolerance`` (0.005), 1 when they do not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def verify(run_dir: str, serving_dir: str, *, version: int | None = None, data_dir: str | None = None,
           tolerance: float = 0.005) -> dict:
    """``{"map_i2t", "map_t2i", "run_map_i2t", "run_map_t2i", "n_test", "run_n_test", "ok", ...}``."""
    from chtn_tf.data import read_dataset
    from chtn_tf.metrics.retrieval import mean_average_precision
    from chtn_tf.model.config import ExperimentConfig
    from export.local import ExportedEncoders

    for name in ("config.json", "results.json"):
        if not os.path.isfile(os.path.join(run_dir, name)):
            raise FileNotFoundError(f"{run_dir} has no {name}: pass a finished training.fit run folder")
    config = ExperimentConfig.from_json(os.path.join(run_dir, "config.json"))
    with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    data = read_dataset(config, data_dir=data_dir)  # as training.fit read it: the test split is the run's
    test = data.splits["test"]
    encoders = ExportedEncoders.from_serving_dir(serving_dir, version)
    if encoders.image_input == "image_bytes":
        if test.image_paths is None:
            raise ValueError(f"{encoders.image_dir} takes image files, but {data.name} has only features here")
        image_codes = encoders.embed_image_files(test.image_paths)
    else:
        image_codes = encoders.embed_features(test.image_features)
    text_codes = encoders.embed_texts(test.texts)
    i2t = mean_average_precision(image_codes, test.labels, encoders.embed_text_gallery(test.texts), test.labels)
    t2i = mean_average_precision(text_codes, test.labels, image_codes, test.labels)
    ok = (abs(i2t - results["map_i2t"]) <= tolerance and abs(t2i - results["map_t2i"]) <= tolerance
          and len(test) == results.get("n_test", len(test)))
    return {"map_i2t": i2t, "map_t2i": t2i, "run_map_i2t": results["map_i2t"], "run_map_t2i": results["map_t2i"],
            "n_test": len(test), "run_n_test": results.get("n_test"), "ok": ok, "tolerance": tolerance,
            "image_model": encoders.image_dir, "text_model": encoders.text_dir}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.verify", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the training.fit run folder that was exported")
    parser.add_argument("--serving", required=True, help="the folder python -m export.saved_model wrote")
    parser.add_argument("--version", type=int, help="exported version (default: the highest)")
    parser.add_argument("--data-dir", help="data root (default: the run's, then $CHTN_DATA_DIR)")
    parser.add_argument("--tolerance", type=float, default=0.005)
    args = parser.parse_args(argv)

    from chtn_tf.data.types import DatasetError

    try:
        r = verify(args.run, args.serving, version=args.version, data_dir=args.data_dir, tolerance=args.tolerance)
    except (FileNotFoundError, ValueError, KeyError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"models: {r['image_model']}, {r['text_model']}\n"
          f"{'':<22}{'I->T':>8}{'T->I':>8}{'n_test':>8}\n"
          f"{'SavedModels':<22}{r['map_i2t']:>8.4f}{r['map_t2i']:>8.4f}{r['n_test']:>8}\n"
          f"{'run results.json':<22}{r['run_map_i2t']:>8.4f}{r['run_map_t2i']:>8.4f}{str(r['run_n_test']):>8}")
    print(("agree within " if r["ok"] else "DIFFER by more than ") + str(r["tolerance"]))
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
