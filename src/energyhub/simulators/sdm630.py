"""An Eastron SDM630 three-phase meter: input registers (function 4), IEEE-754 float32, high word first.

Addresses are the protocol addresses (0-based) of Eastron's published "SDM630 Modbus protocol" (the manual's
30001 is address 0). Sign as the meter shows it with standard wiring: power positive = taken from the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from energyhub.simulators.registers import float32_words

__all__ = ["SDM630_REGISTERS", "MeterState", "render_sdm630"]

SDM630_REGISTERS: dict[str, int] = {
    "voltage_l1_v": 0x0000,
    "voltage_l2_v": 0x0002,
    "voltage_l3_v": 0x0004,
    "current_l1_a": 0x0006,
    "current_l2_a": 0x0008,
    "current_l3_a": 0x000A,
    "power_l1_w": 0x000C,
    "power_l2_w": 0x000E,
    "power_l3_w": 0x0010,
    "power_factor_l1": 0x001E,
    "power_factor_l2": 0x0020,
    "power_factor_l3": 0x0022,
    "power_total_w": 0x0034,
    "frequency_hz": 0x0046,
    "import_kwh": 0x0048,
    "export_kwh": 0x004A,
    "total_kwh": 0x0156,
}
SDM630_SIZE = 0x0160  # registers the simulated meter answers for (0 .. 0x015F)


@dataclass
class MeterState:
    """What the meter measures. ``power_w`` is the net three-phase power, import positive."""

    power_w: float = 0.0
    voltage_v: tuple[float, float, float] = (230.0, 230.0, 230.0)
    frequency_hz: float = 50.0
    import_wh: float = 0.0
    export_wh: float = 0.0
    phase_share: tuple[float, float, float] = field(default=(1 / 3, 1 / 3, 1 / 3))

    def advance(self, dt_s: float) -> None:
        """Integrate energy over ``dt_s`` seconds at the present power: counters only ever grow."""
        self.add_energy(self.power_w * dt_s / 3600.0)

    def phases(self) -> list[tuple[float, float, float]]:
        """(power W, voltage V, current A) of L1, L2, L3: the net power split by ``phase_share``."""
        out = []
        for share, voltage in zip(self.phase_share, self.voltage_v, strict=True):
            power = self.power_w * share
            out.append((power, voltage, abs(power) / voltage if voltage else 0.0))
        return out

    def add_energy(self, energy_wh: float) -> None:
        """Count ``energy_wh`` (import positive) into the import or export register."""
        if energy_wh >= 0:
            self.import_wh += energy_wh
        else:
            self.export_wh -= energy_wh


def render_sdm630(state: MeterState, registers: list[int], *, nan: bool = False) -> None:
    """Write the meter's values into ``registers`` (indexed by protocol address); ``nan`` simulates a bad read."""
    values: dict[str, float] = {}
    for phase, (power, voltage, current) in enumerate(state.phases(), start=1):
        values[f"voltage_l{phase}_v"] = voltage
        values[f"current_l{phase}_a"] = current
        values[f"power_l{phase}_w"] = power
        values[f"power_factor_l{phase}"] = 1.0
    values["power_total_w"] = state.power_w
    values["frequency_hz"] = state.frequency_hz
    values["import_kwh"] = state.import_wh / 1000.0
    values["export_kwh"] = state.export_wh / 1000.0
    values["total_kwh"] = (state.import_wh + state.export_wh) / 1000.0
    for name, address in SDM630_REGISTERS.items():
        registers[address : address + 2] = float32_words(math.nan if nan else values[name])
