"""The training objective: reconstruction + lambda * penalties (+ input corruption).

One object turns (model, batch) into a loss and its named parts, reusing the
encoder's forward pass for every closed-form penalty.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from contractive._validation import check_int
from contractive.modules import Autoencoder, split_sigmoid_output
from contractive.penalties import (
    CORRUPTIONS,
    METHODS,
    AffineActivation,
    AffineForward,
    activation_derivative,
    affine_forward,
    as_affine_activation,
    closed_form_norm_sq,
    corrupt,
    dense_encoder_parts,
    encode_with_jacobian_norm_sq,
    higher_order_from_forward,
    higher_order_penalty,
    linear_decoder_weight,
    reconstruction_from_forward,
    reconstruction_jacobian_norm_sq,
)

LOSSES = ("mse", "bce")


@dataclass(frozen=True)
class Objective:
    """Loss of an autoencoder on a batch, reduced as in Rifai et al. (ICML 2011).

    Per sample, with ``x~`` the (optionally corrupted) input and ``h = f(x~)``::

        L(x) = sum_i loss(g(h)_i, x_i)                      reconstruction
             + contraction * ||J_f(x~)||_F^2                CAE
             + higher_order * E_eps ||J_f(x~) - J_f(x~ + eps)||_F^2   CAE+H
             + reconstruction_contraction * ||J_{g o f}(x~)||_F^2    RCAE

    and the objective is the mean of ``L`` over the batch. The reconstruction is
    summed over features (not averaged), so ``contraction`` (lambda) weighs the
    whole Jacobian norm against the whole reconstruction error of a sample, as in
    the paper; it does not change meaning with the number of hidden units. Its
    scale does depend on the input's: scaling x by ``c`` scales the squared error
    by ``c^2`` and ``||J||^2`` by ``1 / c^2``.

    Parameters
    ----------
    loss : {"mse", "bce"}
        Squared error, or binary cross-entropy for data in [0, 1] (needs a decoder
        ending in a sigmoid; computed from its logits).
    contraction : float >= 0, lambda, weight of ``||J_f||_F^2``
    higher_order : float >= 0, gamma, weight of the CAE+H term
    higher_order_sigma : float > 0, std of the CAE+H corruption, input units
    n_corruptions : int >= 1, draws of eps per sample for CAE+H
    reconstruction_contraction : float >= 0, weight of the RCAE term
    corruption : {None, "gaussian", "masking", "salt_and_pepper"}
        Denoising: encode a corrupted input, reconstruct the clean one. The
        penalties are taken at the corrupted input, which the encoder sees.
    corruption_level : float, std (gaussian) or fraction of entries (others)
    jacobian_method : {"auto", "analytic", "exact", "stochastic"}
    n_probes : int >= 1, probes of the stochastic estimate

    Mixed precision: under ``torch.autocast`` (bf16/fp16 training on CUDA) the
    penalties stay in float32. The closed-form terms reuse the encoder's
    pre-activation ``z`` (from the low-precision matmul), cast to float32, and
    recompute ``act'(z)``, the row norms and their products in float32; the
    generic (exact or stochastic Jacobian) paths run the encoder and its
    Jacobian entirely in float32. The decoder and reconstruction follow autocast.
    """

    loss: str = "mse"
    contraction: float = 0.0
    higher_order: float = 0.0
    higher_order_sigma: float = 0.1
    n_corruptions: int = 1
    reconstruction_contraction: float = 0.0
    corruption: str | None = None
    corruption_level: float = 0.0
    jacobian_method: str = "auto"
    n_probes: int = 1

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {LOSSES}")
        for name in ("contraction", "higher_order", "reconstruction_contraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not self.higher_order_sigma > 0:
            raise ValueError(
                f"higher_order_sigma must be positive, got {self.higher_order_sigma!r}"
            )
        check_int("n_corruptions", self.n_corruptions)
        check_int("n_probes", self.n_probes)
        if self.corruption is not None and self.corruption not in CORRUPTIONS:
            raise ValueError(
                f"unknown corruption {self.corruption!r}; expected None or one of "
                f"{CORRUPTIONS}"
            )
        if self.corruption is not None and not self.corruption_level > 0:
            raise ValueError(
                f"corruption_level must be positive, got {self.corruption_level!r}"
            )
        if (
            self.corruption in ("masking", "salt_and_pepper")
            and self.corruption_level >= 1
        ):
            raise ValueError(
                f"corruption_level is a fraction of entries for {self.corruption}; "
                f"got {self.corruption_level!r}"
            )
        if self.jacobian_method not in METHODS:
            raise ValueError(
                f"unknown jacobian_method {self.jacobian_method!r}; "
                f"expected one of {METHODS}"
            )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Objective:
        """The objective of a model family: one of ``PRESETS``, with overrides.

        "ae" plain; "dae" Gaussian corruption; "cae" contraction; "cae-h"
        contraction + higher order; "rcae" contraction of the reconstruction.
        """
        if name not in PRESETS:
            raise ValueError(
                f"unknown model preset {name!r}; expected one of {tuple(PRESETS)}"
            )
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __call__(
        self,
        model: Autoencoder,
        x: Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Loss and its parts on a batch.

        Parameters
        ----------
        model : Autoencoder (any module with ``.encoder`` and ``.decoder``)
        x : Tensor of shape (n_samples, *in_shape), the clean batch
        generator : torch.Generator, optional, for corruption and probes

        Returns
        -------
        dict of scalar Tensors: "loss" (to minimise), "reconstruction" (mean over
        samples of the per-sample sum), and the mean of each active penalty,
        unweighted: "contraction" (``||J_f||_F^2``), "higher_order",
        "reconstruction_contraction".
        """
        x_in = x
        if self.corruption is not None:
            x_in = corrupt(x, self.corruption, self.corruption_level, generator)
        h, per_sample = self._encode_with_penalties(model, x_in, generator)
        recon = self._reconstruction(model, h, x)
        total = recon
        terms = {"reconstruction": recon.mean()}
        weights = {
            "contraction": self.contraction,
            "higher_order": self.higher_order,
            "reconstruction_contraction": self.reconstruction_contraction,
        }
        for name, value in per_sample.items():
            total = total + weights[name] * value
            terms[name] = value.mean()
        return {"loss": total.mean(), **terms}

    def _encode_with_penalties(
        self, model: Autoencoder, x: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        encoder, method = model.encoder, self.jacobian_method
        penalties: dict[str, Tensor] = {}
        parts = (
            as_affine_activation(encoder) if method in ("auto", "analytic") else None
        )
        low_precision = _autocast_enabled(x.device.type)
        fwd = None
        if parts is not None:
            # One forward pass; every closed-form term reuses z and act'(z).
            fwd = affine_forward(parts, x)
            h = fwd.h
            if low_precision:
                fwd = _float32_forward(parts, fwd)
        x32 = x.float() if low_precision else x
        if parts is None and self.contraction > 0:
            with _float32(x.device.type, low_precision):
                h, penalties["contraction"] = encode_with_jacobian_norm_sq(
                    encoder, x32, method, self.n_probes, generator
                )
        elif parts is None:
            h = encoder(x)
        with _float32(x.device.type, low_precision):
            penalties.update(self._more_penalties(model, parts, fwd, x32, generator))
        return h, penalties

    def _more_penalties(
        self,
        model: Autoencoder,
        parts: AffineActivation | None,
        fwd: AffineForward | None,
        x: Tensor,
        generator: torch.Generator | None,
    ) -> dict[str, Tensor]:
        """The penalties ``_encode_with_penalties`` has not computed yet."""
        encoder, method = model.encoder, self.jacobian_method
        penalties: dict[str, Tensor] = {}
        if fwd is not None and self.contraction > 0:
            penalties["contraction"] = closed_form_norm_sq(parts, fwd)
        if self.higher_order > 0:
            if fwd is not None:
                penalties["higher_order"] = higher_order_from_forward(
                    parts,
                    fwd,
                    x,
                    sigma=self.higher_order_sigma,
                    n_corruptions=self.n_corruptions,
                    generator=generator,
                )
            else:
                penalties["higher_order"] = higher_order_penalty(
                    encoder,
                    x,
                    sigma=self.higher_order_sigma,
                    n_corruptions=self.n_corruptions,
                    method=method,
                    n_probes=self.n_probes,
                    generator=generator,
                )
        if self.reconstruction_contraction > 0:
            weight = linear_decoder_weight(model.decoder)
            if fwd is not None and weight is not None and dense_encoder_parts(encoder):
                rcae = reconstruction_from_forward(parts, weight, fwd)
            else:
                rcae = reconstruction_jacobian_norm_sq(
                    model, x, method, self.n_probes, generator
                )
            penalties["reconstruction_contraction"] = rcae
        return penalties

    def _reconstruction(self, model: Autoencoder, h: Tensor, x: Tensor) -> Tensor:
        """Per-sample reconstruction loss summed over features, shape (n_samples,)."""
        if self.loss == "bce":
            logits_of, has_sigmoid = split_sigmoid_output(model.decoder)
            if not has_sigmoid:
                raise ValueError(
                    "loss='bce' needs a decoder ending in a sigmoid "
                    "(decoder='sigmoid' or 'tied-sigmoid')"
                )
            per = F.binary_cross_entropy_with_logits(logits_of(h), x, reduction="none")
        else:
            per = (model.decoder(h) - x).pow(2)
        return per.flatten(1).sum(dim=1)


def _autocast_enabled(device_type: str) -> bool:
    """Whether ``torch.autocast`` is active for ``device_type`` here."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no argument, CUDA only
        return device_type == "cuda" and torch.is_autocast_enabled()


def _float32(device_type: str, active: bool) -> contextlib.AbstractContextManager[None]:
    """Autocast switched off inside the block when ``active`` (else nothing)."""
    if not active:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def _float32_forward(parts: AffineActivation, fwd: AffineForward) -> AffineForward:
    """``fwd`` with ``x_in``, ``z`` and ``act'(z)`` in float32 (``h`` unchanged).

    ``act'(z)`` is recomputed from the float32 ``z`` rather than cast, so only
    the rounding of the low-precision matmul that produced ``z`` remains.
    """
    z = fwd.z.float()
    slope = activation_derivative(parts.activation, z, parts.activation(z))
    return replace(fwd, x_in=fwd.x_in.float(), z=z, slope=slope)


PRESETS: dict[str, Objective] = {
    "ae": Objective(),
    "dae": Objective(corruption="gaussian", corruption_level=0.25),
    "cae": Objective(contraction=0.1),
    "cae-h": Objective(contraction=0.1, higher_order=0.1, higher_order_sigma=0.1),
    "rcae": Objective(reconstruction_contraction=0.1),
}
