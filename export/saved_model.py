"""Export a trained run's image and text encoders as SavedModels in TF Serving's layout.

    python -m export.saved_model --run RUN_DIR --out SERVING_DIR [--version N] [--model-base-path /models]

writes ``SERVING_DIR/chtn_image/<version>/`` and ``SERVING_DIR/chtn_text/<version>/`` plus
``SERVING_DIR/models.config`` (for ``tensorflow_model_server --model_config_file``). Signatures:

- ``chtn_image`` ``serving_default``: ``image_bytes`` (string ``[batch]``, encoded JPEG/PNG/GIF/BMP, decoded
  and resized in the graph) -> ``embedding`` (float32 ``[batch, D]``); ``serving_images``: ``images`` (float32
  ``[batch, S, S, 3]`` in [0, 1], S = the backbone's input size) -> ``embedding``. A run trained on
  precomputed image features (Wikipedia SIFT) has one signature, ``serving_default``: ``features`` (float32
  ``[batch, d]``) -> ``embedding``.
- ``chtn_text`` ``serving_default``: ``text`` (string ``[batch]``, raw UTF-8 text) -> ``embedding``, a text's
  code as a query (text->image); ``serving_gallery``: ``text`` -> ``embedding``, its code as an item to find
  (what image->text ranks and a text index stores). The two differ when the run mixes a text regression into
  the gallery codes (``model.text_gallery_linear_weight``), else they are the same.

``embedding`` is the common representation the run was evaluated with: cosine similarity between an image's
and a text's gallery embedding reproduces the run's image->text retrieval, between a text's query embedding and
an image's its text->image retrieval. Each version folder also holds
``assets.extra/tf_serving_warmup_requests`` (one PredictionLog per signature). Both versions are written
under hidden temporary names beside them and renamed into place only once both are complete, so a server
polling the folder never sees half of a version, nor an image version without its text version; the hidden
folders an interrupted export left are removed by the next export into the same folder. The graphs
use only core TensorFlow ops (checked before the rename), which the stock ``tensorflow_model_server`` has.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from chtn_tf.atomic import FolderBusy, folder_lock, write_text_atomic
from chtn_tf.backbones.split import split_backbone_of
from chtn_tf.data.pipeline import decode_image
from chtn_tf.model.persist import load_trained_model
from export.layout import IMAGE_MODEL, TEXT_GALLERY_SIGNATURE, TEXT_MODEL, next_version

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def image_signatures(model, info) -> tuple:
    """``({signature name: (function, input signature)}, objects to track)`` of the image encoder.

    ``info`` is the run's ``model_info`` (its ``backbone`` entry says whether the run used precomputed
    features, a TF-Hub backbone, which is frozen in training and so is loaded from its handle here, or an
    EfficientNet-Lite whose trained top is part of the encoder and whose frozen bottom is rebuilt here).
    """
    backbone_info = info["backbone"]
    encoder = model.image_encoder
    if backbone_info["name"] == "precomputed":
        dim = int(backbone_info["feature_dim"])
        return {"serving_default": (lambda features: {"embedding": encoder(features, training=False)},
                                    [tf.TensorSpec([None, dim], tf.float32, name="features")])}, []

    size = int(backbone_info["image_size"])
    split = split_backbone_of(backbone_info)
    if split is not None:
        # The frozen bottom, rebuilt from the same ImageNet weights file; the trained top is in the encoder.
        backbone = split.bottom()
    else:
        from chtn_tf.backbones import HubImageLayer

        backbone = HubImageLayer(backbone_info["handle"], trainable=False, name="backbone")

    def embed_images(images):
        return {"embedding": encoder(backbone(images, training=False), training=False)}

    def embed_bytes(image_bytes):
        # The same decode + resize as the feature extraction the run was trained on.
        images = tf.map_fn(lambda b: decode_image(b, size), image_bytes,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return embed_images(images)

    return {
        "serving_default": (embed_bytes, [tf.TensorSpec([None], tf.string, name="image_bytes")]),
        "serving_images": (embed_images, [tf.TensorSpec([None, size, size, 3], tf.float32, name="images")]),
    }, []


def text_signatures(model) -> tuple:
    """``({signature name: (function, input signature)}, objects to track)`` of the text encoders: query codes
    (``serving_default``) and gallery codes (``serving_gallery``)."""
    query, gallery = model.text_encoder, model.text_gallery_encoder
    spec = [tf.TensorSpec([None], tf.string, name="text")]
    # Only the vectoriser is tracked: its vocabulary table is not a variable, so the endpoint alone would leave
    # it out; everything else is a variable the endpoint captures (see stage_version).
    signatures = {"serving_default": (lambda text: {"embedding": query(text, training=False)}, spec),
                  TEXT_GALLERY_SIGNATURE: (lambda text: {"embedding": gallery(text, training=False)}, spec)}
    return signatures, [model.text_vectorizer]


def saved_model_ops(path: str) -> set:
    """Op types used by a SavedModel's graph and its function library (calls between functions excluded)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops = set()
    for meta_graph in proto.meta_graphs:
        library = meta_graph.graph_def.library
        functions = {fn.signature.name for fn in library.function}
        ops.update(node.op for node in meta_graph.graph_def.node)
        for fn in library.function:
            ops.update(node.op for node in fn.node_def)
        ops -= functions
    return ops


