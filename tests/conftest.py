"""Shared test fixtures."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Seed Python, NumPy and torch so every test is reproducible."""
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 - legacy global state, seeded for third-party code
    torch.manual_seed(0)
