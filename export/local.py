"""The exported encoders, loaded in-process with plain ``tf.saved_model.load`` (no chtn model code).

Used by :mod:`export.index` and :mod:`export.verify`: both must see exactly what a server would answer.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from export.layout import TEXT_GALLERY_SIGNATURE, version_dirs


class ExportedEncoders:
    """Both exported encoders of one version, called through their signatures (texts as queries through
    ``serving_default``, as gallery items through ``serving_gallery``).

    Args:
        image_dir: a ``chtn_image/<version>`` folder.
        text_dir: a ``chtn_text/<version>`` folder.
        batch_size: inputs per call.

    Attributes:
        image_input: ``"image_bytes"`` (image-backbone export) or ``"features"`` (precomputed features).
    """

    def __init__(self, image_dir: str, text_dir: str, *, batch_size: int = 64):
        self.image_dir, self.text_dir, self.batch_size = image_dir, text_dir, batch_size
        self._image = tf.saved_model.load(image_dir).signatures["serving_default"]
        text_signatures = tf.saved_model.load(text_dir).signatures
        self._text = text_signatures["serving_default"]
        # Exports older than the gallery signature have one text code for both roles.
        self._text_gallery = text_signatures.get(TEXT_GALLERY_SIGNATURE, self._text)
        self.image_input = next(iter(self._image.structured_input_signature[1]))

    @classmethod
    def from_serving_dir(cls, serving_dir: str, version: int | None = None, **kwargs) -> "ExportedEncoders":
        """The encoders of ``version`` (default: the highest) in an ``export.saved_model`` folder."""
        return cls(*version_dirs(serving_dir, version), **kwargs)

    def _run(self, signature, key: str, values) -> np.ndarray:
        out = [signature(**{key: tf.constant(values[i:i + self.batch_size])})["embedding"].numpy()
               for i in range(0, len(values), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def embed_texts(self, texts) -> np.ndarray:
        """Embeddings of raw texts as queries (to find images)."""
        return self._run(self._text, "text", [t.encode("utf-8") if isinstance(t, str) else t for t in texts])

    def embed_text_gallery(self, texts) -> np.ndarray:
        """Embeddings of raw texts as items to find (by image queries, e.g. in an index)."""
        return self._run(self._text_gallery, "text",
                         [t.encode("utf-8") if isinstance(t, str) else t for t in texts])

    def embed_features(self, features) -> np.ndarray:
        """Embeddings of precomputed image features (exports of precomputed-feature runs only)."""
        if self.image_input != "features":
            raise ValueError(f"{self.image_dir} takes encoded images, not precomputed features")
        return self._run(self._image, "features", np.asarray(features, np.float32))

    def embed_image_bytes(self, encoded, *, names=None) -> np.ndarray:
        """Embeddings of encoded JPEG/PNG/GIF/BMP images.

        Raises:
            ValueError: the export takes features, or an image does not decode (named by ``names``).
        """
        if self.image_input != "image_bytes":
            raise ValueError(f"{self.image_dir} was exported from a run on precomputed image features: it "
                             f"takes feature vectors ('features'), not image files")
        try:
            return self._run(self._image, "image_bytes", list(encoded))
        except tf.errors.InvalidArgumentError:
            for i, item in enumerate(encoded):  # find the culprit to name it
                try:
                    self._image(image_bytes=tf.constant([item]))
                except tf.errors.InvalidArgumentError as e:
                    name = names[i] if names is not None else f"input {i}"
                    raise ValueError(f"{name}: not a JPEG/PNG/GIF/BMP image the export can decode "
                                     f"({e.message.splitlines()[0]})") from None
            raise

    def embed_image_files(self, paths) -> np.ndarray:
        """Embeddings of image files (read as bytes, decoded in the graph)."""
        encoded = []
        for path in paths:
            with open(path, "rb") as f:
                encoded.append(f.read())
        return self.embed_image_bytes(encoded, names=list(paths))
