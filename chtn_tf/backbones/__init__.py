"""Image backbones: TF-Hub image modules as Keras 3 layers, offline ImageNet EfficientNet-Lite0/1/2, the split
(frozen bottom + trainable ImageNet top) backbone, cached views, the feature cache.

Only :mod:`chtn_tf.backbones.hub_layer` imports ``tensorflow_hub``.
"""

from chtn_tf.backbones.feature_cache import FeatureSet, extract_features
from chtn_tf.backbones.hub_layer import HubImageLayer
from chtn_tf.backbones.registry import BackboneSpec, chtn_cache_dir, resolve_backbone
from chtn_tf.backbones.split import SplitBackbone
from chtn_tf.backbones.views import VIEWS

__all__ = ["BackboneSpec", "FeatureSet", "HubImageLayer", "SplitBackbone", "VIEWS", "chtn_cache_dir",
           "extract_features", "resolve_backbone"]
