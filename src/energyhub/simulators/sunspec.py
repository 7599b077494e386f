"""SunSpec register maps: the ``SunS`` marker, a chain of models, and the end marker, from base address 40000.

Each model is a table of (point, type, registers) in SunSpec's published order; the simulator writes values by point
name and reads setpoints back by point name. Only the models the simulated devices need are tabled here.
"""

from __future__ import annotations

from dataclasses import dataclass

from energyhub.simulators.registers import (
    NOT_IMPLEMENTED_INT16,
    NOT_IMPLEMENTED_UINT16,
    int16_word,
    string_words,
    uint16_word,
    uint32_words,
)
from energyhub.wire.registers import CODECS, RegisterType

__all__ = ["MODELS", "SUNSPEC_BASE", "SunSpecMap"]

SUNSPEC_BASE = 40000
_INT16 = CODECS[RegisterType.INT16]
_SUNS = [0x5375, 0x6E53]  # "SunS"

Point = tuple[str, str, int]  # name, type, registers

MODELS: dict[int, list[Point]] = {
    1: [  # common
        ("Mn", "string", 16),
        ("Md", "string", 16),
        ("Opt", "string", 8),
        ("Vr", "string", 8),
        ("SN", "string", 16),
        ("DA", "uint16", 1),
        ("Pad", "pad", 1),
    ],
    103: [  # three-phase inverter
        ("A", "uint16", 1),
        ("AphA", "uint16", 1),
        ("AphB", "uint16", 1),
        ("AphC", "uint16", 1),
        ("A_SF", "sunssf", 1),
        ("PPVphAB", "uint16", 1),
        ("PPVphBC", "uint16", 1),
        ("PPVphCA", "uint16", 1),
        ("PhVphA", "uint16", 1),
        ("PhVphB", "uint16", 1),
        ("PhVphC", "uint16", 1),
        ("V_SF", "sunssf", 1),
        ("W", "int16", 1),
        ("W_SF", "sunssf", 1),
        ("Hz", "uint16", 1),
        ("Hz_SF", "sunssf", 1),
        ("VA", "int16", 1),
        ("VA_SF", "sunssf", 1),
        ("VAr", "int16", 1),
        ("VAr_SF", "sunssf", 1),
        ("PF", "int16", 1),
        ("PF_SF", "sunssf", 1),
        ("WH", "acc32", 2),
        ("WH_SF", "sunssf", 1),
        ("DCA", "uint16", 1),
        ("DCA_SF", "sunssf", 1),
        ("DCV", "uint16", 1),
        ("DCV_SF", "sunssf", 1),
        ("DCW", "int16", 1),
        ("DCW_SF", "sunssf", 1),
        ("TmpCab", "int16", 1),
        ("TmpSnk", "int16", 1),
        ("TmpTrns", "int16", 1),
        ("TmpOt", "int16", 1),
        ("Tmp_SF", "sunssf", 1),
        ("St", "enum16", 1),
        ("StVnd", "enum16", 1),
        ("Evt1", "bitfield32", 2),
        ("Evt2", "bitfield32", 2),
        ("EvtVnd1", "bitfield32", 2),
        ("EvtVnd2", "bitfield32", 2),
        ("EvtVnd3", "bitfield32", 2),
        ("EvtVnd4", "bitfield32", 2),
    ],
    123: [  # immediate controls
        ("Conn_WinTms", "uint16", 1),
        ("Conn_RvrtTms", "uint16", 1),
        ("Conn", "enum16", 1),
        ("WMaxLimPct", "uint16", 1),
        ("WMaxLimPct_WinTms", "uint16", 1),
        ("WMaxLimPct_RvrtTms", "uint16", 1),
        ("WMaxLimPct_RmpTms", "uint16", 1),
        ("WMaxLim_Ena", "enum16", 1),
        ("OutPFSet", "int16", 1),
        ("OutPFSet_WinTms", "uint16", 1),
        ("OutPFSet_RvrtTms", "uint16", 1),
        ("OutPFSet_RmpTms", "uint16", 1),
        ("OutPFSet_Ena", "enum16", 1),
        ("VArWMaxPct", "int16", 1),
        ("VArMaxPct", "int16", 1),
        ("VArAvalPct", "int16", 1),
        ("VArPct_WinTms", "uint16", 1),
        ("VArPct_RvrtTms", "uint16", 1),
        ("VArPct_RmpTms", "uint16", 1),
        ("VArPct_Mod", "enum16", 1),
        ("VArPct_Ena", "enum16", 1),
        ("WMaxLimPct_SF", "sunssf", 1),
        ("OutPFSet_SF", "sunssf", 1),
        ("VArPct_SF", "sunssf", 1),
    ],
    124: [  # basic storage controls
        ("WChaMax", "uint16", 1),
        ("WChaGra", "uint16", 1),
        ("WDisChaGra", "uint16", 1),
        ("StorCtl_Mod", "bitfield16", 1),
        ("VAChaMax", "uint16", 1),
        ("MinRsvPct", "uint16", 1),
        ("ChaState", "uint16", 1),
        ("StorAval", "uint16", 1),
        ("InBatV", "uint16", 1),
        ("ChaSt", "enum16", 1),
        ("OutWRte", "int16", 1),
        ("InWRte", "int16", 1),
        ("InOutWRte_WinTms", "uint16", 1),
        ("InOutWRte_RvrtTms", "uint16", 1),
        ("InOutWRte_RmpTms", "uint16", 1),
        ("ChaGriSet", "enum16", 1),
        ("WChaMax_SF", "sunssf", 1),
        ("WChaDisChaGra_SF", "sunssf", 1),
        ("VAChaMax_SF", "sunssf", 1),
        ("MinRsvPct_SF", "sunssf", 1),
        ("ChaState_SF", "sunssf", 1),
        ("StorAval_SF", "sunssf", 1),
        ("InBatV_SF", "sunssf", 1),
        ("InOutWRte_SF", "sunssf", 1),
    ],
}

