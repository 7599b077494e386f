"""Plan block reads for a profile and decode the registers they return.

Contiguous registers are merged into few requests (gaps up to ``max_gap`` are read and ignored, as Telegraf's modbus
input does), so one poll of a meter is one or two requests rather than one per value.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from edge.profile import DeviceProfile, RegisterType, ValueSpec

__all__ = ["ReadBlock", "decode_values", "plan_reads"]

_FORMATS = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f", "float64": ">d"}


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


def _raw(words: list[int], spec: ValueSpec, word_order: str) -> float | int | str:
    if spec.word_order is not None:
        word_order = spec.word_order
    if word_order == "little":
        words = list(reversed(words))
    data = struct.pack(f">{len(words)}H", *words)
    if spec.type is RegisterType.STRING:
        return data.rstrip(b"\0").decode("ascii", "replace")
    value: float | int = struct.unpack(_FORMATS[spec.type.value], data)[0]
    return value


def decode_values(
    profile: DeviceProfile, blocks: dict[tuple[str, int], list[int]]
) -> dict[str, float | None]:
    """Values by name from the registers read (``blocks`` maps (function, address) to registers). A value that
    is missing, not implemented, NaN or infinite is None, never a stale or made-up number."""
    spans = [
        (function, address, address + len(words), words) for (function, address), words in blocks.items()
    ]

    def words_at(function: str, address: int, count: int) -> list[int] | None:
        # A profile reads a handful of blocks: a scan is cheaper than indexing every register.
        for block_function, start, end, words in spans:
            if block_function == function and start <= address and address + count <= end:
                return words[address - start : address - start + count]
        return None

    values: dict[str, float | None] = {}
    for spec in profile.values:
        found = words_at(spec.function, spec.address, spec.registers)
        if found is None:
            continue  # not read this poll (a slow value)
        raw = _raw(found, spec, profile.word_order)
        if isinstance(raw, str):
            values[spec.name] = (spec.codes or {}).get(raw.strip())  # an unknown text is no value
            continue
        if raw in spec.not_implemented or (isinstance(raw, float) and not math.isfinite(raw)):
            values[spec.name] = None
            continue
        factor = spec.scale * spec.sign
        if spec.sf_address is not None:
            sf_words = words_at(spec.function, spec.sf_address, 1)
            if sf_words is None or sf_words[0] == 0x8000:
                values[spec.name] = None
                continue
            sf = struct.unpack(">h", struct.pack(">H", sf_words[0]))[0]
            if not -10 <= sf <= 10:
                values[spec.name] = None  # a garbage scale factor is no value, not a huge one
                continue
            factor *= 10.0**sf
        values[spec.name] = float(raw) * factor
    return values
