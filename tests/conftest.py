"""Shared settings for all tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tests run tiny ops; on a shared 2-core machine two intra-op threads wait on each other and make the tests
    ~7× slower (measured: test_pipeline.py 102 s with torch's default, 14 s with one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
