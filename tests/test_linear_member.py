"""The text regression folded into the text gallery codes (model.text_gallery_linear_weight), checked against
scikit-learn and a hand computation of sublinear tf-idf."""

import math

import numpy as np
import pytest
import tensorflow as tf
from sklearn.linear_model import LogisticRegression

from chtn_tf.model import linear
from chtn_tf.model.chtn import CHTNModel, make_optimizer
from chtn_tf.metrics.retrieval import evaluate_retrieval, mean_average_precision
from chtn_tf.model.config import ExperimentConfig, ModelConfig
from chtn_tf.model.persist import load_trained_model, save_model_definition
from chtn_tf.model.text import build_text_vectorizer, vectorize_texts
from training.checkpoint import RunCheckpoints

TEXTS = ["red apple fruit apple", "green apple tree", "fast red car", "blue car road", "apple pie sweet",
         "car engine fast", "sweet fruit tree", "road car car"]
LABELS = np.array([0, 0, 1, 1, 0, 1, 2, 2], np.int32)


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _model(weight=0.4, members=2, seed=0):
    tf.keras.utils.set_random_seed(seed)
    config = ExperimentConfig()
    config.model = ModelConfig(branch_widths=(16, 12), shared_widths=(10, 8), text_vocab_size=50, members=members,
                               text_gallery_linear_weight=weight)
    vectorizer = build_text_vectorizer(config.model, TEXTS)
    model = CHTNModel(config, image_feature_dim=5, num_classes=3, text_vectorizer=vectorizer)
    model.compile(optimizer=make_optimizer(config.optimizer))
    model.build_all()
    return model


def _images(seed=0, n=len(LABELS)):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 5)) * [1, 2, 0.5, 0.1, 3] + LABELS[:n, None]).astype(np.float32)


@pytest.mark.parametrize("classes", [[0, 1, 2], [0, 1], [1, 2]])
def test_fitted_layer_gives_scikit_learns_probabilities(classes):
    keep = np.isin(LABELS, classes)
    features, labels = _images()[keep].astype(np.float64), LABELS[keep]
    kernel, bias = linear.fit_logistic_regression(features, labels, 3, C=1.0)
    reference = LogisticRegression(C=1.0, max_iter=2000).fit(features, labels)
    queries = _images(seed=1)
    ours = _softmax(queries @ kernel + bias)
    np.testing.assert_allclose(ours[:, classes], reference.predict_proba(queries), atol=1e-5)
    absent = [c for c in range(3) if c not in classes]
    assert np.all(ours[:, absent] < 1e-9)  # a class without training pairs gets no probability


def test_sublinear_tfidf_matches_a_hand_computation():
    model = _model()
    vectorizer = model.text_vectorizer
    vocabulary = vectorizer.get_vocabulary()
    idf = linear.vectorizer_idf(vectorizer)
    # Keras' idf: log(1 + N / (1 + document frequency)), N = 8 training texts
    assert idf[vocabulary.index("car")] == pytest.approx(math.log(1 + 8 / (1 + 4)), rel=1e-6)
    text = "car car car apple unseenword"
    rows = model.text_linear_input(vectorizer(tf.constant([text])))
    expected = np.zeros(len(vocabulary) - 1)
    for term, count in (("car", 3), ("apple", 1)):
        i = vocabulary.index(term)
        expected[i - 1] = (1 + math.log(count)) * idf[i]
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(np.asarray(rows)[0], expected, rtol=1e-5, atol=1e-7)


