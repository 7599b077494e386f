"""Any device of the library, served from its profile's YAML: the registers a profile reads hold what the
device's role state says, encoded the way the profile decodes them, and its setpoint registers take writes.

The hand-written devices (``sdm630``, ``sunspec``, ``ev_charger``) model their product in full, quirks and all;
this one serves every other profile from the same physics (``MeterState``, ``InverterState``, ``BatteryState``,
``ChargerState``), so each profile of the library runs end to end through an agent. What it cannot show is a
wrong address in a profile: it reads the profile it serves. The profile test cases (``tests/edge/profile_cases``),
written from the manufacturers' tables, are what check those.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pymodbus.constants import ExcCodes

from energyhub.simulators.devices import BatteryState, InverterState, SimulatedDevice
from energyhub.simulators.ev_charger import PHASE_VOLTAGE, ChargerState
from energyhub.simulators.sdm630 import MeterState
from energyhub.wire import roles
from energyhub.wire.profile import DeviceProfile, SetpointSpec, ValueSpec
from energyhub.wire.registers import CODECS, RegisterType, encode_string

__all__ = ["ProfileDevice", "RoleState", "readings"]

RoleState = MeterState | InverterState | BatteryState | ChargerState
S = TypeVar("S", MeterState, InverterState, BatteryState, ChargerState)
Function = str  # "holding" or "input"

_READ_FUNCTIONS = {3: "holding", 4: "input"}
_SF = CODECS[RegisterType.INT16]
# IEC 61851 states as Alfen's map numbers them: the codes a profile's mode3_state strings map to.
_MODE3_CODES = {"A": 0.0, "B1": 1.0, "B2": 2.0, "C1": 3.0, "C2": 4.0}


def _meter(state: MeterState) -> dict[str, float]:
    out = {
        roles.POWER_W: state.power_w,
        roles.ENERGY_IMPORT_WH: state.import_wh,
        roles.ENERGY_EXPORT_WH: state.export_wh,
        "energy_total_wh": state.import_wh + state.export_wh,
        "frequency_hz": state.frequency_hz,
    }
    for phase, (power, voltage, current) in enumerate(state.phases(), start=1):
        out[f"power_l{phase}_w"] = power
        out[f"voltage_l{phase}_v"] = voltage
        out[f"current_l{phase}_a"] = current
    return out


def _inverter(state: InverterState) -> dict[str, float]:
    output = state.output_w
    return {
        roles.POWER_W: -output,  # import-positive: producing is negative
        "energy_produced_wh": state.energy_wh,
        roles.POWER_LIMIT_PCT: state.limit_pct,
        roles.POWER_LIMIT_ENABLED: 1.0 if state.limit_enabled else 0.0,
        "frequency_hz": 50.0,
        "current_a": output / PHASE_VOLTAGE,
        **_phases(output),
    }


def _battery(state: BatteryState) -> dict[str, float]:
    return {
        roles.POWER_W: state.power_w,
        roles.SOC_PCT: state.soc * 100.0,
        "energy_charged_wh": state.energy_in_wh,
        "energy_discharged_wh": state.energy_out_wh,
        "frequency_hz": 50.0,
        **_phases(state.power_w),
    }


def _charger(state: ChargerState) -> dict[str, float]:
    return {
        roles.POWER_W: state.power_w,
        roles.APPLIED_CURRENT_A: state.applied_current_a,
        roles.ENERGY_DELIVERED_WH: state.energy_wh,
        roles.MODE3_STATE: _MODE3_CODES.get(state.mode3_state, 0.0),
        "session_energy_wh": state.session.delivered_wh if state.session else 0.0,
        **_phases(state.power_w),
    }


def _phases(power_w: float) -> dict[str, float]:
    out = {}
    for phase in (1, 2, 3):
        out[f"voltage_l{phase}_v"] = PHASE_VOLTAGE
        out[f"current_l{phase}_a"] = abs(power_w) / 3 / PHASE_VOLTAGE
        out[f"power_l{phase}_w"] = power_w / 3
    return out


_READINGS: dict[type, Callable[..., dict[str, float]]] = {
    MeterState: _meter,
    InverterState: _inverter,
    BatteryState: _battery,
    ChargerState: _charger,
}


def readings(state: RoleState) -> dict[str, float]:
    """What a device in ``state`` measures, by the value names profiles use; a name a profile has and this
    lacks (a status word, a temperature) reads 0."""
    return _READINGS[type(state)](state)


@dataclass(frozen=True)
class _Block:
    function: Function
    start: int
    size: int


def _spans(profile: DeviceProfile) -> dict[Function, tuple[int, int]]:
    """(first, last + 1) register of every function a profile reads or writes."""
    spans: dict[Function, list[int]] = {}
    for value in profile.values:
        spans.setdefault(value.function, []).extend((value.address, value.address + value.registers))
        if value.sf_address is not None:
            spans[value.function].extend((value.sf_address, value.sf_address + 1))
    for setpoint in profile.setpoints:
        # The edge writes holding registers (function 6/16) whatever function the profile reads them with.
        spans.setdefault("holding", []).extend((setpoint.address, setpoint.address + setpoint.registers))
        for address, _word in setpoint.also_write:
            spans["holding"].extend((address, address + 1))
    return {function: (min(ends), max(ends)) for function, ends in spans.items()}


class ProfileDevice(SimulatedDevice[S]):
    """A device that answers as ``profile`` describes, showing ``state``.

    Holding and input registers are separate tables, as on a real device (the server serves each function its
    own block). Writes are taken only at a setpoint's address with its register count, or at an ``also_write``
    address, as a locked-down product takes them; a setpoint outside its profile bounds is refused with
    ILLEGAL_VALUE.
    """

    def __init__(self, *, unit_id: int, profile: DeviceProfile, state: S) -> None:
        self.profile = profile
        self.state = state
        self.blocks = {f: _Block(f, lo, hi - lo) for f, (lo, hi) in _spans(profile).items()}
        super().__init__(unit_id=unit_id, size=sum(b.size for b in self.blocks.values()))
        self._setpoints: dict[int, list[SetpointSpec]] = {}
        for setpoint in profile.setpoints:
            self._setpoints.setdefault(setpoint.address, []).append(setpoint)
        self._pending: tuple[list[SetpointSpec], float] | None = None
        self._extras = {a for s in profile.setpoints for a, _w in s.also_write}
        self.written: dict[str, float] = {}  # setpoint name -> the last value the device took
        by_sf: dict[tuple[Function, int], list[ValueSpec]] = {}
        for value in profile.values:
            if value.sf_address is not None:
                by_sf.setdefault((value.function, value.sf_address), []).append(value)
        self._by_sf = by_sf

    def register_blocks(self) -> dict[Function, tuple[int, list[int]]]:
        out = {}
        for function, block in self.blocks.items():
            registers = [0] * block.size
            self.render_function(function, registers)
            out[function] = (block.start, registers)
        return out

    def render_for(self, function_code: int, registers: list[int]) -> None:
        function = _READ_FUNCTIONS.get(function_code)
        if function is not None and function in self.blocks:
            self.render_function(function, registers)

    def render_function(self, function: Function, registers: list[int]) -> None:
        """Write every value of ``function`` into its block from the present state."""
        start = self.blocks[function].start
        now = readings(self.state)
        scale_factors: dict[int, int] = {}
        for (sf_function, sf_address), members in self._by_sf.items():
            if sf_function == function:
                sf = _scale_factor(members, now)
                scale_factors[sf_address] = sf
                registers[sf_address - start] = _SF.encode(sf)[0]
        for value in self.profile.values:
            if value.function != function:
                continue
            reading = math.nan if self.faults.nan else now.get(value.name, 0.0)
            sf = scale_factors.get(value.sf_address, 0) if value.sf_address is not None else 0
            words = _encode(value, reading, sf, self.profile.word_order)
            offset = value.address - start
            registers[offset : offset + len(words)] = words

    def apply_write(self, offset: int, values: list[int], registers: list[int]) -> ExcCodes | None:
        holding = self.blocks.get("holding")
        if holding is None:
            return ExcCodes.ILLEGAL_ADDRESS
        address = holding.start + offset
        specs = self._setpoints.get(address)
        if specs is None:
            if address in self._extras and len(values) == 1:
                registers[offset] = values[0]
                self._resolve(holding.start, registers)
                return None
            return ExcCodes.ILLEGAL_ADDRESS
        spec = specs[0]
        if len(values) != spec.registers:
            return ExcCodes.ILLEGAL_ADDRESS
        value = CODECS[spec.type].decode(values, spec.order(self.profile.word_order)) * spec.scale
        if not (math.isfinite(value) and spec.min - 1e-9 <= value <= spec.max + 1e-9):
            return ExcCodes.ILLEGAL_VALUE
        registers[offset : offset + len(values)] = values
        if len(specs) == 1:
            self._apply(spec, value)
        else:
            # Several setpoints share the register (charge and discharge power, told apart by a command
            # register): which one it was shows once its also_write registers are written.
            self._pending = (specs, value)
        return None

    def _resolve(self, start: int, registers: list[int]) -> None:
        if self._pending is None:
            return
        specs, value = self._pending
        for spec in specs:
            if all(registers[a - start] == word for a, word in spec.also_write):
                for other in specs:
                    self.written[other.name] = 0.0  # the shared register now means this one
                self._pending = None
                self._apply(spec, value)
                return

    def _apply(self, spec: SetpointSpec, value: float) -> None:
        self.written[spec.name] = value
        self._take(spec, value)

    def _take(self, spec: SetpointSpec, value: float) -> None:
        """The physics of a setpoint a role defines; any other setpoint is kept in its register only."""
        state = self.state
        if isinstance(state, InverterState) and spec.name == roles.PV_LIMIT_PCT:
            state.limit_pct = value
            state.limit_enabled = True
        elif isinstance(state, BatteryState) and spec.name in (
            roles.CHARGE_RATE_PCT,
            roles.DISCHARGE_RATE_PCT,
        ):
            charge = self.written.get(roles.CHARGE_RATE_PCT, 0.0)
            discharge = self.written.get(roles.DISCHARGE_RATE_PCT, 0.0)
            state.setpoint_w = state.max_w * (charge - discharge) / 100.0
        elif isinstance(state, ChargerState) and spec.name == roles.MAX_CURRENT_A:
            state.modbus_max_current_a = value
            state.setpoint_age_s = 0.0


_INTEGER_RANGE = {
    RegisterType.INT16: (-0x8000, 0x7FFF),
    RegisterType.UINT16: (0, 0xFFFF),
    RegisterType.INT32: (-0x8000_0000, 0x7FFF_FFFF),
    RegisterType.UINT32: (0, 0xFFFF_FFFF),
}


def _raw(value: ValueSpec, reading: float, sf: int) -> float:
    return reading / (value.scale * value.sign * 10.0**sf)


def _scale_factor(members: list[ValueSpec], now: dict[str, float]) -> int:
    """The finest SunSpec scale factor at which every value sharing the register fits its type."""
    for sf in range(-3, 11):
        fits = True
        for value in members:
            low, high = _INTEGER_RANGE.get(value.type, (-math.inf, math.inf))
            raw = round(_raw(value, now.get(value.name, 0.0), sf))
            # A device never stores a reading as its own not-implemented marker.
            if not low < raw < high or raw in value.not_implemented:
                fits = False
                break
        if fits:
            return sf
    return 10


def _encode(value: ValueSpec, reading: float, sf: int, profile_order: str) -> list[int]:
    if value.type is RegisterType.STRING:
        codes = value.codes or {}
        text = next((t for t, n in codes.items() if n == reading), next(iter(codes), ""))
        return encode_string(text, value.registers)
    codec = CODECS[value.type]
    order = value.order(profile_order)  # type: ignore[arg-type]
    if not math.isfinite(reading):
        if value.not_implemented:
            return codec.encode(value.not_implemented[0], order)
        if value.type in (RegisterType.FLOAT32, RegisterType.FLOAT64):
            return codec.encode(math.nan, order)
        return codec.encode(_INTEGER_RANGE[value.type][1], order)
    raw = _raw(value, reading, sf)
    if value.type in _INTEGER_RANGE:
        low, high = _INTEGER_RANGE[value.type]
        raw = round(raw)
        if value.type is RegisterType.UINT32 and raw >= 0:
            raw %= 2**32  # counters roll over
        raw = max(low, min(high, raw))
    return codec.encode(raw, order)
