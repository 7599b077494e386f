"""Simulated devices: each owns its register image, renders its state into it on every read, and applies writes.

The physics (what the sun, the load or a session does) is set from outside through each device's state; what a
Modbus client sees and may write is decided here, as on the real product.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Generic, TypeVar

from pymodbus.constants import ExcCodes

from energyhub.simulators.faults import Faults
from energyhub.simulators.sdm630 import SDM630_SIZE, MeterState, render_sdm630
from energyhub.simulators.sunspec import SUNSPEC_BASE, SunSpecMap
from energyhub.wire.registers import CODECS, RegisterType

__all__ = [
    "BatteryDevice",
    "BatteryState",
    "InverterDevice",
    "InverterState",
    "MeterDevice",
    "SimulatedDevice",
    "SunSpecDevice",
]

_WRITE_CODES = {6, 16}
_INT16 = CODECS[RegisterType.INT16]
_GATEWAY_TARGET_FAILED = 0x0B


S = TypeVar("S")


class SimulatedDevice(Generic[S]):
    """Base: a unit id, a register block at ``base_address``, faults, and the access hook the server calls;
    ``state`` is what the device shows (a meter's, an inverter's, ...), set by the physics from outside."""

    base_address = 0
    state: S

    def __init__(self, *, unit_id: int, size: int) -> None:
        self.unit_id = unit_id
        self.faults = Faults()
        self.size = size
        self.reads = 0
        self.writes = 0

    def initial_registers(self) -> list[int]:
        """The register block when the server starts."""
        registers = [0] * self.size
        self.render(registers)
        return registers

    def render(self, registers: list[int]) -> None:
        """Write the present state into ``registers`` (offset 0 = ``base_address``)."""

    def render_for(self, function_code: int, registers: list[int]) -> None:
        """Render before a read with ``function_code``: one table for holding and input registers, by default."""
        self.render(registers)

    def register_blocks(self) -> dict[str, tuple[int, list[int]]] | None:
        """Separate holding and input tables as ``{function: (start, registers)}``; None shares one block."""
        return None

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
            self.render_for(function_code, registers)
        return None


class MeterDevice(SimulatedDevice[MeterState]):
    """An Eastron SDM630; read-only like the real meter."""

    def __init__(self, *, unit_id: int, state: MeterState | None = None) -> None:
        super().__init__(unit_id=unit_id, size=SDM630_SIZE)
        self.state = state or MeterState()

    def render(self, registers: list[int]) -> None:
        render_sdm630(self.state, registers, nan=self.faults.nan)


class SunSpecDevice(SimulatedDevice[S]):
    """A device with a SunSpec model chain from 40000; subclasses add their model's fixed points."""

    base_address = SUNSPEC_BASE
    model_name = "SunSpec device"

    def __init__(self, *, unit_id: int, models: list[int], serial: str, manufacturer: str) -> None:
        self.map = SunSpecMap(models)
        super().__init__(unit_id=unit_id, size=self.map.size)
        self.serial = serial
        self.manufacturer = manufacturer

    def fixed_points(self, registers: list[int]) -> None:
        """Scale factors and ratings that never change."""

    def initial_registers(self) -> list[int]:
        registers = list(self.map.image)
        m = self.map
        m.set(registers, 1, "Mn", self.manufacturer)
        m.set(registers, 1, "Md", self.model_name)
        m.set(registers, 1, "Vr", "1.0")
        m.set(registers, 1, "SN", self.serial)
        m.set(registers, 1, "DA", self.unit_id)
        self.fixed_points(registers)
        self.render(registers)
        return registers


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

    def advance(self, dt_s: float) -> float:
        """Run for ``dt_s``; returns the grid-side energy in Wh (negative: produced)."""
        energy = self.output_w * dt_s / 3600.0
        self.energy_wh += energy
        return -energy


def _power_sf(rated_w: float) -> int:
    """Smallest scale factor that keeps the rated power inside an int16."""
    return max(0, math.ceil(math.log10(max(rated_w, 1.0) / 32767.0)))


