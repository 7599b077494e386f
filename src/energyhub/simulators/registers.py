"""Encoding values into 16-bit Modbus registers as real devices do: big-endian bytes, high word first.

The encoding itself is the shared register table's (``wire/registers.py``), the one the edge decodes with; what
is the simulators' own is how a device says "no value" (SunSpec's not-implemented values) and rolls over.
"""

from __future__ import annotations

import math

from energyhub.wire.registers import CODECS, RegisterType, encode_string

__all__ = [
    "NOT_IMPLEMENTED_ACC32",
    "NOT_IMPLEMENTED_INT16",
    "NOT_IMPLEMENTED_UINT16",
    "float32_words",
    "float64_words",
    "int16_word",
    "scaled",
    "string_words",
    "uint16_word",
    "uint32_words",
]

# SunSpec's "not implemented" values for the integer types.
NOT_IMPLEMENTED_INT16 = 0x8000
NOT_IMPLEMENTED_UINT16 = 0xFFFF
NOT_IMPLEMENTED_ACC32 = 0

_FLOAT32 = CODECS[RegisterType.FLOAT32]
_FLOAT64 = CODECS[RegisterType.FLOAT64]
_INT16 = CODECS[RegisterType.INT16]
_UINT16 = CODECS[RegisterType.UINT16]
_UINT32 = CODECS[RegisterType.UINT32]


def float32_words(value: float) -> list[int]:
    """IEEE-754 single precision, high word first (Eastron, Alfen and most meters)."""
    return _FLOAT32.encode(value)


def float64_words(value: float) -> list[int]:
    """IEEE-754 double precision, high word first (Alfen's energy counters)."""
    return _FLOAT64.encode(value)


def int16_word(value: float) -> int:
    """Two's complement in one register; out-of-range and NaN become SunSpec's not-implemented 0x8000."""
    if math.isnan(value):
        return NOT_IMPLEMENTED_INT16
    number = round(value)
    if not -0x7FFF <= number <= 0x7FFF:
        return NOT_IMPLEMENTED_INT16
    return _INT16.encode(number)[0]


def uint16_word(value: float) -> int:
    if math.isnan(value):
        return NOT_IMPLEMENTED_UINT16
    number = round(value)
    return _UINT16.encode(number)[0] if 0 <= number < 0xFFFF else NOT_IMPLEMENTED_UINT16


def uint32_words(value: float) -> list[int]:
    return _UINT32.encode(round(value) % 2**32)  # accumulators roll over, as SunSpec acc32 does


def string_words(text: str, registers: int) -> list[int]:
    """ASCII text padded with NULs to ``registers`` registers (two characters each)."""
    return encode_string(text, registers)


def scaled(value: float, sf: int) -> float:
    """The integer a device stores for ``value`` under SunSpec scale factor ``sf`` (value = stored x 10^sf)."""
    return value / 10.0**sf
