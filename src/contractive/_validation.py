"""Argument checks shared by every layer (no dependencies inside the package)."""

from __future__ import annotations


def check_int(name: str, value: object, minimum: int = 1) -> None:
    """Raise ValueError naming ``value`` unless it is an int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
