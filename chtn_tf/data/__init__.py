"""Cross-modal datasets: readers of the real distributed layouts, tf.data pipelines, inspection.

Readers (no TensorFlow needed): :func:`load_dataset` (``wikipedia``, ``webnews``, ``pascal``, ``nuswide10k``,
or a CSV manifest), :func:`load_image_folder` / :func:`source_domain` (the single-modal source domain).
Data is looked for in ``--data-dir``, then ``$CHTN_DATA_DIR``, then the user cache folder
(:func:`resolve_data_dir`). The tf.data pipelines are in :mod:`chtn_tf.data.pipeline` (imports TensorFlow);
``python -m chtn_tf.data.inspect`` summarises a dataset and its problems.
"""

from chtn_tf.data.image_folder import load_image_folder, source_domain
from chtn_tf.data.locations import ENV_VAR, resolve_data_dir, user_cache_dir
from chtn_tf.data.registry import DATASETS, dataset_names, load_dataset, read_dataset
from chtn_tf.data.types import SPLITS, CrossModalDataset, DatasetError, ImageFolderDataset, Problem, SplitData

__all__ = [
    "CrossModalDataset", "DATASETS", "DatasetError", "ENV_VAR", "ImageFolderDataset", "Problem", "SPLITS",
    "SplitData", "dataset_names", "download_pascal", "load_dataset", "load_image_folder", "read_dataset",
    "resolve_data_dir", "source_domain", "user_cache_dir",
]


def __getattr__(name):
    # Imported on first use so that `python -m chtn_tf.data.pascal` runs a module not yet imported.
    if name == "download_pascal":
        from chtn_tf.data.pascal import download_pascal

        return download_pascal
    raise AttributeError(f"module 'chtn_tf.data' has no attribute {name!r}")
