"""Export for TF Serving: reloaded SavedModels give the live model's embeddings; signatures, stock ops,
warm-up, atomic versions, models.config; export.verify reproduces a run's MAP through the SavedModels."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from chtn_tf.model.persist import load_trained_model
from export import layout, saved_model, verify


def test_features_export_reproduces_the_live_model(feature_run):
    model, info = load_trained_model(feature_run["run"])
    written = feature_run["written"]
    features = np.random.default_rng(0).normal(size=(5, info["image_feature_dim"])).astype(np.float32)
    texts = ["painting museum", "football goal team", "an unseen word", "", "Painting, MUSEUM!"]
    image_model = tf.saved_model.load(written["image"])
    text_model = tf.saved_model.load(written["text"])
    np.testing.assert_allclose(image_model.signatures["serving_default"](features=tf.constant(features))["embedding"],
                               model.encode_images(features), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(text_model.signatures["serving_default"](text=tf.constant(texts))["embedding"],
                               model.encode_texts(texts), rtol=1e-5, atol=1e-6)
    gallery = text_model.signatures["serving_gallery"](text=tf.constant(texts))["embedding"]
    np.testing.assert_allclose(gallery, model.encode_text_gallery(texts), rtol=1e-5, atol=1e-6)
    assert not np.allclose(gallery, model.encode_texts(texts), atol=1e-3)  # the run mixes in its text regression
    assert written["version"] == 1 and written["image"].endswith(os.path.join("chtn_image", "1"))


def test_image_export_takes_encoded_bytes_and_float_images(image_run):
    from chtn_tf.backbones.hub_layer import load_module
    from chtn_tf.data.pipeline import load_image

    model, info = load_trained_model(image_run["run"])
    size = info["backbone"]["image_size"]
    img = image_run["root"] / "data" / "img"
    paths = [str(img / "red0.png"), str(img / "blue1.jpg"), str(img / "green5.jpg")]
    # Reference: the tf.data decode the run was trained on, the hub module called directly, the live encoder.
    images = tf.stack([load_image(tf.constant(p), size) for p in paths])
    expected = model.encode_images(load_module(info["backbone"]["handle"])(images).numpy())
    reloaded = tf.saved_model.load(image_run["written"]["image"])
    from_bytes = reloaded.signatures["serving_default"](image_bytes=tf.constant([open(p, "rb").read() for p in paths]))
    from_floats = reloaded.signatures["serving_images"](images=images)
    np.testing.assert_allclose(from_bytes["embedding"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(from_floats["embedding"], expected, rtol=1e-4, atol=1e-5)
    assert from_bytes["embedding"].shape == (3, model.code_dim)


def test_signatures_are_exactly_the_documented_ones_and_load_with_plain_tensorflow(feature_run, image_run):
    """``saved_model_cli show --all`` in a fresh process that imports nothing but TensorFlow; loading there
    (no tensorflow_text) shows the graphs need only core ops, as the stock model server has."""
    dirs = [image_run["written"]["image"], image_run["written"]["text"], feature_run["written"]["image"]]
    script = ("import sys\nfrom tensorflow.python.tools import saved_model_cli\nimport tensorflow as tf\n"
              "for d in sys.argv[1:]:\n    print('=== ' + d)\n    saved_model_cli._show_all(d)\n"
              "    assert tf.saved_model.load(d).signatures\n"
              "assert 'tensorflow_text' not in sys.modules and 'chtn_tf' not in sys.modules\n")
    shown = subprocess.run([sys.executable, "-c", script, *dirs], capture_output=True, text=True, check=True).stdout
    parts = dict(re.findall(r"=== (\S+)\n(.*?)(?====|\Z)", shown, re.S))

    def signatures(text):
        found = {}
        for name, body in re.findall(r"signature_def\['(\w+)'\]:(.*?)(?=signature_def\[|Concrete Functions|\Z)",
                                     text, re.S):
            if not name.startswith("__"):
                found[name] = (sorted(re.findall(r"inputs\['(\w+)'\]", body)),
                               sorted(re.findall(r"outputs\['(\w+)'\]", body)))
        return found

    assert signatures(parts[dirs[0]]) == {"serving_default": (["image_bytes"], ["embedding"]),
                                          "serving_images": (["images"], ["embedding"])}
    assert signatures(parts[dirs[1]]) == {"serving_default": (["text"], ["embedding"]),
                                          "serving_gallery": (["text"], ["embedding"])}
    assert signatures(parts[dirs[2]]) == {"serving_default": (["features"], ["embedding"])}
    assert "dtype: DT_STRING" in parts[dirs[0]] and "shape: (-1)" in parts[dirs[0]]


def test_the_stock_op_check_flags_an_add_on_op(feature_run, tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    assert saved_model.non_core_ops(feature_run["written"]["text"]) == []
    assert {"StringSplitV2", "LookupTableFindV2"} <= saved_model.saved_model_ops(feature_run["written"]["text"])
    copy = tmp_path / "sm"
    shutil.copytree(feature_run["written"]["text"], copy)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((copy / "saved_model.pb").read_bytes())
    proto.meta_graphs[0].graph_def.library.function[0].node_def.add(name="tok", op="WhitespaceTokenizeWithOffsetsV2")
    (copy / "saved_model.pb").write_bytes(proto.SerializeToString())
    assert saved_model.non_core_ops(str(copy)) == ["WhitespaceTokenizeWithOffsetsV2"]


def test_warmup_records_parse_and_are_valid_requests(image_run, feature_run):
    from tensorflow_serving.apis import prediction_log_pb2

    cases = [(image_run["written"]["image"], {"serving_default": ["image_bytes"], "serving_images": ["images"]}),
             (image_run["written"]["text"], {"serving_default": ["text"], "serving_gallery": ["text"]}),
             (feature_run["written"]["image"], {"serving_default": ["features"]})]
    for path, expected in cases:
        records = list(tf.data.TFRecordDataset(os.path.join(path, saved_model.WARMUP_FILE)).as_numpy_iterator())
        requests = [prediction_log_pb2.PredictionLog.FromString(r).predict_log.request for r in records]
        assert {r.model_spec.signature_name: sorted(r.inputs) for r in requests} == expected
        loaded = tf.saved_model.load(path)
        for request in requests:  # what the server does with them at load time
            inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
            out = loaded.signatures[request.model_spec.signature_name](**inputs)["embedding"]
            assert out.shape[0] == next(iter(inputs.values())).shape[0] and np.isfinite(out.numpy()).all()


def test_versions_are_added_atomically_and_never_overwritten(feature_run, tmp_path, capsys):
    serving = tmp_path / "serving"
    (serving / "chtn_image" / ".tmp-7-leftover").mkdir(parents=True)  # a crashed export's leftovers
    (serving / "chtn_image" / "notes").mkdir()  # not the export's: kept
    shutil.copytree(feature_run["written"]["text"], serving / "chtn_text" / "3")  # versions exist in one model
    assert saved_model.main(["--run", feature_run["run"], "--out", str(serving), "--model-base-path", "/models"]) == 0
    assert sorted(p.name for p in (serving / "chtn_image").iterdir()) == ["4", "notes"]  # leftover removed
    assert layout.existing_versions(str(serving / "chtn_text")) == [3, 4]
    config = (serving / "models.config").read_text()
    assert re.findall(r'name: "(\w+)"\s+base_path: "([^"]+)"\s+model_platform: "tensorflow"', config) == [
        ("chtn_image", "/models/chtn_image"), ("chtn_text", "/models/chtn_text")]
    with pytest.raises(FileExistsError, match="immutable"):
        saved_model.export_run(feature_run["run"], str(serving), version=3)
    assert not (serving / "chtn_image" / "3").exists()  # checked before anything is written
    assert saved_model.main(["--run", feature_run["run"], "--out", str(serving), "--version", "0"]) == 2
    assert saved_model.main(["--run", str(tmp_path), "--out", str(serving)]) == 2
    assert "is not a chtn run folder: config.json is missing" in capsys.readouterr().err
    assert saved_model.main(["--run", str(tmp_path / "no-such-run"), "--out", str(serving)]) == 2
    assert f"run folder {tmp_path / 'no-such-run'} does not exist" in capsys.readouterr().err

    # A failure while writing the text model (the second) leaves no version folder a server could pick
    # up, not even the complete image one, and no temporary folder.
    original, calls = saved_model.write_warmup, []

    def broken(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return original(*args, **kwargs)

    saved_model.write_warmup = broken
    try:
        with pytest.raises(RuntimeError):
            saved_model.export_run(feature_run["run"], str(serving), version=5)
    finally:
        saved_model.write_warmup = original
    assert calls == ["chtn_image", "chtn_text"]
    assert sorted(p.name for p in (serving / "chtn_image").iterdir()) == ["4", "notes"]  # leftover removed
    assert sorted(p.name for p in (serving / "chtn_text").iterdir()) == ["3", "4"]


def test_models_config_defaults_to_absolute_paths(tmp_path):
    path = saved_model.write_models_config(str(tmp_path))
    assert f'base_path: "{tmp_path / "chtn_text"}"' in open(path).read()


def map_range_under_near_ties(queries, query_labels, gallery, gallery_labels, *, tolerance=1e-5) -> tuple:
    """``(lowest, highest)`` MAP@all over every order of the items whose cosines are within ``tolerance`` of
    each other (relevant items last / first inside each such group), other items ranked by cosine.

    Codes computed by two code paths (the Keras model, the SavedModel) differ in the last bits, which may
    reorder near-equal scores; the MAP of either path lies in this range, which is one value when no two
    scores of a query are that close.
    """
    q = np.asarray(queries, np.float64)
    g = np.asarray(gallery, np.float64)
    scores = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    bounds = []
    for row, label in zip(scores, query_labels):
        order = np.argsort(-row, kind="stable")
        group = np.concatenate([[0], np.cumsum(-np.diff(row[order]) > tolerance)])
        relevant = np.asarray(gallery_labels)[order] == label
        aps = []
        for relevant_first in (False, True):
            ranked = relevant[np.lexsort((relevant if not relevant_first else ~relevant, group))]
            ranks = np.flatnonzero(ranked) + 1
            aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)) if len(ranks) else 0.0)
        bounds.append(aps)
    return tuple(np.mean(bounds, axis=0))


def test_map_range_under_near_ties_by_hand():
    # Items 0 and 1 score 0.8 and 0.8 + 1e-7 for the query; item 2 scores 0.6. Item 0 is relevant.
    query, gallery = np.array([[1.0, 0.0]]), np.array([[0.8, 0.6], [0.8 + 1e-7, 0.6 - 1.34e-7], [0.6, 0.8]])
    lowest, highest = map_range_under_near_ties(query, [0], gallery, [0, 1, 1])
    assert (lowest, highest) == pytest.approx((1 / 2, 1.0))
    assert map_range_under_near_ties(query, [0], gallery, [0, 1, 1], tolerance=1e-9) == pytest.approx((1 / 2, 1 / 2))


def test_verify_reproduces_the_runs_map_through_the_saved_models(feature_run, image_run, capsys):
    from chtn_tf.data import load_dataset
    from chtn_tf.model.config import ExperimentConfig
    from export.local import ExportedEncoders

    for run in (feature_run, image_run):
        result = verify.verify(run["run"], run["serving"], data_dir=run.get("data_dir"))
        results = json.loads(open(os.path.join(run["run"], "results.json")).read())
        assert result["ok"] and result["n_test"] == results["n_test"]
        # The run's MAP (Keras codes) is one the SavedModels' codes give, up to near-tied scores.
        config = ExperimentConfig.from_json(os.path.join(run["run"], "config.json"))
        test = load_dataset(config.data.dataset, manifest=config.data.manifest, data_dir=run.get("data_dir"),
                            seed=config.train.seed, allow_leak=config.data.allow_leak,
                            **config.data.options).splits["test"]
        encoders = ExportedEncoders.from_serving_dir(run["serving"])
        image_codes = (encoders.embed_features(test.image_features) if encoders.image_input == "features"
                       else encoders.embed_image_files(test.image_paths))
        text_codes = encoders.embed_texts(test.texts)
        text_gallery = encoders.embed_text_gallery(test.texts)  # image->text ranks the texts' gallery codes
        for key, (queries, gallery) in (("map_i2t", (image_codes, text_gallery)),
                                        ("map_t2i", (text_codes, image_codes))):
            lowest, highest = map_range_under_near_ties(queries, test.labels, gallery, test.labels)
            assert lowest - 1e-9 <= results[key] <= highest + 1e-9
            assert lowest - 1e-9 <= result[key] <= highest + 1e-9
    assert verify.main(["--run", image_run["run"], "--serving", image_run["serving"]]) == 0
    assert "agree within" in capsys.readouterr().out


def _stored_tensors(version_dir):
    reader = tf.train.load_checkpoint(os.path.join(version_dir, "variables", "variables"))
    return [reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")]


@pytest.mark.parametrize("kind", ["image", "text"])
def test_each_weight_is_stored_once(feature_run, kind):
    # keras-team/keras#23553: tracking a layer in ExportArchive writes every weight twice.
    model, _ = load_trained_model(feature_run["run"])
    # The text model holds the query encoder and the gallery encoder, which shares its layers.
    encoder = model.image_encoder if kind == "image" else model.text_gallery_encoder
    stored = [t for t in _stored_tensors(feature_run["written"][kind]) if t.size > 1]
    matrices = [t for t in stored if t.ndim == 2]
    assert matrices, "no weight matrices stored"
    for i, a in enumerate(matrices):
        assert not any(a.shape == b.shape and np.array_equal(a, b) for b in matrices[i + 1:]), "a weight stored twice"
    assert sum(t.size for t in stored) <= encoder.count_params() + sum(
        int(np.prod(w.shape)) for w in model.text_vectorizer.weights)
