"""The serving client over gRPC and REST, against in-test servers on 127.0.0.1 that answer from the exported
SavedModels with TF Serving's status codes and error messages.

These check the protocol (``tensorflow.serving.PredictionService/Predict`` and the REST predict API's
columnar JSON with base64 bytes), not the real ``tensorflow_model_server`` binary, which cannot be
installed on these machines.
"""

import base64
import concurrent.futures
import http.server
import json
import os
import re
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from export import client as serving_client


class ServingBackend:
    """Answers predict requests from the exported SavedModels, failing the way TF Serving does.

    Raises ``ServingStatus(code, message)`` with TF Serving's gRPC status names and message texts.
    """

    def __init__(self, serving_dir, delay=0.0):
        self.delay = delay
        self.models = {}
        for name in ("chtn_image", "chtn_text"):
            folder = os.path.join(serving_dir, name)
            self.models[name] = {int(v): tf.saved_model.load(os.path.join(folder, v))
                                 for v in os.listdir(folder) if v.isdigit()}

    def predict(self, name, version, signature, inputs):
        time.sleep(self.delay)
        signature = signature or "serving_default"
        if name not in self.models or (version is not None and version not in self.models[name]):
            spec = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise ServingStatus("NOT_FOUND", f"Servable not found for request: {spec}")
        model = self.models[name][version or max(self.models[name])]
        if signature not in model.signatures:
            raise ServingStatus("FAILED_PRECONDITION", f'Serving signature key "{signature}" not found.')
        fn = model.signatures[signature]
        expected = sorted(fn.structured_input_signature[1])
        for key in inputs:
            if key not in expected:
                raise ServingStatus("INVALID_ARGUMENT", f"input tensor alias not found in signature: {key}. "
                                                        f"Inputs expected to be in the set {{{','.join(expected)}}}.")
        try:
            return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
        except (TypeError, ValueError, tf.errors.OpError) as e:
            raise ServingStatus("INVALID_ARGUMENT", str(e)[:300]) from None


