"""Embed images and texts through a running TF Serving (``tensorflow_model_server``) over REST or gRPC.

    python -m export.client --text "a football match" --text "stock market" [--rest localhost:8501]
    python -m export.client --image photo.jpg --grpc localhost:8500 [--out embeddings.npy]
    python -m export.client --text-gallery --text "..."   # texts as items for image queries to find

Inputs are sent in batches (``--batch-size``); every request has a timeout; failures raise
:class:`ServingError` whose message says what went wrong (server not reachable, no such model or
version, no such signature, wrong input name or value, time-out) and what to check.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import sys
import urllib.error
import urllib.request

import numpy as np

from export.layout import IMAGE_MODEL, TEXT_GALLERY_SIGNATURE, TEXT_MODEL


class ServingError(RuntimeError):
    """A request to the model server failed; the message says why and what to check."""


def _explain(where: str, status: str, detail: str, *, model: str, signature: str, key: str) -> ServingError:
    """A :class:`ServingError` for a status the server returned (gRPC code name or HTTP code)."""
    lowered = detail.lower()
    if "servable not found" in lowered or status in ("NOT_FOUND", "404"):
        return ServingError(f"{where}: model {model!r} (or the requested version) is not served ({detail}); "
                            f"check the model name in models.config and the versions under its base path")
    if "alias not found" in lowered or "inputs expected" in lowered:
        return ServingError(f"{where}: signature {signature!r} of {model!r} has no input {key!r} ({detail}); "
                            f"chtn inputs are 'image_bytes', 'images', 'features' (image) and 'text'")
    if "signature" in lowered and "not found" in lowered:
        return ServingError(f"{where}: model {model!r} has no signature {signature!r} ({detail}); the chtn "
                            f"exports have 'serving_default' (and 'serving_images' for image models)")
    return ServingError(f"{where}: {status}: {detail} (model {model!r}, signature {signature!r}, input {key!r})")


def _batches(values, batch_size: int):
    for start in range(0, len(values), batch_size):
        yield values[start:start + batch_size]


class RestClient:
    """TF Serving REST API client (``POST /v1/models/<name>[/versions/<v>]:predict``, columnar ``inputs``).

    Args:
        address: ``host:port`` (or ``http://host:port``) of the REST port (``--rest_api_port``).
        timeout: seconds per request.
        batch_size: inputs per request.
    """

    def __init__(self, address: str = "localhost:8501", *, timeout: float = 30.0, batch_size: int = 32):
        self.base = address.rstrip("/") if address.startswith("http") else f"http://{address}"
        self.timeout, self.batch_size = timeout, batch_size

    def predict(self, model: str, key: str, values, *, signature: str = "serving_default",
                version: int | None = None) -> np.ndarray:
        """The ``embedding`` output for ``values`` (a list of bytes/str, or an array) sent as input ``key``."""
        path = f"/v1/models/{model}" + (f"/versions/{int(version)}" if version is not None else "") + ":predict"
        url = self.base + path
        out = []
        for batch in _batches(values, self.batch_size):
            if isinstance(batch[0], bytes):  # binary strings travel base64-encoded in TF Serving's JSON
                payload = [{"b64": base64.b64encode(v).decode("ascii")} for v in batch]
            else:
                payload = np.asarray(batch).tolist() if not isinstance(batch[0], str) else list(batch)
            body = json.dumps({"signature_name": signature, "inputs": {key: payload}}).encode("utf-8")
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
                raise _explain(url, str(e.code), detail, model=model, signature=signature, key=key) from e
            except (TimeoutError, socket.timeout) as e:
                raise ServingError(f"{url}: no answer within {self.timeout} s; raise --timeout or lower "
                                   f"--batch-size") from e
            except urllib.error.URLError as e:
                if isinstance(e.reason, (TimeoutError, socket.timeout)):
                    raise ServingError(f"{url}: no answer within {self.timeout} s; raise --timeout or lower "
                                       f"--batch-size") from e
                raise ServingError(f"cannot reach the model server at {self.base} ({e.reason}); is "
                                   f"tensorflow_model_server running with --rest_api_port?") from e
            except (OSError, ValueError) as e:
                raise ServingError(f"{url}: broken answer ({e}); is {self.base} a TF Serving REST port?") from e
            out.append(self._embedding(answer, url))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    @staticmethod
    def _embedding(answer, url: str) -> np.ndarray:
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        if isinstance(outputs, dict):  # several outputs come back keyed by name, a single one bare
            outputs = outputs.get("embedding")
        if outputs is None:
            raise ServingError(f"{url}: the answer has no 'embedding' output ({str(answer)[:200]}); is this a "
                               f"chtn export?")
        return np.asarray(outputs, np.float32)


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

    def predict(self, model: str, key: str, values, *, signature: str = "serving_default",
                version: int | None = None) -> np.ndarray:
        """The ``embedding`` output for ``values`` (a list of bytes/str, or an array) sent as input ``key``."""
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import model_pb2, predict_pb2

        where = f"{self.address} {model}/{signature}"
        out = []
        for batch in _batches(values, self.batch_size):
            if isinstance(batch[0], (bytes, str)):
                array = np.array([v.encode("utf-8") if isinstance(v, str) else v for v in batch], dtype=object)
            else:
                array = np.asarray(batch, np.float32)
            spec = model_pb2.ModelSpec(name=model, signature_name=signature)
            if version is not None:
                spec.version.value = int(version)
            request = predict_pb2.PredictRequest(model_spec=spec)
            request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
            try:
                response = self._stub.Predict(request, timeout=self.timeout)
            except grpc.RpcError as e:
                code = e.code()
                if code == grpc.StatusCode.UNAVAILABLE:
                    raise ServingError(f"cannot reach the model server at {self.address} ({e.details()}); is "
                                       f"tensorflow_model_server running with --port?") from e
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise ServingError(f"{where}: no answer within {self.timeout} s; raise --timeout or lower "
                                       f"--batch-size") from e
                raise _explain(where, code.name, e.details() or "", model=model, signature=signature, key=key) from e
            if "embedding" not in response.outputs:
                raise ServingError(f"{where}: the answer has no 'embedding' output (outputs: "
                                   f"{sorted(response.outputs)}); is this a chtn export?")
            out.append(tf.make_ndarray(response.outputs["embedding"]))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def embed_texts(client, texts, *, model: str = TEXT_MODEL, gallery: bool = False) -> np.ndarray:
    """Embeddings of raw texts: as queries (``chtn_text`` ``serving_default``), or with ``gallery`` as items
    that image queries find (``serving_gallery``: what a text index stores)."""
    return client.predict(model, "text", [t.encode("utf-8") if isinstance(t, str) else t for t in texts],
                          signature=TEXT_GALLERY_SIGNATURE if gallery else "serving_default")


def embed_image_bytes(client, encoded, *, model: str = IMAGE_MODEL) -> np.ndarray:
    """Embeddings of encoded JPEG/PNG images (``chtn_image`` ``serving_default`` of an image-backbone export)."""
    return client.predict(model, "image_bytes", list(encoded))


def embed_images(client, image_files, *, model: str = IMAGE_MODEL) -> np.ndarray:
    """Embeddings of image files, sent as their encoded bytes."""
    raw = []
    for path in image_files:
        with open(path, "rb") as f:
            raw.append(f.read())
    return embed_image_bytes(client, raw, model=model)


def embed_features(client, features, *, model: str = IMAGE_MODEL) -> np.ndarray:
    """Embeddings of precomputed image feature vectors (export of a precomputed-features run)."""
    return client.predict(model, "features", np.asarray(features, np.float32))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.client", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rest", help="REST address host:port (the default, localhost:8501)")
    where.add_argument("--grpc", help="gRPC address host:port (e.g. localhost:8500)")
    parser.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    parser.add_argument("--image", action="append", default=[], help="an image file to embed (repeatable)")
    parser.add_argument("--image-model", default=IMAGE_MODEL)
    parser.add_argument("--text-model", default=TEXT_MODEL)
    parser.add_argument("--text-gallery", action="store_true",
                        help="embed the texts as items for image queries to find (signature serving_gallery), not "
                             "as queries")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--batch-size", type=int, default=32, help="inputs per request")
    parser.add_argument("--out", help="also save the embeddings (texts first, then images) to this .npy file")
    args = parser.parse_args(argv)
    if not args.text and not args.image:
        parser.error("nothing to embed: pass --text and/or --image")
    if args.grpc:
        client = GrpcClient(args.grpc, timeout=args.timeout, batch_size=args.batch_size)
    else:
        client = RestClient(args.rest or "localhost:8501", timeout=args.timeout, batch_size=args.batch_size)
    try:
        vectors = []
        if args.text:
            vectors.append(embed_texts(client, args.text, model=args.text_model, gallery=args.text_gallery))
            for text, vector in zip(args.text, vectors[-1]):
                print(f"text  {text[:40]!r}: {np.array2string(vector, precision=4)}")
        if args.image:
            vectors.append(embed_images(client, args.image, model=args.image_model))
            for path, vector in zip(args.image, vectors[-1]):
                print(f"image {path}: {np.array2string(vector, precision=4)}")
    except (ServingError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        np.save(args.out, np.concatenate(vectors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