class InverterDevice(SunSpecDevice[InverterState]):
    """A three-phase PV inverter speaking SunSpec: models 1 (common), 103 (inverter), 123 (immediate controls)."""

    model_name = "PV inverter 3ph"
    LIMIT_SF = -1  # WMaxLimPct in tenths of a percent

    def __init__(self, *, unit_id: int, state: InverterState, manufacturer: str = "energyhub-sim") -> None:
        super().__init__(
            unit_id=unit_id, models=[1, 103, 123], serial=state.serial, manufacturer=manufacturer
        )
        self.state = state
        self.w_sf = _power_sf(state.rated_w)
        self._limit_offsets = {
            self.map.offset_of(123, "WMaxLimPct"): "WMaxLimPct",
            self.map.offset_of(123, "WMaxLim_Ena"): "WMaxLim_Ena",
        }

    def fixed_points(self, registers: list[int]) -> None:
        for point, sf in (
            ("A_SF", -1),
            ("V_SF", -1),
            ("W_SF", self.w_sf),
            ("Hz_SF", -2),
            ("VA_SF", self.w_sf),
            ("PF_SF", -2),
            ("WH_SF", 0),
        ):
            self.map.set(registers, 103, point, sf)
        self.map.set(registers, 123, "WMaxLimPct_SF", self.LIMIT_SF)

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


@dataclass
class BatteryState:
    """A battery with its inverter. ``setpoint_w`` follows the grid sign: positive charges (taken from the grid)."""

    capacity_wh: float
    max_w: float
    soc: float = 0.5  # 0..1
    min_reserve: float = 0.05
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    setpoint_w: float = 0.0
    energy_in_wh: float = 0.0
    energy_out_wh: float = 0.0
    serial: str = "BAT0001"

    @property
    def power_w(self) -> float:
        """What it actually does now: the setpoint within power limits, zero when full or at the reserve."""
        power = max(-self.max_w, min(self.max_w, self.setpoint_w))
        if power > 0 and self.soc >= 1.0:
            return 0.0
        if power < 0 and self.soc <= self.min_reserve:
            return 0.0
        return power

    def advance(self, dt_s: float) -> float:
        """Run for ``dt_s``; returns the grid-side energy in Wh (positive: charged), stopping when full or empty."""
        power = self.power_w
        hours = dt_s / 3600.0
        if power > 0:
            room = (1.0 - self.soc) * self.capacity_wh
            stored = min(power * hours * self.charge_efficiency, room)
            self.soc = 1.0 if stored >= room else self.soc + stored / self.capacity_wh
            grid = stored / self.charge_efficiency
            self.energy_in_wh += grid
            return grid
        if power < 0:
            left = (self.soc - self.min_reserve) * self.capacity_wh
            drawn = min(-power * hours / self.discharge_efficiency, left)
            self.soc = self.min_reserve if drawn >= left else self.soc - drawn / self.capacity_wh
            grid = drawn * self.discharge_efficiency
            self.energy_out_wh += grid
            return -grid
        return 0.0


_CHARGE_BIT, _DISCHARGE_BIT = 1, 2


