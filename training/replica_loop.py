"""``fit`` for several replicas: a Keras-callback training loop driven by ``strategy.run``.

Why not ``keras.Model.fit``: under ``MultiWorkerMirroredStrategy`` Keras 3 (through 3.15) fails before the
first step — ``fit`` reduces a sample batch eagerly with ``strategy.reduce("MEAN", batch)``, which the
multi-worker strategy cannot do for a nested batch ("Attempt to convert a value (PerReplica:{...}) to a
Tensor") — and again on every step, where it reduces scalar logs with ``axis=0`` ("Invalid reduction
dimension 0 for input with 0 dimensions"; keras-team/keras#20585, tensorflow/tensorflow#72388). This loop
does what ``fit`` does with public APIs only: ``strategy.run(model.train_step)`` inside a ``tf.function``,
the model's own ``train_step``/``test_step``, and ``keras.callbacks.CallbackList`` (progress bar, History,
every callback hook). It runs ``MirroredStrategy`` the same way, so one code path serves every replicated run.

Data: every worker builds the same global batches (``--batch-size`` is the global batch) and keeps only
its replicas' rows: replica ``r`` of ``R`` gets rows ``[r·n/R, (r+1)·n/R)`` of each global batch of ``n``
rows. One step of R replicas therefore sees exactly the batch one process would see.

Logs: ``CHTNModel.train_step`` returns the global batch's values on every replica
(:mod:`chtn_tf.model.cross_replica`), so the loop reads the first local replica's logs; they are plain
floats, identical on every worker, and callbacks never touch distributed variables.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def uses_replica_loop(strategy) -> bool:
    """Whether a model built under ``strategy`` trains with :func:`fit_replicated` (mirrored and multi-worker)."""
    return isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy))


def distribute_batches(strategy, dataset: tf.data.Dataset):
    """A distributed dataset giving each replica its slice of every global batch of ``dataset`` (see module doc)."""
    def per_worker(context: tf.distribute.InputContext):
        replicas = context.num_replicas_in_sync
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local

        def slices(batch):
            rows = tf.shape(tf.nest.flatten(batch)[0])[0]

            def replica_rows(j):
                r = first + tf.cast(j, tf.int32)
                start, end = (r * rows) // replicas, ((r + 1) * rows) // replicas
                return tf.nest.map_structure(lambda t: _row_range(t, start, end), batch)

            return tf.data.Dataset.range(local).map(replica_rows)

        return dataset.flat_map(slices).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(per_worker)


def _row_range(values, start, end):
    """Rows ``[start, end)`` of a tensor or of a ``tf.SparseTensor`` (the bag-of-words rows of a batch)."""
    if isinstance(values, tf.SparseTensor):
        start, end = tf.cast(start, tf.int64), tf.cast(end, tf.int64)
        return tf.sparse.slice(values, tf.stack([start, 0]), tf.stack([end - start, values.dense_shape[1]]))
    return values[start:end]


def _step_function(model: keras.Model, step):
    strategy = model.distribute_strategy

    @tf.function(reduce_retracing=True)
    def run(batch):
        logs = strategy.run(step, args=(batch,))
        # Every replica returns the global batch's values: any local replica's copy is the answer.
        return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], logs)

    return run


def _floats(logs) -> dict:
    return {name: float(value) for name, value in logs.items()}


def fit_replicated(model: keras.Model, train: tf.data.Dataset, *, steps_per_epoch: int, validation_data=None,
                   epochs: int, initial_epoch: int = 0, callbacks=(), verbose="auto") -> keras.callbacks.History:
    """Trains ``model`` (built under its strategy's scope) like ``model.fit(train, steps_per_epoch=...)``.

    Args:
        model: a model with ``train_step``/``test_step`` whose logs are the same on every replica.
        train: global batches, identical on every worker, read ``steps_per_epoch`` per epoch from one iterator
            (an endless stream, as for ``fit`` with ``steps_per_epoch``).
        validation_data: global batches read once per epoch, or None.
        epochs, initial_epoch, callbacks, verbose: as in ``keras.Model.fit``; a callback that sets
            ``model._initial_epoch`` in ``on_train_begin`` (``BackupAndRestore``) moves the start as in ``fit``.
    Returns:
        The ``History`` (also ``model.history``).
    """
    strategy = model.distribute_strategy
    train_batches = distribute_batches(strategy, train)
    val_batches = None if validation_data is None else distribute_batches(strategy, validation_data)
    verbose = 1 if verbose == "auto" else verbose
    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, add_progbar=verbose != 0, verbose=verbose, epochs=epochs,
        steps=steps_per_epoch, model=model)
    train_step, test_step = _step_function(model, model.train_step), _step_function(model, model.test_step)

    model.stop_training = False
    callback_list.on_train_begin()
    initial_epoch = getattr(model, "_initial_epoch", None) or initial_epoch
    epoch_logs = {}
    batches = iter(train_batches)
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        logs = {}
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            logs = _floats(train_step(next(batches)))
            callback_list.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        epoch_logs = dict(logs)
        if val_batches is not None:
            model.reset_metrics()
            callback_list.on_test_begin()
            val_logs = {}
            for step, batch in enumerate(val_batches):
                callback_list.on_test_batch_begin(step)
                val_logs = _floats(test_step(batch))
                callback_list.on_test_batch_end(step, val_logs)
            callback_list.on_test_end(val_logs)
            epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
        callback_list.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs=epoch_logs)
    return model.history
