"""Shared pytest fixtures (keep this file small; put builders in tests/fixtures_*.py)."""

import pytest

from tests.fixtures_data import real_data_dir as _real_data_dir


@pytest.fixture(scope="session")
def real_data_dir():
    """The real datasets folder (``$CHTN_DATA_DIR``); skips the test when it is not set."""
    path = _real_data_dir()
    if path is None:
        pytest.skip("real data not available: set CHTN_DATA_DIR to the shared datasets folder "
                    "(e.g. ../shared/datasets)")
    return path
