"""The math: Jacobian penalties and input corruptions as pure functions."""

from contractive.penalties._jacobian import batch_jacobian, batch_jacobian_with_output

__all__ = ["batch_jacobian", "batch_jacobian_with_output"]