class ServingStatus(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def start_grpc(backend):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            spec = request.model_spec
            try:
                outputs = backend.predict(spec.name, spec.version.value if spec.HasField("version") else None,
                                          spec.signature_name,
                                          {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
            except ServingStatus as e:
                context.abort(getattr(grpc.StatusCode, e.code), e.message)
            response = predict_pb2.PredictResponse()
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


HTTP_CODES = {"NOT_FOUND": 404, "FAILED_PRECONDITION": 400, "INVALID_ARGUMENT": 400}


def start_rest(backend):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            match = re.fullmatch(r"/v1/models/(\w+)(?:/versions/(\d+))?:predict", self.path)
            if not match:
                return self._reply(404, {"error": "Malformed request: POST " + self.path})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            signature = body.get("signature_name", "serving_default")
            name, version = match.group(1), int(match.group(2)) if match.group(2) else None
            model = backend.models.get(name, {}).get(version or max(backend.models.get(name, {0: None})))
            if model is not None and signature not in model.signatures:  # REST checks while parsing the JSON
                return self._reply(400, {"error": f'Serving signature name: "{signature}" not found in signature def'})
            inputs = {k: np.array([base64.b64decode(v["b64"]) if isinstance(v, dict) else v for v in values],
                                  dtype=object if values and isinstance(values[0], (dict, str)) else np.float32)
                      for k, values in body["inputs"].items()}
            try:
                outputs = backend.predict(name, version, signature, inputs)
            except ServingStatus as e:
                return self._reply(HTTP_CODES[e.code], {"error": e.message})
            single = len(outputs) == 1  # TF Serving returns a single output bare, several keyed by name
            self._reply(200, {"outputs": next(iter(outputs.values())).tolist() if single else
                              {k: v.tolist() for k, v in outputs.items()}})

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
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_port}"


@pytest.fixture(scope="module")
def servers(feature_run):
    backend = ServingBackend(feature_run["serving"])
    grpc_server, grpc_address = start_grpc(backend)
    rest_server, rest_address = start_rest(backend)
    yield {"grpc": grpc_address, "rest": rest_address}
    grpc_server.stop(0)
    rest_server.shutdown()


def local_embeddings(feature_run, texts, features):
    written = feature_run["written"]
    text = tf.saved_model.load(written["text"]).signatures["serving_default"](text=tf.constant(texts))
    image = tf.saved_model.load(written["image"]).signatures["serving_default"](features=tf.constant(features))
    return text["embedding"].numpy(), image["embedding"].numpy()


def make_client(kind, address, **kwargs):
    cls = serving_client.GrpcClient if kind == "grpc" else serving_client.RestClient
    return cls(address, **kwargs)


@pytest.mark.parametrize("kind", ["grpc", "rest"])
def test_client_embeds_in_batches_like_the_saved_models(kind, servers, feature_run):
    texts = ["painting museum", "football goal", "cell gene", "sea", "中文 文本"]
    features = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    want_text, want_image = local_embeddings(feature_run, texts, features)
    client = make_client(kind, servers[kind], timeout=10, batch_size=2)  # 3 requests each
    np.testing.assert_allclose(serving_client.embed_texts(client, texts), want_text, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(serving_client.embed_features(client, features), want_image, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(client.predict("chtn_text", "text", [t.encode() for t in texts], version=1),
                               want_text, rtol=1e-5, atol=1e-6)
    want_gallery = tf.saved_model.load(feature_run["written"]["text"]).signatures["serving_gallery"](
        text=tf.constant(texts))["embedding"].numpy()
    np.testing.assert_allclose(serving_client.embed_texts(client, texts, gallery=True), want_gallery, rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("kind", ["grpc", "rest"])
def test_client_errors_say_what_is_wrong(kind, servers):
    client = make_client(kind, servers[kind], timeout=10)
    with pytest.raises(serving_client.ServingError, match="'no_such_model' .* is not served"):
        serving_client.embed_texts(client, ["x"], model="no_such_model")
    with pytest.raises(serving_client.ServingError, match="is not served"):
        client.predict("chtn_text", "text", [b"x"], version=9)
    with pytest.raises(serving_client.ServingError, match="has no signature 'serving_images'"):
        client.predict("chtn_text", "text", [b"x"], signature="serving_images")
    with pytest.raises(serving_client.ServingError, match="has no input 'image_bytes'"):
        serving_client.embed_image_bytes(client, [b"\xff\xd8 not a jpeg"])  # a features export


@pytest.mark.parametrize("kind", ["grpc", "rest"])
def test_client_reports_a_server_that_is_down_or_too_slow(kind, feature_run):
    start = start_grpc if kind == "grpc" else start_rest
    server, address = start(ServingBackend(feature_run["serving"], delay=3.0))
    try:
        began = time.monotonic()
        with pytest.raises(serving_client.ServingError, match="no answer within 0.5 s"):
            serving_client.embed_texts(make_client(kind, address, timeout=0.5), ["x"])
        assert time.monotonic() - began < 2.5
    finally:
        server.stop(0) if kind == "grpc" else server.shutdown()
        if kind == "rest":
            server.server_close()
    with pytest.raises(serving_client.ServingError, match="cannot reach the model server"):
        serving_client.embed_texts(make_client(kind, address, timeout=2), ["x"])


def test_rest_client_sends_image_bytes_as_base64(image_run):
    backend = ServingBackend(image_run["serving"])
    server, address = start_rest(backend)
    try:
        files = [str(image_run["root"] / "data" / "img" / n) for n in ("red0.png", "green1.jpg", "blue2.jpg")]
        got = serving_client.embed_images(serving_client.RestClient(address, batch_size=2), files)
        want = tf.saved_model.load(image_run["written"]["image"]).signatures["serving_default"](
            image_bytes=tf.constant([open(f, "rb").read() for f in files]))["embedding"].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    finally:
        server.shutdown()


def test_client_cli(servers, feature_run, tmp_path, capsys):
    out = tmp_path / "e.npy"
    assert serving_client.main(["--grpc", servers["grpc"], "--text", "painting", "--text", "goal",
                                "--out", str(out)]) == 0
    want, _ = local_embeddings(feature_run, ["painting", "goal"], np.zeros((1, 16), np.float32))
    np.testing.assert_allclose(np.load(out), want, rtol=1e-5, atol=1e-6)
    assert "text  'painting'" in capsys.readouterr().out
    assert serving_client.main(["--rest", servers["rest"], "--text", "x", "--text-model", "nope"]) == 2
    assert "is not served" in capsys.readouterr().err
