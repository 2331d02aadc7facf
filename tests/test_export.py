"""Export for TF Serving: reloaded SavedModels give the live model's embeddings; signatures; warm-up; client; index."""

import concurrent.futures
import csv
import http.server
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from chtn_tf.model.config import ExperimentConfig
from chtn_tf.model.persist import load_trained_model
from export import client as serving_client
from export import index as retrieval_index
from export.saved_model import export_run
from tests.test_backbones import write_tiny_hub_module
from tests.test_fit import make_wikipedia_fixture
from training import fit

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
WORDS = {"red": "fire tomato apple", "green": "grass forest leaf", "blue": "sea sky water"}


def small_config(path):
    config = ExperimentConfig()
    config.model.branch_widths = (16, 16)
    config.model.shared_widths = (16, 8)
    config.train.batch_size = 8
    config.to_json(str(path))
    return str(path)


def make_manifest(folder, per_class=8):
    """A CSV manifest of coloured JPEG/PNG images and matching texts."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    rows = []
    for name, colour in COLOURS.items():
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
            ext = "png" if i % 3 == 0 else "jpg"
            Image.fromarray(pixels).save(folder / "img" / f"{name}{i}.{ext}")
            text = " ".join(rng.choice(WORDS[name].split() + ["a", "the"], 6))
            split = "test" if i < 2 else "val" if i < 4 else "train"
            rows.append({"image": f"img/{name}{i}.{ext}", "text": text, "label": name, "split": split})
    with open(folder / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "text", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return str(folder / "pairs.csv")


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_features")
    make_wikipedia_fixture(root / "data")
    assert fit.main(["--dataset", "wikipedia", "--data-dir", str(root / "data"), "--config",
                     small_config(root / "c.json"), "--out", str(root / "run"), "--epochs", "2", "--quiet"]) == 0
    written = export_run(str(root / "run"), str(root / "serving"))
    return root, written


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("export_images")
    monkeypatch_module.setenv("CHTN_CACHE_DIR", str(root / "cache"))
    backbone = write_tiny_hub_module(root / "tiny_backbone")
    manifest = make_manifest(root / "data")
    assert fit.main(["--manifest", manifest, "--backbone", backbone, "--source", "none", "--config",
                     small_config(root / "c.json"), "--out", str(root / "run"), "--epochs", "2", "--quiet"]) == 0
    written = export_run(str(root / "run"), str(root / "serving"))
    return root, manifest, written


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_features_export_reproduces_the_live_model(feature_run):
    root, written = feature_run
    model, info = load_trained_model(str(root / "run"))
    features = np.random.default_rng(0).normal(size=(5, info["image_feature_dim"])).astype(np.float32)
    texts = ["painting museum", "football goal team", "an unseen word"]
    image_model = tf.saved_model.load(written["image"])
    text_model = tf.saved_model.load(written["text"])
    np.testing.assert_allclose(image_model.signatures["serving_default"](features=tf.constant(features))["embedding"],
                               model.encode_images(features), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(text_model.signatures["serving_default"](text=tf.constant(texts))["embedding"],
                               model.encode_texts(texts), rtol=1e-5, atol=1e-6)
    assert written["version"] == 1 and written["image"].endswith("chtn_image/1")
    assert 'name: "chtn_text"' in open(written["models_config"]).read()


def test_image_export_takes_encoded_bytes_and_float_images(image_run):
    root, manifest, written = image_run
    from chtn_tf.backbones.hub_layer import load_module
    from chtn_tf.data.pipeline import load_image

    model, info = load_trained_model(str(root / "run"))
    paths = [str(root / "data" / "img" / "red0.png"), str(root / "data" / "img" / "blue1.jpg")]
    images = tf.stack([load_image(tf.constant(p), info["backbone"]["image_size"]) for p in paths])
    expected = model.encode_images(load_module(info["backbone"]["handle"])(images).numpy())
    reloaded = tf.saved_model.load(written["image"])
    from_bytes = reloaded.signatures["serving_default"](image_bytes=tf.constant([open(p, "rb").read() for p in paths]))
    from_floats = reloaded.signatures["serving_images"](images=images)
    np.testing.assert_allclose(from_bytes["embedding"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(from_floats["embedding"], expected, rtol=1e-4, atol=1e-5)


def test_signatures_are_exactly_the_documented_ones(image_run):
    _, _, written = image_run
    shown = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--all",
                            "--dir", written["image"]], capture_output=True, text=True, check=True).stdout
    signatures = sorted(s for s in __import__("re").findall(r"signature_def\['(\w+)'\]", shown) if not s.startswith("__"))
    assert signatures == ["serving_default", "serving_images"]
    assert "inputs['image_bytes']" in shown and "inputs['images']" in shown and "outputs['embedding']" in shown


def test_warmup_file_parses(image_run):
    from tensorflow_serving.apis import prediction_log_pb2

    _, _, written = image_run
    for path, key in ((written["image"], "image_bytes"), (written["text"], "text")):
        records = list(tf.data.TFRecordDataset(f"{path}/assets.extra/tf_serving_warmup_requests").as_numpy_iterator())
        log = prediction_log_pb2.PredictionLog.FromString(records[0])
        assert list(log.predict_log.request.inputs) == [key]
        assert log.predict_log.request.model_spec.signature_name == "serving_default"


def test_a_second_export_adds_a_version_and_never_shows_a_partial_one(feature_run):
    root, _ = feature_run
    second = export_run(str(root / "run"), str(root / "serving"))
    assert second["version"] == 2
    listing = sorted(p.name for p in (root / "serving" / "chtn_image").iterdir())
    assert listing == ["1", "2"]


def _prediction_service(serving_dir):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    class Service(_PredictionService, prediction_service_pb2_grpc.PredictionServiceServicer):
        pass

    return Service(serving_dir)


class _PredictionService:
    """An in-test PredictionService that answers from the exported SavedModels (protocol check only)."""

    def __init__(self, serving_dir):
        import os

        self.models = {name: tf.saved_model.load(os.path.join(serving_dir, name, "1")) for name in ("chtn_image", "chtn_text")}

    def Predict(self, request, context):
        import grpc
        from tensorflow_serving.apis import predict_pb2

        name, signature = request.model_spec.name, request.model_spec.signature_name or "serving_default"
        if name not in self.models:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
        if signature not in self.models[name].signatures:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"Serving signature name: \"{signature}\" not found")
        fn = self.models[name].signatures[signature]
        try:
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            outputs = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        except (TypeError, tf.errors.OpError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)[:200])
        response = predict_pb2.PredictResponse()
        response.outputs["embedding"].CopyFrom(tf.make_tensor_proto(outputs["embedding"].numpy()))
        return response


def test_grpc_client_against_a_prediction_service(feature_run):
    """Checks the gRPC protocol (PredictionService/Predict) with an in-test server on 127.0.0.1 answering
    from the exported SavedModels; it does not run the real tensorflow_model_server binary (not installable here)."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    root, written = feature_run
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_prediction_service(str(root / "serving")), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = serving_client.GrpcClient(f"127.0.0.1:{port}", timeout=10, batch_size=2)
        texts = ["painting museum", "football goal", "cell gene", "sea"]
        embedded = serving_client.embed_texts(client, texts)
        local = tf.saved_model.load(written["text"]).signatures["serving_default"](text=tf.constant(texts))["embedding"]
        np.testing.assert_allclose(embedded, local, rtol=1e-5, atol=1e-6)
        with pytest.raises(serving_client.ServingError, match="not found"):
            serving_client.embed_texts(client, texts, model="no_such_model")
        with pytest.raises(serving_client.ServingError, match="signature"):
            client.predict("chtn_text", "text", [b"x"], signature="no_such_signature")
        client.close()
    finally:
        server.stop(0)
    down = serving_client.GrpcClient(f"127.0.0.1:{port}", timeout=2)
    with pytest.raises(serving_client.ServingError, match="cannot reach"):
        serving_client.embed_texts(down, ["x"])


