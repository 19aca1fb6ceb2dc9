"""Jacobian penalties: ||J_f(x)||_F^2 (CAE), the CAE+H term and the RCAE term.

Each public function returns one value per sample and is differentiable with
respect to the parameters of the modules it is given. Three ways to compute:

- "analytic": closed form for an affine layer + elementwise activation
  (see ``_closed_form``), never forming J;
- "exact": per-sample Jacobians with ``torch.func`` (reverse or forward mode,
  whichever side is smaller);
- "stochastic": ``||J||_F^2 = E_v ||J v||^2`` for Rademacher probes ``v``
  (``E[v v^T] = I``), one forward-mode JVP per probe; unbiased, with variance
  falling as ``1 / n_probes`` (Hutchinson, 1989).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import jvp

from contractive._validation import check_int
from contractive.penalties._closed_form import (
    AffineActivation,
    AffineForward,
    TiedLinear,
    activation_derivative,
    affine_forward,
    as_affine_activation,
    closed_form_norm_sq,
    squared_row_norms,
)
from contractive.penalties._jacobian import batch_jacobian_with_output

logger = logging.getLogger(__name__)

METHODS = ("auto", "analytic", "exact", "stochastic")

#: "auto" uses exact Jacobians when the smaller of (input size, output size) per
#: sample is at most this, since exact then costs at most this many passes.
EXACT_MAX_DIM = 16

Encoder = Callable[[Tensor], Tensor]


def _check_args(x: Tensor, method: str, n_probes: int) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(
            "x must have shape (n_samples, ...) with n_samples >= 1, "
            f"got {tuple(x.shape)}"
        )
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    check_int("n_probes", n_probes)


def _output_size(fn: Encoder, x: Tensor) -> int:
    with torch.no_grad():
        return fn(x[:1])[0].numel()


def resolve_method(encoder: Encoder, x: Tensor, method: str = "auto") -> str:
    """The method ``jacobian_norm_sq(encoder, x, method)`` will use.

    "auto" resolves to "analytic" when the encoder has a closed form, else to
    "exact" when min(input size, output size) <= ``EXACT_MAX_DIM``, else to
    "stochastic". An explicit method is checked and returned unchanged.
    """
    _check_args(x, method, 1)
    parts = as_affine_activation(encoder)
    if method == "analytic" and parts is None:
        raise ValueError(
            f"method='analytic' needs an affine layer followed by a supported "
            f"elementwise activation; got {type(encoder).__name__}. "
            "Use method='exact' or 'stochastic'."
        )
    if method != "auto":
        return method
    if parts is not None:
        chosen = "analytic"
    elif min(x[0].numel(), _output_size(encoder, x)) <= EXACT_MAX_DIM:
        chosen = "exact"
    else:
        chosen = "stochastic"
    logger.debug("jacobian method auto -> %s for %s", chosen, type(encoder).__name__)
    return chosen


def rademacher_like(x: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` independent Rademacher (+-1) tensors shaped like ``x``: (n, *x.shape)."""
    bits = torch.randint(
        0, 2, (n, *x.shape), generator=generator, device=x.device, dtype=torch.int8
    )
    return bits.to(x.dtype) * 2 - 1


def _jvp_sq_norms(fn: Encoder, xs: Tensor, vs: Tensor) -> tuple[Tensor, Tensor]:
    """Outputs and ||J v||^2 for stacked inputs ``xs`` and probes ``vs`` of shape
    (n, n_samples, ...): returns (out of shape (n, n_samples, ...), (n, n_samples))."""
    n, b = vs.shape[:2]
    # contiguous: with one sample, reshaping an expanded xs stays a view with
    # stride 0, which forward-mode AD refuses as a primal.
    primals = xs.reshape(n * b, *xs.shape[2:]).contiguous()
    out, jv = jvp(fn, (primals,), (vs.reshape(n * b, *vs.shape[2:]),))
    return out.reshape(n, b, *out.shape[1:]), jv.reshape(n, b, -1).pow(2).sum(dim=2)


