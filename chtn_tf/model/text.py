"""Bag-of-words text vectorisation computed in the graph from raw strings.

The vectoriser is a ``keras.layers.TextVectorization`` (core TF ops only, so it exports to TF Serving):
lower-cased words for alphabetic languages, character uni- and bi-grams for Chinese (no word segmenter
needed, and the bigrams recover most two-character words), or both in one text for mixed scripts (``mixed``:
every Han/kana/Hangul character a token of its own, other words whole, and bigrams over the sequence). Its
vocabulary and idf weights are adapted on the training texts only and saved beside the run, so the exact same
vectoriser can be rebuilt.
"""

from __future__ import annotations

import json
import unicodedata

import keras
import numpy as np
import tensorflow as tf

from chtn_tf.atomic import write_json_atomic
from chtn_tf.model.config import ModelConfig


def is_cjk_text(text: str) -> bool:
    """Whether most letters of ``text`` are CJK ideographs."""
    letters = [c for c in text[:2000] if c.isalpha()]
    if not letters:
        return False
    cjk = sum(1 for c in letters if "CJK" in unicodedata.name(c, ""))
    return cjk > len(letters) / 2


def has_unspaced_script(text: str) -> bool:
    """Whether ``text`` holds a Han, kana or Hangul character (a script the ``word`` analyzer cannot split).

    The same scripts as ``_UNSPACED_SCRIPT`` below, by Unicode name: Python's ``re`` has no ``\\p{Han}``.
    """
    return any(unicodedata.name(c, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL")) for c in text[:2000])


def resolve_analyzer(config: ModelConfig, train_texts) -> str:
    """``word``, ``char`` or ``mixed``: the configured analyzer, or for ``auto`` the one the training texts need.

    ``char`` when most texts are CJK, ``mixed`` when at least 5% of them hold Han, kana or Hangul characters (split
    by whitespace, such a text would be one token), ``word`` otherwise. On Chinese ``mixed`` and ``char`` score
    alike (small test bed, 5 draws each: 0.508 vs 0.502 with 40-character Web News texts, 0.546 vs 0.548 with
    whole ones; full Web News, 3 seeds: test 0.485 vs 0.488, validation 0.517 vs 0.512), so Chinese keeps ``char``.
    """
    if config.text_analyzer != "auto":
        return config.text_analyzer
    sample = list(train_texts)[:200]
    if sum(is_cjk_text(t) for t in sample) > len(sample) / 2:
        return "char"
    unspaced = sum(has_unspaced_script(t) for t in sample)
    return "mixed" if unspaced and unspaced >= 0.05 * len(sample) else "word"


# Characters of scripts written without spaces between words; each becomes a token of its own in ``mixed``.
_UNSPACED_SCRIPT = r"([\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}])"


@keras.saving.register_keras_serializable(package="chtn")
def mixed_script_standardize(texts: tf.Tensor) -> tf.Tensor:
    """Lower-cases, removes punctuation of any script, and puts spaces around every Han, kana and Hangul
    character, so that a whitespace split gives those characters one by one and other words whole.

    Written here because Keras' standardisations strip ASCII punctuation only and split either by whitespace or
    by character, not both; only core TF string ops (``StringLower``, ``StaticRegexReplace``), so the exported
    text encoder still serves raw strings in ``tensorflow_model_server``.
    """
    texts = tf.strings.lower(texts, encoding="utf-8")
    texts = tf.strings.regex_replace(texts, r"[\p{P}\p{S}]", " ")
    return tf.strings.regex_replace(texts, _UNSPACED_SCRIPT, r" \1 ")


def _vectorizer_kwargs(analyzer: str) -> dict:
    if analyzer == "mixed":
        return dict(standardize=mixed_script_standardize, split="whitespace", ngrams=(1, 2))
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
        **_vectorizer_kwargs(analyzer),
    )
    layer.adapt(np.asarray(list(train_texts), dtype=object), batch_size=256)
    return layer


def vectorize_texts(layer: keras.layers.TextVectorization, texts, *, batch_size: int = 1024) -> tf.SparseTensor:
    """The vectoriser's bag-of-words rows of ``texts``, as one sparse ``[len(texts), vocabulary size]`` matrix.

    A run's texts are vectorised once, with this, and its training batches gather their rows (see
    :func:`chtn_tf.data.pipeline.target_batches`): the vectoriser's string ops stay out of the training step.
    Each row is what ``layer`` gives the raw text in the exported encoder; the matrix keeps only its
    non-zero entries (a few percent of a 10,000-term vocabulary).
    """
    texts = list(texts)
    width = int(layer.vocabulary_size())
    chunks = [tf.sparse.from_dense(layer(tf.constant(texts[i:i + batch_size], dtype=tf.string)))
              for i in range(0, len(texts), batch_size)]
    if not chunks:
        return tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0], tf.float32), [0, width])
    return tf.sparse.concat(0, chunks) if len(chunks) > 1 else chunks[0]


def save_text_vectorizer(layer: keras.layers.TextVectorization, path: str) -> None:
    """Writes the adapted vectoriser as JSON, atomically: its Keras config, vocabulary and variables.

    The config is the layer's ``get_config()`` (every constructor argument: analyzer settings, output mode,
    ...), the variables what Keras' own ``save_own_variables`` stores (the idf weights in ``tf_idf`` mode), so
    the file is complete whatever options the layer was built with.
    """
    config = layer.get_config()
    if callable(config["standardize"]):  # a registered function (``mixed``): stored by its registered name
        config["standardize"] = keras.saving.serialize_keras_object(config["standardize"])
    config.pop("vocabulary", None)
    config.pop("idf_weights", None)
    variables = {}
    layer.save_own_variables(variables)
    write_json_atomic(path, {
        "config": config,
        "vocabulary": layer.get_vocabulary(include_special_tokens=True),
        "variables": {name: np.asarray(value).tolist() for name, value in variables.items()},
    })


def load_text_vectorizer(path: str, *, name: str | None = None) -> keras.layers.TextVectorization:
    """Rebuilds the exact vectoriser written by :func:`save_text_vectorizer`.

    Raises:
        ValueError: the file is not one :func:`save_text_vectorizer` wrote.
    """
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    if "config" not in state:
        raise ValueError(f"{path} was written by an older chtn (no layer config in it); train the run again "
                         f"with python -m training.fit and a new --out")
    config = dict(state["config"])
    if name is not None:
        config["name"] = name
    # Given the vocabulary (special tokens first) and one idf weight per entry, the layer takes both as they are.
    config["vocabulary"] = state["vocabulary"]
    if "idf_weights" in state["variables"]:
        config["idf_weights"] = np.asarray(state["variables"]["idf_weights"], dtype=np.float32)
    return keras.layers.TextVectorization.from_config(config)
