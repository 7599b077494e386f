"""EAN codes of grid connections: 18 digits (a GS1 GSRN) whose last digit is a GS1 mod-10 check digit."""

from __future__ import annotations

__all__ = ["EanError", "ean_check_digit", "validate_ean"]


class EanError(ValueError):
    """An EAN that is not 18 digits or whose check digit is wrong."""


def ean_check_digit(first_17: str) -> int:
    """The GS1 check digit for the first 17 digits: weights 3,1,3,... from the right, then up to a multiple of 10."""
    if len(first_17) != 17 or not first_17.isascii() or not first_17.isdigit():
        raise EanError(f"need exactly 17 digits to compute a check digit, got {first_17!r}")
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(first_17)))
    return (10 - total % 10) % 10


def validate_ean(value: str) -> str:
    """Return ``value`` when it is a valid 18-digit EAN; raise ``EanError`` saying what is wrong otherwise."""
    if not isinstance(value, str):
        raise EanError(f"must be a string of 18 digits (quote it in YAML), got {type(value).__name__}")
    if len(value) != 18 or not value.isascii() or not value.isdigit():
        raise EanError(f"{value!r} is not 18 digits (it has {len(value)} characters)")
    expected = ean_check_digit(value[:17])
    if int(value[17]) != expected:
        raise EanError(f"check digit of {value} is {value[17]}, expected {expected}: the EAN has a typo")
    return value
