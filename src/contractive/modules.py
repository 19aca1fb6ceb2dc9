"""Torch building blocks: dense layers, encoders, decoders and the ``Autoencoder``.

No loss lives here (see ``contractive.objective``). Layers are built from torch's
own ``nn.Linear`` and activation modules chained in ``nn.Sequential``
subclasses, so the penalties recognise them exactly like a user's
``nn.Sequential(nn.Linear(d, h), nn.Sigmoid())`` (see
``contractive.penalties.as_affine_activation``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from contractive._validation import check_int
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


class _Chain(nn.Sequential):
    """``nn.Sequential`` whose slices are plain ``nn.Sequential``.

    torch rebuilds a slice as ``type(self)(OrderedDict)``, which subclasses with
    their own constructor cannot take; ``encoder[:k]`` (the first k layers) must
    work for users reading intermediate codes.
    """

    def __getitem__(self, idx: int | slice) -> nn.Module:
        if isinstance(idx, slice):
            return nn.Sequential(*list(self)[idx])
        return super().__getitem__(idx)


class DenseLayer(_Chain):
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
        check_int("in_features", in_features)
        check_int("out_features", out_features)
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


class DenseEncoder(_Chain):
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


class DenseDecoder(_Chain):
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
        check_int("n_features", n_features)
        sizes = [hidden_sizes] if isinstance(hidden_sizes, int) else list(hidden_sizes)
        for s in sizes:
            check_int("hidden size", s)
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
    def conv(
        cls,
        input_shape: Sequence[int],
        channels: int = 32,
        kernel_size: int | Sequence[int] = 5,
        *,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        activation: str = "sigmoid",
        decoder: str = "linear",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Autoencoder:
        """A convolutional autoencoder on flat input of ``prod(input_shape)`` features.

        Encoder ``ConvEncoder`` (one convolution + ``activation``, closed-form
        penalty), decoder ``ConvDecoder`` (the transposed convolution back to
        ``input_shape``, kind one of ``DECODERS``). E.g. MNIST:
        ``Autoencoder.conv((1, 28, 28), 32, 5, stride=2, padding=2)``.

        Parameters
        ----------
        input_shape : sequence of int, (in_channels, *spatial), 1 to 3 spatial dims
        channels, kernel_size, stride, padding, dilation, groups, activation
            See :class:`ConvEncoder`.
        decoder : str, one of ``DECODERS``
        """
        enc = ConvEncoder(
            input_shape,
            channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            activation=activation,
            device=device,
            dtype=dtype,
        )
        dec = ConvDecoder(enc, decoder, device=device, dtype=dtype)
        arch = {
            "type": "conv",
            "input_shape": list(enc.input_shape),
            "channels": channels,
            "kernel_size": _jsonable(kernel_size),
            "stride": _jsonable(stride),
            "padding": _jsonable(padding),
            "dilation": _jsonable(dilation),
            "groups": groups,
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
        if kind == "conv":
            return cls.conv(
                arch["input_shape"],
                arch["channels"],
                arch["kernel_size"],
                stride=arch["stride"],
                padding=arch["padding"],
                dilation=arch["dilation"],
                groups=arch["groups"],
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
    def n_features(self) -> int:
        """Input features per sample (flattened), from ``architecture``."""
        if self.architecture is None:
            raise ValueError("this Autoencoder has no architecture record")
        if self.architecture["type"] == "conv":
            return math.prod(self.architecture["input_shape"])
        return int(self.architecture["n_features"])

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


# --- convolutional encoder and transposed-convolution decoder -----------------------

_CONV_BY_DIM = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE_BY_DIM = {
    1: nn.ConvTranspose1d,
    2: nn.ConvTranspose2d,
    3: nn.ConvTranspose3d,
}
_CONV_TRANSPOSE_FNS = {
    1: torch.nn.functional.conv_transpose1d,
    2: torch.nn.functional.conv_transpose2d,
    3: torch.nn.functional.conv_transpose3d,
}
PADDING_MODES = ("same", "valid")


def _per_dim(
    name: str, value: int | Sequence[int], n: int, minimum: int
) -> tuple[int, ...]:
    """An int or a length-``n`` sequence of ints >= ``minimum``, as a tuple."""
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) != n or any(
        isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values
    ):
        raise ValueError(
            f"{name} must be an int >= {minimum} or {n} of them, got {value!r}"
        )
    return values


def conv_output_shape(
    input_shape: Sequence[int],
    channels: int,
    kernel_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
) -> tuple[int, ...]:
    """Shape (channels, *spatial_out) of a convolution of one (C, *spatial) input.

    ``spatial_out = floor((n + 2 p - d (k - 1) - 1) / s) + 1`` per dimension, the
    input size for ``padding="same"`` and ``p = 0`` for ``"valid"``.
    """
    spatial = tuple(input_shape[1:])
    n = len(spatial)
    k = _per_dim("kernel_size", kernel_size, n, 1)
    s = _per_dim("stride", stride, n, 1)
    d = _per_dim("dilation", dilation, n, 1)
    if padding == "same":
        return (channels, *spatial)
    p = (0,) * n if padding == "valid" else _per_dim("padding", padding, n, 0)
    out = tuple(
        (size + 2 * pi - di * (ki - 1) - 1) // si + 1
        for size, pi, di, ki, si in zip(spatial, p, d, k, s, strict=True)
    )
    return (channels, *out)


def _transpose_padding(
    encoder_conv: nn.Module, spatial_in: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Padding and output_padding of the transposed convolution that maps the
    encoder's output back to exactly ``spatial_in``.

    With int padding ``p`` the encoder drops the last
    ``r = (n + 2 p - d (k - 1) - 1) mod s < s`` padded positions, which
    ``output_padding = r`` restores. "same" (stride 1) pads ``d (k - 1)`` in
    total, split evenly only when that is even.
    """
    k, s, d = encoder_conv.kernel_size, encoder_conv.stride, encoder_conv.dilation
    if isinstance(encoder_conv.padding, str):
        if encoder_conv.padding == "valid":
            p = (0,) * len(k)
        else:  # "same": stride 1, output size = input size
            totals = [di * (ki - 1) for di, ki in zip(d, k, strict=True)]
            if any(t % 2 for t in totals):
                raise ValueError(
                    "a transposed-convolution decoder cannot mirror padding='same' "
                    f"with kernel_size={k} and dilation={d} (odd total padding, "
                    "applied asymmetrically); use an odd kernel_size or int padding"
                )
            return tuple(t // 2 for t in totals), (0,) * len(k)
    else:
        p = encoder_conv.padding
    out_pad = tuple(
        (n + 2 * pi - di * (ki - 1) - 1) % si
        for n, pi, di, ki, si in zip(spatial_in, p, d, k, s, strict=True)
    )
    return tuple(p), out_pad


class ConvEncoder(_Chain):
    """``h = act(conv(x))``: one convolution followed by an elementwise activation.

    Flat input of shape (n_samples, prod(input_shape)) is unflattened to
    (n_samples, *input_shape) and the code flattened back, so the encoder drops
    into everything that takes (n_samples, n_features). The dimension (Conv1d,
    Conv2d, Conv3d) follows ``len(input_shape) - 1``. Its contractive penalty has
    the closed form ``sum_u act'(z_u)^2 ||A_u||^2`` where ``||A_u||^2`` is the
    squared norm of the kernel weights that touch the input at output unit u,
    ``conv(ones, W**2)`` with the layer's stride, padding, dilation and groups
    (``contractive.penalties.squared_row_norms``).

    Parameters
    ----------
    input_shape : sequence of int, (in_channels, *spatial), e.g. (1, 28, 28)
    channels : int, out_channels of the convolution
    kernel_size, stride, dilation : int or sequence of int (one per spatial dim)
    padding : int, sequence of int, "same" (stride 1 only) or "valid"; zeros
    groups : int, dividing both in_channels and channels
    activation : str, one of ``ACTIVATIONS``
    bias : bool
    flatten_input, flatten_output : bool
        Take flat input / return flat codes (default), or keep the image shape.

    Shape
    -----
    Input (n_samples, prod(input_shape)) (or (n_samples, *input_shape)), output
    (n_samples, prod(output_shape)) (or (n_samples, *output_shape)), with
    ``output_shape = (channels, *spatial_out)`` from :func:`conv_output_shape`.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: int,
        kernel_size: int | Sequence[int] = 5,
        *,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        activation: str = "sigmoid",
        bias: bool = True,
        flatten_input: bool = True,
        flatten_output: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = tuple(input_shape)
        if not 2 <= len(shape) <= 4:
            raise ValueError(
                "input_shape must be (channels, *spatial) with 1 to 3 spatial "
                f"dimensions, got {input_shape!r}"
            )
        for size in shape:
            check_int("input_shape entry", size)
        check_int("channels", channels)
        check_int("groups", groups)
        if shape[0] % groups or channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={shape[0]} and "
                f"channels={channels}"
            )
        if isinstance(padding, str):
            if padding not in PADDING_MODES:
                raise ValueError(
                    f"padding must be an int, ints, or one of {PADDING_MODES}, "
                    f"got {padding!r}"
                )
            n_spatial = len(shape) - 1
            if padding == "same" and _per_dim("stride", stride, n_spatial, 1) != (
                (1,) * n_spatial
            ):
                raise ValueError(f"padding='same' needs stride 1, got {stride!r}")
        out_shape = conv_output_shape(
            shape,
            channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
        )
        if min(out_shape[1:]) < 1:
            raise ValueError(
                f"kernel_size={kernel_size!r} with dilation={dilation!r} and "
                f"padding={padding!r} does not fit input_shape={shape}"
            )
        conv = _CONV_BY_DIM[len(shape) - 1](
            shape[0],
            channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        layers: list[nn.Module] = []
        if flatten_input:
            layers.append(nn.Unflatten(1, shape))
        layers += [conv, make_activation(activation)]
        if flatten_output:
            layers.append(nn.Flatten(1))
        super().__init__(*layers)
        self.input_shape = shape
        self.output_shape = out_shape
        self.flatten_input = flatten_input
        self.flatten_output = flatten_output

    @property
    def conv(self) -> nn.Module:
        """The convolution (``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d``)."""
        return next(m for m in self if isinstance(m, tuple(_CONV_BY_DIM.values())))

    @property
    def activation(self) -> nn.Module:
        return self[list(self).index(self.conv) + 1]

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, output_shape={self.output_shape}"


class TiedConvTranspose(nn.Module):
    """Transposed convolution sharing the weight of an encoder's convolution: the
    adjoint of its linear part, plus a bias (the tied decoder of a conv CAE).

    Parameters
    ----------
    source : nn.Conv1d, nn.Conv2d or nn.Conv3d
    padding, output_padding : tuple of int, see :class:`ConvDecoder`

    Shape
    -----
    Input (n_samples, source.out_channels, *spatial_out), output
    (n_samples, source.in_channels, *spatial_in).
    """

    def __init__(
        self,
        source: nn.Module,
        padding: tuple[int, ...],
        output_padding: tuple[int, ...],
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        # Outside the children (as in TiedLinear): the weight is counted once.
        self._source = [source]
        self.padding = padding
        self.output_padding = output_padding
        w = source.weight
        self.bias = (
            nn.Parameter(
                torch.zeros(source.in_channels, device=w.device, dtype=w.dtype)
            )
            if bias
            else None
        )

    @property
    def weight(self) -> Tensor:
        """The source's weight, (out_channels_src, in_channels_src / groups, *k)."""
        return self._source[0].weight

    def forward(self, h: Tensor) -> Tensor:
        src = self._source[0]
        return _CONV_TRANSPOSE_FNS[len(src.kernel_size)](
            h,
            src.weight,
            self.bias,
            src.stride,
            self.padding,
            self.output_padding,
            src.groups,
            src.dilation,
        )

    def extra_repr(self) -> str:
        src = self._source[0]
        return (
            f"{src.out_channels}, {src.in_channels}, kernel_size={src.kernel_size}, "
            f"stride={src.stride}, padding={self.padding}, "
            f"output_padding={self.output_padding}, tied=True"
        )


class ConvDecoder(_Chain):
    """Mirror of a ``ConvEncoder``: one transposed convolution back to the input.

    Same kernel, stride, padding, dilation and groups as the encoder, with
    ``output_padding`` chosen so that the output has exactly the encoder's input
    shape. ``kind`` as for ``DenseDecoder``: "linear", "sigmoid" (outputs in
    (0, 1)), "tied" and "tied-sigmoid" (the transposed convolution uses the
    encoder's kernel, :class:`TiedConvTranspose`).

    Shape
    -----
    Input: the encoder's output; output: the encoder's input (flat when the
    encoder takes flat input).
    """

    def __init__(
        self,
        encoder: ConvEncoder,
        kind: str = "linear",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if kind not in DECODERS:
            raise ValueError(f"unknown decoder {kind!r}; expected one of {DECODERS}")
        conv = encoder.conv
        n_dim = len(conv.kernel_size)
        padding, output_padding = _transpose_padding(conv, encoder.input_shape[1:])
        if kind.startswith("tied"):
            up: nn.Module = TiedConvTranspose(conv, padding, output_padding)
        else:
            up = _CONV_TRANSPOSE_BY_DIM[n_dim](
                conv.out_channels,
                conv.in_channels,
                conv.kernel_size,
                stride=conv.stride,
                padding=padding,
                output_padding=output_padding,
                groups=conv.groups,
                dilation=conv.dilation,
                device=device,
                dtype=dtype,
            )
        layers: list[nn.Module] = []
        if encoder.flatten_output:
            layers.append(nn.Unflatten(1, encoder.output_shape))
        layers.append(up)
        if encoder.flatten_input:
            layers.append(nn.Flatten(1))
        # Last, so that split_sigmoid_output finds it (BCE from logits).
        layers.append(nn.Sigmoid() if kind.endswith("sigmoid") else nn.Identity())
        super().__init__(*layers)
        self.output_shape = encoder.input_shape

    def extra_repr(self) -> str:
        return f"output_shape={self.output_shape}"


def _jsonable(value: int | str | Sequence[int]) -> int | str | list[int]:
    """An int or str unchanged, a sequence of ints as a list (for JSON)."""
    return value if isinstance(value, (int, str)) else list(value)
