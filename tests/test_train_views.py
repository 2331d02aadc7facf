"""Cached views of the training images (``train.image_views``): extraction, the per-epoch draw, a run on them."""

import json
import os
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from chtn_tf.backbones import BackboneSpec, extract_features
from chtn_tf.data.pipeline import batches_per_epoch, target_batches
from chtn_tf.data.types import DatasetError
from tests.fixtures_export import make_manifest, small_config, write_tiny_hub_module

N, VIEWS, DIM = 40, 3, 2


def view_columns():
    """Row i, view v: the vector (i, v); label i, so every batch says which rows it holds."""
    views = np.stack(np.meshgrid(np.arange(N), np.arange(VIEWS), indexing="ij"), axis=-1).astype(np.float32)
    return {"image_views": views, "label": np.arange(N, dtype=np.int32)}


def shown_views(batches) -> list:
    """Per batch: the view each row shows, after checking the row is its own pair's image."""
    shown = []
    for batch in batches:
        image, label = batch["target"]["image"].numpy(), batch["target"]["label"].numpy()
        np.testing.assert_array_equal(image[:, 0], label)  # the image of the pair, in one of its views
        shown.append(image[:, 1].astype(int))
    return shown


def test_each_epoch_shows_one_view_per_pair_drawn_from_the_seed_and_the_epoch():
    steps = batches_per_epoch(N, 8, shuffle=True)
    run = shown_views(target_batches(view_columns(), batch_size=8, seed=3, shuffle=True, epochs=(0, 4)))
    again = shown_views(target_batches(view_columns(), batch_size=8, seed=3, shuffle=True, epochs=(0, 4)))
    resumed = shown_views(target_batches(view_columns(), batch_size=8, seed=3, shuffle=True, epochs=(2, 4)))
    assert [v.tolist() for v in run] == [v.tolist() for v in again]
    assert [v.tolist() for v in run[2 * steps:]] == [v.tolist() for v in resumed]  # a resumed run sees the same
    per_epoch = [np.concatenate(run[e * steps:(e + 1) * steps]) for e in range(4)]
    assert set(np.concatenate(per_epoch).tolist()) == set(range(VIEWS))  # every view is used
    assert any((a != b).any() for a, b in zip(per_epoch, per_epoch[1:]))  # and the draw changes with the epoch
    other_seed = shown_views(target_batches(view_columns(), batch_size=8, seed=4, shuffle=True, epochs=(0, 1)))
    assert np.concatenate(other_seed).tolist() != per_epoch[0].tolist()
    evaluation = shown_views(target_batches(view_columns(), batch_size=8, seed=3, shuffle=False))
    assert all((v == 0).all() for v in evaluation)  # without shuffling: the image as served


def asymmetric_png(path, seed: int):
    """A 20 x 30 image whose left and right halves differ, so a mirror is another image."""
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    pixels[:, :15] //= 4
    Image.fromarray(pixels).save(path)
    return pixels


def test_views_are_the_backbone_features_of_the_mirrored_and_cropped_images(tmp_path):
    from training.inputs import PreparedInputs, add_train_views
    from chtn_tf.data.types import CrossModalDataset, SplitData

    module = write_tiny_hub_module(tmp_path / "tiny")
    spec = BackboneSpec(module, module, image_size=16, feature_dim=4)
    (tmp_path / "img").mkdir()
    paths, mirrored, cropped = [], [], []
    for i in range(3):
        pixels = asymmetric_png(tmp_path / "img" / f"{i}.png", i)
        paths.append(str(tmp_path / "img" / f"{i}.png"))
        # References made with Pillow, losslessly: the mirror, and the central 80% of each side (16 x 24 from row 2, column 3).
        Image.fromarray(pixels[:, ::-1]).save(tmp_path / "img" / f"{i}_mirror.png")
        Image.fromarray(pixels[2:18, 3:27]).save(tmp_path / "img" / f"{i}_centre.png")
        mirrored.append(str(tmp_path / "img" / f"{i}_mirror.png"))
        cropped.append(str(tmp_path / "img" / f"{i}_centre.png"))
    cache = str(tmp_path / "cache")
    served = extract_features(paths, spec, cache_dir=cache, progress=False).features
    split = SplitData(ids=["a", "b", "c"], texts=["x", "y", "z"], labels=np.array([0, 1, 0]), image_paths=paths)
    dataset = CrossModalDataset(name="three", class_names=["p", "q"], splits={"train": split}, root=str(tmp_path))
    backbone = {"name": spec.name, "handle": module, "image_size": 16, "feature_dim": 4}
    inputs = PreparedInputs(dataset, {"train": served}, None, None, None, backbone)
    with mock.patch("training.inputs._extractor_of", return_value=spec):
        viewed = add_train_views(inputs, 3, progress=False, cache_dir=cache)
    assert viewed.train_views.shape == (3, 3, 4) and viewed.num_train_views == 3
    np.testing.assert_array_equal(viewed.train_views[:, 0], served)
    reference = extract_features(mirrored, spec, cache_dir=cache, progress=False).features
    np.testing.assert_allclose(viewed.train_views[:, 1], reference, rtol=1e-5, atol=1e-6)
    assert not np.allclose(viewed.train_views[:, 1], served, atol=1e-3)  # the mirror is another image here
    reference = extract_features(cropped, spec, cache_dir=cache, progress=False).features
    np.testing.assert_allclose(viewed.train_views[:, 2], reference, rtol=1e-5, atol=1e-6)
    assert add_train_views(inputs, 1).train_views is None


def test_views_of_precomputed_features_are_refused_with_the_fix():
    from training.inputs import PreparedInputs, add_train_views
    from chtn_tf.data.types import CrossModalDataset, SplitData

    split = SplitData(ids=["a", "b"], texts=["x", "y"], labels=np.array([0, 1]), image_features=np.zeros((2, 4)))
    dataset = CrossModalDataset(name="sift", class_names=["p", "q"], splits={"train": split}, root=".")
    inputs = PreparedInputs(dataset, {"train": np.zeros((2, 4), np.float32)}, None, None, None,
                            {"name": "precomputed", "feature_dim": 4})
    with pytest.raises(DatasetError, match=r"image_views=5 needs raw images.*--image-views 1"):
        add_train_views(inputs, 5)


def test_a_manifest_run_trains_on_views_and_records_them(tmp_path):
    from training import fit

    backbone = write_tiny_hub_module(tmp_path / "tiny")
    manifest = make_manifest(tmp_path / "data", per_class=6)
    with mock.patch.dict(os.environ, {"CHTN_CACHE_DIR": str(tmp_path / "cache")}):
        assert fit.main(["--manifest", manifest, "--backbone", backbone, "--source", "none", "--config",
                         small_config(tmp_path / "c.json"), "--image-views", "3", "--out", str(tmp_path / "run"),
                         "--epochs", "2", "--quiet"]) == 0
    with open(tmp_path / "run" / "config.json", encoding="utf-8") as f:
        assert json.load(f)["train"]["image_views"] == 3
    # The extra views are in the feature cache: two per training image (the served view is the features').
    cached = [name for name in os.listdir(tmp_path / "cache" / "features") if "-flip-" in name or "-crop_center-" in name]
    assert len(cached) == 2
    with open(tmp_path / "run" / "results.json", encoding="utf-8") as f:
        assert 0.0 <= json.load(f)["map_avg"] <= 1.0
