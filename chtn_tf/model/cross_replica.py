"""How CHTN's hybrid objective is split over the replicas of a ``tf.distribute`` strategy.

Under a strategy with R replicas each replica runs ``train_step`` on its local slice of the global batch and
the Keras optimiser *sums* the replicas' gradients. So each replica's loss must be its share of the global
objective, such that the sum over replicas is the objective we mean. Per term:

* **Per-example terms** — the three cross-entropies and the two pair terms. The pair loss
  ``(1/2N) Σ_i ‖img_i − txt_i‖²`` is a mean over pairs of a per-pair quantity, so it is per-example too.
  Replica r computes the mean over its ``n_r`` local examples and scales it by ``n_r / N``, where
  ``N = Σ_r n_r`` is the global batch (summed across replicas every step, so uneven slices are exact).
  The sum over replicas is then exactly the mean over the global batch, as in one process with batch N.
  The source cross-entropy uses the source batch's own counts the same way.
* **MMD** — a batch statistic (a kernel mean over all pairs of the batch, with the bandwidth γ taken from
  that batch). Each replica computes MMD²(fc6), MMD²(fc7) on its *local* source and target slices (γ from
  the local pooled slice) and scales it by ``1 / R'``, R' = the number of replicas whose slices are
  non-empty (R in training). The objective is therefore the **mean of the R per-replica MMD² estimates**,
  each on ``N/R`` source + ``N/R`` target rows — not the MMD² of the global batch (which would need every
  replica's activations on every replica). It estimates the same discrepancy; being a V-statistic on
  smaller batches its positive bias (the kernel diagonal) is larger, about R times that of one process.
* **BatchNorm** layers use the statistics of the *global* batch (:func:`synchronize_batch_norm`), so the
  per-example terms above really are those of one process with batch N.

With one replica every scale is 1 and nothing is changed or communicated: single-process numbers stay
bit-identical. The logged values (:func:`global_values`) are the terms of the global batch, identical on
every replica, so any reduction of the step logs (first, mean) reads the same number.
"""

from __future__ import annotations

import keras
import tensorflow as tf

PER_EXAMPLE_TARGET = ("image_ce", "text_ce", "pair_fc6", "pair_fc7")
PER_EXAMPLE_SOURCE = ("source_ce",)
PER_REPLICA_STATISTIC = ("mmd_fc6", "mmd_fc7")


def num_replicas() -> int:
    """Replicas in sync in the current replica context (1 outside any strategy)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else int(context.num_replicas_in_sync)


def replica_shares(terms: dict, batch: dict) -> dict:
    """This replica's share of each unweighted term (see the module docstring); the terms themselves with one replica.

    Args:
        terms: ``{name: scalar}`` from :meth:`CHTNModel.loss_terms` on this replica's slice.
        batch: the replica's slice (``{"target": {...}, "source": {...}}``), for the example counts.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return dict(terms)
    n_target = tf.cast(tf.shape(batch["target"]["label"])[0], tf.float32)
    n_source = (tf.cast(tf.shape(batch["source"]["label"])[0], tf.float32) if "source" in batch
                else tf.constant(0.0))
    has_both = tf.cast(tf.logical_and(n_target > 0, n_source > 0), tf.float32)
    totals = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack([n_target, n_source, has_both]))
    shares = {}
    for names, weight, present in (
            (PER_EXAMPLE_TARGET, tf.math.divide_no_nan(n_target, totals[0]), n_target > 0),
            (PER_EXAMPLE_SOURCE, tf.math.divide_no_nan(n_source, totals[1]), n_source > 0),
            (PER_REPLICA_STATISTIC, tf.math.divide_no_nan(has_both, totals[2]), has_both > 0)):
        for name in names:
            value = tf.cast(terms[name], tf.float32)
            # An empty slice (the last, partial evaluation batch) gives a mean of nothing (NaN): it adds 0.
            shares[name] = tf.where(present, value, tf.zeros_like(value)) * weight
    return shares


def global_values(loss, shares: dict) -> tuple:
    """``(loss, terms)`` of the global batch: the replicas' shares summed (one all-reduce).

    With one replica they are returned as given.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return loss, shares
    names = sorted(shares)
    summed = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                tf.stack([tf.cast(loss, tf.float32)] + [shares[n] for n in names]))
    return summed[0], {name: summed[i + 1] for i, name in enumerate(names)}


def synchronize_batch_norm(model: keras.Model) -> int:
    """Makes every BatchNormalization layer in ``model`` use global-batch statistics when trained by several replicas.

    Keras' ``BatchNormalization(synchronized=True)`` all-reduces the moments across replicas (TensorFlow
    backend); without it each replica normalises by its own slice, and R replicas with global batch N would
    train a different model from one process with batch N. Called on a model built under a strategy with
    more than one replica; returns the number of layers switched (0 when there is one replica).
    """
    if tf.distribute.get_strategy().num_replicas_in_sync == 1:
        return 0
    switched = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            switched += 1
    return switched


def _all_layers(layer, seen=None):
    seen = set() if seen is None else seen
    if id(layer) in seen:
        return
    seen.add(id(layer))
    yield layer
    for child in getattr(layer, "layers", ()) or ():
        yield from _all_layers(child, seen)
