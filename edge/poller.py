"""Polling devices: one owner per bus, merged block reads, bounded retries, quality flags, availability on change.

Every connection (host, port) has one Modbus client and one lock, so requests to devices behind the same
RTU-to-TCP gateway or serial bus never overlap. A value that could not be read is missing (None), never the last
good value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from edge.profile import DeviceProfile
from edge.register_map import ReadBlock, decode_values, plan_reads
from hub.messages import Quality

__all__ = ["Bus", "DevicePoller", "PollResult"]

log = logging.getLogger(__name__)


class Bus:
    """One Modbus TCP connection and its lock."""

    def __init__(self, host: str, port: int, *, timeout_s: float) -> None:
        self.host, self.port = host, port
        self.lock = asyncio.Lock()
        self.client = AsyncModbusTcpClient(
            host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0.5, reconnect_delay_max=10.0
        )

    async def read(self, block: ReadBlock, unit_id: int) -> list[int] | None:
        async with self.lock:
            if not self.client.connected and not await self.client.connect():
                return None
            method = (
                self.client.read_input_registers
                if block.function == "input"
                else self.client.read_holding_registers
            )
            try:
                reply = await method(block.address, count=block.count, device_id=unit_id)
            except (TimeoutError, ModbusException, OSError):
                return None
            if reply.isError():
                return None
            return list(reply.registers)

    async def write(self, address: int, words: list[int], unit_id: int) -> str | None:
        """Write registers; None when done, otherwise why not."""
        async with self.lock:
            if not self.client.connected and not await self.client.connect():
                return "device not reachable"
            try:
                reply = await self.client.write_registers(address, words, device_id=unit_id)
            except (TimeoutError, ModbusException, OSError) as exc:
                return f"write failed: {exc}"
            if reply.isError():
                return f"device refused the write (Modbus exception {reply.exception_code})"
            return None

    def close(self) -> None:
        self.client.close()


@dataclass
class PollResult:
    values: dict[str, float | None]
    quality: Quality
    ts: float


@dataclass
class DevicePoller:
    device_id: str
    profile: DeviceProfile | None  # None until discovered (``profile: sunspec``)
    bus: Bus
    unit_id: int
    retries: int = 1
    discover: Callable[[], Awaitable[DeviceProfile | None]] | None = field(default=None, repr=False)
    polls: int = 0
    last_success: float | None = None
    last_error: str | None = None
    failing: bool = field(default=False)
    _plans: dict[bool, list[ReadBlock]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.profile is not None:
            self._use(self.profile)

    def _use(self, profile: DeviceProfile) -> None:
        self.profile = profile
        self._plans = {slow: plan_reads(profile, include_slow=slow) for slow in (True, False)}

    async def poll(self) -> PollResult:
        profile = self.profile
        if profile is None:
            profile = await self.discover() if self.discover is not None else None
            if profile is None:
                self._availability(True, "SunSpec discovery found no model chain yet")
                return PollResult({}, Quality.BAD, time.time())
            self._use(profile)
        include_slow = self.polls % profile.slow_every == 0
        self.polls += 1
        ts = time.time()
        blocks: dict[tuple[str, int], list[int]] = {}
        failed = 0
        plan = self._plans[include_slow]
        for block in plan:
            words = None
            for _attempt in range(self.retries + 1):
                words = await self.bus.read(block, self.unit_id)
                if words is not None:
                    break
            if words is None:
                failed += 1
            else:
                blocks[(block.function, block.address)] = words
        decoded = decode_values(profile, blocks)
        # Every value of the poll is reported: those not read are missing (None).
        names = [v.name for b in plan for v in b.values]
        values = {name: decoded.get(name) for name in names}
        missing = sum(v is None for v in values.values())
        quality = Quality.GOOD if missing == 0 else Quality.BAD if missing == len(values) else Quality.PARTIAL
        self._availability(failed == len(plan), f"{failed} of {len(plan)} reads failed")
        return PollResult(values, quality, ts)

    def _availability(self, down: bool, why: str) -> None:
        # Logged once when a device starts failing and once when it recovers, not every poll.
        if down and not self.failing:
            log.warning("device %s stopped answering (%s)", self.device_id, why)
        elif not down and self.failing:
            log.info("device %s answers again", self.device_id)
        self.failing = down
        if down:
            self.last_error = why
        else:
            self.last_success = time.time()
