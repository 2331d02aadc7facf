"""Check an export against its run: the SavedModels, fed the test split's raw inputs, reproduce the run's MAP.

    python -m export.verify --run RUN_DIR --serving SERVING_DIR [--version N] [--data-dir DIR]

Loads both encoders with plain ``tf.saved_model.load`` (no chtn model code), feeds the raw JPEG/PNG bytes
(or the precomputed features) and the raw texts of the run's test split, computes MAP@all with its own
small implementation, and compares with the run's ``results.json``. Exit 0 when both directions agree
within ``--tolerance`` (0.005).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import tensorflow as tf


def map_at_all(queries, query_labels, gallery, gallery_labels) -> float:
    """MAP@all by cosine, relevant = same label (an independent implementation, one query at a time)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    aps = []
    for i in range(len(q)):
        order = np.argsort(-(g @ q[i]), kind="stable")
        relevant = gallery_labels[order] == query_labels[i]
        ranks = np.flatnonzero(relevant) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks) if len(ranks) else 0.0)
    return float(np.mean(aps))


def latest_version(folder: str) -> str:
    versions = sorted(int(v) for v in os.listdir(folder) if v.isdigit())
    if not versions:
        raise FileNotFoundError(f"no version folder in {folder}")
    return os.path.join(folder, str(versions[-1]))


def embed(signature, key: str, values, batch_size: int = 64) -> np.ndarray:
    out = []
    for i in range(0, len(values), batch_size):
        out.append(signature(**{key: tf.constant(values[i:i + batch_size])})["embedding"].numpy())
    return np.concatenate(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.verify", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--serving", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--tolerance", type=float, default=0.005)
    args = parser.parse_args(argv)

    from chtn_tf.data import load_dataset
    from chtn_tf.model.config import ExperimentConfig

    config = ExperimentConfig.from_json(os.path.join(args.run, "config.json"))
    with open(os.path.join(args.run, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    dataset = load_dataset(config.data.dataset, manifest=config.data.manifest, data_dir=args.data_dir or config.data.data_dir,
                           seed=config.train.seed, val_fraction=config.data.val_fraction, **config.data.options)
    test = dataset.splits["test"]
    image_model = tf.saved_model.load(latest_version(os.path.join(args.serving, "chtn_image")))
    text_model = tf.saved_model.load(latest_version(os.path.join(args.serving, "chtn_text")))
    image_signature = image_model.signatures["serving_default"]
    if test.image_paths is not None:
        raw = [open(p, "rb").read() for p in test.image_paths]
        image_codes = embed(image_signature, "image_bytes", raw)
    else:
        image_codes = embed(image_signature, "features", test.image_features)
    text_codes = embed(text_model.signatures["serving_default"], "text", list(test.texts))
    i2t = map_at_all(image_codes, test.labels, text_codes, test.labels)
    t2i = map_at_all(text_codes, test.labels, image_codes, test.labels)
    print(f"{'':<22}{'I->T':>8}{'T->I':>8}\n{'SavedModels':<22}{i2t:>8.4f}{t2i:>8.4f}\n"
          f"{'run results.json':<22}{results['map_i2t']:>8.4f}{results['map_t2i']:>8.4f}  (n_test {len(test)})")
    ok = abs(i2t - results["map_i2t"]) <= args.tolerance and abs(t2i - results["map_t2i"]) <= args.tolerance
    print("agree within" if ok else "DIFFER by more than", args.tolerance)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