# Unused points read as "not implemented", as the SunSpec specification asks.
_NOT_IMPLEMENTED = {
    "int16": NOT_IMPLEMENTED_INT16,
    "sunssf": NOT_IMPLEMENTED_INT16,
    "uint16": NOT_IMPLEMENTED_UINT16,
    "enum16": NOT_IMPLEMENTED_UINT16,
    "bitfield16": 0xFFFF,
    "acc32": 0,
    "bitfield32": 0xFFFF,
    "string": 0,
    "pad": 0x8000,
}


@dataclass(frozen=True)
class _Slot:
    offset: int  # from SUNSPEC_BASE
    kind: str
    size: int


class SunSpecMap:
    """Where each point of a model chain sits, and a register image to serve from ``SUNSPEC_BASE``."""

    def __init__(self, model_ids: list[int]) -> None:
        self.model_ids = model_ids
        self._slots: dict[tuple[int, str], _Slot] = {}
        image = list(_SUNS)
        for model_id in model_ids:
            points = MODELS[model_id]
            length = sum(size for _name, _kind, size in points)
            image += [model_id, length]
            for name, kind, size in points:
                self._slots[(model_id, name)] = _Slot(len(image), kind, size)
                fill = _NOT_IMPLEMENTED[kind]
                image += [fill] + ([fill if kind == "bitfield32" else 0] * (size - 1))
        image += [0xFFFF, 0]  # end marker
        self.image = image

    @property
    def size(self) -> int:
        return len(self.image)

    def address(self, model_id: int, point: str) -> int:
        return SUNSPEC_BASE + self._slots[(model_id, point)].offset

    def set(
        self, registers: list[int], model_id: int, point: str, value: float | str, *, sf: int = 0
    ) -> None:
        """Store ``value`` (in real units; divided by 10^sf) at its point in ``registers`` (offset from 40000)."""
        slot = self._slots[(model_id, point)]
        if slot.kind == "string":
            words = string_words(str(value), slot.size)
        elif slot.kind in ("int16", "sunssf"):
            words = [int16_word(float(value) / 10.0**sf)]
        elif slot.kind == "acc32":
            words = uint32_words(float(value) / 10.0**sf)
        else:
            words = [uint16_word(float(value) / 10.0**sf)]
        registers[slot.offset : slot.offset + slot.size] = words

    def get(self, registers: list[int], model_id: int, point: str, *, sf: int = 0) -> float | None:
        """Read a 16-bit point back as a real value; None when it holds the not-implemented value."""
        slot = self._slots[(model_id, point)]
        word = registers[slot.offset]
        if slot.kind in ("int16", "sunssf"):
            if word == NOT_IMPLEMENTED_INT16:
                return None
            word = int(_INT16.decode([word]))
        elif word == NOT_IMPLEMENTED_UINT16:
            return None
        return word * 10.0**sf

    def offset_of(self, model_id: int, point: str) -> int:
        return self._slots[(model_id, point)].offset
