"""Command-line pieces shared by chtn's commands: checked argparse types, the data flags, and the config they give.

``training.fit``, ``training.tune`` and ``chtn_tf.backbones.extract`` take the same data flags
(:func:`add_data_args`) and turn them into an :class:`~chtn_tf.model.config.ExperimentConfig` the same way
(:func:`config_from_args`), so the three read the same data for the same flags.
"""

from __future__ import annotations

import argparse
import os

from chtn_tf.data.registry import dataset_names
from chtn_tf.data.types import DatasetError
from chtn_tf.model.config import ExperimentConfig, dataset_config

# Data flag -> config field; a flag left out (None) keeps the config's value.
DATA_FLAGS = {"data_dir": "data.data_dir", "source": "data.source", "seed": "train.seed",
              "backbone": "train.backbone"}
ABLATIONS = ("none", "no-source", "no-pair", "no-shared")


def number(kind, *, low, low_included: bool = True, high=None):
    """An argparse type: ``kind`` (int or float) at least (or above) ``low`` and at most ``high``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'a whole number' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if (value < low if low_included else value <= low) or (high is not None and value > high):
            bound = f"{'at least' if low_included else 'above'} {low}"
            bound += f" and at most {high}" if high is not None else ""
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    return parse


def key_value(text: str) -> tuple:
    """An argparse type: ``KEY=VALUE``, the value read as a whole number, a number, true/false, or text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(value.lower(), value)


def add_data_args(parser: argparse.ArgumentParser, *, require_data: bool = False) -> None:
    """Adds the flags that say which data a command reads, and with which backbone and seed.

    ``--dataset NAME`` | ``--manifest PATH``, ``--config FILE``, ``--data-dir``, ``--source``, ``--backbone``,
    ``--seed``, ``--option KEY=VALUE`` (reader settings), ``--allow-leak``. Read them back with
    :func:`config_from_args`.
    """
    data = parser.add_mutually_exclusive_group(required=require_data)
    data.add_argument("--dataset", choices=dataset_names(), help="a registered dataset")
    data.add_argument("--manifest", help="CSV manifest image,text,label[,split] of your own collection")
    parser.add_argument("--config", help="JSON config (e.g. a run's config.json or training.tune's "
                                         "best_config.json); flags override it")
    parser.add_argument("--data-dir", help="data root (default: $CHTN_DATA_DIR, then ~/.cache/chtn/datasets)")
    parser.add_argument("--source", help="source domain: imagenette, none, or a folder <class>/<image> (default auto)")
    parser.add_argument("--backbone", help="auto, efficientnet-lite0|1|2, resnet50-v2, or a TF-Hub handle")
    parser.add_argument("--seed", type=number(int, low=0), help="seed of the splits, the data order and the model")
    parser.add_argument("--option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="reader setting, e.g. protocol=231/462 (wikipedia), sentences=each (pascal)")
    parser.add_argument("--allow-leak", action="store_true",
                        help="keep pairs whose image file is also in an earlier split (default: drop them)")


def add_max_dropped_arg(parser: argparse.ArgumentParser) -> None:
    """``--max-dropped``: the usability threshold of :func:`chtn_tf.data.checks.check_usable` (inspect, fit, tune)."""
    parser.add_argument("--max-dropped", type=number(float, low=0.0, high=1.0), default=0.05,
                        help="refuse the data when more than this fraction of its pairs were dropped (default 0.05)")


def config_from_args(args: argparse.Namespace, fields: dict | None = None) -> ExperimentConfig:
    """The config a command line asks for: the ``--config`` file or the dataset's defaults, then the flags.

    Args:
        args: parsed flags of a parser given :func:`add_data_args`.
        fields: the command's other ``{flag: "section.field"}`` overrides (e.g. ``training.fit``'s
            ``--epochs``); a flag that is None keeps the config's value. An ``ablation`` flag, when the
            command has one, switches off one part of CHTN (:data:`ABLATIONS`).

    Raises:
        DatasetError: no data is named (no ``--dataset``, ``--manifest``, nor a ``--config`` naming one).
        ValueError: a config file or a value that is not valid.
    """
    config = ExperimentConfig.from_json(args.config) if args.config else dataset_config(args.dataset)
    flags = {**DATA_FLAGS, **(fields or {})}
    overrides = {field: getattr(args, flag, None) for flag, field in flags.items()}
    if args.data_dir:
        overrides["data.data_dir"] = os.path.abspath(args.data_dir)  # the config is read from other folders
    if args.dataset:
        overrides.update({"data.dataset": args.dataset, "data.manifest": None})
    if args.manifest:
        overrides["data.manifest"] = os.path.abspath(args.manifest)
        config.data.dataset = None
    if args.option:
        overrides["data.options"] = {**config.data.options, **dict(args.option)}
    if args.allow_leak:
        overrides["data.allow_leak"] = True
    config = config.override(overrides)
    ablation = getattr(args, "ablation", "none")
    if ablation == "no-source":
        config.loss.source_transfer = False
    elif ablation == "no-pair":
        config.loss.pair = 0.0
    elif ablation == "no-shared":
        config.model.shared_layers = False
    if not config.data.dataset and not config.data.manifest:
        raise DatasetError("no data given: pass --dataset NAME, --manifest PATH, or a --config naming one")
    return config
