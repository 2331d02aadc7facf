"""Bag-of-words text vectorisation computed in the graph from raw strings.

The vectoriser is a ``keras.layers.TextVectorization`` (core TF ops only, so it exports to TF Serving):
lower-cased words for alphabetic languages, character uni- and bi-grams for Chinese (no word segmenter
needed, and the bigrams recover most two-character words). Its vocabulary and idf weights are adapted on
the training texts only and saved beside the run, so the exact same vectoriser can be rebuilt.
"""

from __future__ import annotations

import json
import os
import unicodedata

import keras
import numpy as np

from chtn_tf.model.config import ModelConfig


def is_cjk_text(text: str) -> bool:
    """Whether most letters of ``text`` are CJK ideographs."""
    letters = [c for c in text[:2000] if c.isalpha()]
    if not letters:
        return False
    cjk = sum(1 for c in letters if "CJK" in unicodedata.name(c, ""))
    return cjk > len(letters) / 2


def resolve_analyzer(config: ModelConfig, train_texts) -> str:
    """``word`` or ``char``: the configured analyzer, or for ``auto`` the one the training texts need."""
    if config.text_analyzer != "auto":
        return config.text_analyzer
    sample = list(train_texts)[:200]
    cjk = sum(is_cjk_text(t) for t in sample)
    return "char" if cjk > len(sample) / 2 else "word"


def _vectorizer_kwargs(analyzer: str, config: ModelConfig) -> dict:
    if analyzer == "char":
        # Chinese has no spaces: split into characters; bigrams carry most words.
        return dict(standardize="lower_and_strip_punctuation", split="character", ngrams=(1, 2))
    return dict(standardize="lower_and_strip_punctuation", split="whitespace", ngrams=None)


def build_text_vectorizer(config: ModelConfig, train_texts, *, name: str = "text_vectorizer") -> keras.layers.TextVectorization:
    """A vectoriser adapted on ``train_texts`` (training texts only, never validation or test)."""
    analyzer = resolve_analyzer(config, train_texts)
    layer = keras.layers.TextVectorization(
        max_tokens=config.text_vocab_size,
        output_mode=config.text_weighting,
        name=name,
        **_vectorizer_kwargs(analyzer, config),
    )
    layer.adapt(np.asarray(list(train_texts), dtype=object), batch_size=256)
    layer.analyzer = analyzer
    return layer


def save_text_vectorizer(layer: keras.layers.TextVectorization, path: str) -> None:
    """Writes the vocabulary (and idf weights) as JSON, atomically."""
    vocabulary = layer.get_vocabulary(include_special_tokens=True)
    state = {"analyzer": layer.analyzer, "output_mode": layer._output_mode if hasattr(layer, "_output_mode") else None,
             "vocabulary": vocabulary}
    config = layer.get_config()
    state["output_mode"] = config["output_mode"]
    if config["output_mode"] == "tf_idf":
        idf = layer._lookup_layer.idf_weights
        state["idf_weights"] = np.asarray(keras.ops.convert_to_numpy(idf), dtype=np.float64).tolist()
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, ensure_ascii=False)
    os.replace(tmp, path)


def load_text_vectorizer(path: str, config: ModelConfig, *, name: str = "text_vectorizer") -> keras.layers.TextVectorization:
    """Rebuilds the exact vectoriser written by :func:`save_text_vectorizer`."""
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    # The saved vocabulary starts with the padding and OOV tokens, which the layer adds itself.
    vocabulary = state["vocabulary"]
    kwargs = dict(max_tokens=config.text_vocab_size, output_mode=state["output_mode"], name=name,
                  **_vectorizer_kwargs(state["analyzer"], config))
    if state["output_mode"] == "tf_idf":
        idf = np.asarray(state["idf_weights"], dtype=np.float32)
        layer = keras.layers.TextVectorization(vocabulary=vocabulary[1:], idf_weights=idf[1:], **kwargs)
    else:
        layer = keras.layers.TextVectorization(vocabulary=vocabulary[1:], **kwargs)
    layer.analyzer = state["analyzer"]
    return layer