class BatteryDevice(SunSpecDevice[BatteryState]):
    """A battery speaking SunSpec: models 1, 103 (its inverter; W positive = discharging) and 124 (storage).

    Control as SunSpec model 124 defines it: StorCtl_Mod bit 0 charges at InWRte % of WChaMax, bit 1 discharges at
    OutWRte % of WChaMax, neither holds. The simulator keeps the resulting power setpoint in ``state``.
    """

    model_name = "Battery storage"
    RATE_SF = -1  # InWRte / OutWRte in tenths of a percent

    def __init__(self, *, unit_id: int, state: BatteryState, manufacturer: str = "energyhub-sim") -> None:
        super().__init__(
            unit_id=unit_id, models=[1, 103, 124], serial=state.serial, manufacturer=manufacturer
        )
        self.state = state
        self.w_sf = _power_sf(state.max_w)
        self._mode = 0
        self._in_pct = 0.0
        self._out_pct = 0.0
        writable = ("StorCtl_Mod", "InWRte", "OutWRte", "MinRsvPct")
        self._writable = {self.map.offset_of(124, p): p for p in writable}

    def fixed_points(self, registers: list[int]) -> None:
        m = self.map
        for point, sf in (("A_SF", -1), ("V_SF", -1), ("W_SF", self.w_sf), ("Hz_SF", -2), ("WH_SF", 0)):
            m.set(registers, 103, point, sf)
        for point, sf in (
            ("WChaMax_SF", self.w_sf),
            ("MinRsvPct_SF", -1),
            ("ChaState_SF", -1),
            ("StorAval_SF", 0),
            ("InBatV_SF", -1),
            ("InOutWRte_SF", self.RATE_SF),
        ):
            m.set(registers, 124, point, sf)
        m.set(registers, 124, "WChaMax", self.state.max_w, sf=self.w_sf)

    def render(self, registers: list[int]) -> None:
        m, s = self.map, self.state
        if self.faults.nan:
            for point in ("W", "A", "Hz"):
                m.set(registers, 103, point, math.nan)
            m.set(registers, 124, "ChaState", math.nan)
            return
        power = s.power_w
        m.set(registers, 103, "W", -power, sf=self.w_sf)  # SunSpec: positive = delivered to the grid
        m.set(registers, 103, "A", abs(power) / 230.0 / 3 * 3, sf=-1)
        m.set(registers, 103, "Hz", 50.0, sf=-2)
        m.set(registers, 103, "WH", s.energy_out_wh)
        m.set(registers, 103, "St", 4 if power else 8)  # 4 = MPPT/producing, 8 = standby
        m.set(registers, 124, "ChaState", s.soc * 100.0, sf=-1)
        m.set(registers, 124, "MinRsvPct", s.min_reserve * 100.0, sf=-1)
        m.set(registers, 124, "StorAval", max(0.0, s.soc - s.min_reserve) * s.capacity_wh)
        m.set(registers, 124, "InBatV", 720.0, sf=-1)
        status = (
            5 if s.soc >= 1.0 else 2 if s.soc <= s.min_reserve else 4 if power > 0 else 3 if power < 0 else 6
        )
        m.set(registers, 124, "ChaSt", status)
        m.set(registers, 124, "StorCtl_Mod", self._mode)
        m.set(registers, 124, "InWRte", self._in_pct, sf=self.RATE_SF)
        m.set(registers, 124, "OutWRte", self._out_pct, sf=self.RATE_SF)

    def apply_write(self, offset: int, values: list[int], registers: list[int]) -> ExcCodes | None:
        targets = [self._writable.get(offset + i) for i in range(len(values))]
        if any(t is None for t in targets):
            return ExcCodes.ILLEGAL_ADDRESS
        updates: dict[str, float] = {}
        for target, word in zip(targets, values, strict=True):
            assert target is not None
            if target == "StorCtl_Mod":
                if word & ~(_CHARGE_BIT | _DISCHARGE_BIT):
                    return ExcCodes.ILLEGAL_VALUE
                updates[target] = word
            else:
                signed = _INT16.decode([word])
                pct = signed * 10.0**self.RATE_SF
                if not 0.0 <= pct <= 100.0:
                    return ExcCodes.ILLEGAL_VALUE
                updates[target] = pct
        self._mode = int(updates.get("StorCtl_Mod", self._mode))
        self._in_pct = updates.get("InWRte", self._in_pct)
        self._out_pct = updates.get("OutWRte", self._out_pct)
        if "MinRsvPct" in updates:
            self.state.min_reserve = updates["MinRsvPct"] / 100.0
        charge = self.state.max_w * self._in_pct / 100.0 if self._mode & _CHARGE_BIT else 0.0
        discharge = self.state.max_w * self._out_pct / 100.0 if self._mode & _DISCHARGE_BIT else 0.0
        self.state.setpoint_w = charge - discharge
        self.render(registers)
        return None
