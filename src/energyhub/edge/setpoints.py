"""Setpoints at the edge: validate, write, read back, acknowledge; and the failsafe when control goes quiet.

A setpoint is applied only if it names a known device and one of its profile's setpoints, lies within the
profile's bounds and the gateway config's narrower ones, and has not expired. When it expires without a successor,
or when the controller's heartbeat has been missing longer than configured, the device goes to its configured safe
mode, on the device itself, whatever the network does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from energyhub.domain.clock import Clock
from energyhub.edge.config import DeviceConfig
from energyhub.edge.poller import Bus
from energyhub.edge.register_map import ReadBlock
from energyhub.wire.messages import Setpoint, SetpointAck, SetpointStatus
from energyhub.wire.profile import DeviceProfile, SetpointSpec
from energyhub.wire.registers import WordOrder, codec

__all__ = ["DeviceControl", "decode_words", "encode_words"]

log = logging.getLogger(__name__)


def encode_words(spec: SetpointSpec, value: float, profile_order: WordOrder = "big") -> list[int]:
    """Registers for ``value`` in real units (raw = value / scale), in the register's word order (its own, else
    ``profile_order``, the profile's); ``ValueError`` if the raw value does not fit the register type."""
    return codec(spec.type).encode(value / spec.scale, spec.order(profile_order))


def decode_words(spec: SetpointSpec, words: list[int], profile_order: WordOrder = "big") -> float:
    """The setpoint in real units that ``words`` hold: the inverse of ``encode_words``."""
    return float(codec(spec.type).decode(words, spec.order(profile_order))) * spec.scale


@dataclass
class DeviceControl:
    config: DeviceConfig
    profile: DeviceProfile
    bus: Bus
    clock: Clock = field(default_factory=Clock)  # the data clock that setpoints' times are on
    expires: float | None = None  # data-clock epoch s when the active setpoint ends
    in_safe_mode: bool = False
    applied: dict[str, float] = field(default_factory=dict)

    def _spec(self, name: str) -> SetpointSpec | None:
        return next((s for s in self.profile.setpoints if s.name == name), None)

    def _reject(self, setpoint: Setpoint, reason: str) -> SetpointAck:
        log.warning("setpoint %s for %s rejected: %s", setpoint.id, self.config.id, reason)
        return SetpointAck(id=setpoint.id, status=SetpointStatus.REJECTED, ts=self.clock.now(), reason=reason)

    async def apply(self, setpoint: Setpoint) -> SetpointAck:
        spec = self._spec(setpoint.name)
        if spec is None:
            known = ", ".join(s.name for s in self.profile.setpoints) or "none"
            return self._reject(
                setpoint, f"{self.config.id} has no setpoint {setpoint.name!r} (it has: {known})"
            )
        low, high = spec.min, spec.max
        if setpoint.name in self.config.setpoint_bounds:
            cfg_low, cfg_high = self.config.setpoint_bounds[setpoint.name]
            low, high = max(low, cfg_low), min(high, cfg_high)
        if not low <= setpoint.value <= high:
            return self._reject(
                setpoint, f"{setpoint.name} {setpoint.value:g} is outside [{low:g}, {high:g}]"
            )
        if setpoint.expires <= self.clock.now():
            return self._reject(setpoint, f"expired at {setpoint.expires.isoformat()}")
        error = await self._write(spec, setpoint.value)
        if error is not None:
            return self._reject(setpoint, error)
        readback = await self._read_back(spec)
        self.expires = setpoint.expires.timestamp()
        self.in_safe_mode = False
        self.applied[setpoint.name] = setpoint.value
        return SetpointAck(
            id=setpoint.id, status=SetpointStatus.APPLIED, ts=self.clock.now(), readback=readback
        )

    async def _write(self, spec: SetpointSpec, value: float) -> str | None:
        try:
            words = encode_words(spec, value, self.profile.word_order)
        except ValueError as exc:  # within bounds, but the scaled raw value overflows the register type
            return f"{spec.name} {value:g}: {exc}"
        error = await self.bus.write(spec.address, words, self.config.unit_id)
        for address, extra in spec.also_write:
            if error is None:
                error = await self.bus.write(address, [extra], self.config.unit_id)
        return error

    async def _read_back(self, spec: SetpointSpec) -> float | None:
        words = await self.bus.read(
            ReadBlock(spec.function, spec.address, spec.registers, ()), self.config.unit_id
        )
        return None if words is None else decode_words(spec, words, self.profile.word_order)

    async def enter_safe_mode(self, why: str, *, control_lost: bool = True) -> None:
        """Apply the configured safe setpoints (once per episode). Logged as a warning when control is lost; a
        setpoint that expires while control lives (it steers the device no longer) is routine."""
        if self.in_safe_mode:
            return
        self.in_safe_mode = True
        self.expires = None
        for name, value in self.config.safe_mode.items():
            spec = self._spec(name)
            if spec is None:
                log.error("safe mode of %s names unknown setpoint %s", self.config.id, name)
                continue
            error = await self._write(spec, value)
            if error is None:
                self.applied[name] = value
                level = logging.WARNING if control_lost else logging.INFO
                log.log(level, "device %s in safe mode (%s): %s = %g", self.config.id, why, name, value)
            else:
                log.error("device %s could not enter safe mode (%s): %s", self.config.id, why, error)
                self.in_safe_mode = False  # try again next time

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (now or self.clock.timestamp()) >= self.expires
