"""Network size from the amount of training data: a width or a member count of 0 in a config means "choose from
the data".

The released model's 4096-wide layers were made for tens of thousands of images; on a user's collection of a
few hundred pairs they memorise the training set within a few steps and lose to a per-modality logistic
regression (benchmarks/RESULTS.md, small collections). Measured on the small-collection test bed
(:mod:`benchmarks.testbed`, 5 draws of ~250 training pairs, test MAP): 64 wide 0.496, 128 wide 0.541,
256 wide 0.530, 4096 wide 0.402 (Web News draws); on the full Web News training split (2,400 pairs) three
512-wide members (0.488) beat one 1024-wide network (0.472) and three 1024-wide members (0.484, seed 0). Between
these points the width grows in proportion to the number of training pairs, up to 512.

On a few hundred pairs one network's class probabilities depend much on its initialisation: five members
(:attr:`~chtn_tf.model.config.ModelConfig.members`) averaged score 0.551 where one scores 0.538 (Web News
draws) and 0.287 where one scores 0.273 (Wikipedia draws); on the full Web News and Wikipedia splits three
512-wide members score 0.488 and 0.288 where one 1024-wide network scores 0.472 and 0.269 (3 seeds each,
benchmarks/RESULTS.md). At most five members, and about 1,536 units per layer in all: 5 up to 256 wide, 3 at 512.
"""

from __future__ import annotations

import math

AUTO = 0
MIN_WIDTH, MAX_WIDTH = 128, 512
MAX_MEMBERS, MEMBER_UNITS = 5, 1536


def width_for(num_train_pairs: int) -> int:
    """The branch and shared layer width for ``num_train_pairs``: a power of two in [128, 512].

    n / 2 rounded to a power of two on the log scale: 128 up to 362 pairs, 256 up to 724, then 512.
    """
    target = max(int(num_train_pairs), 1) / 2.0
    width = 2 ** round(math.log2(target))
    return int(min(max(width, MIN_WIDTH), MAX_WIDTH))


def members_for(width: int) -> int:
    """Ensemble members for layers ``width`` wide: 5 up to 256, 3 at 512, 1 from 1024 on."""
    return int(min(MAX_MEMBERS, max(1, MEMBER_UNITS // max(int(width), 1))))


def has_auto_size(config) -> bool:
    """Whether any width or the member count of ``config`` is left to the data (0)."""
    model = config.model
    return AUTO in (*model.branch_widths, *model.shared_widths, model.members)


def size_to_data(config, num_train_pairs: int):
    """A copy of ``config`` whose 0 widths are :func:`width_for` ``(num_train_pairs)`` and whose 0 member count is
    :func:`members_for` of the widest layer; other values are kept.

    Idempotent: a config without 0s comes back unchanged, so a resolved config (as written in a run's
    ``config.json``) resolves to itself.
    """
    if not has_auto_size(config):
        return config
    width = width_for(num_train_pairs)
    branch = tuple(width if w == AUTO else w for w in config.model.branch_widths)
    shared = tuple(width if w == AUTO else w for w in config.model.shared_widths)
    members = config.model.members or members_for(max(*branch, *shared))
    return config.override({"model.branch_widths": branch, "model.shared_widths": shared, "model.members": members})


def fill_from(config, resolved):
    """``config`` with its 0 widths and member count taken from ``resolved`` (e.g. the config a run saved)."""
    if not has_auto_size(config):
        return config
    model, saved = config.model, resolved.model
    return config.override({
        "model.branch_widths": tuple(s if w == AUTO else w for w, s in zip(model.branch_widths, saved.branch_widths)),
        "model.shared_widths": tuple(s if w == AUTO else w for w, s in zip(model.shared_widths, saved.shared_widths)),
        "model.members": model.members or saved.members})
