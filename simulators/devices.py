"""Simulated devices: each owns its register image, renders its state into it on every read, and applies writes.

The physics (what the sun, the load or a session does) is set from outside through each device's state; what a
Modbus client sees and may write is decided here, as on the real product.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from pymodbus.constants import ExcCodes

from simulators.faults import Faults
from simulators.sdm630 import SDM630_SIZE, MeterState, render_sdm630
from simulators.sunspec import SUNSPEC_BASE, SunSpecMap

__all__ = ["InverterDevice", "InverterState", "MeterDevice", "SimulatedDevice"]

_WRITE_CODES = {6, 16}
_GATEWAY_TARGET_FAILED = 0x0B


class SimulatedDevice:
    """Base: a unit id, a register block at ``base_address``, faults, and the access hook the server calls."""

    base_address = 0

    def __init__(self, *, unit_id: int, size: int) -> None:
        self.unit_id = unit_id
        self.faults = Faults()
        self.size = size
        self.reads = 0
        self.writes = 0

    def render(self, registers: list[int]) -> None:
        """Write the present state into ``registers`` (offset 0 = ``base_address``)."""

    def apply_write(self, offset: int, values: list[int], registers: list[int]) -> ExcCodes | None:
        """A client writes ``values`` at ``offset``; refuse with an exception code or update the state."""
        return ExcCodes.ILLEGAL_ADDRESS

    async def on_access(
        self,
        function_code: int,
        start: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        faults = self.faults
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        if faults.offline:
            return ExcCodes(_GATEWAY_TARGET_FAILED)
        if faults.exception_code is not None:
            return ExcCodes(faults.exception_code)
        offset = address - start
        if function_code in _WRITE_CODES and set_values is not None:
            self.writes += 1
            return self.apply_write(offset, [int(v) for v in set_values], registers)
        self.reads += 1
        if not faults.frozen:
            self.render(registers)
        return None


class MeterDevice(SimulatedDevice):
    """An Eastron SDM630; read-only like the real meter."""

    def __init__(self, *, unit_id: int, state: MeterState | None = None) -> None:
        super().__init__(unit_id=unit_id, size=SDM630_SIZE)
        self.state = state or MeterState()

    def render(self, registers: list[int]) -> None:
        render_sdm630(self.state, registers, nan=self.faults.nan)


@dataclass
class InverterState:
    """A PV inverter: what the sun offers, what it is allowed, what it makes."""

    rated_w: float
    available_w: float = 0.0  # DC power the panels could give now (after losses)
    limit_pct: float = 100.0  # WMaxLimPct: active power limit, % of rated
    limit_enabled: bool = False  # WMaxLim_Ena
    energy_wh: float = 0.0
    serial: str = "SIM0001"

    @property
    def output_w(self) -> float:
        cap = self.rated_w * self.limit_pct / 100.0 if self.limit_enabled else self.rated_w
        return max(0.0, min(self.available_w, cap, self.rated_w))

    def advance(self, dt_s: float) -> None:
        self.energy_wh += self.output_w * dt_s / 3600.0


def _power_sf(rated_w: float) -> int:
    """Smallest scale factor that keeps the rated power inside an int16."""
    return max(0, math.ceil(math.log10(max(rated_w, 1.0) / 32767.0)))


class InverterDevice(SimulatedDevice):
    """A three-phase PV inverter speaking SunSpec: models 1 (common), 103 (inverter), 123 (immediate controls)."""

    base_address = SUNSPEC_BASE
    LIMIT_SF = -1  # WMaxLimPct in tenths of a percent

    def __init__(self, *, unit_id: int, state: InverterState, manufacturer: str = "energyhub-sim") -> None:
        self.map = SunSpecMap([1, 103, 123])
        super().__init__(unit_id=unit_id, size=self.map.size)
        self.state = state
        self.w_sf = _power_sf(state.rated_w)
        self.manufacturer = manufacturer
        self._limit_offsets = {
            self.map.offset_of(123, "WMaxLimPct"): "WMaxLimPct",
            self.map.offset_of(123, "WMaxLim_Ena"): "WMaxLim_Ena",
        }

    def initial_registers(self) -> list[int]:
        registers = list(self.map.image)
        m = self.map
        m.set(registers, 1, "Mn", self.manufacturer)
        m.set(registers, 1, "Md", "PV inverter 3ph")
        m.set(registers, 1, "Vr", "1.0")
        m.set(registers, 1, "SN", self.state.serial)
        m.set(registers, 1, "DA", self.unit_id)
        for point, sf in (
            ("A_SF", -1),
            ("V_SF", -1),
            ("W_SF", self.w_sf),
            ("Hz_SF", -2),
            ("VA_SF", self.w_sf),
            ("PF_SF", -2),
            ("WH_SF", 0),
        ):
            m.set(registers, 103, point, sf)
        m.set(registers, 123, "WMaxLimPct_SF", self.LIMIT_SF)
        self.render(registers)
        return registers

    def render(self, registers: list[int]) -> None:
        m, s = self.map, self.state
        if self.faults.nan:  # a confused inverter: every measurement "not implemented"
            for point in ("A", "AphA", "AphB", "AphC", "PhVphA", "PhVphB", "PhVphC", "W", "VA", "Hz"):
                m.set(registers, 103, point, math.nan)
            return
        output = s.output_w
        phase_a = output / 3 / 230.0
        m.set(registers, 103, "A", phase_a * 3, sf=-1)
        for phase in ("AphA", "AphB", "AphC"):
            m.set(registers, 103, phase, phase_a, sf=-1)
        for phase in ("PhVphA", "PhVphB", "PhVphC"):
            m.set(registers, 103, phase, 230.0, sf=-1)
        m.set(registers, 103, "W", output, sf=self.w_sf)
        m.set(registers, 103, "VA", output, sf=self.w_sf)
        m.set(registers, 103, "PF", 1.0, sf=-2)
        m.set(registers, 103, "Hz", 50.0, sf=-2)
        m.set(registers, 103, "WH", s.energy_wh)
        m.set(registers, 103, "St", 4 if output > 0 else 2)  # 4 = MPPT, 2 = sleeping
        m.set(registers, 123, "WMaxLimPct", s.limit_pct, sf=self.LIMIT_SF)
        m.set(registers, 123, "WMaxLim_Ena", 1 if s.limit_enabled else 0)

    def apply_write(self, offset: int, values: list[int], registers: list[int]) -> ExcCodes | None:
        targets = [self._limit_offsets.get(offset + i) for i in range(len(values))]
        if any(t is None for t in targets):
            return ExcCodes.ILLEGAL_ADDRESS  # only the power limit is writable, as on a locked-down inverter
        for target, word in zip(targets, values, strict=True):
            if target == "WMaxLimPct":
                pct = word * 10.0**self.LIMIT_SF
                if pct > 100.0:
                    return ExcCodes.ILLEGAL_VALUE
                self.state.limit_pct = pct
            elif target == "WMaxLim_Ena":
                if word not in (0, 1):
                    return ExcCodes.ILLEGAL_VALUE
                self.state.limit_enabled = bool(word)
        self.render(registers)
        return None
