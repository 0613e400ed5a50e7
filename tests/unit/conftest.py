import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Unit tests train tiny networks: extra intra-op threads only contend for a small shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
