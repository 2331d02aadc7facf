"""Export a trained run's image and text encoders as SavedModels in TF Serving's layout.

    python -m export.saved_model --run RUN_DIR --out SERVING_DIR [--version N]

writes ``SERVING_DIR/chtn_image/<version>/`` and ``SERVING_DIR/chtn_text/<version>/`` plus
``SERVING_DIR/models.config`` (for ``tensorflow_model_server --model_config_file``). Signatures:

- ``chtn_image`` ``serving_default``: ``image_bytes`` (string ``[batch]``, encoded JPEG/PNG, decoded and
  resized in the graph) -> ``embedding`` (float32 ``[batch, D]``); ``serving_images``: ``images`` (float32
  ``[batch, H, W, 3]`` in [0, 1]) -> ``embedding``. A run trained on precomputed image features (Wikipedia
  SIFT) has one ``serving_default``: ``features`` (float32 ``[batch, d]``) -> ``embedding``.
- ``chtn_text`` ``serving_default``: ``text`` (string ``[batch]``, raw text) -> ``embedding``.

``embedding`` is the common representation the run was evaluated with: cosine similarity between the two
encoders' outputs reproduces the run's retrieval. Each version folder also holds
``assets.extra/tf_serving_warmup_requests``. A version is written under a hidden temporary name and renamed
into place, so a server polling the folder never sees half of it.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from chtn_tf.data.pipeline import decode_image
from chtn_tf.model.persist import load_trained_model

IMAGE_MODEL = "chtn_image"
TEXT_MODEL = "chtn_text"


def _image_endpoints(model, info):
    """``{signature name: (function, input signature)}`` of the image encoder."""
    backbone_info = info["backbone"]
    encoder = model.image_encoder
    if backbone_info["name"] == "precomputed":
        dim = int(backbone_info["feature_dim"])
        return {"serving_default": (lambda features: {"embedding": encoder(features, training=False)},
                                    [tf.TensorSpec([None, dim], tf.float32, name="features")])}, [encoder]

    from chtn_tf.backbones import HubImageLayer

    size = int(backbone_info["image_size"])
    backbone = HubImageLayer(backbone_info["handle"], trainable=False, name="backbone")

    def embed_images(images):
        return {"embedding": encoder(backbone(images, training=False), training=False)}

    def embed_bytes(image_bytes):
        images = tf.map_fn(lambda b: decode_image(b, size), image_bytes,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return embed_images(images)

    return {
        "serving_default": (embed_bytes, [tf.TensorSpec([None], tf.string, name="image_bytes")]),
        "serving_images": (embed_images, [tf.TensorSpec([None, None, None, 3], tf.float32, name="images")]),
    }, [encoder, backbone]


def _text_endpoints(model):
    encoder = model.text_encoder
    return {"serving_default": (lambda text: {"embedding": encoder(text, training=False)},
                                [tf.TensorSpec([None], tf.string, name="text")])}, [encoder]


def _write_version(base_dir: str, version: int, endpoints: dict, tracked: list, warmup_inputs: dict,
                   model_name: str) -> str:
    """Writes one SavedModel version atomically: a hidden temporary folder renamed to ``<version>``."""
    os.makedirs(base_dir, exist_ok=True)
    final = os.path.join(base_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists; versions are immutable, pass another --version")
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_dir)
    try:
        archive = keras.export.ExportArchive()
        for item in tracked:
            archive.track(item)
        for name, (fn, signature) in endpoints.items():
            archive.add_endpoint(name, fn, input_signature=signature)
        archive.write_out(tmp, verbose=False)
        write_warmup(os.path.join(tmp, "assets.extra", "tf_serving_warmup_requests"), model_name, warmup_inputs)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_warmup(path: str, model_name: str, inputs: dict, signature: str = "serving_default") -> None:
    """TF Serving warm-up file: one PredictionLog record with a PredictRequest of ``inputs``."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(log.SerializeToString())


def _sample_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def next_version(serving_dir: str) -> int:
    """One more than the highest version already in either model folder (1 for a new folder)."""
    versions = [0]
    for name in (IMAGE_MODEL, TEXT_MODEL):
        folder = os.path.join(serving_dir, name)
        if os.path.isdir(folder):
            versions += [int(v) for v in os.listdir(folder) if v.isdigit()]
    return max(versions) + 1


def write_models_config(serving_dir: str) -> str:
    """``models.config`` naming both models with absolute base paths."""
    entries = "".join(
        f'  config {{\n    name: "{name}"\n    base_path: "{os.path.abspath(os.path.join(serving_dir, name))}"\n'
        f'    model_platform: "tensorflow"\n  }}\n' for name in (IMAGE_MODEL, TEXT_MODEL))
    path = os.path.join(serving_dir, "models.config")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(f"model_config_list {{\n{entries}}}\n")
    os.replace(path + ".tmp", path)
    return path


def export_run(run_dir: str, serving_dir: str, *, version: int | None = None) -> dict:
    """Exports both encoders of a ``training.fit`` run folder; returns the written paths."""
    model, info = load_trained_model(run_dir)
    version = version or next_version(serving_dir)
    image_endpoints, image_tracked = _image_endpoints(model, info)
    if info["backbone"]["name"] == "precomputed":
        image_warmup = {"features": np.zeros([1, int(info["backbone"]["feature_dim"])], np.float32)}
    else:
        image_warmup = {"image_bytes": np.array([_sample_jpeg()], dtype=object)}
    image_path = _write_version(os.path.join(serving_dir, IMAGE_MODEL), version, image_endpoints, image_tracked,
                                image_warmup, IMAGE_MODEL)
    text_endpoints, text_tracked = _text_endpoints(model)
    text_path = _write_version(os.path.join(serving_dir, TEXT_MODEL), version, text_endpoints, text_tracked,
                               {"text": np.array([b"warm up"], dtype=object)}, TEXT_MODEL)
    return {"image": image_path, "text": text_path, "models_config": write_models_config(serving_dir),
            "version": version}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.saved_model", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a training.fit run folder")
    parser.add_argument("--out", required=True, help="serving folder (TF Serving's base path parent)")
    parser.add_argument("--version", type=int, help="version number (default: next free)")
    args = parser.parse_args(argv)
    try:
        written = export_run(args.run, args.out, version=args.version)
    except (FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"version {written['version']}:\n  {written['image']}\n  {written['text']}\n  {written['models_config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
