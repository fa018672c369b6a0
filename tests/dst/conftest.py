"""Fixtures of the DST tests: the embedded sample, one small fitted model, one torch thread."""

import pytest
import torch

from dstray.data import load_dataset
from dstray.dst.fit import fit_dst
from tests.helpers import FAST_DST, torch_threads


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a small shared CPU, OpenMP threads waiting on each other cost more than they give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def dataset():
    return load_dataset()


@pytest.fixture(scope="session")
def fitted(dataset, tmp_path_factory):
    """A blowhole model fitted with FAST_DST (30 steps), and the (step, terms) pairs it logged."""
    out = tmp_path_factory.mktemp("dst")
    logged = []
    with torch_threads(1):  # a session fixture is set up before `one_thread`: without this, at the process's count
        path = fit_dst(FAST_DST, dataset, out, on_log=lambda step, terms: logged.append((step, terms)))
    return path, logged
