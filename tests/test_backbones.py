"""Backbones: the Keras 3 hub layer, the exported Lite0/1/2 modules, the weights reader, the feature cache."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from chtn_tf.backbones import BackboneSpec, HubImageLayer, extract_features, resolve_backbone
from chtn_tf.backbones.efficientnet_lite import block_configs, efficientnet_lite, load_weights, weights_file
from chtn_tf.backbones.torch_weights import load_state_dict
from tests.fixtures_export import write_tiny_hub_module


@pytest.fixture(scope="module")
def tiny_module(tmp_path_factory):
    return write_tiny_hub_module(tmp_path_factory.mktemp("hub") / "tiny")


def model_on(handle, trainable):
    inputs = keras.Input((16, 16, 3))
    features = HubImageLayer(handle, trainable=trainable, name="backbone")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(features))


def test_trainable_backbone_changes_after_an_adam_step_and_frozen_does_not(tiny_module):
    images = np.random.default_rng(0).random((4, 16, 16, 3)).astype(np.float32)
    labels = np.array([0, 1, 0, 1])
    for trainable in (True, False):
        model = model_on(tiny_module, trainable)
        model.compile(optimizer=keras.optimizers.Adam(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        backbone = model.get_layer("backbone")
        before = {v.path: np.array(v) for v in backbone.weights}
        model.fit(images, labels, epochs=1, batch_size=4, verbose=0)
        after = {v.path: np.array(v) for v in backbone.weights}
        kernel_changed = any(not np.allclose(before[p], after[p]) for p in before if "kernel" in p)
        assert kernel_changed == trainable
        assert len(backbone.trainable_weights) == (2 if trainable else 0)
        moving = [p for p in before if "moving_mean" in p][0]
        # BatchNorm-style statistics update only when fine-tuning (training mode forwarded).
        assert (not np.allclose(before[moving], after[moving])) == trainable


def test_frozen_backbone_can_be_unfrozen_later(tiny_module):
    """A frozen stage then fine-tuning: switching ``layer.trainable`` exposes the module's trainable variables."""
    images = np.random.default_rng(4).random((4, 16, 16, 3)).astype(np.float32)
    model = model_on(tiny_module, False)
    backbone = model.get_layer("backbone")
    assert backbone.trainable_weights == [] and len(backbone.non_trainable_weights) == 3
    backbone.trainable = True
    assert sorted(v.name for v in backbone.trainable_weights) == ["conv_kernel", "conv_scale"]
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    kernel = [v for v in backbone.weights if "kernel" in v.path][0]
    before = np.array(kernel)
    model.fit(images, np.array([0, 1, 0, 1]), epochs=1, batch_size=4, verbose=0)
    assert not np.allclose(before, np.array(kernel))


def test_hub_layer_saves_and_loads_with_the_model(tiny_module, tmp_path):
    model = model_on(tiny_module, True)
    images = np.random.default_rng(1).random((3, 16, 16, 3)).astype(np.float32)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, np.array([0, 1, 1]), epochs=2, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # HubImageLayer is registered: no custom_objects needed
    assert isinstance(loaded.get_layer("backbone"), HubImageLayer)
    np.testing.assert_allclose(loaded(images), model(images), rtol=1e-5, atol=1e-6)
    # The fine-tuned weights travel in the .keras file, not the hub folder (which keeps its own values).
    kernel = [v for v in loaded.get_layer("backbone").weights if "kernel" in v.path][0]
    original = tf.saved_model.load(tiny_module).variables[0]
    assert not np.allclose(np.array(kernel), original.numpy())


# Parameter counts of the published models (EfficientNet-Lite README, tensorflow/tpu): 4.7 M, 5.4 M, 6.1 M.
@pytest.mark.parametrize("arch, params, blocks", [("efficientnet-lite0", 4.69e6, 16),
                                                  ("efficientnet-lite1", 5.42e6, 21),
                                                  ("efficientnet-lite2", 6.09e6, 21)])
