"""keras-tuner HyperModel over CHTN's loss weights, learning rate and dropout, built by ``training.run``'s factory.

The objective is the validation MAP (mean of image->text and text->image), maximised. The hypermodel holds
only the train and validation splits: a search cannot read the test split.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras_tuner

from chtn_tf.model.config import ExperimentConfig
from training.inputs import PreparedInputs
from training.run import build_model, fit_model

OBJECTIVE = keras_tuner.Objective("val_map_avg", direction="max")

# keras-tuner's own entry for the epochs of a Hyperband trial.
HYPERBAND_EPOCHS = "tuner/epochs"


@dataclasses.dataclass(frozen=True)
class SearchDimension:
    """One tuned setting.

    Attributes:
        name: hyper-parameter name (the matching ``training.fit`` flag, without dashes).
        field: the ``ExperimentConfig`` field it sets (``section.name``).
        low, high: sampling range; widened to include the base config's value.
        sampling: ``log`` or ``linear``.
        step: grid step for linear sampling, or None.
    """

    name: str
    field: str
    low: float
    high: float
    sampling: str = "log"
    step: Optional[float] = None


SEARCH_SPACE = (
    SearchDimension("mmd_weight", "loss.mmd", 0.01, 10.0),
    SearchDimension("pair_weight", "loss.pair", 1e-5, 1e-1),
    SearchDimension("learning_rate", "optimizer.learning_rate", 1e-3, 1e-1),
    SearchDimension("dropout", "model.dropout", 0.0, 0.7, sampling="linear", step=0.1),
)


def without_test_split(inputs: PreparedInputs) -> PreparedInputs:
    """A shallow copy of ``inputs`` holding only the train and validation splits."""
    splits = {name: split for name, split in inputs.dataset.splits.items() if name != "test"}
    features = {name: value for name, value in inputs.features.items() if name != "test"}
    return dataclasses.replace(inputs, dataset=dataclasses.replace(inputs.dataset, splits=splits),
                               features=features)


class CHTNHyperModel(keras_tuner.HyperModel):
    """Samples the MMD weight, the pair weight, the learning rate (all log scale) and the dropout.

    The defaults of the search space are the base config's values, so ``build(HyperParameters())`` is the
    untuned base model. A weight that cannot act is not searched: the MMD weight when the run has no source
    domain (e.g. Wikipedia with its shipped features) or source transfer is off, the pair weight when the
    base config switches the pair constraint off (``loss.pair == 0``).

    Args:
        base: the config every trial starts from.
        inputs: prepared inputs (cached features), shared by every trial; the test split is dropped.
        epochs: epochs per trial (Hyperband passes its own per trial).
        fit_verbose: ``verbose`` of each trial's ``model.fit`` (the tuner's own ``verbose`` only sets its
            display); validation MAP is printed every epoch either way.
        strategy: the ``tf.distribute`` strategy each trial trains under (e.g. ``MirroredStrategy`` over the
            GPUs of a worker); default: the current one.

    Example:
        >>> hypermodel = CHTNHyperModel(dataset_config("wikipedia"), prepare_inputs(config), epochs=5)
        >>> tuner = keras_tuner.RandomSearch(hypermodel, objective=OBJECTIVE, max_trials=10, directory="runs/search")
        >>> tuner.search()
    """

    def __init__(self, base: ExperimentConfig, inputs: PreparedInputs, *, epochs: int, fit_verbose=0, strategy=None):
        super().__init__(name="chtn", tunable=True)
        if epochs < 1:
            raise ValueError(f"epochs per trial must be at least 1, got {epochs}")
        self.base = base
        self.inputs = without_test_split(inputs)
        self.epochs = int(epochs)
        self.fit_verbose = fit_verbose
        self.strategy = strategy
        self.dimensions = tuple(d for d in SEARCH_SPACE if self._is_active(d))

    def _is_active(self, dimension: SearchDimension) -> bool:
        if dimension.field == "loss.mmd":
            return self.inputs.num_source_classes > 0 and self.base.loss.source_transfer
        if dimension.field == "loss.pair":
            return self.base.loss.pair > 0
        return True

    def base_value(self, dimension: SearchDimension) -> float:
        section, _, name = dimension.field.partition(".")
        return float(getattr(getattr(self.base, section), name))

    def sample(self, hp) -> dict:
        """Declares the search space on ``hp``; returns ``{config field: value}`` for this trial."""
        values = {}
        for d in self.dimensions:
            default = self.base_value(d)
            low, high = min(d.low, default), max(d.high, default)
            value = hp.Float(d.name, low, high, sampling=d.sampling, step=d.step, default=default)
            # A stepped value comes back as 0.30000000000000004: keep the config readable.
            values[d.field] = round(value, 10) if d.step else value
        return values

    def trial_config(self, hp) -> ExperimentConfig:
        """The full config of one trial: the base config with the sampled values and the trial's epochs."""
        overrides = self.sample(hp)
        overrides["train.epochs"] = self.trial_epochs(hp)
        return self.base.override(overrides)

    def trial_epochs(self, hp) -> int:
        """Epochs a trial trains for: Hyperband's budget for it, else ``epochs``."""
        return int(hp.values.get(HYPERBAND_EPOCHS, self.epochs))

    def build(self, hp):
        return build_model(self.trial_config(hp), self.inputs, strategy=self.strategy)

    def fit(self, hp, model, *args, **kwargs):
        return fit_model(model, self.inputs, epochs=kwargs.get("epochs", self.epochs),
                         initial_epoch=kwargs.get("initial_epoch", 0), callbacks=kwargs.get("callbacks", ()),
                         verbose=self.fit_verbose)
