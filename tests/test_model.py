"""The CHTN model: config round trip, the objective's weighting, training moves it, save/load gives the same codes."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from chtn_tf import losses
from chtn_tf.model.chtn import LOSS_TERMS, CHTNModel, make_optimizer
from chtn_tf.model.config import ExperimentConfig, ModelConfig, dataset_config
from chtn_tf.model.persist import load_trained_model, save_model_definition
from chtn_tf.model.text import build_text_vectorizer, load_text_vectorizer, save_text_vectorizer
from training.checkpoint import RunCheckpoints

TEXTS = ["red apple fruit", "green apple tree", "fast red car", "blue car road", "apple pie sweet", "car engine fast"]
LABELS = np.array([0, 0, 1, 1, 0, 1], np.int32)


def small_config(**loss) -> ExperimentConfig:
    config = ExperimentConfig()
    config.model = ModelConfig(branch_widths=(16, 12), shared_widths=(10, 8), text_vocab_size=50)
    config.loss = dataclasses.replace(config.loss, **loss)
    return config


def small_model(config, *, source_classes=3, seed=0):
    tf.keras.utils.set_random_seed(seed)
    vectorizer = build_text_vectorizer(config.model, TEXTS)
    model = CHTNModel(config, image_feature_dim=7, num_classes=2, text_vectorizer=vectorizer,
                      num_source_classes=source_classes)
    model.compile(optimizer=make_optimizer(config.optimizer))
    model.build_all()
    return model


def batch(seed=0, with_source=True):
    rng = np.random.default_rng(seed)
    data = {"target": {"image": tf.constant(rng.normal(size=(6, 7)), tf.float32), "text": tf.constant(TEXTS),
                       "label": tf.constant(LABELS)}}
    if with_source:
        data["source"] = {"image": tf.constant(rng.normal(size=(6, 7)) + 1.0, tf.float32),
                          "label": tf.constant(rng.integers(0, 3, 6), tf.int32)}
    return data


def test_config_json_round_trip(tmp_path):
    config = dataset_config("webnews").override({"loss.mmd": 0.25, "model.representation": "fc9"})
    path = str(tmp_path / "config.json")
    config.to_json(path)
    again = ExperimentConfig.from_json(path)
    assert again == config
    assert again.loss.mmd == 0.25 and again.model.branch_widths == (512, 512)  # the Web News default
    assert again.model.members == 3
    # The paper's values are the defaults.
    default = ExperimentConfig()
    assert (default.loss.mmd, default.loss.pair, default.optimizer.learning_rate) == (1.0, 0.001, 0.01)
    assert (default.optimizer.momentum, default.optimizer.weight_decay) == (0.9, 5e-4)
    assert default.model.branch_widths == (4096, 4096) and default.model.shared_widths == (4096, 4096)


def test_config_rejects_unknown_fields(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"loss": {"mmd_weight": 1.0}}))
    with pytest.raises(ValueError, match="mmd_weight"):
        ExperimentConfig.from_json(str(path))


def test_total_loss_is_the_papers_weighted_sum():
    config = small_config(mmd=0.7, pair=0.05, source_ce=0.5)
    model = small_model(config)
    terms = model.loss_terms(batch(), training=False)
    assert set(terms) == set(LOSS_TERMS)
    value = {k: float(v) for k, v in terms.items()}
    expected = (0.5 * value["source_ce"] + value["image_ce"] + value["text_ce"]
                + 0.7 * (value["mmd_fc6"] + value["mmd_fc7"]) + 0.05 * (value["pair_fc6"] + value["pair_fc7"]))
    assert float(model.total_loss(terms)) == pytest.approx(expected, rel=1e-6)
    # Each term is the loss function applied to the right activations.
    image_fc6, image_fc7 = model.image_branch(batch()["target"]["image"])
    text_fc6, _ = model.text_branch(model.text_vectorizer(tf.constant(TEXTS)))
    assert value["pair_fc6"] == pytest.approx(float(losses.pair_loss(image_fc6, text_fc6)), rel=1e-5)
    source_fc6, _ = model.source_branch(batch()["source"]["image"])
    assert value["mmd_fc6"] == pytest.approx(float(losses.gaussian_mmd(source_fc6, image_fc6)), rel=1e-4)


def test_no_source_transfer_has_no_source_branch():
    model = small_model(small_config(source_transfer=False))
    assert model.source_branch is None
    terms = model.loss_terms(batch(with_source=False), training=False)
    assert float(terms["mmd_fc6"]) == 0.0 and float(terms["source_ce"]) == 0.0


def test_separate_heads_ablation_has_two_heads():
    config = small_config()
    config.model.shared_layers = False
    model = small_model(config)
    assert model.image_head is not model.text_head
    shared = small_model(small_config())
    assert shared.image_head is shared.text_head


def test_training_steps_reduce_the_loss_and_update_every_branch():
    model = small_model(small_config())
    data = batch()
    before = float(model.total_loss(model.loss_terms(data, training=False)))
    weights_before = {v.path: np.array(v) for v in model.trainable_variables}
    for _ in range(30):
        logs = model.train_step(data)
    assert set(logs) == {"loss", *LOSS_TERMS}
    after = float(model.total_loss(model.loss_terms(data, training=False)))
    assert after < before
    changed = {path for path, value in weights_before.items()
               if not np.allclose(value, np.array(next(v for v in model.trainable_variables if v.path == path)))}
    for layer in ("fc6_s", "fc6_i", "fc6_t", "fc8", "fc10", "fc8_s"):
        assert any(p.startswith(f"{layer}/") for p in changed), f"{layer} did not train"


def test_representation_is_softmax_probabilities_by_default():
    model = small_model(small_config())
    codes = model.encode_images(np.random.default_rng(1).normal(size=(5, 7)))
    assert codes.shape == (5, 2)
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, rtol=1e-5)
    config = small_config()
    config.model.representation = "fc9"
    assert small_model(config).encode_texts(TEXTS).shape == (6, 8)


@pytest.mark.parametrize("members", [1, 3])
def test_save_load_gives_the_same_codes(tmp_path, members):
    config = small_config()
    config.model.members = members
    model = small_model(config)
    for _ in range(3):
        model.train_step(batch())
    run_dir = str(tmp_path)
    save_model_definition(run_dir, model, class_names=["fruit", "car"], backbone={"name": "precomputed"})
    RunCheckpoints(run_dir, model).save_best(0)
    loaded, info = load_trained_model(run_dir)
    features = np.random.default_rng(2).normal(size=(4, 7)).astype(np.float32)
    np.testing.assert_allclose(loaded.encode_images(features), model.encode_images(features), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.encode_texts(TEXTS + ["unseen words"]), model.encode_texts(TEXTS + ["unseen words"]),
                               rtol=1e-5, atol=1e-6)
    assert info["class_names"] == ["fruit", "car"]


@pytest.mark.parametrize("analyzer,weighting", [("word", "tf_idf"), ("char", "tf_idf"), ("char", "count"),
                                               ("mixed", "tf_idf")])
def test_text_vectorizer_file_rebuilds_the_same_layer(tmp_path, analyzer, weighting):
    texts = ["Red apple, fruit!", "green apple\ntree", "国庆长假期间，大桥的建设者", "car road fast fast"]
    config = ModelConfig(text_analyzer=analyzer, text_weighting=weighting, text_vocab_size=30)
    layer = build_text_vectorizer(config, texts)
    path = str(tmp_path / "text_vectorizer.json")
    save_text_vectorizer(layer, path)
    saved = json.loads(open(path, encoding="utf-8").read())
    assert sorted(saved) == ["config", "variables", "vocabulary"]  # the layer's config, not private attributes
    assert saved["config"]["output_mode"] == weighting
    loaded = load_text_vectorizer(path)
    assert loaded.get_vocabulary() == layer.get_vocabulary()
    queries = tf.constant(texts + ["unseen words", "", "apple 大桥 \n"])
    np.testing.assert_allclose(loaded(queries).numpy(), layer(queries).numpy(), rtol=1e-6)


def _copy_member(ensemble, single, k: int, members: int) -> None:
    """Sets ``single``'s weights to member ``k`` of ``ensemble`` (layers matched by name)."""
    import keras

    for part in ("image_branch", "text_branch", "image_head", "source_branch", "source_classifier"):
        for layer in getattr(ensemble, part).layers:
            weights = layer.get_weights()
            if not weights:
                continue
            if isinstance(layer, keras.layers.EinsumDense):  # kernel [members, in, out], bias [members, out]
                weights = [w[k] for w in weights]
            elif layer.name.startswith("fc"):  # a member BatchNorm over the flattened [members * width]
                weights = [w.reshape(members, -1)[k] for w in weights]
            getattr(single, part).get_layer(layer.name).set_weights(weights)  # input BatchNorm: shared as is


