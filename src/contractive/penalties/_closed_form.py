"""Closed-form Jacobian norms for an affine layer followed by an elementwise activation.

This module is the one place that says which layer types have a closed-form
penalty. For ``h = act(z)`` with ``z = A(x)`` affine (a dense or convolutional
layer), the Jacobian is ``J = diag(act'(z)) A`` and its row for unit ``u`` is
``act'(z_u)`` times row ``u`` of ``A``. Hence

    ||J||_F^2 = sum_u act'(z_u)^2 ||A_u||^2,

which needs ``act'`` elementwise and the squared row norms of ``A`` once per step
(Rifai et al., ICML 2011, eq. 5 for the sigmoid).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Modules that only reshape; they leave the Frobenius norm unchanged.
_RESHAPES = (nn.Flatten, nn.Unflatten)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_FNS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


class TiedLinear(nn.Module):
    """Affine map ``y = x W^T_src + b`` whose weight is the transpose of another
    ``nn.Linear``'s (the tied decoder of Rifai et al., 2011).

    Parameters
    ----------
    source : nn.Linear with weight of shape (out_features_src, in_features_src)
        Shares its weight; this layer maps out_features_src -> in_features_src.

    Shape
    -----
    Input (n_samples, source.out_features), output (n_samples, source.in_features).
    """

    def __init__(self, source: nn.Linear, *, bias: bool = True) -> None:
        super().__init__()
        # A plain attribute list keeps the source out of this module's children,
        # so its weight is counted once in parameters() and state_dict().
        self._source = [source]
        w = source.weight
        self.bias = (
            nn.Parameter(torch.zeros(w.shape[1], device=w.device, dtype=w.dtype))
            if bias
            else None
        )

    @property
    def weight(self) -> Tensor:
        """Tensor of shape (source.in_features, source.out_features)."""
        return self._source[0].weight.t()

    @property
    def in_features(self) -> int:
        return self._source[0].out_features

    @property
    def out_features(self) -> int:
        return self._source[0].in_features

    def forward(self, h: Tensor) -> Tensor:
        return F.linear(h, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, tied=True"
        )


AFFINE_TYPES = (nn.Linear, TiedLinear, *_CONVS)


# --- derivatives of the supported elementwise activations --------------------------
# Each takes (module, z, h) with h = module(z) and returns act'(z), elementwise.


def _softplus_derivative(m: nn.Softplus, z: Tensor, h: Tensor) -> Tensor:
    # torch reverts to the identity where beta * z > threshold.
    return torch.where(
        z * m.beta > m.threshold, torch.ones_like(z), torch.sigmoid(m.beta * z)
    )


def _gelu_derivative(m: nn.GELU, z: Tensor, h: Tensor) -> Tensor:
    if m.approximate == "tanh":
        k = math.sqrt(2.0 / math.pi)
        u = k * (z + 0.044715 * z**3)
        t = torch.tanh(u)
        return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t**2) * k * (
            1.0 + 3 * 0.044715 * z**2
        )
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    return cdf + z * pdf


def _silu_derivative(m: nn.SiLU, z: Tensor, h: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


ACTIVATION_DERIVATIVES: dict[
    type[nn.Module], Callable[[nn.Module, Tensor, Tensor], Tensor]
] = {
    nn.Identity: lambda m, z, h: torch.ones_like(z),
    nn.Sigmoid: lambda m, z, h: h * (1.0 - h),
    nn.Tanh: lambda m, z, h: 1.0 - h**2,
    nn.ReLU: lambda m, z, h: (z > 0).to(z.dtype),
    nn.LeakyReLU: lambda m, z, h: torch.where(
        z > 0, torch.ones_like(z), torch.full_like(z, m.negative_slope)
    ),
    nn.ELU: lambda m, z, h: torch.where(z > 0, torch.ones_like(z), h + m.alpha),
    nn.Softplus: _softplus_derivative,
    nn.GELU: _gelu_derivative,
    nn.SiLU: _silu_derivative,
}


def activation_derivative(
    activation: nn.Module, z: Tensor, h: Tensor | None = None
) -> Tensor:
    """``act'(z)`` elementwise for a supported activation module.

    Parameters
    ----------
    activation : one of the modules in ``ACTIVATION_DERIVATIVES``
    z : Tensor of any shape, the pre-activation
    h : Tensor of the same shape, ``activation(z)`` if already computed

    Returns
    -------
    Tensor of the shape of ``z``, differentiable with respect to ``z``.
    """
    derivative = ACTIVATION_DERIVATIVES.get(type(activation))
    if derivative is None:
        supported = ", ".join(t.__name__ for t in ACTIVATION_DERIVATIVES)
        raise TypeError(
            f"no closed-form derivative for activation {type(activation).__name__}; "
            f"supported: {supported}"
        )
    return derivative(activation, z, activation(z) if h is None else h)


def squared_row_norms(affine: nn.Module, x: Tensor) -> Tensor:
    """Squared norm of each row of the affine map's matrix, shaped like its output.

    For ``nn.Linear`` row ``j`` is ``W_j`` and the result is ``sum_i W_ji^2``, shape
    (out_features,). For a convolution the row of output unit (c, p) holds kernel
    c's weights that land inside the (zero-padded) input, so the norms are
    ``conv(ones_like(x), W**2)`` with the layer's stride, padding, dilation and
    groups, shape (1, out_channels, *spatial_out) (identical for every sample).
    """
    if isinstance(affine, (nn.Linear, TiedLinear)):
        return affine.weight.pow(2).sum(dim=1)
    if isinstance(affine, _CONVS):
        conv = _CONV_FNS[type(affine)]
        ones = torch.ones_like(x[:1])
        return conv(
            ones,
            affine.weight.pow(2),
            None,
            affine.stride,
            affine.padding,
            affine.dilation,
            affine.groups,
        )
    raise TypeError(
        f"{type(affine).__name__} is not an affine layer with a closed form"
    )


def _leaves(module: nn.Module) -> list[nn.Module]:
    # Only containers whose forward is Sequential's own chain their children.
    if (
        isinstance(module, nn.Sequential)
        and type(module).forward is nn.Sequential.forward
    ):
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


@dataclass(frozen=True)
class AffineActivation:
    """An encoder recognised as reshapes, one affine layer, reshapes, an activation,
    reshapes: the shape that has a closed-form Jacobian norm."""

    before: tuple[nn.Module, ...]
    affine: nn.Module
    activation: nn.Module
    after: tuple[nn.Module, ...]


def as_affine_activation(encoder: object) -> AffineActivation | None:
    """Recognise an encoder with a closed-form penalty, or return None.

    Accepted: an affine layer (``nn.Linear``, ``TiedLinear``, ``nn.Conv1d/2d/3d``
    with zero padding) alone or followed by one supported elementwise activation,
    possibly nested in ``nn.Sequential`` containers and surrounded by
    ``nn.Flatten``/``nn.Unflatten``.
    """
    if not isinstance(encoder, nn.Module):
        return None
    leaves = _leaves(encoder)
    core = [i for i, m in enumerate(leaves) if not isinstance(m, _RESHAPES)]
    if not 1 <= len(core) <= 2:
        return None
    affine = leaves[core[0]]
    if not isinstance(affine, AFFINE_TYPES):
        return None
    if isinstance(affine, _CONVS) and affine.padding_mode != "zeros":
        return None  # reflect/circular padding folds several taps onto one input
    if len(core) == 2:
        activation = leaves[core[1]]
        if type(activation) not in ACTIVATION_DERIVATIVES:
            return None
        middle = leaves[core[0] + 1 : core[1]]
        after = leaves[core[1] + 1 :]
    else:
        activation, middle, after = nn.Identity(), leaves[core[0] + 1 :], []
    return AffineActivation(
        before=tuple(leaves[: core[0]]),
        affine=affine,
        activation=activation,
        after=tuple(middle) + tuple(after),
    )


def _run(modules: tuple[nn.Module, ...], x: Tensor) -> Tensor:
    for m in modules:
        x = m(x)
    return x


@dataclass(frozen=True)
class AffineForward:
    """One forward pass through an ``AffineActivation``, keeping what penalties reuse.

    Attributes
    ----------
    x_in : Tensor, the input of the affine layer (after leading reshapes)
    z : Tensor, the pre-activation, shape (n_samples, *unit_shape)
    slope : Tensor of the shape of ``z``, ``act'(z)``
    h : Tensor, the encoder output after trailing reshapes
    """

    x_in: Tensor
    z: Tensor
    slope: Tensor
    h: Tensor


def affine_forward(parts: AffineActivation, x: Tensor) -> AffineForward:
    """Run the encoder once and keep ``z`` and ``act'(z)``."""
    x_in = _run(parts.before, x)
    z = parts.affine(x_in)
    h_units = parts.activation(z)
    slope = activation_derivative(parts.activation, z, h_units)
    return AffineForward(x_in=x_in, z=z, slope=slope, h=_run(parts.after, h_units))


def closed_form_norm_sq(parts: AffineActivation, fwd: AffineForward) -> Tensor:
    """``sum_u act'(z_u)^2 ||A_u||^2`` per sample, Tensor of shape (n_samples,)."""
    rows = squared_row_norms(parts.affine, fwd.x_in)
    # (n_samples, n_units) @ (n_units,): one fused reduction, no (B, H) temporary.
    return fwd.slope.pow(2).flatten(1) @ rows.reshape(-1)
