"""The text regression of the text gallery codes: a logistic regression fitted to convergence on the training
texts and folded into the text gallery encoder as fixed layers (``model.text_gallery_linear_weight``).

In image->text retrieval every image query ranks the texts by their codes, so the texts' codes decide that
direction. On a few hundred pairs the network's text probabilities are less accurate and far more confident than
a converged, L2-regularised logistic regression's on the same texts (245 40-character Web News texts: the right
class for 71% vs 77% of test texts, mean top probability 0.79 vs 0.55), and image->text trails the
semantic-matching baseline; as queries (text->image) the network's sharper codes do better than the
regression's. So a text's gallery code mixes the regression's probabilities into the network's, and its query
code stays the network's (benchmarks/RESULTS.md, "Where the image->text gap comes from"). Trained by Adam inside
the network's step the regression does not converge on that few texts; fitted by L-BFGS (scikit-learn) before
training, it does. Written here because no library folds a fitted scikit-learn model into Keras layers.

The regression reads the run's own bag-of-words row (so the exported text encoder needs nothing else),
re-weighted as sublinear tf-idf, ``(1 + log tf) * idf``, and L2-normalised (:class:`SublinearTfIdf`), with
``C`` = 10: the text classifier of the semantic-matching baseline (``benchmarks/baselines.py``).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

TEXT_C = 10.0
MAX_ITER = 2000
# Logit of a class with no training text: its probability is ~e^-30 of the others'.
ABSENT_CLASS_LOGIT = -30.0


@keras.saving.register_keras_serializable(package="chtn")
class SublinearTfIdf(keras.layers.Layer):
    """A vectoriser row (``tf_idf`` or ``count``) -> sublinear tf-idf, ``(1 + log tf) * idf``, unit length.

    Column 0 (out-of-vocabulary tokens) is left out, as in the text branch's input. ``idf``: the vectoriser's
    idf weights (:func:`vectorizer_idf`; ones for ``count`` rows), held as a fixed weight so that a checkpoint
    and an export are self-contained.
    """

    def __init__(self, vocab_size: int, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.idf = self.add_weight(shape=(self.vocab_size,), initializer="ones", trainable=False, name="idf")

    def call(self, rows):
        rows = ops.convert_to_tensor(rows, dtype=self.compute_dtype)
        idf = ops.maximum(self.idf, 1e-6)
        term_counts = ops.maximum(rows / idf, 1e-12)
        weights = ops.where(rows > 0, idf * (1.0 + ops.log(term_counts)), ops.zeros_like(rows))[:, 1:]
        return weights / ops.maximum(ops.sqrt(ops.sum(ops.square(weights), axis=-1, keepdims=True)), 1e-12)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.vocab_size - 1)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size}


def vectorizer_idf(vectorizer: keras.layers.TextVectorization) -> np.ndarray:
    """The idf weight of every column of ``vectorizer``'s rows (ones when it counts terms)."""
    variables = {}
    vectorizer.save_own_variables(variables)
    if "idf_weights" in variables:
        return np.asarray(variables["idf_weights"], np.float32)
    return np.ones(int(vectorizer.vocabulary_size()), np.float32)


def fit_logistic_regression(features, labels, num_classes: int, *, C: float = TEXT_C) -> tuple:
    """``(kernel [d, num_classes], bias [num_classes])`` of a multinomial logistic regression fitted by L-BFGS on
    ``features`` (a numpy array or a scipy sparse matrix).

    ``softmax(features @ kernel + bias)`` is scikit-learn's ``predict_proba``. A class absent from ``labels``
    gets a zero column and a very low bias.
    """
    import scipy.sparse
    from sklearn.linear_model import LogisticRegression

    if not scipy.sparse.issparse(features):
        features = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    kernel = np.zeros((features.shape[1], num_classes))
    bias = np.full(num_classes, ABSENT_CLASS_LOGIT)
    present = np.unique(labels)
    if len(present) == 1:  # one class: it gets every item's probability
        bias[present[0]] = 0.0
        return kernel.astype(np.float32), bias.astype(np.float32)
    model = LogisticRegression(C=C, max_iter=MAX_ITER).fit(features, labels)
    coef, intercept = model.coef_, model.intercept_
    if len(present) == 2:  # scikit-learn's binary form: p(second) = sigmoid(z), i.e. softmax over (0, z)
        coef = np.stack([np.zeros_like(coef[0]), coef[0]])
        intercept = np.array([0.0, intercept[0]])
    kernel[:, present] = coef.T
    bias[present] = intercept
    return kernel.astype(np.float32), bias.astype(np.float32)
