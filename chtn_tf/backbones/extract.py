"""Backbone features of a dataset's images into the feature cache, on one process or 1/N per worker.

    python -m chtn_tf.backbones.extract --dataset webnews
    python -m chtn_tf.backbones.extract --manifest my.csv --shard 0/2     # on worker 0
    python -m chtn_tf.backbones.extract --manifest my.csv --shard 1/2     # on worker 1

Extracts every split (train, val, test) and the source domain, exactly the image lists ``python -m
training.fit`` reads for the same data flags, so a later fit starts from the cache. With ``--shard I/N`` this
process runs 1/N of the batches and merges the others' shards through the cache folder, which the workers
must share (``CHTN_CACHE_DIR``); the merged features equal a one-process extraction bit for bit.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from typing import Optional

from chtn_tf.backbones.feature_cache import (FeatureSet, extract_features, images_per_batch, parse_shard,
                                             plan_shards)
from chtn_tf.backbones.split import SplitBackbone
from chtn_tf.cli import add_data_args, config_from_args
from chtn_tf.data.types import CrossModalDataset, DatasetError

log = logging.getLogger("chtn")

EXTRACTION_BATCH = 32  # images per forward pass; the same on every worker (it fixes the shards' batches)


def resolve_source(source: Optional[str], dataset: CrossModalDataset, *, source_transfer: bool = True) -> Optional[str]:
    """The source domain a run uses: ``imagenette``, a folder, or None (``--source``; ``auto`` by default).

    ``auto`` is ``imagenette`` when the dataset has raw images (their backbone features can be transferred
    to) and None when it ships precomputed features.

    Raises:
        DatasetError: an explicit source with a features-only dataset.
    """
    source = source or "auto"
    if not source_transfer or source == "none":
        return None
    if dataset.image_kind == "features":
        if source == "auto":
            return None
        raise DatasetError(
            f"source transfer needs raw target images, but {dataset.name} has only precomputed image features "
            f"here; run with --source none (or provide the raw images)")
    return "imagenette" if source == "auto" else source


def extract_dataset(dataset: CrossModalDataset, spec, *, source_paths=None, shard: tuple = (0, 1),
                    progress: bool = True, cache_dir: Optional[str] = None) -> dict:
    """``{split: FeatureSet}`` for every split of ``dataset`` (raw images), plus ``"source"`` when given.

    Args:
        dataset: a dataset with raw images.
        spec: the backbone (its pooled features), or a :class:`~chtn_tf.backbones.split.SplitBackbone` (its frozen
            bottom's feature maps).
        source_paths: the source domain's image files, or None.
        shard: ``(index, num_shards)``: this process's share (see :func:`extract_features`).
        progress: progress bars.
        cache_dir: the feature cache folder (default ``$CHTN_CACHE_DIR/features``).
    """
    if dataset.image_kind == "features":
        raise DatasetError(f"{dataset.name} ships precomputed image features here: there is nothing to extract")
    sets = {name: split.image_paths for name, split in dataset.splits.items()}
    if source_paths is not None:
        sets["source"] = list(source_paths)
    # One plan over all sets, so N workers share the batches evenly even when a set is a single batch.
    plan = plan_shards({name: len(paths) for name, paths in sets.items()}, images_per_batch(EXTRACTION_BATCH, None),
                       shard[1])
    extract = spec.extract if isinstance(spec, SplitBackbone) else functools.partial(extract_features, spec=spec)
    return {name: extract(paths, batch_size=EXTRACTION_BATCH, progress=progress, shard=shard, parts=plan[name],
                          cache_dir=cache_dir)
            for name, paths in sets.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chtn_tf.backbones.extract", description=__doc__.splitlines()[0])
    add_data_args(parser)
    parser.add_argument("--shard", default="0/1", help="I/N: compute shard I of N (0-based) and merge the others")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from chtn_tf.data import read_dataset, source_domain

    try:
        shard = parse_shard(args.shard)
        config = config_from_args(args)
        dataset = read_dataset(config)
        source = resolve_source(config.data.source, dataset, source_transfer=config.loss.source_transfer)
        source_paths = None if source is None else source_domain(source, data_dir=config.data.data_dir).image_paths
        from chtn_tf.backbones.registry import resolve_backbone

        spec = resolve_backbone(config.train.backbone)
        started = time.time()
        features = extract_dataset(dataset, spec, source_paths=source_paths, shard=shard, progress=not args.quiet)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TimeoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report(features, shard, time.time() - started))
    return 0


def report(features: dict, shard: tuple, seconds: float) -> str:
    """One line per image set: images, computed here, failed, cache entry."""
    index, num_shards = shard
    lines = [f"shard {index}/{num_shards}: {sum(f.computed for f in features.values())} of "
             f"{sum(len(f.features) for f in features.values())} images computed here in {seconds:.1f} s"]
    for name, result in features.items():
        result: FeatureSet
        lines.append(f"  {name:<7}{len(result.features):>7} images{result.computed:>7} computed here"
                     f"{len(result.failed):>5} failed  {'(cached) ' if result.from_cache else ''}{result.cache_file}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
