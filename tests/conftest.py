import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same global random state."""
    np.random.seed(0)  # noqa: NPY002 - legacy global state some libraries read
    torch.manual_seed(0)
    yield
