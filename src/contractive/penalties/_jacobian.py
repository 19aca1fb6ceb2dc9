"""Exact per-sample Jacobians with torch.func: the reference for every closed form."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jacfwd, jacrev, vmap

#: Upper bound on the number of Jacobian entries materialised at once by ``vmap``.
_MAX_ENTRIES_PER_CHUNK = 1 << 24


def _per_sample(
    fn: Callable[[Tensor], Tensor],
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """Wrap a batched ``fn`` as a function of one sample returning (output, output)."""

    def single(sample: Tensor) -> tuple[Tensor, Tensor]:
        out = fn(sample.unsqueeze(0)).squeeze(0)
        return out, out

    return single


def batch_jacobian_with_output(
    fn: Callable[[Tensor], Tensor], x: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-sample Jacobians of a batched function, and its output.

    ``fn`` maps a batch to a batch and must treat samples independently (no batch
    norm across samples). Reverse mode is used when the output is smaller than the
    input, forward mode otherwise, each under ``vmap``; chunks bound the memory.

    Parameters
    ----------
    fn : callable, Tensor of shape (n_samples, *in_shape) -> (n_samples, *out_shape)
    x : Tensor of shape (n_samples, *in_shape)

    Returns
    -------
    jacobian : Tensor of shape (n_samples, n_out, n_in)
        ``jacobian[b, i, j] = d fn(x)[b, i] / d x[b, j]`` with both sides flattened;
        differentiable with respect to the parameters ``fn`` closes over.
    output : Tensor of shape (n_samples, *out_shape)
    """
    if x.shape[0] == 0:
        raise ValueError(f"x holds no samples (shape {tuple(x.shape)})")
    with torch.no_grad():
        out_shape = fn(x[:1]).shape[1:]
    n_in, n_out = x[0].numel(), out_shape.numel()
    transform = jacrev if n_out <= n_in else jacfwd
    chunk = max(1, _MAX_ENTRIES_PER_CHUNK // max(1, n_in * n_out))
    jac, out = vmap(transform(_per_sample(fn), has_aux=True), chunk_size=chunk)(x)
    return jac.reshape(x.shape[0], n_out, n_in), out


def batch_jacobian(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Per-sample Jacobians, shape (n_samples, n_out, n_in); see
    :func:`batch_jacobian_with_output`."""
    return batch_jacobian_with_output(fn, x)[0]
