"""Shared pytest fixtures, built once per test session (keep this file small; put builders in tests/fixtures_*.py)."""

import pytest

from tests import fixtures_export
from tests.fixtures_data import real_data_dir as _real_data_dir


@pytest.fixture(scope="session")
def real_data_dir():
    """The real datasets folder (``$CHTN_DATA_DIR``); skips the test when it is not set."""
    path = _real_data_dir()
    if path is None:
        pytest.skip("real data not available: set CHTN_DATA_DIR to the shared datasets folder "
                    "(e.g. ../shared/datasets)")
    return path


@pytest.fixture(scope="session")
def feature_run(tmp_path_factory):
    """A small trained run on precomputed image features and its export (see ``tests/fixtures_export.py``)."""
    return fixtures_export.build_feature_run(tmp_path_factory.mktemp("export_features"))


@pytest.fixture(scope="session")
def image_run(tmp_path_factory):
    """A small trained run with a tiny image backbone and its export (see ``tests/fixtures_export.py``)."""
    return fixtures_export.build_image_run(tmp_path_factory.mktemp("export_images"))
