"""Input corruptions of the denoising autoencoder (Vincent et al., ICML 2008).

A denoising AE is trained on ``loss(g(f(corrupt(x))), x)``: the same objective as
a plain AE with a corruption and no penalty.
"""

from __future__ import annotations

import torch
from torch import Tensor

CORRUPTIONS = ("gaussian", "masking", "salt_and_pepper")


def gaussian_corruption(
    x: Tensor, std: float, generator: torch.Generator | None = None
) -> Tensor:
    """``x + eps`` with eps ~ N(0, std^2 I); ``std`` in input units. Same shape as x."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + std * noise


def masking_corruption(
    x: Tensor, fraction: float, generator: torch.Generator | None = None
) -> Tensor:
    """Set each entry to 0 independently with probability ``fraction``."""
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= fraction
    return x * keep.to(x.dtype)


def salt_and_pepper_corruption(
    x: Tensor,
    fraction: float,
    generator: torch.Generator | None = None,
    *,
    low: float = 0.0,
    high: float = 1.0,
) -> Tensor:
    """Set each entry, with probability ``fraction``, to ``low`` or ``high``."""
    u = torch.rand(x.shape, generator=generator, device=x.device)
    coin = torch.rand(x.shape, generator=generator, device=x.device) < 0.5
    salt = torch.where(coin, torch.full_like(x, high), torch.full_like(x, low))
    return torch.where(u < fraction, salt, x)


def corrupt(
    x: Tensor, kind: str, level: float, generator: torch.Generator | None = None
) -> Tensor:
    """Apply the corruption named ``kind`` ("gaussian": level is the standard
    deviation; "masking", "salt_and_pepper": level is the fraction of entries)."""
    if kind == "gaussian":
        return gaussian_corruption(x, level, generator)
    if kind == "masking":
        return masking_corruption(x, level, generator)
    if kind == "salt_and_pepper":
        return salt_and_pepper_corruption(x, level, generator)
    raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")
