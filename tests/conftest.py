"""Shared test fixtures."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

# Small tensors dominate the suite; one thread avoids oversubscribing 2-core hosts.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Seed Python, NumPy and torch so every test is reproducible."""
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 - legacy global state, seeded for third-party code
    torch.manual_seed(0)
