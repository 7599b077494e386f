"""An EV charger laid out like an Alfen NG9xx socket (Alfen's published "Modbus Slave TCP/IP" map), with sessions.

Holding registers, float32 high word first: 306-310 voltages, 320-326 currents, 338-344 real power per phase and
sum (W), 374 float64 real energy delivered (Wh), 1200 availability, 1201 mode 3 state (5 registers, ASCII: A, B1,
B2, C1, C2, E, F), 1206 actual applied max current, 1208 uint32 remaining validity of the Modbus max current (s),
1210 Modbus max current (A, the one writable setpoint), 1212 safe current, 1214 setpoint accounted for, 1215
phases. As on the real product, a written max current is valid for a limited time and the charger then falls back
to its safe current, so a controller that goes silent cannot leave a charger at full power.

Truck chargers on a real plaza are DC and usually controlled over OCPP; here they use the same map, with the
current per phase at 230 V giving the power (a 350 kW charger allows up to 508 A). The session (arrival, energy
wanted, departure) is known to the simulator, not published by the charger, as on real AC chargers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pymodbus.constants import ExcCodes

from energyhub.simulators.devices import SimulatedDevice
from energyhub.simulators.registers import float32_words, float64_words, string_words, uint32_words
from energyhub.wire.registers import CODECS, RegisterType

__all__ = ["ALFEN_REGISTERS", "ChargerDevice", "ChargerState", "Session"]

ALFEN_REGISTERS = {
    "voltage_l1_v": 306,
    "voltage_l2_v": 308,
    "voltage_l3_v": 310,
    "current_l1_a": 320,
    "current_l2_a": 322,
    "current_l3_a": 324,
    "current_sum_a": 326,
    "power_l1_w": 338,
    "power_l2_w": 340,
    "power_l3_w": 342,
    "power_sum_w": 344,
    "energy_delivered_wh": 374,  # float64
    "availability": 1200,
    "mode3_state": 1201,  # 5 registers of ASCII
    "applied_max_current_a": 1206,
    "max_current_valid_s": 1208,  # uint32
    "modbus_max_current_a": 1210,
    "safe_current_a": 1212,
    "setpoint_accounted": 1214,
    "phases": 1215,
}
_SIZE = 1216
PHASE_VOLTAGE = 230.0
MIN_CURRENT_A = 6.0  # IEC 61851: below 6 A a vehicle cannot charge


@dataclass
class Session:
    energy_wanted_wh: float
    departure_s: float  # simulation time (s) the vehicle leaves
    vehicle_max_w: float
    delivered_wh: float = 0.0

    @property
    def remaining_wh(self) -> float:
        return max(0.0, self.energy_wanted_wh - self.delivered_wh)


@dataclass
class ChargerState:
    max_w: float  # hardware rating
    safe_current_a: float = MIN_CURRENT_A
    setpoint_valid_for_s: float = 60.0  # how long a written max current holds, in real seconds
    modbus_max_current_a: float | None = None  # None: no valid setpoint, the safe current applies
    setpoint_age_s: float = 0.0  # real seconds since the last write: the charger's own timer
    energy_wh: float = 0.0
    session: Session | None = None

    @property
    def hardware_current_a(self) -> float:
        return self.max_w / (3 * PHASE_VOLTAGE)

    @property
    def applied_current_a(self) -> float:
        requested = self.modbus_max_current_a
        if requested is None or self.setpoint_age_s >= self.setpoint_valid_for_s:
            requested = self.safe_current_a
        return min(requested, self.hardware_current_a)

    @property
    def power_w(self) -> float:
        session = self.session
        if session is None or session.remaining_wh <= 0:
            return 0.0
        current = self.applied_current_a
        if current < MIN_CURRENT_A:
            return 0.0
        return min(current * 3 * PHASE_VOLTAGE, session.vehicle_max_w, self.max_w)

    @property
    def mode3_state(self) -> str:
        if self.session is None:
            return "A"
        if self.power_w > 0:
            return "C2"
        return "B2" if self.session.remaining_wh <= 0 else "B1"

    def advance(self, dt_s: float, *, real_s: float | None = None) -> float:
        """Run the physics for ``dt_s`` simulated seconds, in which ``real_s`` real seconds passed (the same when
        left out); returns the energy taken from the grid in Wh. The validity timer counts real seconds, as the
        charger's own clock does: at 60x a 60 s validity still lasts a minute, not one second."""
        energy = self.power_w * dt_s / 3600.0
        if self.session is not None:
            energy = min(energy, self.session.remaining_wh)  # the vehicle stops when it has what it wanted
            self.session.delivered_wh += energy
        self.energy_wh += energy
        self.setpoint_age_s += dt_s if real_s is None else real_s
        return energy


class ChargerDevice(SimulatedDevice[ChargerState]):
    """One charging socket on its own unit id."""

    def __init__(self, *, unit_id: int, state: ChargerState) -> None:
        super().__init__(unit_id=unit_id, size=_SIZE)
        self.state = state

    def render(self, registers: list[int]) -> None:
        s = self.state
        power = math.nan if self.faults.nan else s.power_w
        current = power / (3 * PHASE_VOLTAGE)

        def put(name: str, value: float) -> None:
            address = ALFEN_REGISTERS[name]
            registers[address : address + 2] = float32_words(value)

        for phase in (1, 2, 3):
            put(f"voltage_l{phase}_v", PHASE_VOLTAGE)
            put(f"current_l{phase}_a", current)
            put(f"power_l{phase}_w", power / 3)
        put("current_sum_a", current * 3)
        put("power_sum_w", power)
        energy = ALFEN_REGISTERS["energy_delivered_wh"]
        registers[energy : energy + 4] = float64_words(s.energy_wh)
        registers[ALFEN_REGISTERS["availability"]] = 1
        state = ALFEN_REGISTERS["mode3_state"]
        registers[state : state + 5] = string_words(s.mode3_state, 5)
        put("applied_max_current_a", s.applied_current_a)
        remaining = 0 if s.modbus_max_current_a is None else max(0, s.setpoint_valid_for_s - s.setpoint_age_s)
        valid = ALFEN_REGISTERS["max_current_valid_s"]
        registers[valid : valid + 2] = uint32_words(int(remaining))
        put("modbus_max_current_a", s.modbus_max_current_a or 0.0)
        put("safe_current_a", s.safe_current_a)
        registers[ALFEN_REGISTERS["setpoint_accounted"]] = 1 if s.modbus_max_current_a is not None else 0
        registers[ALFEN_REGISTERS["phases"]] = 3

    def apply_write(self, offset: int, values: list[int], registers: list[int]) -> ExcCodes | None:
        if offset != ALFEN_REGISTERS["modbus_max_current_a"] or len(values) != 2:
            return ExcCodes.ILLEGAL_ADDRESS  # only the max current is writable, as two registers at once
        current = CODECS[RegisterType.FLOAT32].decode(values)
        if not math.isfinite(current) or current < 0:
            return ExcCodes.ILLEGAL_VALUE
        self.state.modbus_max_current_a = current
        self.state.setpoint_age_s = 0.0
        self.render(registers)
        return None
