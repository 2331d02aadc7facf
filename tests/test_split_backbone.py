"""Split backbone: cached views, cached bottom feature maps -> trainable ImageNet top, the export path."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from chtn_tf.backbones.efficientnet_lite import efficientnet_lite
from chtn_tf.backbones.split import SplitBackbone
from chtn_tf.backbones.views import VIEWS, check_views, view_images
from chtn_tf.data.pipeline import decode_image, image_dataset

IMAGENETTE = {"n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
              "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701}


def reference_resize(array, size):
    """What every view ends with, written out: [0, 1] floats, bilinear antialiased resize, clipped."""
    return np.clip(tf.image.resize(array.astype(np.float32) / 255.0, [size, size], antialias=True).numpy(), 0, 1)


def test_views_are_the_documented_crops_and_flip(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)  # 40 high, 50 wide
    Image.fromarray(pixels).save(tmp_path / "a.png")
    data = tf.constant((tmp_path / "a.png").read_bytes())
    views = ("orig", "flip", "crop_center", "crop_top_left", "crop_top_right", "crop_bottom_left", "crop_bottom_right")
    assert set(views) == set(VIEWS)
    out = view_images(data, views, 24).numpy()
    assert out.shape == (7, 24, 24, 3)
    # 80% of each side: 32 x 40 boxes; the centre one starts at (4, 5).
    boxes = {"crop_center": pixels[4:36, 5:45], "crop_top_left": pixels[:32, :40], "crop_top_right": pixels[:32, 10:],
             "crop_bottom_left": pixels[8:, :40], "crop_bottom_right": pixels[8:, 10:]}
    expected = {"orig": reference_resize(pixels, 24), "flip": reference_resize(pixels[:, ::-1], 24),
                **{name: reference_resize(box, 24) for name, box in boxes.items()}}
    for i, view in enumerate(views):
        np.testing.assert_allclose(out[i], expected[view], atol=1e-5, err_msg=view)
    # ``orig`` is exactly what the serving path decodes.
    np.testing.assert_allclose(out[0], decode_image(data, 24).numpy(), atol=1e-6)
    for bad in (("orig", "orig"), ("rotate",), ()):
        with pytest.raises(ValueError, match="crop_center"):
            check_views(bad)


def test_split_shapes_and_bad_split_points():
    lite0 = SplitBackbone("efficientnet-lite0")
    assert (lite0.image_size, lite0.first_top_block, lite0.map_shape) == (224, 15, (7, 7, 192))
    assert lite0.top_outputs == ("block15", "features") and lite0.top_dims == {"block15": 320, "features": 1280}
    lite2 = SplitBackbone("efficientnet-lite2", top_blocks=2)
    assert (lite2.image_size, lite2.first_top_block, lite2.map_shape) == (260, 19, (9, 9, 208))
    assert lite2.top_outputs == ("block19", "block20", "features")
    assert SplitBackbone("efficientnet-lite1", top_blocks=6).map_shape == (15, 15, 112)  # before stage 6's stride
    for bad in (0, 16):
        with pytest.raises(ValueError, match="top_blocks must be between 1 and 15"):
            SplitBackbone("efficientnet-lite0", top_blocks=bad)
    with pytest.raises(ValueError, match="efficientnet-lite1"):
        SplitBackbone("efficientnet-lite3")


def real_photos(data_dir, per_class=2):
    """Imagenette val photos (224 px squares) of every class, and a few Web News photos (other shapes)."""
    paths, truth = [], []
    for wnid, index in sorted(IMAGENETTE.items()):
        folder = os.path.join(data_dir, "imagenette", "val", wnid)
        for name in sorted(os.listdir(folder))[:per_class]:
            paths.append(os.path.join(folder, name))
            truth.append(index)
    news = os.path.join(data_dir, "webnews", "images")
    category = sorted(os.listdir(news))[0]
    paths += [os.path.join(news, category, n) for n in sorted(os.listdir(os.path.join(news, category)))[:4]]
    return paths, np.array(truth)


@pytest.mark.parametrize("arch", ["efficientnet-lite0", pytest.param("efficientnet-lite2", marks=pytest.mark.slow)])
def test_cached_maps_through_the_top_give_the_full_backbone_features_and_logits(arch, real_data_dir, tmp_path):
    split = SplitBackbone(arch)
    paths, truth = real_photos(real_data_dir)
    cache = str(tmp_path / "cache")
    first = split.extract(paths, cache_dir=cache, progress=False, batch_size=8)
    assert first.features.shape == (len(paths), *split.map_shape) and not first.failed and not first.from_cache
    top, classifier = split.top(), split.classifier()
    outputs = top(first.features)
    logits = classifier(outputs["features"]).numpy()
    # Reference: the whole network on the same decoded images (the path the TF-Hub module export takes).
    images = np.concatenate([b.numpy() for b in image_dataset(paths, image_size=split.image_size, batch_size=8)])
    expected_features = efficientnet_lite(arch)(images).numpy()
    expected_logits = efficientnet_lite(arch, kind="classification")(images).numpy()
    np.testing.assert_allclose(outputs["features"], expected_features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=2e-4)
    assert outputs[split.top_outputs[0]].shape == (len(paths), split.top_dims[split.top_outputs[0]])
    # The backbone's own ImageNet head labels the Imagenette photos with their ImageNet classes.
    classes = np.array(sorted(IMAGENETTE.values()))
    n = len(truth)
    assert (classes[logits[:n, classes].argmax(1)] == truth).mean() >= 0.9
    assert (logits[:n].argmax(1) == truth).mean() >= 0.6
    # Second call: read from the cache, same values.
    again = split.extract(paths, cache_dir=cache, progress=False)
    assert again.from_cache and again.cache_file == first.cache_file
    np.testing.assert_array_equal(again.features, first.features)


def test_views_are_cached_one_entry_each(real_data_dir, tmp_path):
    split = SplitBackbone("efficientnet-lite0")
    paths = real_photos(real_data_dir, per_class=1)[0][:6]
    cache = str(tmp_path / "cache")
    whole = split.extract(paths, cache_dir=cache, progress=False)
    two = split.extract(paths, views=("orig", "flip"), cache_dir=cache, progress=False)
    assert two.features.shape == (6, 2, 7, 7, 192) and two.computed_views == ("flip",) and not two.from_cache
    assert two.compute_seconds > 0 and two.cache_files[0] == whole.cache_file
    np.testing.assert_array_equal(two.features[:, 0], whole.features)
    three = split.extract(paths, views=("crop_center", "flip", "orig"), cache_dir=cache, progress=False)
    assert three.computed_views == ("crop_center",)
    np.testing.assert_array_equal(three.features[:, 1:], two.features[:, ::-1])
    assert split.extract(paths, views=("flip",), cache_dir=cache, progress=False).from_cache
    # The flip view's maps are the bottom's maps of mirrored images (not mirrored maps: padding is asymmetric).
    bottom = split.bottom()
    images = np.concatenate([b.numpy() for b in image_dataset(paths, batch_size=8)])
    np.testing.assert_allclose(two.features[:, 1], bottom(images[:, :, ::-1]).numpy(), rtol=1e-4, atol=1e-4)


def test_undecodable_image_is_reported_with_zero_maps(real_data_dir, tmp_path, monkeypatch):
    split = SplitBackbone("efficientnet-lite0")
    paths = real_photos(real_data_dir, per_class=1)[0][:3]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # A file Pillow lets through but TensorFlow cannot decode, in the middle of a batch.
    monkeypatch.setattr("chtn_tf.backbones.feature_cache.validate_images", lambda p: [None] * len(p))
    listed = paths[:2] + [str(broken)] + paths[2:]
    result = split.extract(listed, views=("orig", "flip"), cache_dir=str(tmp_path / "c"), progress=False)
    assert [f[:2] for f in result.failed] == [(2, str(broken))]
    assert result.features.shape == (4, 2, 7, 7, 192) and not result.features[2].any()
    reference = split.extract(paths, views=("orig", "flip"), cache_dir=str(tmp_path / "c2"), progress=False)
    # Other batches, other BLAS blockings: equal up to float32 rounding (any x86-64 CPU), not bit for bit.
    np.testing.assert_allclose(np.delete(result.features, 2, axis=0), reference.features, rtol=1e-4, atol=1e-4)


def test_top_and_classifier_train_with_batchnorm_and_reload_from_keras_weights(tmp_path):
    split = SplitBackbone("efficientnet-lite0")
    assert split.bottom().trainable_weights == []
    top, classifier = split.top(name="top"), split.classifier()
    maps = keras.Input(split.map_shape)
    model = keras.Model(maps, classifier(top(maps)["features"]))
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(1).normal(size=(8, *split.map_shape)).astype(np.float32)
    y = np.array([0, 217, 482, 491, 497, 566, 569, 701])
    watched = {v.path: np.array(v) for v in top.weights
               if v.path.endswith(("project_conv/kernel", "head_bn/moving_mean"))}
    assert len(watched) == 2 and len(top.trainable_weights) > 0 and classifier.trainable_weights
    before_fc = np.array(classifier.kernel)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    for path, value in watched.items():  # kernels train; BatchNorm ran in training mode (moving mean moved)
        assert not np.allclose(value, np.array([v for v in top.weights if v.path == path][0])), path
    assert not np.allclose(before_fc, np.array(classifier.kernel))
    assert not np.allclose(top(x, training=True)["features"], top(x, training=False)["features"], atol=1e-3)
    model.save_weights(str(tmp_path / "top.weights.h5"))
    fresh_top, fresh_classifier = split.top(name="top"), split.classifier()
    fresh = keras.Model(maps, fresh_classifier(fresh_top(maps)["features"]))
    assert not np.allclose(fresh(x), model(x), atol=1e-4)
    # Two tops (e.g. source and target branch) fit in one model: default names do not clash.
    both = keras.Model(maps, [split.top()(maps)["features"], split.top()(maps)["features"]])
    assert len({layer.name for layer in both.layers}) == 3
    fresh.load_weights(str(tmp_path / "top.weights.h5"))
    np.testing.assert_allclose(fresh(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # ~30-60 s on 2 cores: in `pytest -m slow` (CI runs both)
def test_exported_image_path_on_jpeg_bytes_matches_cache_then_top(real_data_dir, tmp_path):
    from export.saved_model import non_core_ops

    split = SplitBackbone("efficientnet-lite1")
    paths = real_photos(real_data_dir, per_class=1)[0][-6:]
    top = split.top()
    # A "trained" top: nudge every weight so the check cannot pass on ImageNet weights alone.
    rng = np.random.default_rng(2)
    for v in top.trainable_weights:
        v.assign(np.array(v) * (1 + 0.05 * rng.standard_normal(v.shape)).astype(np.float32))
    cached = top(split.extract(paths, cache_dir=str(tmp_path / "c"), progress=False).features)

    model = split.image_model(top)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", lambda image_bytes: model(split.images_from_bytes(image_bytes)),
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.write_out(str(tmp_path / "encoder"), verbose=False)
    assert non_core_ops(str(tmp_path / "encoder")) == []
    reloaded = tf.saved_model.load(str(tmp_path / "encoder"))
    served = reloaded.serving_default(tf.constant([open(p, "rb").read() for p in paths]))
    assert set(served) == set(split.top_outputs)
    for key in split.top_outputs:
        np.testing.assert_allclose(served[key], cached[key], rtol=1e-4, atol=1e-4, err_msg=key)
