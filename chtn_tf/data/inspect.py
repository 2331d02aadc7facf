"""``python -m chtn_tf.data.inspect``: what a dataset holds and every problem found in it.

Prints per split and per class counts, text length statistics, and each problem (dropped pairs by id, then
resolved oddities), then the verdict of :func:`chtn_tf.data.checks.check_usable`, the same that
``python -m training.fit`` gives. Exit status: 0 when the data is usable (every split non-empty, every class
in train, dropped pairs at most ``--max-dropped`` of those listed), 1 otherwise (or when the data cannot be
read), with the reasons on stderr; warnings go to stderr either way.
"""

from __future__ import annotations

import argparse
import re
import sys

import numpy as np

from chtn_tf.cli import add_data_args, add_max_dropped_arg, config_from_args, number
from chtn_tf.data.checks import check_usable
from chtn_tf.data.registry import read_dataset
from chtn_tf.data.types import SPLITS, CrossModalDataset, DatasetError


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers by value (``"162"`` before ``"1106"``)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def text_length_stats(texts: list) -> dict:
    """Character and whitespace-token counts: min, median, mean, max (Chinese texts have few tokens)."""
    if not texts:
        return {}
    chars = np.asarray([len(t) for t in texts])
    tokens = np.asarray([len(t.split()) for t in texts])
    return {name: {"min": int(v.min()), "median": float(np.median(v)), "mean": float(v.mean()), "max": int(v.max())}
            for name, v in (("chars", chars), ("tokens", tokens))}


def summarise(dataset: CrossModalDataset) -> str:
    """The report printed by the CLI."""
    lines = [f"dataset: {dataset.name}", f"root: {dataset.root}",
             f"classes: {dataset.num_classes}", f"image side: {dataset.image_kind}"
             + (f" ({dataset.image_feature_dim}-d)" if dataset.image_kind == "features" else "")]
    width = max(len(c) for c in dataset.class_names)
    lines.append("")
    lines.append(f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in SPLITS) + "   total")
    for k, name in enumerate(dataset.class_names):
        counts = [int(np.sum(dataset.splits[s].labels == k)) for s in SPLITS]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c:>6}" for c in counts) + f"  {sum(counts):>6}")
    totals = [len(dataset.splits[s]) for s in SPLITS]
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{c:>6}" for c in totals) + f"  {sum(totals):>6}")
    lines.append("")
    lines.append("text length (chars / whitespace tokens): min, median, mean, max")
    for s in SPLITS:
        stats = text_length_stats(dataset.splits[s].texts)
        if stats:
            c, t = stats["chars"], stats["tokens"]
            lines.append(f"  {s:<5}  chars {c['min']}, {c['median']:.0f}, {c['mean']:.1f}, {c['max']}   "
                         f"tokens {t['min']}, {t['median']:.0f}, {t['mean']:.1f}, {t['max']}")
    dropped = [p for p in dataset.problems if p.dropped]
    resolved = [p for p in dataset.problems if not p.dropped]
    lines.append("")
    lines.append(f"dropped pairs: {len(dropped)}")
    for s in (*SPLITS, None):
        ids = sorted({p.pair_id for p in dropped if p.split == s and p.pair_id is not None}, key=natural_key)
        if ids:
            lines.append(f"  {s or 'no split'}: {', '.join(ids)}")
    for p in dropped:
        lines.append(f"  - {p}")
    lines.append(f"resolved (kept, noted): {len(resolved)}")
    for p in resolved:
        lines.append(f"  - {p}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chtn_tf.data.inspect", description=__doc__.split("\n")[0])
    add_data_args(parser, require_data=True)
    parser.add_argument("--val-fraction", type=number(float, low=0.0, high=1.0),
                        help="fraction of train carved out as val (default: the config's, 0.1)")
    add_max_dropped_arg(parser)
    args = parser.parse_args(argv)
    try:
        # The data training.fit reads for the same flags.
        dataset = read_dataset(config_from_args(args, {"val_fraction": "data.val_fraction"}))
    except (DatasetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summarise(dataset))
    verdict = check_usable(dataset, max_dropped=args.max_dropped)
    for warning in verdict.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if verdict.errors:
        print("NOT USABLE: " + "; ".join(verdict.errors), file=sys.stderr)
        return 1
    print("\nusable: yes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
