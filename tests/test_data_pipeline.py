"""tf.data pipelines: JPEG/PNG decode in the graph, order, seeded shuffling, a bad file mid-epoch."""

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from chtn_tf.data.pipeline import decode_image, image_dataset, pair_dataset  # noqa: E402
from chtn_tf.data.types import SplitData  # noqa: E402
from tests.fixtures_data import write_image, write_truncated_jpeg  # noqa: E402


def test_decode_png_exact_and_shapes(tmp_path):
    rgb = write_image(tmp_path / "a.png", size=20, color=(255, 0, 51))
    grey = write_image(tmp_path / "g.png", size=10, color=(128, 0, 0), mode="L")
    rgba = write_image(tmp_path / "t.png", size=10, color=(0, 102, 255), mode="RGBA")
    image = decode_image(tf.io.read_file(str(rgb)), 8).numpy()
    assert image.shape == (8, 8, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image, np.broadcast_to([1.0, 0.0, 0.2], (8, 8, 3)), atol=1e-6)
    np.testing.assert_allclose(decode_image(tf.io.read_file(str(grey)), (4, 6)).numpy(),
                               np.full((4, 6, 3), 128 / 255), atol=1e-6)
    np.testing.assert_allclose(decode_image(tf.io.read_file(str(rgba)), 5).numpy()[0, 0], [0.0, 0.4, 1.0], atol=1e-6)


def test_decode_jpeg_matches_pillow(tmp_path):
    yy, xx = np.mgrid[0:48, 0:64]
    pixels = np.stack([xx * 4, yy * 5, 255 - xx * 2], axis=-1).astype(np.uint8)  # smooth: chroma upsampling agrees
    path = tmp_path / "noise.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    image = decode_image(tf.io.read_file(str(path)), (48, 64)).numpy()  # same size: no resampling
    reference = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
    assert image.shape == (48, 64, 3) and 0.0 <= image.min() and image.max() <= 1.0
    assert np.abs(image - reference).max() <= 6 / 255  # libjpeg IDCT/upsampling variants differ by a few levels
    assert np.abs(image - reference).mean() <= 2 / 255  # TF uses the fast integer IDCT, Pillow the slow one
    small = decode_image(tf.io.read_file(str(path)), 16).numpy()
    assert small.shape == (16, 16, 3) and 0.0 <= small.min() and small.max() <= 1.0
    np.testing.assert_allclose(small.mean(), reference.mean(), atol=0.02)


def test_image_dataset_keeps_order_and_labels(tmp_path):
    colors = [(k * 20, 255 - k * 20, 0) for k in range(7)]
    paths = [write_image(tmp_path / f"{k}.png", size=6, color=c) for k, c in enumerate(colors)]
    batches = list(image_dataset(paths, image_size=4, batch_size=3, labels=list(range(7))))
    assert [b[0].shape[0] for b in batches] == [3, 3, 1]
    images = np.concatenate([b[0].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_allclose(images[:, 0, 0], np.asarray(colors) / 255.0, atol=1e-6)
    assert labels.tolist() == list(range(7))


def _split(tmp_path, n=12, bad=None):
    paths = [str(write_image(tmp_path / f"{k}.png", size=6, color=(k * 10, 0, 0))) for k in range(n)]
    if bad is not None:
        paths[bad] = str(write_truncated_jpeg(tmp_path / "bad.jpg"))
    return SplitData(ids=[f"p{k}" for k in range(n)], texts=[f"t\u00e9xt {k}" for k in range(n)],
                     labels=np.arange(n) % 3, image_paths=paths)


def _ids(ds):
    return [i.decode() for batch in ds for i in batch["id"].numpy()]


def test_pair_dataset_seeded_shuffle(tmp_path):
    split = _split(tmp_path)
    first = _ids(pair_dataset(split, image_size=4, batch_size=5, shuffle=True, seed=7))
    again = _ids(pair_dataset(split, image_size=4, batch_size=5, shuffle=True, seed=7))
    other = _ids(pair_dataset(split, image_size=4, batch_size=5, shuffle=True, seed=8))
    assert first == again and first != other and sorted(first) == sorted(split.ids)
    assert _ids(pair_dataset(split, image_size=4, batch_size=5)) == split.ids
    batch = next(iter(pair_dataset(split, image_size=4, batch_size=4, shuffle=True, seed=7)))
    for k in range(4):  # each element stays a consistent pair after shuffling
        index = split.ids.index(batch["id"][k].numpy().decode())
        assert batch["text"][k].numpy().decode("utf-8") == split.texts[index]
        assert batch["label"][k].numpy() == split.labels[index]
        np.testing.assert_allclose(batch["image"][k, 0, 0, 0].numpy(), index * 10 / 255, atol=1e-6)
    assert batch["text"].dtype == tf.string and batch["image"].shape == (4, 4, 4, 3)


def test_pair_dataset_survives_a_bad_file(tmp_path):
    split = _split(tmp_path, bad=5)
    ids = _ids(pair_dataset(split, image_size=4, batch_size=4))
    assert ids == [i for i in split.ids if i != "p5"]
    with pytest.raises(tf.errors.InvalidArgumentError):
        _ids(pair_dataset(split, image_size=4, batch_size=4, skip_errors=False))


def test_pair_dataset_with_features():
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    split = SplitData(ids=list("abcd"), texts=["w"] * 4, labels=[0, 1, 0, 1], image_features=features)
    batch = next(iter(pair_dataset(split, batch_size=4)))
    np.testing.assert_array_equal(batch["image"].numpy(), features)
