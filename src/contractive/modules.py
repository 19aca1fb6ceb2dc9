"""Torch building blocks: dense layers, encoders, decoders and the ``Autoencoder``.

No loss lives here (see ``contractive.objective``). Layers are built from torch's
own ``nn.Linear`` and activation modules chained in ``nn.Sequential``
subclasses, so the penalties recognise them exactly like a user's
``nn.Sequential(nn.Linear(d, h), nn.Sigmoid())`` (see
``contractive.penalties.as_affine_activation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from contractive.penalties import TiedLinear

ACTIVATIONS = (
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "softplus",
    "elu",
    "gelu",
    "silu",
    "identity",
)
DECODERS = ("linear", "sigmoid", "tied", "tied-sigmoid")


def make_activation(name: str) -> nn.Module:
    """The torch module for an activation name in ``ACTIVATIONS``."""
    factories = {
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "leaky_relu": lambda: nn.LeakyReLU(0.01),
        "softplus": nn.Softplus,
        "elu": nn.ELU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "identity": nn.Identity,
    }
    if name not in factories:
        raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")
    return factories[name]()


class DenseLayer(nn.Sequential):
    """``h = act(W x + b)``: an ``nn.Linear`` followed by an elementwise activation.

    Its contractive penalty has the closed form
    ``sum_j act'(z_j)^2 ||W_j||^2`` (``contractive.penalties``).

    Shape
    -----
    Input (n_samples, in_features), output (n_samples, out_features).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str = "sigmoid",
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        _check_size("in_features", in_features)
        _check_size("out_features", out_features)
        super().__init__(
            nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype),
            make_activation(activation),
        )

    @property
    def linear(self) -> nn.Linear:
        return self[0]

    @property
    def activation(self) -> nn.Module:
        return self[1]


class DenseEncoder(nn.Sequential):
    """A stack of ``DenseLayer``; one layer is the classic CAE encoder.

    Shape
    -----
    Input (n_samples, n_features), output (n_samples, hidden_sizes[-1]).
    """

    def __init__(
        self,
        n_features: int,
        hidden_sizes: Sequence[int],
        activation: str = "sigmoid",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        sizes = [n_features, *hidden_sizes]
        if len(sizes) < 2:
            raise ValueError("hidden_sizes must name at least one layer size")
        super().__init__(
            *(
                DenseLayer(a, b, activation, device=device, dtype=dtype)
                for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            )
        )


class DenseDecoder(nn.Sequential):
    """Mirror of a ``DenseEncoder``: hidden dense layers, then the output layer.

    ``kind`` sets the output layer: "linear" (``r = V h + c``), "sigmoid"
    (``r = sigmoid(V h + c)``, outputs in (0, 1), pairs with the cross-entropy
    loss), "tied" and "tied-sigmoid" (``V = W^T`` of the mirrored encoder layer,
    as in Rifai et al. 2011; every layer of the decoder is tied).

    Shape
    -----
    Input (n_samples, hidden_sizes[-1]), output (n_samples, n_features).
    """

    def __init__(
        self,
        encoder: DenseEncoder,
        kind: str = "linear",
        activation: str = "sigmoid",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if kind not in DECODERS:
            raise ValueError(f"unknown decoder {kind!r}; expected one of {DECODERS}")
        tied = kind.startswith("tied")
        layers: list[nn.Module] = []
        for i, enc_layer in enumerate(reversed(list(encoder))):
            linear = enc_layer.linear
            if tied:
                affine: nn.Module = TiedLinear(linear)
            else:
                affine = nn.Linear(
                    linear.out_features, linear.in_features, device=device, dtype=dtype
                )
            last = i == len(encoder) - 1
            if last:
                act = nn.Sigmoid() if kind.endswith("sigmoid") else nn.Identity()
            else:
                act = make_activation(activation)
            layers.append(nn.Sequential(affine, act))
        super().__init__(*layers)


def _check_size(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class Autoencoder(nn.Module):
    """Encoder ``f`` and decoder ``g``; ``forward(x) = g(f(x))``.

    Parameters
    ----------
    encoder : nn.Module, (n_samples, *in_shape) -> (n_samples, *code_shape)
    decoder : nn.Module, (n_samples, *code_shape) -> (n_samples, *in_shape)
    architecture : dict, optional
        JSON-serialisable description that ``Autoencoder.from_architecture``
        rebuilds the model from (set by the builders below).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        architecture: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.architecture = architecture

    @classmethod
    def dense(
        cls,
        n_features: int,
        hidden_sizes: int | Sequence[int],
        *,
        activation: str = "sigmoid",
        decoder: str = "linear",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Autoencoder:
        """A dense autoencoder ``n_features -> hidden_sizes... -> n_features``.

        Parameters
        ----------
        n_features : int, input size D
        hidden_sizes : int or sequence of int, the encoder's layer sizes (H, ...)
        activation : str, one of ``ACTIVATIONS``, used by every hidden layer
        decoder : str, one of ``DECODERS``
        """
        _check_size("n_features", n_features)
        sizes = [hidden_sizes] if isinstance(hidden_sizes, int) else list(hidden_sizes)
        for s in sizes:
            _check_size("hidden size", s)
        enc = DenseEncoder(n_features, sizes, activation, device=device, dtype=dtype)
        dec = DenseDecoder(enc, decoder, activation, device=device, dtype=dtype)
        arch = {
            "type": "dense",
            "n_features": n_features,
            "hidden_sizes": sizes,
            "activation": activation,
            "decoder": decoder,
        }
        return cls(enc, dec, architecture=arch)

    @classmethod
    def from_architecture(
        cls,
        architecture: dict[str, Any],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Autoencoder:
        """Rebuild an (untrained) model from its ``architecture`` dict."""
        arch = dict(architecture)
        kind = arch.pop("type", None)
        if kind == "dense":
            return cls.dense(
                arch["n_features"],
                arch["hidden_sizes"],
                activation=arch["activation"],
                decoder=arch["decoder"],
                device=device,
                dtype=dtype,
            )
        raise ValueError(f"unknown architecture type {kind!r}")

    def encode(self, x: Tensor) -> Tensor:
        """Codes ``h = f(x)``, Tensor of shape (n_samples, *code_shape)."""
        return self.encoder(x)

    def decode(self, h: Tensor) -> Tensor:
        """Reconstruction ``r = g(h)``, Tensor of shape (n_samples, *in_shape)."""
        return self.decoder(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    @property
    def outputs_probabilities(self) -> bool:
        """True when the decoder ends in a sigmoid (outputs in (0, 1))."""
        return split_sigmoid_output(self.decoder)[1]


def split_sigmoid_output(decoder: nn.Module) -> tuple[nn.Module, bool]:
    """Split a trailing ``nn.Sigmoid`` off a decoder.

    Returns ``(logits_module, True)`` when the decoder's last leaf is a sigmoid,
    so that the cross-entropy can be computed from logits, else ``(decoder, False)``.
    """
    if isinstance(decoder, nn.Sequential) and len(decoder) > 0:
        *head, last = list(decoder)
        if isinstance(last, nn.Sigmoid):
            return nn.Sequential(*head), True
        inner, found = split_sigmoid_output(last)
        if found:
            return nn.Sequential(*head, inner), True
    return decoder, False
