"""Modbus register types, declared once: how many 16-bit registers each takes and how a number becomes registers
and back, in either word order. The edge decodes and writes with it, the simulators render with it.

Bytes inside a register are always big-endian (Modbus sends them so). ``word_order`` says which register of a
multi-register value comes first: ``big`` the high word (Eastron, Alfen, SunSpec, most devices), ``little`` the
low word (some inverters and PLCs). A 16-bit value and a string have no word order.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Literal

__all__ = [
    "CODECS",
    "RegisterCodec",
    "RegisterType",
    "WordOrder",
    "codec",
    "decode_string",
    "encode_string",
    "pack_words",
]

WordOrder = Literal["big", "little"]


class RegisterType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"  # ASCII, two characters a register; its length is the profile's `count`


_PACKERS: dict[int, struct.Struct] = {}


def _words_struct(count: int) -> struct.Struct:
    packer = _PACKERS.get(count)
    if packer is None:
        packer = _PACKERS[count] = struct.Struct(f">{count}H")
    return packer


def pack_words(words: Sequence[int]) -> bytes:
    """Registers as the bytes they carry on the wire (each big-endian)."""
    return _words_struct(len(words)).pack(*words)


def _swap_words(data: bytes) -> bytes:
    """The same registers in the other word order."""
    return b"".join(data[i : i + 2] for i in range(len(data) - 2, -1, -2))


@dataclass(frozen=True, slots=True)
class RegisterCodec:
    """One numeric register type: its size in registers and its encoding."""

    type: RegisterType
    registers: int
    format: struct.Struct  # the whole value, bytes big-endian (high word first)

    @property
    def integer(self) -> bool:
        return self.type not in (RegisterType.FLOAT32, RegisterType.FLOAT64)

    def encode(self, value: float, word_order: WordOrder = "big") -> list[int]:
        """The registers holding ``value`` (integer types round it); ``ValueError`` if it does not fit."""
        try:
            raw: float = round(value) if self.integer else value
            data = self.format.pack(raw)
        except (ValueError, OverflowError, struct.error):
            raise ValueError(f"raw value {value:g} does not fit type {self.type.value}") from None
        if word_order == "little" and self.registers > 1:
            data = _swap_words(data)
        return list(_words_struct(self.registers).unpack(data))

    def unpack_from(self, data: bytes, offset: int = 0, word_order: WordOrder = "big") -> float:
        """The value whose registers start at byte ``offset`` of ``data`` (registers as from ``pack_words``)."""
        if word_order == "little" and self.registers > 1:
            data, offset = _swap_words(data[offset : offset + 2 * self.registers]), 0
        value: float = self.format.unpack_from(data, offset)[0]
        return value

    def decode(self, words: Sequence[int], word_order: WordOrder = "big") -> float:
        """The value held in ``words`` (exactly ``registers`` of them)."""
        if len(words) != self.registers:
            raise ValueError(f"a {self.type.value} takes {self.registers} register(s), got {len(words)}")
        return self.unpack_from(pack_words(words), 0, word_order)


CODECS: Final[MappingProxyType[RegisterType, RegisterCodec]] = MappingProxyType(
    {
        kind: RegisterCodec(kind, struct.calcsize(fmt) // 2, struct.Struct(fmt))
        for kind, fmt in (
            (RegisterType.INT16, ">h"),
            (RegisterType.UINT16, ">H"),
            (RegisterType.INT32, ">i"),
            (RegisterType.UINT32, ">I"),
            (RegisterType.FLOAT32, ">f"),
            (RegisterType.FLOAT64, ">d"),
        )
    }
)


def codec(kind: RegisterType | str) -> RegisterCodec:
    """The codec of a numeric type; ``ValueError`` for a string (it has no fixed size) or an unknown name."""
    try:
        return CODECS[RegisterType(kind)]
    except (KeyError, ValueError):
        known = ", ".join(CODECS)
        raise ValueError(f"{kind!r} is not a numeric register type ({known})") from None


def encode_string(text: str, registers: int) -> list[int]:
    """ASCII text padded with NULs to ``registers`` registers (two characters each, first in the high byte)."""
    raw = text.encode("ascii", "replace")[: registers * 2].ljust(registers * 2, b"\0")
    return list(_words_struct(registers).unpack(raw))


def decode_string(data: bytes) -> str:
    """The text in a string's register bytes, without its NUL padding and surrounding blanks."""
    return data.rstrip(b"\0").decode("ascii", "replace").strip()
