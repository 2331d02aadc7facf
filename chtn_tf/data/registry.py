"""The dataset registry: a name (or a CSV manifest) to a :class:`CrossModalDataset`."""

from __future__ import annotations

import functools
import importlib
from typing import Optional

from chtn_tf.data.checks import resolve_overlaps
from chtn_tf.data.types import CrossModalDataset, DatasetError

# name -> module with a ``load(data_dir, *, seed, val_fraction, **options)``. Imported on use, so that
# ``python -m chtn_tf.data.<reader>`` runs a module the package has not imported yet.
READERS = {
    "wikipedia": "chtn_tf.data.wikipedia",
    "webnews": "chtn_tf.data.webnews",
    "pascal": "chtn_tf.data.pascal",
    "nuswide10k": "chtn_tf.data.nuswide",
}


def dataset_names() -> list:
    """The registered dataset names."""
    return sorted(READERS)


def load_dataset(name: Optional[str] = None, *, manifest: Optional[str] = None, data_dir: Optional[str] = None,
                 seed: int = 0, val_fraction: float = 0.1, allow_leak: bool = False, **options) -> CrossModalDataset:
    """Reads a registered dataset, or a user's CSV manifest, into train / val / test splits.

    Args:
        name: ``wikipedia``, ``webnews``, ``pascal`` or ``nuswide10k`` (exactly one of ``name`` / ``manifest``).
        manifest: path of a CSV manifest ``image,text,label[,split]`` (see :mod:`chtn_tf.data.manifest`).
        data_dir: the data folder (``--data-dir``); else ``$CHTN_DATA_DIR``, else the user cache folder.
        seed: seed of every random split (stratified, so class proportions are kept).
        val_fraction: the fraction of train carved out as ``val`` when the dataset has no validation split.
        allow_leak: keep a pair whose image file is also in an earlier split (reported either way; see
            :func:`chtn_tf.data.checks.resolve_overlaps`, which also drops exact duplicate pairs).
        **options: reader settings, e.g. ``protocol="231/462"`` and ``image_side`` (wikipedia),
            ``sentences="each"`` (pascal), ``test_fraction`` (manifest), ``validate_images=False``.

    Returns:
        the dataset; its ``problems`` list every pair dropped (by id) and every oddity resolved.

    Raises:
        DatasetError: the data cannot be used (the message says what, where, and what to do).
    """
    if (name is None) == (manifest is None):
        raise DatasetError("give exactly one of a dataset name (--dataset NAME) or a manifest (--manifest PATH); "
                           f"names: {', '.join(dataset_names())}")
    if manifest is not None:
        from chtn_tf.data import manifest as manifest_reader

        module = manifest_reader.__name__
        reader = functools.partial(manifest_reader.load, manifest)
    else:
        module = READERS.get(name.lower())
        if module is None:
            raise DatasetError(f"unknown dataset {name!r}; use one of {', '.join(dataset_names())}, "
                               f"or --manifest PATH for your own data")
        reader = functools.partial(importlib.import_module(module).load, data_dir)
    try:
        dataset = reader(seed=seed, val_fraction=val_fraction, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise DatasetError(f"{name or manifest}: {err}; see help({module})") from err
        raise
    return resolve_overlaps(dataset, allow_leak=allow_leak)
