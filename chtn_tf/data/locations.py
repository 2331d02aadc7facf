"""Where datasets are looked for: ``--data-dir``, then ``$CHTN_DATA_DIR``, then a user cache folder."""

from __future__ import annotations

import os
import pathlib
from typing import Optional

from chtn_tf.data.types import DatasetError

ENV_VAR = "CHTN_DATA_DIR"


def user_cache_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/chtn/datasets``, or ``~/.cache/chtn/datasets`` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "chtn" / "datasets"


def data_dir_source(data_dir: Optional[str] = None) -> tuple:
    """``(path, how)``: the data folder chosen and a phrase saying where that choice came from."""
    if data_dir:
        return pathlib.Path(data_dir).expanduser().resolve(), f"--data-dir {data_dir}"
    env = os.environ.get(ENV_VAR)
    if env:
        return pathlib.Path(env).expanduser().resolve(), f"${ENV_VAR}={env}"
    return user_cache_dir(), f"the user cache folder (neither --data-dir nor ${ENV_VAR} was set)"


def resolve_data_dir(data_dir: Optional[str] = None) -> pathlib.Path:
    """The folder holding the datasets.

    Order: an explicit ``data_dir`` (the CLIs' ``--data-dir``), then ``$CHTN_DATA_DIR``, then the user cache
    folder (:func:`user_cache_dir`). An explicit folder or the variable must name an existing folder; the cache
    folder is returned even when it does not exist yet (a downloader fills it).

    Raises:
        DatasetError: the folder given by ``data_dir`` or ``$CHTN_DATA_DIR`` does not exist.
    """
    path, how = data_dir_source(data_dir)
    if (data_dir or os.environ.get(ENV_VAR)) and not path.is_dir():
        raise DatasetError(f"data folder {path} (from {how}) does not exist; point --data-dir or ${ENV_VAR} "
                           f"at the folder that holds the dataset folders (wikipedia/, webnews/, ...)")
    return path


def dataset_root(subdir: str, data_dir: Optional[str] = None, *, layout: str = "") -> pathlib.Path:
    """``<data dir>/<subdir>``, which must exist; the error says which data folder was tried and how it was chosen.

    Args:
        subdir: the dataset's folder name inside the data folder.
        data_dir: explicit data folder (``--data-dir``), or None.
        layout: a short description of the expected layout, quoted in the error.
    """
    base = resolve_data_dir(data_dir)
    _, how = data_dir_source(data_dir)
    root = base / subdir
    if not root.is_dir():
        hint = f" Expected layout: {layout}." if layout else ""
        raise DatasetError(f"dataset folder {root} not found (data folder {base}, from {how}).{hint} "
                           f"Pass --data-dir DIR or set ${ENV_VAR} to the folder that contains {subdir}/.")
    return root
