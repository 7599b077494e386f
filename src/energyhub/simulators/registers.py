"""Encoding values into 16-bit Modbus registers as real devices do: big-endian bytes, high word first."""

from __future__ import annotations

import math
import struct

__all__ = [
    "NOT_IMPLEMENTED_ACC32",
    "NOT_IMPLEMENTED_INT16",
    "NOT_IMPLEMENTED_UINT16",
    "float32_words",
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


def float32_words(value: float) -> list[int]:
    """IEEE-754 single precision, high word first (Eastron, Alfen and most meters)."""
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [high, low]


def int16_word(value: float) -> int:
    """Two's complement in one register; out-of-range and NaN become SunSpec's not-implemented 0x8000."""
    if math.isnan(value):
        return NOT_IMPLEMENTED_INT16
    number = round(value)
    if not -0x7FFF <= number <= 0x7FFF:
        return NOT_IMPLEMENTED_INT16
    return number & 0xFFFF


def uint16_word(value: float) -> int:
    if math.isnan(value):
        return NOT_IMPLEMENTED_UINT16
    number = round(value)
    return number if 0 <= number < 0xFFFF else NOT_IMPLEMENTED_UINT16


def uint32_words(value: float) -> list[int]:
    number = round(value) % 2**32  # accumulators roll over, as SunSpec acc32 does
    return [number >> 16, number & 0xFFFF]


def string_words(text: str, registers: int) -> list[int]:
    """ASCII text padded with NULs to ``registers`` registers (two characters each)."""
    raw = text.encode("ascii", "replace")[: registers * 2].ljust(registers * 2, b"\0")
    return list(struct.unpack(f">{registers}H", raw))


def scaled(value: float, sf: int) -> float:
    """The integer a device stores for ``value`` under SunSpec scale factor ``sf`` (value = stored x 10^sf)."""
    return value / 10.0**sf
