"""tf.data pipelines: JPEG/PNG decode in the graph, image order; the training batches (seeding per epoch,
source/target pairing, ragged last batch, sparse columns)."""

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from chtn_tf.data.pipeline import batches_per_epoch, decode_image, image_dataset, target_batches  # noqa: E402
from tests.fixtures_data import write_image  # noqa: E402


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


def _numbered(n, m):
    """A split whose image row i says i (label i % 3), and a source domain whose row j says j."""
    target = {"image": np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.float32),
              "label": np.arange(n) % 3}
    source = {"image": np.arange(m, dtype=np.float32)[:, None].repeat(2, 1), "label": np.zeros(m, np.int32)}
    return target, source


def test_the_batches_of_an_epoch_depend_only_on_the_seed_and_the_epoch():
    n, m = 37, 11
    target, source = _numbered(n, m)

    def order(epochs, seed=0):
        batches = target_batches(target, source=source, batch_size=8, seed=seed, shuffle=True, epochs=epochs)
        assert int(batches.cardinality()) == batches_per_epoch(n, 8, shuffle=True) * (epochs[1] - epochs[0])
        return [(b["target"]["image"][:, 0].numpy().astype(int).tolist(),
                 b["source"]["image"][:, 0].numpy().astype(int).tolist()) for b in batches]

    whole = order((0, 4))
    assert order((2, 4)) == whole[2 * 4:]  # 4 full batches of 8 per epoch; the ragged 5 are dropped
    assert len(whole) == 16 and all(len(t) == 8 and len(s) == 8 for t, s in whole)
    epochs = [sorted(sum((t for t, _ in whole[e * 4:(e + 1) * 4]), [])) for e in range(4)]
    assert all(len(set(e)) == 32 for e in epochs) and epochs[0] != epochs[1]  # each epoch: distinct pairs
    assert order((0, 1), seed=1) != whole[:4]
    assert order((0, 4)) == whole  # the same seed: the same batches, batch for batch
    val = target_batches(target, batch_size=8, seed=0, shuffle=False)
    assert [b["target"]["image"][:, 0].numpy().astype(int).tolist() for b in val] == [
        list(range(i, min(i + 8, n))) for i in range(0, n, 8)]


def test_source_images_come_as_a_fresh_permutation_per_pass():
    n, m = 40, 12
    target, source = _numbered(n, m)
    batches = list(target_batches(target, source=source, batch_size=8, seed=3, shuffle=True, epochs=(0, 2)))
    drawn = [b["source"]["image"][:, 0].numpy().astype(int).tolist() for b in batches]
    assert all(len(d) == 8 for d in drawn) and "source" in batches[0] and len(batches) == 10
    # Within an epoch the source stream is whole permutations of the 12 images, one after the other; a
    # permutation's tail that does not fill a batch is dropped (5 batches of 8 = 40 of 48 drawn).
    epoch = sum(drawn[:5], [])
    assert sorted(epoch[:12]) == sorted(epoch[12:24]) == sorted(epoch[24:36]) == list(range(m))
    assert epoch[:12] != epoch[12:24]
    assert sum(drawn[5:], [])[:12] != epoch[:12]  # epoch 2 starts another permutation


def test_batches_keep_each_pair_together_in_every_column():
    n = 23
    rng = np.random.default_rng(0)
    texts = [f"text {i}" for i in range(n)]
    dense = (rng.random((n, 9)) < 0.3) * rng.random((n, 9)).astype(np.float32)
    dense[4] = 0  # a pair with no term at all still has its (empty) row
    target = {"image": np.arange(n, dtype=np.float32)[:, None], "text": texts, "label": np.arange(n) % 4,
              "bag_of_words": tf.sparse.from_dense(dense)}
    seen = []
    for batch in target_batches(target, batch_size=5, seed=1, shuffle=True, epochs=(0, 2)):
        t = batch["target"]
        assert isinstance(t["bag_of_words"], tf.SparseTensor) and t["text"].dtype == tf.string
        assert t["bag_of_words"].dense_shape.numpy().tolist() == [5, 9]
        rows = t["image"][:, 0].numpy().astype(int)
        seen += rows.tolist()
        assert [x.decode() for x in t["text"].numpy()] == [texts[i] for i in rows]
        assert t["label"].numpy().tolist() == (rows % 4).tolist()
        np.testing.assert_array_equal(tf.sparse.to_dense(t["bag_of_words"]).numpy(), dense[rows])
    assert len(seen) == 2 * 4 * 5 and sorted(seen[:20]) == sorted(set(seen[:20]))


def test_the_last_batch_is_dropped_only_when_training():
    target, _ = _numbered(10, 1)
    train = [len(b["target"]["label"]) for b in target_batches(target, batch_size=4, seed=0, shuffle=True)]
    evaluation = [len(b["target"]["label"]) for b in target_batches(target, batch_size=4, seed=0, shuffle=False)]
    assert train == [4, 4] and evaluation == [4, 4, 2]
    assert batches_per_epoch(10, 4, shuffle=True) == 2 and batches_per_epoch(10, 4, shuffle=False) == 3
    # A split that fits in one batch is one (smaller) batch even when training: nothing to drop.
    small = [len(b["target"]["label"]) for b in target_batches(target, batch_size=16, seed=0, shuffle=True)]
    assert small == [10] and batches_per_epoch(10, 16, shuffle=True) == 1
