"""Shared pytest fixtures."""

import pytest


# --------------------------------------------------------------------------- data fixtures (dstray.data)
@pytest.fixture(scope="session")
def sample_dataset():
    """The embedded Magnetic Tile sample, listed (no file is decoded)."""
    from dstray.data import load_dataset

    return load_dataset()
