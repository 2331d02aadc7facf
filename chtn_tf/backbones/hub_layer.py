"""A TF-Hub image module as a Keras 3 layer: the only code in chtn that imports ``tensorflow_hub``.

``hub.KerasLayer`` is a tf_keras layer and does not work in Keras 3 models (see docs/stack-notes). This
layer calls ``hub.load(handle)`` and tracks each of the module's variables as a ``keras.Variable`` that
wraps it (no copy), so Keras trains, saves and restores them; ``training`` is forwarded so BatchNorm
runs in training mode when the backbone is fine-tuned.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def load_module(handle: str):
    """``tensorflow_hub.load`` of a URL (through ``$TFHUB_CACHE_DIR``) or a local SavedModel folder.

    An uncached URL while offline fails within seconds with an error naming the alternatives, instead of
    waiting on the network.
    """
    import tensorflow_hub as hub

    from chtn_tf.backbones.registry import check_url_available

    if str(handle).startswith(("http://", "https://")):
        check_url_available(str(handle))

    return hub.load(str(handle))


@keras.saving.register_keras_serializable(package="chtn")
class HubImageLayer(keras.layers.Layer):
    """A TF-Hub image feature-vector (or classification) module as a Keras 3 layer.

    Args:
        handle: TF-Hub handle: an ``https://`` URL (resolved offline through ``$TFHUB_CACHE_DIR`` when
            cached) or a local SavedModel folder in TF-Hub's reusable format.
        trainable: fine-tune the module's trainable variables (BatchNorm then runs in training mode while
            training); False freezes them. Setting ``layer.trainable`` later (e.g. to fine-tune after a frozen
            stage; recompile afterwards) switches the same way.

    Input: float32 ``[batch, height, width, 3]`` with values in [0, 1]. Output: ``[batch, feature_dim]``.

    Example:
        >>> backbone = HubImageLayer("~/.cache/chtn/hub/efficientnet-lite0-feature_vector")
        >>> features = backbone(images)
    """

    def __init__(self, handle: str, *, trainable: bool = False, **kwargs):
        super().__init__(trainable=trainable, **kwargs)
        self.handle = str(handle)
        self._module = load_module(self.handle)
        trainable_refs = {v.ref() for v in getattr(self._module, "trainable_variables", [])}
        self._hub_variables = []
        for variable in self._module.variables:
            # The layer's own ``trainable`` flag decides whether any of these train, so it can be switched later.
            wrapped = keras.Variable(variable, trainable=variable.ref() in trainable_refs,
                                     name=variable.name.split(":")[0].replace("/", "_"))
            self._track_variable(wrapped)
            self._hub_variables.append(wrapped)
        self._feature_dim = None
        self.built = True

    def call(self, images, training=False):
        return self._module(images, training=bool(training) and self.trainable)

    def compute_output_shape(self, input_shape):
        if self._feature_dim is None:
            # Modules may fix their spatial size: probe with the input's own (224 where unknown).
            height, width = [d or 224 for d in tuple(input_shape)[1:3]]
            self._feature_dim = int(self._module(tf.zeros([1, height, width, 3]), training=False).shape[-1])
        return (input_shape[0], self._feature_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"handle": self.handle})
        return config
