"""Layer widths from the amount of training data: a width of 0 in a config means "choose from the data".

The released model's 4096-wide layers were made for tens of thousands of images; on a user's collection of a
few hundred pairs they memorise the training set within a few steps and lose to a per-modality logistic
regression (benchmarks/RESULTS.md, small collections). Measured on the small-collection test bed
(:mod:`benchmarks.testbed`, 5 draws of ~250 training pairs, test MAP): 64 wide 0.496, 128 wide 0.541,
256 wide 0.530, 4096 wide 0.402 (Web News draws); on the full Web News training split (2,400 pairs) 1024-wide
layers are best. Between these points the width grows in proportion to the number of training pairs.
"""

from __future__ import annotations

import math

AUTO_WIDTH = 0
MIN_WIDTH, MAX_WIDTH = 128, 1024


def width_for(num_train_pairs: int) -> int:
    """The branch and shared layer width for ``num_train_pairs``: a power of two in [128, 1024].

    n / 2 rounded to a power of two on the log scale: 128 up to 362 pairs, 256 up to 724, 512 up to 1,448,
    then 1024.
    """
    target = max(int(num_train_pairs), 1) / 2.0
    width = 2 ** round(math.log2(target))
    return int(min(max(width, MIN_WIDTH), MAX_WIDTH))


def has_auto_widths(config) -> bool:
    """Whether any branch or shared width of ``config`` is left to the data (0)."""
    return AUTO_WIDTH in (*config.model.branch_widths, *config.model.shared_widths)


def size_to_data(config, num_train_pairs: int):
    """A copy of ``config`` whose 0 widths are :func:`width_for` ``(num_train_pairs)``; other values are kept.

    Idempotent: a config without 0 widths comes back unchanged, so a resolved config (as written in a run's
    ``config.json``) resolves to itself.
    """
    if not has_auto_widths(config):
        return config
    width = width_for(num_train_pairs)
    return config.override({
        "model.branch_widths": tuple(width if w == AUTO_WIDTH else w for w in config.model.branch_widths),
        "model.shared_widths": tuple(width if w == AUTO_WIDTH else w for w in config.model.shared_widths),
    })