def test_text_gallery_codes_mix_the_networks_probabilities_with_the_fitted_regression():
    weight = 0.4
    model = _model(weight)
    bag_of_words = model.text_vectorizer(tf.constant(TEXTS))
    model.fit_text_regression(np.asarray(bag_of_words), LABELS, batch_size=3)  # dense rows, three batches
    from_dense = model.text_linear.get_weights()
    model.fit_text_regression(vectorize_texts(model.text_vectorizer, TEXTS), LABELS, batch_size=3)
    for dense, sparse in zip(from_dense, model.text_linear.get_weights()):
        np.testing.assert_allclose(dense, sparse, rtol=1e-5, atol=1e-6)
    # The network part by hand: softmax of each member's fc10 logits, averaged over the members.
    _, text_fc7 = model.text_branch(bag_of_words)
    network = _softmax_members(model.text_head(text_fc7)[1])
    rows = np.asarray(model.text_linear_input(bag_of_words))
    regression = LogisticRegression(C=linear.TEXT_C, max_iter=2000).fit(rows, LABELS).predict_proba(rows)
    np.testing.assert_allclose(model.encode_texts(TEXTS), network, atol=1e-5)  # queries: the network alone
    np.testing.assert_allclose(model.encode_text_gallery(TEXTS), (1 - weight) * network + weight * regression,
                               atol=1e-5)
    # Image->text ranks the gallery codes, text->image starts from the query codes.
    images = model.encode_images(_images())
    results = evaluate_retrieval(images, model.encode_texts(TEXTS), LABELS, LABELS,
                                 text_gallery_codes=model.encode_text_gallery(TEXTS))
    assert results["map_i2t"] == pytest.approx(
        mean_average_precision(images, LABELS, model.encode_text_gallery(TEXTS), LABELS))
    assert results["map_t2i"] == pytest.approx(mean_average_precision(model.encode_texts(TEXTS), LABELS, images,
                                                                      LABELS))


def test_without_a_text_regression_the_gallery_codes_are_the_query_codes():
    model = _model(0.0)
    assert model.text_gallery_encoder is model.text_encoder
    np.testing.assert_array_equal(model.encode_text_gallery(TEXTS), model.encode_texts(TEXTS))
    with pytest.raises(ValueError, match="no text regression"):
        model.fit_text_regression(vectorize_texts(model.text_vectorizer, TEXTS), LABELS)


def _softmax_members(logits):
    logits = np.asarray(logits)  # [b, members, classes]
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).mean(axis=1)


def test_training_leaves_the_regressions_fixed_and_a_reloaded_run_gives_the_same_codes(tmp_path):
    model = _model()
    model.fit_text_regression(vectorize_texts(model.text_vectorizer, TEXTS), LABELS)
    fixed = [w.copy() for w in model.text_linear.get_weights() + model.text_linear_input.get_weights()]
    assert not any(v.trainable for v in model.text_linear.variables + model.text_linear_input.variables)
    data = {"target": {"image": tf.constant(_images()), "text": tf.constant(TEXTS), "label": tf.constant(LABELS)}}
    for _ in range(3):
        model.train_step(data)
    for before, after in zip(fixed, model.text_linear.get_weights() + model.text_linear_input.get_weights()):
        np.testing.assert_array_equal(before, after)
    run_dir = str(tmp_path)
    save_model_definition(run_dir, model, class_names=["fruit", "car", "other"], backbone={"name": "precomputed"})
    RunCheckpoints(run_dir, model).save_best(0)
    loaded, _ = load_trained_model(run_dir)
    queries = _images(seed=4)
    np.testing.assert_allclose(loaded.encode_images(queries), model.encode_images(queries), rtol=1e-5, atol=1e-6)
    texts = TEXTS + ["unseen words", "car apple"]
    np.testing.assert_allclose(loaded.encode_texts(texts), model.encode_texts(texts), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.encode_text_gallery(texts), model.encode_text_gallery(texts), rtol=1e-5,
                               atol=1e-6)
    assert not np.allclose(loaded.encode_text_gallery(texts), loaded.encode_texts(texts))


def test_text_gallery_weight_is_a_share_and_fc9_codes_ignore_it():
    config = ExperimentConfig()
    config.model = ModelConfig(branch_widths=(16, 12), shared_widths=(10, 8), text_vocab_size=50,
                               representation="fc9", text_gallery_linear_weight=0.5)
    model = CHTNModel(config, image_feature_dim=5, num_classes=3,
                      text_vectorizer=build_text_vectorizer(config.model, TEXTS))
    assert model.gallery_linear_weight == 0 and model.text_gallery_encoder is model.text_encoder
    with pytest.raises(ValueError, match="model.text_gallery_linear_weight must be at least 0.0 and at most 1.0"):
        ExperimentConfig().override({"model.text_gallery_linear_weight": 1.5})
    with pytest.raises(ValueError, match="model.text_gallery_linear_weight must be at least 0"):
        ExperimentConfig().override({"model.text_gallery_linear_weight": -0.1})
