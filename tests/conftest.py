"""Shared pytest fixtures."""

import warnings

import pytest

# Tests whose code under test is known to leave the driver's torch thread count changed; the guard below
# restores it and warns instead of failing. None now (train_seg's driver gives its count back after scoring).
THREAD_LEAKS_KNOWN: tuple[str, ...] = ()


@pytest.fixture(autouse=True)
def torch_threads_unchanged(request):
    """Fail a test that leaves ``torch.get_num_threads()`` changed (and restore it), so that no test's
    result depends on the tests that ran before it. A test that needs another count sets it in a
    fixture or block that restores it (``tests.helpers.torch_threads``)."""
    import torch

    before = torch.get_num_threads()
    yield
    after = torch.get_num_threads()
    if after != before:
        torch.set_num_threads(before)
        message = (f"{request.node.nodeid} left torch.get_num_threads() at {after} (it was {before}); restore it "
                   "in the test (tests.helpers.torch_threads), or in the library code that changed it")
        if request.node.nodeid.startswith(THREAD_LEAKS_KNOWN):
            warnings.warn(message, stacklevel=1)
        else:
            pytest.fail(message)


# --------------------------------------------------------------------------- data fixtures (dstray.data)
@pytest.fixture(scope="session")
def sample_dataset():
    """The embedded Magnetic Tile sample, listed (no file is decoded)."""
    from dstray.data import load_dataset

    return load_dataset()