def test_weights_reader_reads_the_lite_state_dicts(arch, params, blocks):
    state = load_state_dict(weights_file(arch))
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    count = sum(v.size for k, v in state.items()
                if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert count == pytest.approx(params, rel=0.01)
    # Stage strides from the weights: five stride-2 convolutions in all (the stem and four stages), so 224 -> 7.
    configs = block_configs(state)
    assert len(configs) == blocks
    assert sum(b.stride == 2 for b in configs) == 4 and configs[0].stride == 1 and configs[-1].stride == 1
    assert [b.kernel_size for b in configs][-1] == 3 and configs[-1].out_channels == state["_conv_head.weight"].shape[1]


def test_keras_lite0_matches_a_hand_written_forward_pass():
    """The Keras model against plain tf.nn ops written here from the state_dict (an independent reference)."""
    state = load_weights("efficientnet-lite0")
    images = np.random.default_rng(5).random((2, 64, 64, 3)).astype(np.float32)

    def bn(x, prefix):
        return tf.nn.batch_normalization(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                                         state[f"{prefix}.bias"], state[f"{prefix}.weight"], 1e-3)

    def conv(x, key, stride=1):
        return tf.nn.conv2d(x, np.transpose(state[key], (2, 3, 1, 0)), stride, "SAME")

    x = tf.nn.relu6(bn(conv((images * 255 - 127) / 128, "_conv_stem.weight", 2), "_bn0"))
    strides = {1: 2, 3: 2, 5: 2, 11: 2}  # Lite0's four downsampling blocks (EfficientNet-B0, table 1)
    for i in range(16):
        p, inputs = f"_blocks.{i}", x
        if f"{p}._expand_conv.weight" in state:
            x = tf.nn.relu6(bn(conv(x, f"{p}._expand_conv.weight"), f"{p}._bn0"))
        s = strides.get(i, 1)
        x = tf.nn.depthwise_conv2d(x, np.transpose(state[f"{p}._depthwise_conv.weight"], (2, 3, 0, 1)),
                                   [1, s, s, 1], "SAME")
        x = bn(conv(tf.nn.relu6(bn(x, f"{p}._bn1")), f"{p}._project_conv.weight"), f"{p}._bn2")
        if s == 1 and x.shape[-1] == inputs.shape[-1]:
            x = x + inputs
    x = tf.reduce_mean(tf.nn.relu6(bn(conv(x, "_conv_head.weight"), "_bn1")), axis=[1, 2])
    logits = x @ state["_fc.weight"].T + state["_fc.bias"]
    model = efficientnet_lite("efficientnet-lite0", kind="classification")
    np.testing.assert_allclose(model(images).numpy(), logits.numpy(), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def classification_module(tmp_path_factory):
    """``arch -> folder`` of its classification module, written once by ``python -m export.hub_module``."""
    from export.hub_module import main

    written = {}

    def folder(arch):
        if arch not in written:
            out = str(tmp_path_factory.mktemp(arch) / "classification")
            assert main(["--arch", arch, "--kind", "classification", "--out", out]) == 0
            written[arch] = out
        return written[arch]

    return folder


@pytest.fixture(scope="module")
def lite0_classification(classification_module):
    return classification_module("efficientnet-lite0")


def test_exported_lite0_reloads_with_plain_tensorflow_hub(lite0_classification):
    import tensorflow_hub as hub

    images = np.random.default_rng(2).random((2, 224, 224, 3)).astype(np.float32)
    reloaded = hub.load(lite0_classification)
    live = efficientnet_lite("efficientnet-lite0", kind="classification")
    np.testing.assert_allclose(reloaded(images).numpy(), live(images).numpy(), rtol=1e-4, atol=1e-4)
    assert reloaded(images).shape == (2, 1000)
    # The same module through the Keras 3 layer (frozen): same outputs, output shape known symbolically.
    layer = HubImageLayer(lite0_classification)
    np.testing.assert_allclose(layer(images), live(images).numpy(), rtol=1e-4, atol=1e-4)
    assert layer.compute_output_shape((None, 224, 224, 3)) == (None, 1000)
    signature = reloaded.signatures["serving_default"]
    assert set(signature.structured_outputs) == {"logits"}
    assert len(reloaded.trainable_variables) < len(reloaded.variables)
    assert len({v.name for v in reloaded.variables}) == len(reloaded.variables)
    # Training mode (BatchNorm on batch statistics) is available to fine-tuning callers.
    moving = [v for v in reloaded.variables if "moving_mean" in v.name]
    before = [v.numpy() for v in moving]
    assert not np.allclose(reloaded(images, training=True).numpy(), live(images).numpy(), atol=1e-3)
    assert all(not np.allclose(b, v.numpy()) for b, v in zip(before, moving))
    # Nothing in the SavedModel needs chtn's Python classes to load: only generic objects.
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(lite0_classification, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    nodes = saved.meta_graphs[0].object_graph_def.nodes
    assert not [n.registered_name for n in nodes if n.registered_name]
    assert {n.user_object.identifier for n in nodes if n.WhichOneof("kind") == "user_object"} <= {
        "_generic_user_object", "trackable_list_wrapper", "signature_map", "trackable_dict_wrapper"}


# Lite1 and Lite2 (~30 s each on 2 cores) run with `pytest -m slow`.
@pytest.mark.parametrize("arch", ["efficientnet-lite0", pytest.param("efficientnet-lite1", marks=pytest.mark.slow),
                                  pytest.param("efficientnet-lite2", marks=pytest.mark.slow)])
def test_lite_modules_recognise_real_imagenet_photos(arch, classification_module, real_data_dir):
    """A few Imagenette val photos must be classified right (the full check is benchmarks/backbone_accuracy.py)."""
    import tensorflow_hub as hub

    from chtn_tf.backbones.registry import LITE_IMAGE_SIZES
    from chtn_tf.data.pipeline import image_dataset

    module = hub.load(classification_module(arch))
    wnids = {"n01440764": 0, "n03888257": 701, "n03028079": 497}
    paths, truth = [], []
    for wnid, index in wnids.items():
        folder = os.path.join(real_data_dir, "imagenette", "val", wnid)
        for name in sorted(os.listdir(folder))[:8]:
            paths.append(os.path.join(folder, name))
            truth.append(index)
    size = LITE_IMAGE_SIZES[arch]
    logits = np.concatenate([module(b).numpy() for b in image_dataset(paths, image_size=size, batch_size=24)])
    imagenette = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
    restricted = np.array(imagenette)[logits[:, imagenette].argmax(1)]
    assert (restricted == np.array(truth)).mean() >= 0.95
    # Top-1 over all 1,000 classes is lower (a church is often a "monastery"), far above chance still.
    assert (logits.argmax(1) == np.array(truth)).mean() >= 0.5


def write_images(folder, n=5):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"im{i}.png"
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_feature_cache_hits_and_invalidates(tiny_module, tmp_path):
    spec = BackboneSpec("tiny", tiny_module, image_size=16, feature_dim=4)
    paths = write_images(tmp_path / "images")
    cache = str(tmp_path / "cache")
    first = extract_features(paths, spec, cache_dir=cache, progress=False, batch_size=2)
    assert not first.from_cache and first.features.shape == (5, 4) and not first.failed
    second = extract_features(paths, spec, cache_dir=cache, progress=False, batch_size=2)
    assert second.from_cache
    np.testing.assert_array_equal(first.features, second.features)
    # Reference: the module itself on the same decoded image.
    from chtn_tf.backbones.hub_layer import load_module
    from chtn_tf.data.pipeline import load_image

    direct = load_module(tiny_module)(load_image(tf.constant(paths[3]), 16)[None]).numpy()[0]
    np.testing.assert_allclose(first.features[3], direct, rtol=1e-5, atol=1e-6)
    # Touching an image (same bytes, new mtime) invalidates; so do new content and another image size.
    stat = os.stat(paths[0])
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = extract_features(paths, spec, cache_dir=cache, progress=False)
    assert not touched.from_cache and touched.cache_file != first.cache_file
    np.testing.assert_allclose(touched.features, first.features, rtol=1e-6)
    assert extract_features(paths, spec, cache_dir=cache, progress=False).from_cache
    Image.fromarray(np.full((20, 20, 3), 255, np.uint8)).save(paths[1])
    os.utime(paths[1], ns=(1, 1))
    changed = extract_features(paths, spec, cache_dir=cache, progress=False)
    assert not changed.from_cache
    assert not np.allclose(changed.features[1], first.features[1])
    resized = extract_features(paths, BackboneSpec("tiny", tiny_module, image_size=12), cache_dir=cache, progress=False)
    assert not resized.from_cache


@pytest.mark.parametrize("precheck", [True, False], ids=["pillow-check", "tensorflow-fails-mid-batch"])
def test_undecodable_image_is_reported_not_raised(tiny_module, tmp_path, monkeypatch, precheck):
    spec = BackboneSpec("tiny", tiny_module, image_size=16, feature_dim=4)
    paths = write_images(tmp_path / "images", n=5)
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    if not precheck:  # a file the Pillow check lets through: TensorFlow's decoder fails inside a batch
        monkeypatch.setattr("chtn_tf.backbones.feature_cache.validate_images", lambda p: [None] * len(p))
    listed = paths[:3] + [str(broken)] + paths[3:]
    result = extract_features(listed, spec, cache_dir=str(tmp_path / "c"), progress=False, batch_size=2)
    assert [f[:2] for f in result.failed] == [(3, str(broken))]
    good = [p for p in listed if p != str(broken)]
    reference = extract_features(good, spec, cache_dir=str(tmp_path / "c"), progress=False, batch_size=2)
    assert result.features.shape == (6, 4) and np.all(result.features[3] == 0)
    np.testing.assert_allclose(np.delete(result.features, 3, axis=0), reference.features, rtol=1e-5, atol=1e-6)


def test_unknown_and_offline_backbones_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("chtn_tf.backbones.registry._reachable", lambda url, timeout=3.0: False)
    with pytest.raises(FileNotFoundError, match="efficientnet-lite0"):
        resolve_backbone("resnet50-v2")
    with pytest.raises(FileNotFoundError, match="not a known name"):
        resolve_backbone("no-such-backbone")
    # The layer itself (e.g. a saved model reloaded offline) fails the same way instead of waiting on the network.
    with pytest.raises(FileNotFoundError, match="efficientnet-lite0"):
        HubImageLayer("https://tfhub.dev/google/imagenet/resnet_v2_50/feature_vector/5")


def test_auto_takes_the_resnet_from_the_tfhub_cache_offline(tiny_module, tmp_path, monkeypatch):
    """A URL handle loads from ``$TFHUB_CACHE_DIR/<sha1(handle)>`` with no network."""
    import hashlib
    import shutil

    from chtn_tf.backbones.registry import RESNET50_V2

    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("chtn_tf.backbones.registry._reachable", lambda url, timeout=3.0: False)
    shutil.copytree(tiny_module, tmp_path / hashlib.sha1(RESNET50_V2.encode()).hexdigest())
    spec = resolve_backbone("auto")
    assert (spec.name, spec.handle, spec.feature_dim) == ("resnet50-v2", RESNET50_V2, 2048)
    images = np.random.default_rng(3).random((2, 16, 16, 3)).astype(np.float32)
    layer = HubImageLayer(spec.handle)
    expected = tf.saved_model.load(tiny_module)(tf.constant(images), training=False)
    np.testing.assert_allclose(layer(images), expected, rtol=1e-6)


def test_auto_falls_back_to_lite0_offline(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr("chtn_tf.backbones.registry._reachable", lambda url, timeout=3.0: False)
    # A stand-in module folder so the test does not rebuild Lite0 (its build is covered above).
    (tmp_path / "hub" / "efficientnet-lite0-feature_vector").mkdir(parents=True)
    (tmp_path / "hub" / "efficientnet-lite0-feature_vector" / "saved_model.pb").write_bytes(b"")
    with caplog.at_level("INFO", logger="chtn"):
        spec = resolve_backbone("auto", cache_dir=str(tmp_path / "hub"))
    assert spec.name == "efficientnet-lite0" and spec.feature_dim == 1280 and spec.image_size == 224
    assert spec.handle == str(tmp_path / "hub" / "efficientnet-lite0-feature_vector")
    assert "efficientnet-lite0" in caplog.text


def test_pick_lite_backbone_takes_the_most_accurate_that_fits():
    from chtn_tf.backbones.registry import EXTRACTION_IMAGES_PER_S, pick_lite_backbone

    rates = {"efficientnet-lite0": 30.0, "efficientnet-lite1": 20.0, "efficientnet-lite2": 15.0}
    # 3,000 images: Lite2 200 s, Lite1 150 s, Lite0 100 s per view.
    assert pick_lite_backbone(3000, 200, images_per_s=rates) == "efficientnet-lite2"
    assert pick_lite_backbone(3000, 199, images_per_s=rates) == "efficientnet-lite1"
    assert pick_lite_backbone(3000, 149, images_per_s=rates) == "efficientnet-lite0"
    assert pick_lite_backbone(3000, 10, images_per_s=rates) == "efficientnet-lite0"  # none fits: the fastest
    assert pick_lite_backbone(3000, 400, views=2, images_per_s=rates) == "efficientnet-lite2"
    assert pick_lite_backbone(3000, 399, views=2, images_per_s=rates) == "efficientnet-lite1"
    # The recorded rates: the faster an arch, the less accurate.
    assert EXTRACTION_IMAGES_PER_S["efficientnet-lite0"] > EXTRACTION_IMAGES_PER_S["efficientnet-lite1"] > \
        EXTRACTION_IMAGES_PER_S["efficientnet-lite2"]
    with pytest.raises(ValueError, match="budget_seconds > 0"):
        pick_lite_backbone(3000, 0)


def test_auto_with_a_budget_picks_a_lite_backbone(tmp_path, monkeypatch, caplog):
    from chtn_tf.backbones.registry import EXTRACTION_IMAGES_PER_S

    monkeypatch.setattr("chtn_tf.backbones.registry._reachable", lambda url, timeout=3.0: True)  # even when online
    for arch in ("efficientnet-lite1", "efficientnet-lite2"):  # stand-in module folders: no rebuild here
        (tmp_path / "hub" / f"{arch}-feature_vector").mkdir(parents=True)
        (tmp_path / "hub" / f"{arch}-feature_vector" / "saved_model.pb").write_bytes(b"")
    n = 3693
    with caplog.at_level("INFO", logger="chtn"):
        spec = resolve_backbone("auto", cache_dir=str(tmp_path / "hub"), n_images=n,
                                budget_seconds=n / EXTRACTION_IMAGES_PER_S["efficientnet-lite2"] + 1)
    assert (spec.name, spec.image_size) == ("efficientnet-lite2", 260)
    assert "budget" in caplog.text
    spec = resolve_backbone("auto", cache_dir=str(tmp_path / "hub"), n_images=n, views=2,
                            budget_seconds=2 * n / EXTRACTION_IMAGES_PER_S["efficientnet-lite2"] - 1)
    assert (spec.name, spec.image_size) == ("efficientnet-lite1", 240)
