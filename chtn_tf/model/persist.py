"""A trained model's files in a run folder, and rebuilding the model from them.

A run folder holds ``config.json`` (the resolved :class:`ExperimentConfig`), ``text_vectorizer.json``
(vocabulary and idf weights), ``model_info.json`` (input width, classes, backbone) and
``best.weights.h5``: together enough to rebuild the model and its encoders, e.g. for export.
"""

from __future__ import annotations

import os

from chtn_tf.atomic import write_json_atomic
from chtn_tf.model.chtn import CHTNModel
from chtn_tf.model.config import ExperimentConfig
from chtn_tf.model.text import load_text_vectorizer, save_text_vectorizer

CONFIG_FILE = "config.json"
VECTORIZER_FILE = "text_vectorizer.json"
INFO_FILE = "model_info.json"
BEST_WEIGHTS = "best.weights.h5"


def save_model_definition(run_dir: str, model: CHTNModel, *, class_names, backbone: dict,
                          source_class_names=None) -> None:
    """Writes everything but the weights that :func:`load_trained_model` needs."""
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
    })


def build_model_from_run(run_dir: str) -> tuple:
    """The run's model with freshly initialised weights, and its ``model_info`` dict."""
    import json

    for name in (CONFIG_FILE, VECTORIZER_FILE, INFO_FILE):
        if not os.path.exists(os.path.join(run_dir, name)):
            raise FileNotFoundError(f"{run_dir} is not a chtn run folder: {name} is missing "
                                    f"(a run folder is what `python -m training.fit --out DIR` writes)")
    config = ExperimentConfig.from_json(os.path.join(run_dir, CONFIG_FILE))
    with open(os.path.join(run_dir, INFO_FILE), encoding="utf-8") as f:
        info = json.load(f)
    vectorizer = load_text_vectorizer(os.path.join(run_dir, VECTORIZER_FILE), config.model)
    model = CHTNModel(config, image_feature_dim=info["image_feature_dim"], num_classes=info["num_classes"],
                      text_vectorizer=vectorizer, num_source_classes=info["num_source_classes"])
    model.build_all()
    return model, info


def load_trained_model(run_dir: str, *, weights: str = BEST_WEIGHTS) -> tuple:
    """Rebuilds the run's model and loads its best weights; returns ``(model, model_info)``."""
    path = os.path.join(run_dir, weights)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: the run has not finished an epoch yet")
    model, info = build_model_from_run(run_dir)
    model.load_weights(path)
    return model, info
