"""Plan block reads for a profile and decode the registers they return.

Contiguous registers are merged into few requests (gaps up to ``max_gap`` are read and ignored, as Telegraf's modbus
input does), so one poll of a meter is one or two requests rather than one per value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from energyhub.wire.profile import DeviceProfile, RegisterType, ValueSpec
from energyhub.wire.registers import CODECS, RegisterCodec, WordOrder, decode_string, pack_words

__all__ = ["BlockDecoder", "ReadBlock", "decode_values", "plan_reads"]

_SF = CODECS[RegisterType.INT16]


@dataclass(frozen=True)
class ReadBlock:
    function: str  # "holding" or "input"
    address: int
    count: int
    values: tuple[ValueSpec, ...]


def plan_reads(profile: DeviceProfile, *, include_slow: bool = True) -> list[ReadBlock]:
    """Requests that read every value (scale-factor registers included), merged where the gaps allow."""
    wanted: dict[str, list[tuple[int, int, ValueSpec | None]]] = {}
    for value in profile.values:
        if value.priority == "slow" and not include_slow:
            continue
        wanted.setdefault(value.function, []).append((value.address, value.registers, value))
        if value.sf_address is not None:
            wanted[value.function].append((value.sf_address, 1, None))
    blocks: list[ReadBlock] = []
    for function, spans in sorted(wanted.items()):
        spans.sort(key=lambda s: s[0])
        start, end, members = spans[0][0], spans[0][0] + spans[0][1], [spans[0][2]]
        for address, count, member in spans[1:]:
            new_end = max(end, address + count)
            if address - end <= profile.max_gap and new_end - start <= profile.max_registers:
                end = new_end
                members.append(member)
                continue
            blocks.append(ReadBlock(function, start, end - start, tuple(v for v in members if v is not None)))
            start, end, members = address, address + count, [member]
        blocks.append(ReadBlock(function, start, end - start, tuple(v for v in members if v is not None)))
    return blocks


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where one value sits in the blocks of a plan, and how it turns into a number: worked out once."""

    name: str
    block: int
    word: int  # offset in the block, in registers
    registers: int
    codec: RegisterCodec | None  # None for a string
    word_order: WordOrder
    not_implemented: frozenset[float]
    factor: float
    sf: tuple[int, int] | None  # (block, word) of the SunSpec scale factor
    codes: dict[str, float] | None


class BlockDecoder:
    """Decodes the registers of a read plan into values by name.

    Built once per plan: finding each value's block and offset, and the format, is the part of decoding that does
    not change between polls. A value that is missing, not implemented, NaN or infinite decodes to None, never to
    a stale or made-up number.
    """

    def __init__(self, profile: DeviceProfile, blocks: Sequence[ReadBlock]) -> None:
        self.blocks = list(blocks)
        self._slots: list[_Slot] = []
        for spec in profile.values:
            where = self._locate(spec.function, spec.address, spec.registers)
            if where is None:
                continue  # not read by this plan (a slow value on a fast poll)
            sf = None
            if spec.sf_address is not None:
                sf = self._locate(spec.function, spec.sf_address, 1) or (-1, 0)
            self._slots.append(
                _Slot(
                    name=spec.name,
                    block=where[0],
                    word=where[1],
                    registers=spec.registers,
                    codec=CODECS.get(spec.type),
                    word_order=spec.order(profile.word_order),
                    not_implemented=frozenset(spec.not_implemented),
                    factor=spec.scale * spec.sign,
                    sf=sf,
                    codes=spec.codes,
                )
            )

    @property
    def names(self) -> list[str]:
        return [slot.name for slot in self._slots]

    def _locate(self, function: str, address: int, count: int) -> tuple[int, int] | None:
        for index, block in enumerate(self.blocks):
            if (
                block.function == function
                and block.address <= address
                and address + count <= block.address + block.count
            ):
                return index, address - block.address
        return None

    def decode(self, words: Sequence[Sequence[int] | None]) -> dict[str, float | None]:
        """``words[i]`` holds the registers read for block ``i``, or None when that read failed."""
        data = [None if w is None else pack_words(w) for w in words]
        values: dict[str, float | None] = {}
        for slot in self._slots:
            raw_bytes = data[slot.block]
            if raw_bytes is None:
                values[slot.name] = None
                continue
            offset = 2 * slot.word
            if slot.codec is None:
                text = decode_string(raw_bytes[offset : offset + 2 * slot.registers])
                values[slot.name] = (slot.codes or {}).get(text)  # an unknown text is no value
                continue
            raw = slot.codec.unpack_from(raw_bytes, offset, slot.word_order)
            if raw in slot.not_implemented or (isinstance(raw, float) and not math.isfinite(raw)):
                values[slot.name] = None
                continue
            factor = slot.factor
            if slot.sf is not None:
                sf_bytes = data[slot.sf[0]] if slot.sf[0] >= 0 else None
                sf = None if sf_bytes is None else _SF.unpack_from(sf_bytes, 2 * slot.sf[1])
                # Not implemented (0x8000) or garbage: no value, rather than a huge one.
                if sf is None or not -10 <= sf <= 10:
                    values[slot.name] = None
                    continue
                factor *= 10.0**sf
            values[slot.name] = float(raw) * factor
        return values


def decode_values(
    profile: DeviceProfile, blocks: dict[tuple[str, int], list[int]]
) -> dict[str, float | None]:
    """Values by name from registers read (``blocks`` maps (function, address) to registers); see BlockDecoder."""
    plan = [ReadBlock(function, address, len(words), ()) for (function, address), words in blocks.items()]
    return BlockDecoder(profile, plan).decode(list(blocks.values()))