def test_rest_client_against_a_rest_endpoint(feature_run):
    """Checks the REST predict protocol (columnar "inputs", b64 bytes) with an in-test HTTP server on
    127.0.0.1 answering from the exported text SavedModel; not the real tensorflow_model_server binary."""
    root, written = feature_run
    text_model = tf.saved_model.load(written["text"])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if not self.path.startswith("/v1/models/chtn_text:predict"):
                return self._reply(404, {"error": "Servable not found"})
            values = body["inputs"]["text"]
            out = text_model.signatures["serving_default"](text=tf.constant(values))["embedding"].numpy()
            self._reply(200, {"outputs": out.tolist()})

        def _reply(self, code, payload):
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = serving_client.RestClient(f"127.0.0.1:{server.server_port}", timeout=10, batch_size=2)
        texts = ["painting museum", "football goal", "cell gene"]
        np.testing.assert_allclose(client.predict("chtn_text", "text", texts),
                                   text_model.signatures["serving_default"](text=tf.constant(texts))["embedding"],
                                   rtol=1e-5, atol=1e-6)
        with pytest.raises(serving_client.ServingError, match="not found"):
            client.predict("chtn_other", "text", texts)
    finally:
        server.shutdown()
    with pytest.raises(serving_client.ServingError, match="cannot reach"):
        serving_client.RestClient(f"127.0.0.1:{server.server_port}", timeout=2).predict("chtn_text", "text", ["x"])


def test_index_build_and_query(image_run):
    root, manifest, written = image_run
    out = str(root / "index")
    info = retrieval_index.build(str(root / "serving"), out, manifest=manifest, split="test")
    assert info["n"] == 6
    rows = retrieval_index.query(out, image=str(root / "data" / "img" / "green1.jpg"), k=3)
    assert len(rows) == 3 and rows[0]["kind"] == "text"
    assert rows == sorted(rows, key=lambda r: -r["score"])
    # Reference: the same ranking computed directly from the stored embeddings.
    saved = np.load(f"{out}/embeddings.npz")
    image_model = tf.saved_model.load(written["image"])
    query = image_model.signatures["serving_default"](
        image_bytes=tf.constant([open(root / "data" / "img" / "green1.jpg", "rb").read()]))["embedding"].numpy()
    scores = saved["texts"] @ (query[0] / np.linalg.norm(query[0]))
    assert rows[0]["score"] == pytest.approx(float(scores.max()), abs=1e-5)


def test_approximate_index_recall_against_exact():
    rng = np.random.default_rng(0)
    gallery = retrieval_index._normalise(rng.normal(size=(5000, 16)).astype(np.float32))
    queries = retrieval_index._normalise(rng.normal(size=(50, 16)).astype(np.float32))
    exact, _ = retrieval_index.exact_search(gallery, queries, 10)
    # Naive reference for the exact search.
    naive = np.array([np.argsort(-(gallery @ q), kind="stable")[:10] for q in queries])
    assert all(set(a) == set(b) for a, b in zip(exact, naive))
    ivf = retrieval_index.IVFIndex(gallery, seed=0)
    approx, _ = ivf.search(queries, 10, nprobe=len(ivf.cells))
    assert retrieval_index.recall_at_k(approx, exact) == 1.0  # visiting every cell is exact
    approx, _ = ivf.search(queries, 10, nprobe=8)
    assert 0.3 < retrieval_index.recall_at_k(approx, exact) <= 1.0
