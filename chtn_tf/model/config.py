"""Typed configuration of a CHTN experiment; defaults are the released model's values.

One :class:`ExperimentConfig` describes a run completely (data, backbone, network, losses, optimiser,
schedule). It round-trips through JSON, is written beside every run's outputs, and is enough, with the
run's weights and text vocabulary, to rebuild the model.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Optional

from chtn_tf.atomic import write_json_atomic
from chtn_tf.data.registry import NEW_COLLECTION_DEFAULTS, registered

REPRESENTATIONS = ("fc10", "fc9")
TEXT_ANALYZERS = ("auto", "word", "char", "mixed")
TEXT_WEIGHTINGS = ("tf_idf", "count")

# Allowed values of the fields that name a choice.
FIELD_CHOICES = {
    "model.representation": REPRESENTATIONS, "model.text_analyzer": TEXT_ANALYZERS,
    "model.text_weighting": TEXT_WEIGHTINGS, "model.text_input_norm": ("batchnorm", "l2"),
    "optimizer.name": ("sgd", "adam"), "optimizer.schedule": ("constant", "cosine"),
}

# Allowed ranges of numeric fields: (low, high, low included[, high included]); high is excluded unless the fourth
# entry says otherwise, None = unbounded.
FIELD_RANGES = {
    "data.val_fraction": (0.0, 1.0, False),
    "model.text_vocab_size": (1, None, True), "model.dropout": (0.0, 1.0, True),
    "loss.source_ce": (0.0, None, True), "loss.image_ce": (0.0, None, True), "loss.text_ce": (0.0, None, True),
    "loss.mmd": (0.0, None, True), "loss.pair": (0.0, None, True), "loss.mmd_kernel_num": (1, None, True),
    "loss.mmd_kernel_mul": (0.0, None, False),
    "optimizer.learning_rate": (0.0, None, False), "optimizer.momentum": (0.0, 1.0, True),
    "optimizer.weight_decay": (0.0, None, True), "optimizer.ema_momentum": (0.0, 1.0, True),
    "model.input_dropout": (0.0, 1.0, True), "model.text_input_dropout": (0.0, 1.0, True), "model.members": (0, None, True),
    "model.image_top_blocks": (0, None, True), "model.text_gallery_linear_weight": (0.0, 1.0, True, True),
    "loss.label_smoothing": (0.0, 1.0, True),
    "train.epochs": (1, None, True), "train.batch_size": (1, None, True), "train.seed": (0, None, True),
    "train.early_stopping_patience": (0, None, True), "train.image_views": (1, 8, True),
}


def check_choices(section_obj, section: str) -> None:
    """Raises ValueError when a field of ``section_obj`` listed in :data:`FIELD_CHOICES` has another value."""
    for field, allowed in FIELD_CHOICES.items():
        owner, _, name = field.partition(".")
        value = getattr(section_obj, name) if owner == section else allowed[0]
        if value not in allowed:
            raise ValueError(f"{field} must be one of {allowed}, got {value!r}")


def check_field(section_cls, section: str, name: str, value) -> None:
    """Raises ValueError when ``value`` has the wrong type for the field or is out of its range."""
    hint = typing.get_type_hints(section_cls)[name]
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if optional:
        if value is None:
            return
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    field = f"{section}.{name}"
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str), dict: isinstance(value, dict),
          tuple: isinstance(value, (list, tuple))}.get(hint, True)
    if not ok:
        kind = {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
                dict: "an object", tuple: "a list"}[hint]
        raise ValueError(f"{field} must be {kind}, got {value!r}")
    if field in FIELD_RANGES:
        low, high, low_included, *rest = FIELD_RANGES[field]
        high_included = bool(rest and rest[0])
        if (value < low if low_included else value <= low) or (
                high is not None and (value > high if high_included else value >= high)):
            bounds = f"{'at least' if low_included else 'above'} {low}"
            bounds += (f" and at most {high}" if high_included else f" and below {high}") if high is not None else ""
            raise ValueError(f"{field} must be {bounds}, got {value!r}")


@dataclasses.dataclass
class DataConfig:
    """Which data a run reads.

    Attributes:
        dataset: a registered dataset name (:func:`chtn_tf.data.registry.dataset_names`), or None when
            ``manifest`` is given.
        manifest: path of a user CSV manifest ``image,text,label[,split]``.
        data_dir: data root; None: ``CHTN_DATA_DIR``, then the user cache folder.
        source: source domain for transfer: ``imagenette`` (under the data root), ``none``, or a folder path.
            ``auto``: ``imagenette`` when the dataset has raw images, else ``none``.
        options: reader options (e.g. ``{"protocol": "231/462"}`` for Wikipedia).
        val_fraction: fraction of train carved out as validation when the dataset has no validation split.
        allow_leak: keep a pair whose image file is also in an earlier split (train < val < test), instead of
            dropping it (it is reported either way).
    """

    dataset: Optional[str] = None
    manifest: Optional[str] = None
    data_dir: Optional[str] = None
    source: str = "auto"
    options: dict = dataclasses.field(default_factory=dict)
    val_fraction: float = 0.1
    allow_leak: bool = False


@dataclasses.dataclass
class ModelConfig:
    """The network's shape.

    Attributes:
        branch_widths: widths of fc6 and fc7 in each branch (source image, target image, text); 0: chosen from
            the number of training pairs (:func:`chtn_tf.model.sizing.width_for`) when the data is read.
        shared_widths: widths of the shared correlation layers fc8 and fc9 (0: as above).
        text_vocab_size: bag-of-words size (most frequent training terms).
        text_weighting: ``tf_idf`` or ``count``.
        text_analyzer: ``word`` (lower-cased words), ``char`` (character uni+bi-grams, for Chinese), ``mixed``
            (Han/kana/Hangul characters one by one, other words whole, uni+bi-grams: mixed-script texts),
            ``auto`` (``char`` when most training texts are CJK, ``mixed`` when 5% or more hold Han, kana or
            Hangul characters, else ``word``).
        representation: common representation used for retrieval: ``fc10`` (softmax probabilities)
            or ``fc9`` (activations).
        dropout: dropout rate after each branch fc layer (0 in the released model).
        shared_layers: False = the "no shared layers" ablation (separate fc8-fc10 heads per modality).
        image_input_bn: BatchNorm on the image feature vector before fc6 (see ``build_image_branch``).
        text_input_norm: how the bag of words enters fc6: ``batchnorm`` (released) or ``l2`` (log-scaled
            term weights, L2-normalised per text: no batch statistics, which are noise on small batches).
        input_dropout: dropout rate on the image branch's input (and the text branch's, unless
            ``text_input_dropout`` says otherwise).
        text_input_dropout: dropout rate on the text branch's input; None: ``input_dropout``.
        members: independently initialised copies of every layer trained side by side in one model (a packed
            ensemble: each member has its own branches and shared head, its own loss terms, averaged); the
            common representation averages the members' fc10 probabilities (fc9: concatenates them). On a few
            hundred pairs one network's probabilities vary much with its initialisation; the average does not.
            0: chosen from the layer width (:func:`chtn_tf.model.sizing.members_for`) when the data is read.
        image_top_blocks: > 0: the last this many MBConv blocks and the 1x1 head convolution of the
            EfficientNet-Lite backbone are the first, ImageNet-initialised and trainable, layers of the source
            and target image branches (CHTN's "fc6/fc7 initialised from ImageNet"), with MMD between source
            and target at the last block's and the head's outputs; the source branch keeps the backbone's
            ImageNet classifier (ImageNet labels of the source images). The frozen part's feature maps are
            cached. 0: the whole backbone is frozen and the branches start on its pooled features.
        text_gallery_linear_weight: share of a text's gallery code (the code image->text retrieval ranks texts
            by) taken from a logistic regression fitted to convergence on the training texts before training
            and kept fixed (:mod:`chtn_tf.model.linear`): ``(1 - w) * network probabilities + w * regression
            probabilities``. A text as a query (text->image) keeps the network's code. 0: the network alone
            everywhere (the released model). It mixes class probabilities, so the ``fc9`` representation ignores
            it (``training.fit --representation fc9`` sets it to 0).
    """

    branch_widths: tuple = (4096, 4096)
    shared_widths: tuple = (4096, 4096)
    text_vocab_size: int = 3000
    text_weighting: str = "tf_idf"
    text_analyzer: str = "auto"
    representation: str = "fc10"
    dropout: float = 0.0
    shared_layers: bool = True
    image_input_bn: bool = True
    text_input_norm: str = "batchnorm"
    input_dropout: float = 0.0
    text_input_dropout: Optional[float] = None
    members: int = 1
    image_top_blocks: int = 0
    text_gallery_linear_weight: float = 0.0

    def __post_init__(self):
        self.branch_widths = tuple(int(w) for w in self.branch_widths)
        self.shared_widths = tuple(int(w) for w in self.shared_widths)
        if len(self.branch_widths) != 2 or len(self.shared_widths) != 2:
            raise ValueError("branch_widths and shared_widths each need two widths (fc6, fc7) / (fc8, fc9)")
        if min(*self.branch_widths, *self.shared_widths) < 0:
            raise ValueError(f"layer widths must be positive (or 0: chosen from the number of training pairs), got "
                             f"branch_widths={list(self.branch_widths)}, shared_widths={list(self.shared_widths)}")
        check_choices(self, "model")


@dataclasses.dataclass
class LossConfig:
    """Weights of the hybrid objective.

    loss = source_ce·CE_source + image_ce·CE_image + text_ce·CE_text
           + mmd·(MMD_fc6 + MMD_fc7) + pair·(pair_fc6 + pair_fc7)

    Attributes:
        source_ce, image_ce, text_ce: softmax cross-entropy weights.
        mmd: weight of the source/target image MMD terms (released: 1).
        pair: weight of the image/text pair constraint (released: 0.001).
        mmd_kernel_num: number of Gaussian kernels (1 = the released single kernel).
        mmd_kernel_mul: ratio between neighbouring bandwidths of the multi-kernel form.
        source_transfer: False = the "no source transfer" ablation (no source branch, no MMD).
    """

    source_ce: float = 1.0
    image_ce: float = 1.0
    text_ce: float = 1.0
    mmd: float = 1.0
    pair: float = 0.001
    mmd_kernel_num: int = 1
    mmd_kernel_mul: float = 2.0
    source_transfer: bool = True
    label_smoothing: float = 0.0


@dataclasses.dataclass
class OptimizerConfig:
    """Optimiser (released: SGD, lr 0.01 fixed, momentum 0.9, weight decay 5e-4).

    Attributes:
        name: ``sgd`` or ``adam``.
        learning_rate: step size.
        momentum: SGD momentum.
        weight_decay: decoupled weight decay applied by the optimiser.
        schedule: ``constant`` (released) or ``cosine`` (decays to 0 over the run's steps).
        ema_momentum: > 0: evaluate and save an exponential moving average of the weights.
    """

    name: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "constant"
    ema_momentum: float = 0.0

    def __post_init__(self):
        check_choices(self, "optimizer")


@dataclasses.dataclass
class TrainConfig:
    """Schedule.

    Attributes:
        epochs: passes over the target training pairs.
        batch_size: target pairs per step; the same number of source images joins each step.
        seed: seed for splits, shuffling and initialisation.
        backbone: image backbone for raw-image datasets (``auto``, ``efficientnet-lite0``,
            ``resnet50-v2`` or a TF-Hub handle).
        early_stopping_patience: stop after this many epochs without a better validation MAP (0: never).
        image_views: views of each training image whose backbone features are cached (1 to 7, taken in the
            order of :data:`chtn_tf.backbones.views.TRAIN_VIEW_ORDER`: the image as served, its mirror, 80%
            crops); every epoch each training pair sees one of them, drawn from the seed and the epoch.
            Validation, test and the source domain always use the image as served. Needs raw images.
    """

    epochs: int = 30
    batch_size: int = 64
    seed: int = 0
    backbone: str = "auto"
    early_stopping_patience: int = 0
    image_views: int = 1


@dataclasses.dataclass
class ExperimentConfig:
    """Everything a run needs; written as ``config.json`` beside the run's outputs."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ExperimentConfig":
        """Builds a config from a (possibly partial) nested dict; unknown keys are an error."""
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(values) - set(sections)
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; known: {sorted(sections)}")
        kwargs = {}
        for field in dataclasses.fields(cls):
            section_cls = _SECTION_TYPES[field.name]
            given = values.get(field.name, {}) or {}
            if not isinstance(given, dict):
                raise ValueError(f"config section '{field.name}' must be an object of fields, got {given!r}")
            known = {f.name for f in dataclasses.fields(section_cls)}
            bad = set(given) - known
            if bad:
                raise ValueError(f"unknown field(s) {sorted(bad)} in config section '{field.name}'; known: {sorted(known)}")
            for name, value in given.items():
                check_field(section_cls, field.name, name, value)
            kwargs[field.name] = section_cls(**given)
        return cls(**kwargs)

    def to_json(self, path: str) -> None:
        """Writes the config atomically as JSON."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str) -> "ExperimentConfig":
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"config file {path} not found; pass --config PATH to a JSON config (e.g. a run's "
                             f"config.json)") from None
        except IsADirectoryError:
            raise ValueError(f"config {path} is a folder; pass --config PATH to a JSON file") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"config {path} is not UTF-8 text (byte offset {e.start}); save it as UTF-8 "
                             f"JSON") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); a config is a JSON object of sections "
                             f"{[f.name for f in dataclasses.fields(cls)]}") from e
        if not isinstance(values, dict):
            sections = [f.name for f in dataclasses.fields(cls)]
            raise ValueError(f"{path}: a config is a JSON object of sections {sections}, not a "
                             f"{type(values).__name__}")
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e

    def override(self, dotted: dict) -> "ExperimentConfig":
        """A copy with ``{"loss.mmd": 0.5, ...}`` style overrides applied (None values are ignored)."""
        values = self.to_dict()
        for key, value in dotted.items():
            if value is None:
                continue
            section, _, name = key.partition(".")
            if section not in values or name not in values[section]:
                raise ValueError(f"unknown config field {key!r}")
            values[section][name] = value
        return ExperimentConfig.from_dict(values)


_SECTION_TYPES = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optimizer": OptimizerConfig,
    "train": TrainConfig,
}


def dataset_config(name: Optional[str]) -> ExperimentConfig:
    """The default config of a run: the released model's values plus the dataset's own settings
    (:data:`chtn_tf.data.registry.DATASETS`); ``None`` (a manifest): plus the settings for a new collection
    (:data:`chtn_tf.data.registry.NEW_COLLECTION_DEFAULTS`, widths chosen from the data by
    :func:`chtn_tf.model.sizing.size_to_data` once the training pairs are known).

    Raises:
        DatasetError: ``name`` is not a registered dataset.
    """
    config = ExperimentConfig()
    config.data.dataset = name
    return config.override(registered(name).defaults if name else NEW_COLLECTION_DEFAULTS)