def encode_with_jacobian_norm_sq(
    encoder: Encoder,
    x: Tensor,
    method: str = "auto",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Encoder output and ``||J_f(x)||_F^2`` from one shared forward pass.

    The training objective calls this so that the penalty reuses the forward
    pass: for "analytic" the extra work is elementwise, for "stochastic" with one
    probe the JVP yields the output as well.

    Returns
    -------
    h : Tensor of shape (n_samples, *code_shape), ``encoder(x)``
    norm_sq : Tensor of shape (n_samples,)
    """
    method = resolve_method(encoder, x, method)
    _check_args(x, method, n_probes)
    if method == "analytic":
        parts = as_affine_activation(encoder)
        assert parts is not None
        fwd = affine_forward(parts, x)
        return fwd.h, closed_form_norm_sq(parts, fwd)
    if method == "exact":
        jac, h = batch_jacobian_with_output(encoder, x)
        return h, jac.pow(2).sum(dim=(1, 2))
    probes = rademacher_like(x, n_probes, generator)
    xs = x.unsqueeze(0).expand(n_probes, *x.shape)
    out, sq = _jvp_sq_norms(encoder, xs, probes)
    return out[0], sq.mean(dim=0)


def jacobian_norm_sq(
    encoder: Encoder,
    x: Tensor,
    method: str = "auto",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Squared Frobenius norm of the encoder Jacobian, one value per sample.

    ``||J_f(x)||_F^2`` with ``J_f(x) = d f(x) / d x`` (Rifai et al., ICML 2011,
    eq. 2). For a dense layer ``h = act(W x + b)`` this is
    ``sum_j act'(z_j)^2 sum_i W_ji^2``.

    Parameters
    ----------
    encoder : nn.Module or callable, Tensor (n_samples, *in_shape) -> (n_samples, ...)
        The library's encoders, or any torch module such as
        ``nn.Sequential(nn.Linear(d, h), nn.Sigmoid())``. Samples must be
        processed independently.
    x : Tensor of shape (n_samples, *in_shape)
    method : {"auto", "analytic", "exact", "stochastic"}
        See :func:`resolve_method` for what "auto" picks.
    n_probes : int
        Probes of the stochastic estimate; its variance falls as 1 / n_probes.
    generator : torch.Generator, optional
        Source of the stochastic probes (on the device of ``x``).

    Returns
    -------
    Tensor of shape (n_samples,), differentiable with respect to the encoder's
    parameters.
    """
    return encode_with_jacobian_norm_sq(encoder, x, method, n_probes, generator)[1]


# --- CAE+H: Rifai, Mesnil, Vincent, Muller, Bengio, Dauphin, Glorot (ECML 2011) ------


def gaussian_like(
    x: Tensor, n: int, sigma: float, generator: torch.Generator | None
) -> Tensor:
    """``n`` draws of N(0, sigma^2 I) shaped like ``x``: (n, *x.shape)."""
    noise = torch.randn(
        (n, *x.shape), generator=generator, device=x.device, dtype=x.dtype
    )
    return noise * sigma


def higher_order_from_forward(
    parts: AffineActivation,
    fwd: AffineForward,
    x: Tensor,
    *,
    sigma: float,
    n_corruptions: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Closed-form CAE+H term given an existing forward pass ``fwd`` at ``x``.

    ``mean_k sum_u (act'(z_u) - act'(z_u^(k)))^2 ||A_u||^2`` where ``z^(k)`` is the
    pre-activation at ``x + eps_k``, eps_k ~ N(0, sigma^2 I). Shape (n_samples,).
    """
    eps = gaussian_like(x, n_corruptions, sigma, generator)
    noisy = (x.unsqueeze(0) + eps).reshape(n_corruptions * x.shape[0], *x.shape[1:])
    x_in = noisy
    for m in parts.before:
        x_in = m(x_in)
    z_eps = parts.affine(x_in)
    slope_eps = activation_derivative(parts.activation, z_eps)
    rows = squared_row_norms(parts.affine, fwd.x_in)
    diff = fwd.slope.repeat(n_corruptions, *[1] * (fwd.slope.dim() - 1)) - slope_eps
    per = (diff.pow(2) * rows).flatten(1).sum(dim=1)
    return per.reshape(n_corruptions, x.shape[0]).mean(dim=0)


def higher_order_penalty(
    encoder: Encoder,
    x: Tensor,
    *,
    sigma: float,
    n_corruptions: int = 1,
    method: str = "auto",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Higher-order contractive term of CAE+H, one value per sample.

    ``E_eps ||J_f(x) - J_f(x + eps)||_F^2`` with eps ~ N(0, sigma^2 I), estimated
    with ``n_corruptions`` draws (Rifai et al., ECML 2011, eq. 4). It penalises
    the curvature of f: how fast the Jacobian changes near x. Closed form for an
    affine layer + activation; otherwise exact Jacobians, or the unbiased
    ``||J(x) v - J(x + eps) v||^2`` with a shared Rademacher probe ``v``.

    Parameters
    ----------
    x : Tensor of shape (n_samples, *in_shape)
    sigma : float > 0, standard deviation of the corruption, in input units

    Returns
    -------
    Tensor of shape (n_samples,)
    """
    method = resolve_method(encoder, x, method)
    _check_args(x, method, n_probes)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    check_int("n_corruptions", n_corruptions)
    if method == "analytic":
        parts = as_affine_activation(encoder)
        assert parts is not None
        fwd = affine_forward(parts, x)
        return higher_order_from_forward(
            parts, fwd, x, sigma=sigma, n_corruptions=n_corruptions, generator=generator
        )
    eps = gaussian_like(x, n_corruptions, sigma, generator)
    if method == "exact":
        jac = batch_jacobian_with_output(encoder, x)[0]
        noisy = (x.unsqueeze(0) + eps).flatten(0, 1)
        jac_eps = batch_jacobian_with_output(encoder, noisy)[0]
        diff = jac.repeat(n_corruptions, 1, 1) - jac_eps
        return diff.pow(2).sum(dim=(1, 2)).reshape(n_corruptions, -1).mean(dim=0)
    # Stochastic: the same probe at x and at x + eps; one JVP over both stacks.
    k = n_corruptions * n_probes
    v = rademacher_like(x, n_probes, generator).repeat(n_corruptions, *[1] * x.dim())
    clean = x.unsqueeze(0).expand(k, *x.shape)
    noisy = (x.unsqueeze(0) + eps).repeat_interleave(n_probes, dim=0)
    n, b = 2 * k, x.shape[0]
    xs = torch.cat([clean, noisy]).reshape(n * b, *x.shape[1:])
    vs = torch.cat([v, v]).reshape(n * b, *x.shape[1:])
    _, jv = jvp(encoder, (xs,), (vs,))
    jv = jv.reshape(2, k, b, -1)
    return (jv[0] - jv[1]).pow(2).sum(dim=2).mean(dim=0)


# --- RCAE: contraction of the reconstruction (Alain & Bengio, JMLR 2014) ---------


def linear_decoder_weight(decoder: nn.Module) -> Tensor | None:
    """V of a decoder that is one affine layer with no output activation, else None."""
    parts = as_affine_activation(decoder)
    if (
        parts is None
        or parts.before
        or parts.after
        or not isinstance(parts.affine, (nn.Linear, TiedLinear))
        or not isinstance(parts.activation, nn.Identity)
    ):
        return None
    return parts.affine.weight


def dense_encoder_parts(encoder: nn.Module) -> AffineActivation | None:
    """The parts of a one-layer dense encoder (no reshapes), else None."""
    parts = as_affine_activation(encoder)
    if parts is None or parts.before or parts.after:
        return None
    return parts if isinstance(parts.affine, (nn.Linear, TiedLinear)) else None


def reconstruction_jacobian_norm_sq(
    model: nn.Module,
    x: Tensor,
    method: str = "auto",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``||d g(f(x)) / dx||_F^2``, the reconstruction-contractive (RCAE) term.

    Alain & Bengio (JMLR 2014) show the denoising AE with small Gaussian noise
    penalises this quantity. For a dense encoder ``h = act(W x + b)`` and a
    linear (or tied) decoder ``r = V h + c`` the Jacobian is ``V diag(s) W`` with
    ``s = act'(z)``, and

        ||V diag(s) W||_F^2 = s^T ((V^T V) * (W W^T)) s

    (``*`` elementwise), two H x H Gram matrices formed once per call.

    Parameters
    ----------
    model : module with ``.encoder`` and ``.decoder`` (e.g. ``Autoencoder``)
    x : Tensor of shape (n_samples, n_features)

    Returns
    -------
    Tensor of shape (n_samples,)
    """
    encoder, decoder = getattr(model, "encoder", None), getattr(model, "decoder", None)
    if not isinstance(encoder, nn.Module) or not isinstance(decoder, nn.Module):
        raise TypeError(
            f"model must have .encoder and .decoder modules, got {type(model).__name__}"
        )
    enc_parts = dense_encoder_parts(encoder)
    dec_weight = linear_decoder_weight(decoder)
    has_closed_form = enc_parts is not None and dec_weight is not None
    _check_args(x, method, n_probes)
    if method == "analytic" and not has_closed_form:
        raise ValueError(
            "method='analytic' for the reconstruction penalty needs a one-layer dense "
            "encoder and a linear or tied decoder; use 'exact' or 'stochastic'"
        )
    if has_closed_form and method in ("auto", "analytic"):
        fwd = affine_forward(enc_parts, x)
        return reconstruction_from_forward(enc_parts, dec_weight, fwd)

    def reconstruct(inputs: Tensor) -> Tensor:
        return decoder(encoder(inputs))

    return jacobian_norm_sq(reconstruct, x, method, n_probes, generator)


def reconstruction_from_forward(
    parts: AffineActivation, decoder_weight: Tensor, fwd: AffineForward
) -> Tensor:
    """Closed-form RCAE term ``s^T ((V^T V) * (W W^T)) s`` given the encoder pass.

    ``decoder_weight`` is V of shape (n_features, n_hidden). Shape (n_samples,).
    """
    w = parts.affine.weight
    gram = (decoder_weight.t() @ decoder_weight) * (w @ w.t())  # (H, H)
    s = fwd.slope
    return ((s @ gram) * s).sum(dim=1)
