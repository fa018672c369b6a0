"""Segmentation tests run torch on one thread.

On a machine whose cores are shared with other jobs, two OpenMP threads made small training
steps 15-30x slower than one (threads spin at every barrier while the other is descheduled);
the test sizes gain nothing from a second thread.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
