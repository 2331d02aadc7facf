"""The text path of training (texts vectorised once, sparse rows batched by tf.data) gives the numbers of the
raw-text path the exported encoder runs, on real Web News texts; the XLA-compiled optimiser update is the
optimiser's own update."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from chtn_tf.data import load_dataset
from chtn_tf.data.pipeline import target_batches
from chtn_tf.model.chtn import CHTNModel, make_optimizer
from chtn_tf.model.config import ExperimentConfig, ModelConfig
from chtn_tf.model.text import build_text_vectorizer, vectorize_texts

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def webnews_texts(real_data_dir):
    """64 training texts of Web News (Chinese, long: hundreds of distinct character n-grams each) and labels."""
    train = load_dataset("webnews", data_dir=str(real_data_dir)).splits["train"]
    return list(train.texts[:64]), train.labels[:64], list(train.texts[:400])


def text_model(input_norm: str, vocabulary_texts) -> CHTNModel:
    config = ExperimentConfig()
    config.model = ModelConfig(branch_widths=(24, 16), shared_widths=(12, 8), text_vocab_size=3000,
                               text_input_norm=input_norm)
    tf.keras.utils.set_random_seed(0)
    model = CHTNModel(config, image_feature_dim=5, num_classes=10,
                      text_vectorizer=build_text_vectorizer(config.model, vocabulary_texts), num_source_classes=0)
    model.build_all()
    return model


@pytest.mark.parametrize("input_norm", ["l2", "batchnorm"])
def test_batched_sparse_rows_give_the_raw_text_numbers(webnews_texts, input_norm):
    texts, labels, vocabulary_texts = webnews_texts
    model = text_model(input_norm, vocabulary_texts)
    rows = vectorize_texts(model.text_vectorizer, texts)
    # The vectoriser's own rows, in the pairs' order, and sparse (a few percent of the 3,000 terms).
    dense = model.text_vectorizer(tf.constant(texts)).numpy()
    np.testing.assert_array_equal(tf.sparse.to_dense(rows).numpy(), dense)
    assert 0 < rows.values.shape[0] < 0.2 * dense.size
    image = np.zeros((len(texts), 5), np.float32)
    batch = next(iter(target_batches({"image": image, "bag_of_words": rows, "label": labels}, batch_size=64,
                                     seed=0, shuffle=False)))
    raw = {"target": {"image": tf.constant(image), "text": tf.constant(texts), "label": tf.constant(labels)}}
    for training in (False, True):  # BatchNorm with moving statistics, then with the batch's own
        from_rows = model.text_branch(model._bag_of_words(batch["target"]), training=training)
        from_text = model.text_branch(model.text_vectorizer(tf.constant(texts)), training=training)
        for a, b in zip(from_rows, from_text):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=TOLERANCE, rtol=0)
        terms, expected = model.loss_terms(batch, training=training), model.loss_terms(raw, training=training)
        for name in terms:
            np.testing.assert_allclose(float(terms[name]), float(expected[name]), atol=TOLERANCE, rtol=0)
    # The encoder the export serves (raw strings) and the training path end in the same codes.
    _, fc7 = model.text_branch(model._bag_of_words(batch["target"]))
    codes = tf.nn.softmax(model.text_head(fc7)[1]).numpy()
    np.testing.assert_allclose(codes, model.encode_texts(texts), atol=TOLERANCE, rtol=0)


def test_l2_text_input_against_numpy(webnews_texts):
    # l2: column 0 (the out-of-vocabulary count) left out, log(1 + w), each row scaled to unit length.
    texts, _, vocabulary_texts = webnews_texts
    model = text_model("l2", vocabulary_texts)
    tfidf = tf.sparse.to_dense(vectorize_texts(model.text_vectorizer, texts)).numpy().astype(np.float64)
    expected = np.log1p(tfidf[:, 1:])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    normalised = model.text_branch.get_layer("text_input_l2").output
    layer = tf.keras.Model(model.text_branch.input, normalised)
    np.testing.assert_allclose(layer(tf.constant(tfidf, tf.float32)).numpy(), expected, atol=TOLERANCE, rtol=0)


def test_the_compiled_update_is_the_optimizers_update():
    config = ExperimentConfig()
    config.model = ModelConfig(branch_widths=(16, 12), shared_widths=(10, 8), text_vocab_size=40)
    config.optimizer = dataclasses.replace(config.optimizer, name="adam", learning_rate=0.01, weight_decay=0.01,
                                           schedule="cosine", ema_momentum=0.9)
    texts = ["red apple", "green tree", "fast car", "blue road"] * 2
    models = []
    for _ in range(2):
        tf.keras.utils.set_random_seed(3)
        model = CHTNModel(config, image_feature_dim=6, num_classes=2,
                          text_vectorizer=build_text_vectorizer(config.model, texts), num_source_classes=0)
        model.compile(optimizer=make_optimizer(config.optimizer, total_steps=10))
        model.build_all()
        model.optimizer.build(model.trainable_variables)
        models.append(model)
    rng = np.random.default_rng(0)
    for _ in range(4):
        gradients = [tf.constant(rng.normal(size=v.shape), tf.float32) for v in models[0].trainable_variables]
        models[0]._apply_gradients(gradients)  # XLA-compiled (no tf.distribute strategy here)
        models[1].optimizer.apply(gradients, models[1].trainable_variables)
    for a, b in zip(models[0].variables + models[0].optimizer.variables,
                    models[1].variables + models[1].optimizer.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-6, err_msg=a.name)
    assert int(models[0].optimizer.iterations) == 4