def non_core_ops(path: str) -> list:
    """Ops of a SavedModel that are not core TensorFlow ops (e.g. TF Text's); [] when all are stock.

    ``tf.raw_ops`` lists exactly the ops compiled into TensorFlow itself, which every
    ``tensorflow_model_server`` of the release links in; ops of add-on libraries are never added to it.
    """
    return sorted(op for op in saved_model_ops(path) if not hasattr(tf.raw_ops, op))


def write_warmup(path: str, model_name: str, requests: dict) -> None:
    """TF Serving warm-up file: one PredictionLog record per ``{signature: {input name: array}}`` entry."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests.items():
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def _sample_image_bytes() -> tuple:
    """A grey JPEG and a PNG: warm-up inputs that exercise both decoders."""
    from PIL import Image

    encoded = []
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        Image.fromarray(np.full((32, 48, 3), 128, np.uint8)).save(buffer, format=fmt)
        encoded.append(buffer.getvalue())
    return tuple(encoded)


def _warmup_requests(info) -> tuple:
    backbone_info = info["backbone"]
    if backbone_info["name"] == "precomputed":
        image = {"serving_default": {"features": np.zeros([1, int(backbone_info["feature_dim"])], np.float32)}}
    else:
        size = int(backbone_info["image_size"])
        image = {"serving_default": {"image_bytes": np.array(_sample_image_bytes(), dtype=object)},
                 "serving_images": {"images": np.full([1, size, size, 3], 0.5, np.float32)}}
    sample = {"text": np.array([b"warm up", "中文".encode("utf-8")], dtype=object)}
    return image, {"serving_default": sample, TEXT_GALLERY_SIGNATURE: sample}


def stage_version(model_dir: str, version: int, signatures: dict, tracked: list, warmup: dict) -> str:
    """Writes one SavedModel version into a hidden temporary folder inside ``model_dir``; returns its path.

    TF Serving loads only folders named by an integer, so the staged folder is never served;
    :func:`publish_versions` renames it into place.

    ``tracked`` lists only what the endpoints cannot pull in by themselves (lookup tables): the variables an
    endpoint captures are saved with it, and tracking a Keras layer as well would store each of its weights a
    second time (keras-team/keras#23553: 2x the size on disk and in the server's memory).

    Raises:
        ValueError: the graph uses an op that is not a core TensorFlow op.
    """
    os.makedirs(model_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir)
    try:
        archive = keras.export.ExportArchive()
        for item in tracked:
            archive.track(item)
        for name, (fn, input_signature) in signatures.items():
            archive.add_endpoint(name, fn, input_signature=input_signature)
        archive.write_out(tmp, verbose=False)
        extra = non_core_ops(tmp)
        if extra:
            raise ValueError(f"{model_dir}: the graph uses ops that the stock tensorflow_model_server lacks: {extra}")
        write_warmup(os.path.join(tmp, WARMUP_FILE), os.path.basename(model_dir), warmup)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def publish_versions(staged: dict, version: int) -> dict:
    """Renames staged folders ``{model_dir: tmp}`` to ``model_dir/<version>``, one rename each, back to back.

    Both models are staged completely before either appears, so a server never sees an image version
    without its text version (their embeddings only match each other).
    """
    published = {}
    for model_dir, tmp in staged.items():
        final = os.path.join(model_dir, str(version))
        os.rename(tmp, final)  # fails, rather than merges, if ``final`` appeared meanwhile and is not empty
        published[model_dir] = final
    return published


def write_models_config(serving_dir: str, *, base_path: str | None = None) -> str:
    """``models.config`` naming both models; base paths are absolute (under ``base_path`` if given).

    ``base_path`` is where the server sees ``serving_dir``, e.g. ``/models`` for a container with
    ``-v SERVING_DIR:/models``.
    """
    root = base_path.rstrip("/") if base_path else os.path.abspath(serving_dir)
    entries = "".join(f'  config {{\n    name: "{name}"\n    base_path: "{root}/{name}"\n'
                      f'    model_platform: "tensorflow"\n  }}\n' for name in (IMAGE_MODEL, TEXT_MODEL))
    path = os.path.join(serving_dir, "models.config")
    write_text_atomic(path, f"model_config_list {{\n{entries}}}\n")
    return path


def export_run(run_dir: str, serving_dir: str, *, version: int | None = None,
               model_base_path: str | None = None) -> dict:
    """Exports both encoders of a ``training.fit`` run folder as version ``version`` (default: next free).

    Returns ``{"image": path, "text": path, "models_config": path, "version": int}``.
    """
    if version is not None and version < 1:
        raise ValueError(f"--version must be a positive integer, got {version}")
    model, info = load_trained_model(run_dir)
    version = next_version(serving_dir) if version is None else version
    folders = {name: os.path.join(serving_dir, name) for name in (IMAGE_MODEL, TEXT_MODEL)}
    for folder in folders.values():
        if os.path.exists(os.path.join(folder, str(version))):
            raise FileExistsError(f"{folder}/{version} exists; versions are immutable: pass another --version "
                                  f"or omit it")
    image_warmup, text_warmup = _warmup_requests(info)
    with folder_lock(serving_dir):
        removed = remove_export_leftovers(serving_dir)
        if removed:
            print(f"removed {len(removed)} leftover(s) of an interrupted export: {', '.join(removed)}", flush=True)
        staged = {}
        try:
            staged[folders[IMAGE_MODEL]] = stage_version(folders[IMAGE_MODEL], version,
                                                         *image_signatures(model, info), image_warmup)
            staged[folders[TEXT_MODEL]] = stage_version(folders[TEXT_MODEL], version, *text_signatures(model),
                                                        text_warmup)
            published = publish_versions(staged, version)
        finally:
            for tmp in staged.values():
                shutil.rmtree(tmp, ignore_errors=True)
        models_config = write_models_config(serving_dir, base_path=model_base_path)
    return {"image": published[folders[IMAGE_MODEL]], "text": published[folders[TEXT_MODEL]], "version": version,
            "models_config": models_config}


def remove_export_leftovers(serving_dir: str) -> list:
    """Removes what an interrupted export left in ``serving_dir``; returns the removed paths.

    Those are the hidden staging folders ``<model>/.tmp-<version>-*`` (never served: TF Serving loads only
    integer-named folders) and the temporary files ``.tmp-*`` of the atomic ``models.config`` write. Call it
    only while holding the serving folder's lock (another export's staging folder is not a leftover).
    """
    removed = []
    if os.path.isdir(serving_dir):
        removed += [os.path.join(serving_dir, n) for n in os.listdir(serving_dir)
                    if n.startswith(".tmp-") and os.path.isfile(os.path.join(serving_dir, n))]
    for name in (IMAGE_MODEL, TEXT_MODEL):
        folder = os.path.join(serving_dir, name)
        if os.path.isdir(folder):
            removed += [os.path.join(folder, n) for n in os.listdir(folder) if re.fullmatch(r"\.tmp-\d+-.+", n)]
    for path in removed:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    return removed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.saved_model", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a training.fit run folder")
    parser.add_argument("--out", required=True, help="serving folder (holds chtn_image/, chtn_text/, models.config)")
    parser.add_argument("--version", type=int, help="version number (default: one more than the highest)")
    parser.add_argument("--model-base-path", help="where the server sees --out, for models.config (e.g. /models "
                                                  "in a container); default: the absolute path of --out")
    args = parser.parse_args(argv)
    try:
        written = export_run(args.run, args.out, version=args.version, model_base_path=args.model_base_path)
    except (FileNotFoundError, FileExistsError, ValueError, FolderBusy) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"version {written['version']}:\n  {written['image']}\n  {written['text']}\n  {written['models_config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
