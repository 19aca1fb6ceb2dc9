"""The math: Jacobian penalties and input corruptions as pure functions of tensors
and modules. No I/O, no training."""

from contractive.penalties._closed_form import (
    ACTIVATION_DERIVATIVES,
    AffineActivation,
    AffineForward,
    TiedLinear,
    activation_derivative,
    affine_forward,
    as_affine_activation,
    closed_form_norm_sq,
    squared_row_norms,
)
from contractive.penalties._corruption import (
    CORRUPTIONS,
    corrupt,
    gaussian_corruption,
    masking_corruption,
    salt_and_pepper_corruption,
)
from contractive.penalties._jacobian import batch_jacobian, batch_jacobian_with_output
from contractive.penalties._norms import (
    EXACT_MAX_DIM,
    METHODS,
    dense_encoder_parts,
    encode_with_jacobian_norm_sq,
    higher_order_from_forward,
    higher_order_penalty,
    jacobian_norm_sq,
    linear_decoder_weight,
    rademacher_like,
    reconstruction_from_forward,
    reconstruction_jacobian_norm_sq,
    resolve_method,
)

__all__ = [
    "ACTIVATION_DERIVATIVES",
    "CORRUPTIONS",
    "EXACT_MAX_DIM",
    "METHODS",
    "AffineActivation",
    "AffineForward",
    "TiedLinear",
    "activation_derivative",
    "affine_forward",
    "as_affine_activation",
    "batch_jacobian",
    "batch_jacobian_with_output",
    "closed_form_norm_sq",
    "corrupt",
    "dense_encoder_parts",
    "encode_with_jacobian_norm_sq",
    "gaussian_corruption",
    "higher_order_from_forward",
    "higher_order_penalty",
    "jacobian_norm_sq",
    "linear_decoder_weight",
    "masking_corruption",
    "rademacher_like",
    "reconstruction_from_forward",
    "reconstruction_jacobian_norm_sq",
    "resolve_method",
    "salt_and_pepper_corruption",
    "squared_row_norms",
]
