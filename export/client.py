"""Embed images and texts through a running TF Serving (``tensorflow_model_server``) over REST or gRPC.

    python -m export.client --text "a football match" --text "stock market" [--rest localhost:8501]
    python -m export.client --image photo.jpg --grpc localhost:8500

Inputs are sent in batches; every call has a timeout; errors say what went wrong (server not reachable,
unknown model name, wrong signature or input) and what to check.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request

import numpy as np


class ServingError(RuntimeError):
    """A request to the model server failed; the message says why and what to check."""


class RestClient:
    """TF Serving REST API client (``POST /v1/models/<name>:predict``, columnar ``inputs`` format).

    Args:
        address: ``host:port`` of the REST port (``--rest_api_port``).
        timeout: seconds per request.
        batch_size: inputs per request.
    """

    def __init__(self, address: str = "localhost:8501", *, timeout: float = 30.0, batch_size: int = 32):
        self.base = address if address.startswith("http") else f"http://{address}"
        self.timeout, self.batch_size = timeout, batch_size

    def predict(self, model: str, key: str, values, *, signature: str = "serving_default") -> np.ndarray:
        """``embedding`` outputs for ``values`` sent as input ``key`` of ``signature``."""
        out = []
        for i in range(0, len(values), self.batch_size):
            batch = values[i:i + self.batch_size]
            if batch and isinstance(batch[0], bytes):
                payload = [{"b64": base64.b64encode(v).decode("ascii")} for v in batch]
            else:
                payload = [v.tolist() if isinstance(v, np.ndarray) else v for v in batch]
            body = json.dumps({"signature_name": signature, "inputs": {key: payload}}).encode("utf-8")
            url = f"{self.base}/v1/models/{model}:predict"
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    answer = json.loads(response.read())
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")
                try:
                    detail = json.loads(detail).get("error", detail)
                except ValueError:
                    pass
                if e.code == 404:
                    raise ServingError(f"{url}: model {model!r} not found on the server ({detail}); check the "
                                       f"model name in models.config") from e
                raise ServingError(f"{url}: HTTP {e.code}: {detail}; check the signature ({signature!r}) and "
                                   f"input name ({key!r})") from e
            except (urllib.error.URLError, OSError) as e:
                raise ServingError(f"cannot reach the model server at {self.base} ({e}); is "
                                   f"tensorflow_model_server running with --rest_api_port?") from e
            outputs = answer.get("outputs")
            if isinstance(outputs, dict):
                outputs = outputs.get("embedding")
            out.append(np.asarray(outputs, np.float32))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class GrpcClient:
    """TF Serving gRPC client (``tensorflow.serving.PredictionService/Predict``).

    Args:
        address: ``host:port`` of the gRPC port (``--port``).
        timeout: seconds per request.
        batch_size: inputs per request.
    """

    def __init__(self, address: str = "localhost:8500", *, timeout: float = 30.0, batch_size: int = 32):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.address, self.timeout, self.batch_size = address, timeout, batch_size
        self._channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20),
                                                                 ("grpc.max_send_message_length", 64 << 20)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def predict(self, model: str, key: str, values, *, signature: str = "serving_default") -> np.ndarray:
        """``embedding`` outputs for ``values`` sent as input ``key`` of ``signature``."""
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import model_pb2, predict_pb2

        out = []
        for i in range(0, len(values), self.batch_size):
            batch = values[i:i + self.batch_size]
            array = np.array(batch, dtype=object) if isinstance(batch[0], (bytes, str)) else np.asarray(batch, np.float32)
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model, signature_name=signature))
            request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
            try:
                response = self._stub.Predict(request, timeout=self.timeout)
            except grpc.RpcError as e:
                code = e.code()
                if code == grpc.StatusCode.UNAVAILABLE:
                    raise ServingError(f"cannot reach the model server at {self.address} ({e.details()}); is "
                                       f"tensorflow_model_server running with --port?") from e
                if code == grpc.StatusCode.NOT_FOUND:
                    raise ServingError(f"model {model!r} not found on {self.address} ({e.details()}); check the "
                                       f"model name in models.config") from e
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise ServingError(f"{self.address} did not answer within {self.timeout} s") from e
                raise ServingError(f"{model}/{signature}: {code.name}: {e.details()}; check the signature and "
                                   f"input name ({key!r})") from e
            out.append(tf.make_ndarray(response.outputs["embedding"]))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def close(self):
        self._channel.close()


def embed_texts(client, texts, *, model: str = "chtn_text") -> np.ndarray:
    """Embeddings of raw texts."""
    return client.predict(model, "text", [t.encode("utf-8") if isinstance(t, str) else t for t in texts])


def embed_images(client, image_files, *, model: str = "chtn_image") -> np.ndarray:
    """Embeddings of image files (sent as their encoded bytes)."""
    raw = []
    for path in image_files:
        with open(path, "rb") as f:
            raw.append(f.read())
    return client.predict(model, "image_bytes", raw)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.client", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rest", default=None, help="REST address host:port (default localhost:8501)")
    where.add_argument("--grpc", default=None, help="gRPC address host:port")
    parser.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    parser.add_argument("--image", action="append", default=[], help="an image file to embed (repeatable)")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    client = GrpcClient(args.grpc, timeout=args.timeout) if args.grpc else RestClient(args.rest or "localhost:8501",
                                                                                      timeout=args.timeout)
    try:
        for text, vector in zip(args.text, embed_texts(client, args.text) if args.text else []):
            print(f"text  {text[:40]!r}: {np.array2string(vector, precision=3)}")
        for path, vector in zip(args.image, embed_images(client, args.image) if args.image else []):
            print(f"image {path}: {np.array2string(vector, precision=3)}")
    except (ServingError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
