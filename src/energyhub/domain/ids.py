"""Identifiers of gateways, devices, sites and nodes: bounded, so they are safe as topic levels and InfluxDB tags."""

from __future__ import annotations

import re

__all__ = ["ID_PATTERN", "IdError", "check_id"]

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class IdError(ValueError):
    """An identifier that is not lower-case letters, digits, '-' and '_' (at most 63)."""


def check_id(value: str, *, what: str = "id") -> str:
    """Return ``value`` if it is a valid identifier (lower-case, digits, '-' and '_', at most 63 characters)."""
    if not ID_PATTERN.match(value):
        raise IdError(
            f"{what} {value!r} is not a valid identifier: use 1-63 characters a-z, 0-9, '-' or '_', "
            "starting with a letter or digit"
        )
    return value
