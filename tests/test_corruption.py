from __future__ import annotations

import pytest
import torch

from contractive.penalties import corrupt


def test_gaussian_corruption_has_the_requested_std():
    x = torch.zeros(200, 100)
    noisy = corrupt(x, "gaussian", 0.3, torch.Generator().manual_seed(0))
    assert abs(noisy.std().item() - 0.3) < 0.01
    assert abs(noisy.mean().item()) < 0.01


def test_masking_zeroes_the_requested_fraction():
    x = torch.ones(200, 100)
    masked = corrupt(x, "masking", 0.25, torch.Generator().manual_seed(0))
    assert abs((masked == 0).float().mean().item() - 0.25) < 0.01
    assert set(masked.unique().tolist()) == {0.0, 1.0}


def test_salt_and_pepper_sets_extremes():
    x = torch.full((200, 100), 0.5)
    noisy = corrupt(x, "salt_and_pepper", 0.2, torch.Generator().manual_seed(0))
    changed = noisy != 0.5
    assert abs(changed.float().mean().item() - 0.2) < 0.01
    assert set(noisy[changed].unique().tolist()) == {0.0, 1.0}


def test_corruption_is_reproducible_and_leaves_input_alone():
    x = torch.rand(10, 5)
    before = x.clone()
    a = corrupt(x, "gaussian", 0.1, torch.Generator().manual_seed(3))
    b = corrupt(x, "gaussian", 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(x, before)
    with pytest.raises(ValueError, match="'blur'"):
        corrupt(x, "blur", 0.1)
