"""A trained model's files in a run folder, and rebuilding the model from them.

A run folder holds ``config.json`` (the resolved :class:`ExperimentConfig`), ``text_vectorizer.json`` (the
vectoriser's Keras config, vocabulary and idf weights), ``model_info.json`` (input width, classes, backbone) and
``checkpoints/best/`` (the encoders' variables at the best validation epoch, a TensorFlow checkpoint): together
enough to rebuild the model and its encoders, e.g. for export. ``training.checkpoint`` writes the checkpoints;
the names of their variables are defined here, once, for the writer and the reader alike.
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from chtn_tf.atomic import write_json_atomic
from chtn_tf.backbones.split import split_backbone_of
from chtn_tf.model.chtn import CHTNModel
from chtn_tf.model.config import ExperimentConfig
from chtn_tf.model.text import load_text_vectorizer, save_text_vectorizer

CONFIG_FILE = "config.json"
VECTORIZER_FILE = "text_vectorizer.json"
INFO_FILE = "model_info.json"
CHECKPOINTS = "checkpoints"
BEST_DIR = os.path.join(CHECKPOINTS, "best")
CHECKPOINT_PREFIX = "ckpt"


class CheckpointMismatch(ValueError):
    """A checkpoint holds other variables (names or shapes) than the model it is loaded into."""


def save_model_definition(run_dir: str, model: CHTNModel, *, class_names, backbone: dict,
                          source_class_names=None, data_fingerprint: str | None = None) -> None:
    """Writes everything but the weights that :func:`load_trained_model` needs.

    ``data_fingerprint`` identifies the training pairs (see ``training.run``), so that a resumed run can tell
    when the data changed under it.
    """
    os.makedirs(run_dir, exist_ok=True)
    model.config.to_json(os.path.join(run_dir, CONFIG_FILE))
    save_text_vectorizer(model.text_vectorizer, os.path.join(run_dir, VECTORIZER_FILE))
    write_json_atomic(os.path.join(run_dir, INFO_FILE), {
        "image_feature_dim": model.image_feature_dim,
        "num_classes": model.num_classes,
        "class_names": list(class_names),
        "num_source_classes": model.num_source_classes,
        "source_class_names": list(source_class_names) if source_class_names else None,
        "backbone": backbone,
        "representation": model.config.model.representation,
        "code_dim": model.code_dim,
        "data_fingerprint": data_fingerprint,
    })


def read_model_info(run_dir: str):
    """The run's ``model_info.json`` as a dict, or None when there is none."""
    path = os.path.join(run_dir, INFO_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def build_model_from_run(run_dir: str) -> tuple:
    """The run's model with freshly initialised weights, and its ``model_info`` dict."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run folder {run_dir} does not exist; pass the --out folder of a "
                                f"`python -m training.fit` run")
    for name in (CONFIG_FILE, VECTORIZER_FILE, INFO_FILE):
        if not os.path.exists(os.path.join(run_dir, name)):
            raise FileNotFoundError(f"{run_dir} is not a chtn run folder: {name} is missing "
                                    f"(a run folder is what `python -m training.fit --out DIR` writes)")
    config = ExperimentConfig.from_json(os.path.join(run_dir, CONFIG_FILE))
    info = read_model_info(run_dir)
    vectorizer = load_text_vectorizer(os.path.join(run_dir, VECTORIZER_FILE), name="text_vectorizer")
    model = CHTNModel(config, image_feature_dim=info["image_feature_dim"], num_classes=info["num_classes"],
                      text_vectorizer=vectorizer, num_source_classes=info["num_source_classes"],
                      split_backbone=split_backbone_of(info["backbone"]))
    model.build_all()
    return model, info


def load_trained_model(run_dir: str) -> tuple:
    """Rebuilds the run's model and loads its best encoders; returns ``(model, model_info)``.

    The training-only parts (source branch and classifier) keep their initial weights: they are not saved
    with the best checkpoint.
    """
    model, info = build_model_from_run(run_dir)
    restore_best(run_dir, model)
    return model, info


# ---------------------------------------------------------------- checkpoint variables, by name

def _leaf_layers(layer, seen: set):
    if id(layer) in seen:
        return
    seen.add(id(layer))
    children = getattr(layer, "layers", None)
    if children:
        for child in children:
            yield from _leaf_layers(child, seen)
    else:
        yield layer


def model_variables(*layers) -> dict:
    """``{"<layer name>:<variable name>": variable}`` of every Keras variable under ``layers`` (each once).

    Layer names are explicit (``fc6_i``, ``fc6_i_dropout``), so the names are the same in every process
    (Keras' variable paths are not: they number auto-named objects such as dropout seed generators per
    process). The text vectoriser's vocabulary is not a Keras variable and is not included.

    Raises:
        CheckpointMismatch: two variables would get the same name (two layers with one name).
    """
    named, seen_layers, seen_variables = {}, set(), set()
    for top in layers:
        for layer in _leaf_layers(top, seen_layers):
            for variable in layer.variables:
                if not isinstance(variable, keras.Variable) or id(variable) in seen_variables:
                    continue
                seen_variables.add(id(variable))
                key = f"{layer.name}:{variable.name}"
                if key in named:
                    raise CheckpointMismatch(f"two variables are named {key!r}; layer names must be unique")
                named[key] = variable
    return named


def encoder_variables(model: CHTNModel) -> dict:
    """The named variables of the image and text encoders (what evaluation and export use)."""
    return model_variables(model.image_encoder, model.text_encoder, model.text_gallery_encoder)


def optimizer_variables(optimizer: keras.optimizers.Optimizer) -> dict:
    """``{name: variable}`` of an optimiser's state; Keras names a slot after its model variable."""
    named = {}
    for variable in optimizer.variables:
        if variable.name in named:
            raise CheckpointMismatch(f"two optimiser variables are named {variable.name!r}")
        named[variable.name] = variable
    return named


def _read_shapes(path: str) -> dict:
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    return {key[: -len(suffix)]: tuple(shape) for key, shape in shapes.items() if key.endswith(suffix)}


def check_same_variables(path: str, sections: dict) -> None:
    """Raises :class:`CheckpointMismatch` unless checkpoint ``path`` holds exactly ``sections``' variables.

    ``sections`` is ``{section: {name: variable}}`` as given to ``tf.train.Checkpoint(**sections)``; other
    top-level entries of the checkpoint (``state``) are not compared.
    """
    expected = {f"{section}/{name}": tuple(v.shape) for section, named in sections.items() for name, v in named.items()}
    found = {k: v for k, v in _read_shapes(path).items() if k.split("/", 1)[0] in sections}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    reshaped = [f"{k} {found[k]} -> {expected[k]}" for k in sorted(set(expected) & set(found))
                if expected[k] != found[k]]
    if missing or extra or reshaped:
        parts = [f"{label}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''} ({len(names)})"
                 for label, names in (("not in the checkpoint", missing), ("only in the checkpoint", extra),
                                      ("other shape", reshaped)) if names]
        raise CheckpointMismatch(f"{path} was written by another model ({'; '.join(parts)})")


def restore_best(run_dir: str, model: CHTNModel) -> str:
    """Loads ``checkpoints/best`` into the model's encoders; returns the checkpoint's path.

    Raises:
        FileNotFoundError: the run has no best checkpoint yet.
        CheckpointMismatch: the checkpoint holds other variables than this model's encoders.
    """
    folder = os.path.join(run_dir, BEST_DIR)
    path = tf.train.latest_checkpoint(folder)
    if path is None:
        raise FileNotFoundError(f"{folder} holds no checkpoint: the run has not finished an epoch yet (re-run "
                                f"training.fit with the same --out to continue it)")
    sections = {"model": encoder_variables(model)}
    check_same_variables(path, sections)
    tf.train.Checkpoint(**sections).read(path).assert_existing_objects_matched().expect_partial()
    return path
