"""keras-tuner HyperModel over CHTN's loss weights and learning rate, built by the same factory as fit."""

from __future__ import annotations

import keras_tuner

from chtn_tf.model.config import ExperimentConfig
from training.inputs import PreparedInputs
from training.run import build_model, fit_model

OBJECTIVE = keras_tuner.Objective("val_map_avg", direction="max")


class CHTNHyperModel(keras_tuner.HyperModel):
    """Samples ``loss.mmd``, ``loss.pair`` (log scale), ``optimizer.learning_rate`` (log) and ``model.dropout``.

    Defaults of the search space are the base config's values, so the first trial of a Bayesian search
    (and ``build(HyperParameters())``) is the untuned model.

    Args:
        base: the config every trial starts from.
        inputs: prepared inputs (cached features): every trial reuses them.
        epochs: epochs per trial.
    """

    def __init__(self, base: ExperimentConfig, inputs: PreparedInputs, *, epochs: int):
        super().__init__(name="chtn", tunable=True)
        self.base = base
        self.inputs = inputs
        self.epochs = epochs

    def trial_config(self, hp) -> ExperimentConfig:
        """The config of one trial: the base config with the sampled values."""
        values = {
            "loss.mmd": hp.Float("mmd_weight", 0.01, 10.0, sampling="log", default=max(self.base.loss.mmd, 0.01)),
            "loss.pair": hp.Float("pair_weight", 1e-5, 1e-1, sampling="log", default=min(max(self.base.loss.pair, 1e-5), 1e-1)),
            "optimizer.learning_rate": hp.Float("learning_rate", 1e-3, 1e-1, sampling="log",
                                                default=self.base.optimizer.learning_rate),
            "model.dropout": hp.Float("dropout", 0.0, 0.7, step=0.1, default=self.base.model.dropout),
            "train.epochs": self.epochs,
        }
        return self.base.override(values)

    def build(self, hp):
        return build_model(self.trial_config(hp), self.inputs)

    def fit(self, hp, model, *args, **kwargs):
        return fit_model(model, self.inputs, epochs=self.epochs, callbacks=kwargs.get("callbacks", []),
                         verbose=kwargs.get("verbose", 0))