def test_members_are_independent_networks_whose_probabilities_are_averaged():
    members = 2
    config = small_config()
    config.model.members = members
    ensemble = small_model(config, seed=5)
    data = batch(seed=3)
    for _ in range(3):  # moving statistics and weights away from their initial values
        ensemble.train_step(data)
    singles = []
    for k in range(members):
        single = small_model(small_config(), seed=k)
        _copy_member(ensemble, single, k, members)
        singles.append(single)
    features = np.random.default_rng(2).normal(size=(5, 7))
    expected = np.mean([s.encode_images(features) for s in singles], axis=0)
    np.testing.assert_allclose(ensemble.encode_images(features), expected, rtol=1e-5, atol=1e-6)
    expected = np.mean([s.encode_texts(TEXTS) for s in singles], axis=0)
    np.testing.assert_allclose(ensemble.encode_texts(TEXTS), expected, rtol=1e-5, atol=1e-6)
    terms = ensemble.loss_terms(data, training=False)
    for name in LOSS_TERMS:  # every term of the objective is the members' mean
        expected = np.mean([float(s.loss_terms(data, training=False)[name]) for s in singles])
        assert float(terms[name]) == pytest.approx(expected, rel=1e-4, abs=1e-6), name
    config.model.representation = "fc9"
    assert small_model(config).encode_texts(TEXTS).shape == (6, 8 * members)


@pytest.mark.parametrize("equation,shape", [("bi,kio->bko", (6, 9)), ("bki,kio->bko", (6, 3, 9))])
def test_member_dense_matches_keras_einsum_dense(equation, shape):
    import keras
    import tensorflow as tf

    from chtn_tf.model.branches import MemberDense

    x = tf.constant(np.random.default_rng(0).normal(size=shape), tf.float32)
    fast = MemberDense(equation, output_shape=(3, 4), bias_axes="ko", activation="relu")
    reference = keras.layers.EinsumDense(equation, output_shape=(3, 4), bias_axes="ko", activation="relu")
    fast.build(x.shape)
    reference.build(x.shape)
    reference.set_weights([w + 0.1 for w in fast.get_weights()])
    fast.set_weights(reference.get_weights())
    outputs, gradients = [], []
    for layer in (fast, reference):
        with tf.GradientTape() as tape:
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        outputs.append(y.numpy())
        gradients.append([g.numpy() for g in tape.gradient(loss, layer.trainable_variables)])
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(*gradients):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("text_input_dropout,text_rate", [(0.0, None), (None, 0.5), (0.2, 0.2)])
def test_text_input_dropout_can_differ_from_the_image_inputs(text_input_dropout, text_rate):
    config = small_config()
    config.model.input_dropout, config.model.text_input_dropout = 0.5, text_input_dropout
    model = small_model(config)

    def input_dropout_rate(branch, name):
        layers = [layer for layer in branch.layers if layer.name == name]
        return layers[0].rate if layers else None

    assert input_dropout_rate(model.image_branch, "image_input_dropout_i") == 0.5
    assert input_dropout_rate(model.text_branch, "text_input_dropout") == text_rate
    # None means "as input_dropout"; the setting survives config.json.
    assert ExperimentConfig.from_dict(config.to_dict()).model.text_input_dropout == text_input_dropout


def test_mixed_analyzer_splits_unspaced_scripts_by_character_and_keeps_other_words_whole():
    config = ModelConfig(text_analyzer="mixed", text_weighting="count", text_vocab_size=100)
    layer = build_text_vectorizer(config, ["NBA总决赛，Game 7!", "東京オリ café-au-lait"])
    # By hand: punctuation of any script goes, Han and kana characters one by one, other words whole, plus bigrams.
    expected = {"nba", "总", "决", "赛", "game", "7", "nba 总", "总 决", "决 赛", "赛 game", "game 7",
                "東", "京", "オ", "リ", "café", "au", "lait", "東 京", "京 オ", "オ リ", "リ café", "café au", "au lait"}
    assert set(layer.get_vocabulary()[1:]) == expected
    counts = dict(zip(layer.get_vocabulary(), layer(tf.constant(["总决赛 总 GAME"])).numpy()[0]))
    assert (counts["总"], counts["game"], counts["总 决"], counts["决 赛"], counts["[UNK]"]) == (2, 1, 1, 1, 2)


def test_mixed_analyzer_exports_with_stock_ops_only(tmp_path):
    from export.saved_model import non_core_ops

    texts = ["NBA总决赛，Game 7!", "東京オリ café", "国庆长假期间 the bridge"]
    layer = build_text_vectorizer(ModelConfig(text_analyzer="mixed", text_vocab_size=50), texts)
    save_text_vectorizer(layer, str(tmp_path / "v.json"))
    loaded = load_text_vectorizer(str(tmp_path / "v.json"))
    module = tf.Module()
    module.vectorizer = loaded
    module.serve = tf.function(lambda text: {"bow": loaded(text)},
                               input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    assert non_core_ops(str(tmp_path / "sm")) == []
    queries = tf.constant(texts + ["总决赛 game", ""])
    served = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"](text=queries)["bow"]
    np.testing.assert_allclose(served.numpy(), layer(queries).numpy(), rtol=1e-6)


def test_auto_analyzer_follows_the_scripts_of_the_training_texts():
    from chtn_tf.model.text import resolve_analyzer

    auto = ModelConfig()
    english = ["a red apple", "the green tree"] * 10
    assert resolve_analyzer(auto, english) == "word"
    assert resolve_analyzer(auto, []) == "word"
    assert resolve_analyzer(auto, ["国庆长假期间", "大桥的建设者", "a red apple"]) == "char"  # most are CJK
    assert resolve_analyzer(auto, english[:19] + ["NBA总决赛 tonight"]) == "mixed"  # 1 of 20 (5%) holds Han
    assert resolve_analyzer(auto, english * 2 + ["東京 tonight"]) == "word"  # 1 of 41 (< 5%)
    assert resolve_analyzer(ModelConfig(text_analyzer="char"), english) == "char"  # a configured one is kept
