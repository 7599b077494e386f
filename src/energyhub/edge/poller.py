"""Polling devices: one owner per bus, merged block reads, bounded retries, quality flags, availability on change.

Every connection (host, port) has one Modbus client and one lock, so requests to devices behind the same
RTU-to-TCP gateway or serial bus never overlap; on a serial line the bus keeps a silence after every answer
(``pause_s``) and after opening the port. A value that could not be read is missing (None), never the last good
value. A device that stops answering is backed off: tried with one request, at intervals that double up to
``backoff_max_s``, so its timeouts do not eat the line time of the devices that do answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ModbusException

from energyhub.edge.config import DeviceConfig, SerialLine
from energyhub.edge.register_map import BlockDecoder, ReadBlock, plan_reads
from energyhub.wire.messages import Quality
from energyhub.wire.profile import DeviceProfile

__all__ = ["Bus", "DevicePoller", "PollResult"]

log = logging.getLogger(__name__)


class Bus:
    """One Modbus connection (TCP, or an RTU serial line) and its lock."""

    def __init__(
        self, name: str, client: ModbusBaseClient, *, pause_s: float = 0.0, connect_pause_s: float = 0.0
    ) -> None:
        self.name = name
        self.lock = asyncio.Lock()
        self.client = client
        self.pause_s = pause_s
        self.connect_pause_s = connect_pause_s
        self._quiet_from = 0.0  # monotonic time the line may carry the next request

    # retries=0 on the clients: the poller retries per block itself, so one slow device cannot hold the bus long.
    @classmethod
    def tcp(cls, host: str, port: int, *, timeout_s: float) -> Bus:
        client = AsyncModbusTcpClient(
            host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0.5, reconnect_delay_max=10.0
        )
        return cls(f"tcp:{host}:{port}", client)

    @classmethod
    def rtu(cls, line: SerialLine, *, timeout_s: float) -> Bus:
        client = AsyncModbusSerialClient(
            line.port,
            framer=FramerType.RTU,
            baudrate=line.baudrate,
            parity=line.parity,
            stopbits=line.stopbits,
            bytesize=line.bytesize,
            timeout=timeout_s,
            retries=0,
            reconnect_delay=0.5,
            reconnect_delay_max=10.0,
        )
        return cls(f"rtu:{line.port}", client, pause_s=line.pause_s, connect_pause_s=line.connect_pause_s)

    @classmethod
    def for_device(cls, device: DeviceConfig, *, timeout_s: float) -> Bus:
        if device.serial is not None:
            return cls.rtu(device.serial, timeout_s=timeout_s)
        assert device.host is not None  # DeviceConfig checks that one of the two is given
        return cls.tcp(device.host, device.port, timeout_s=timeout_s)

    async def _ready(self) -> bool:
        """Connected, and the line quiet for as long as it must be; call holding the lock."""
        loop = asyncio.get_running_loop()
        if not self.client.connected:
            if not await self.client.connect():
                return False
            self._quiet_from = max(self._quiet_from, loop.time() + self.connect_pause_s)
        wait = self._quiet_from - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)  # the line's required silence, not a synchronisation
        return True

    def _done(self) -> None:
        self._quiet_from = asyncio.get_running_loop().time() + self.pause_s

    async def read(self, block: ReadBlock, unit_id: int) -> list[int] | None:
        async with self.lock:
            if not await self._ready():
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
            finally:
                self._done()
            if reply.isError():
                return None
            return list(reply.registers)

    async def write(self, address: int, words: list[int], unit_id: int) -> str | None:
        """Write registers; None when done, otherwise why not."""
        async with self.lock:
            if not await self._ready():
                return "device not reachable"
            try:
                reply = await self.client.write_registers(address, words, device_id=unit_id)
            except (TimeoutError, ModbusException, OSError) as exc:
                return f"write failed: {exc}"
            finally:
                self._done()
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
    interval_s: float = 1.0
    backoff_max_s: float = 30.0
    next_due: float = 0.0  # monotonic time of the next poll, kept by the agent's poll loop
    discover: Callable[[], Awaitable[DeviceProfile | None]] | None = field(default=None, repr=False)
    clock: Callable[[], float] = field(default=time.time, repr=False)  # the data clock: a reading's timestamp
    polls: int = 0
    last_success: float | None = None
    last_error: str | None = None
    failing: bool = field(default=False)
    # While failing: a try every `backoff_polls` polls (doubling up to backoff_max_s), `skip` polls to go. Counted
    # in polls, not seconds, so the tries stay on the device's own poll times.
    backoff_polls: int = 0
    skip: int = 0
    _decoders: dict[bool, BlockDecoder] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.profile is not None:
            self._use(self.profile)

    def _use(self, profile: DeviceProfile) -> None:
        self.profile = profile
        self._decoders = {
            slow: BlockDecoder(profile, plan_reads(profile, include_slow=slow)) for slow in (True, False)
        }

    async def poll(self) -> PollResult | None:
        """Read the device: a result (values missing where a read failed), or None while it is backed off and
        not yet due for its next try."""
        if self.skip > 0:
            self.skip -= 1
            return None
        if self.backoff_polls:
            ts = self.clock()
            if not await self._answers():
                self._back_off()
                return PollResult(dict.fromkeys(self._value_names()), Quality.BAD, ts)
        result = await self._poll()  # a device that answers (again): a full poll
        if self.failing:
            self._back_off()
        else:
            self.backoff_polls = 0
        return result

    @property
    def backoff_s(self) -> float:
        """The time between tries while the device does not answer (0 while it does)."""
        return self.backoff_polls * self.interval_s

    def _value_names(self) -> list[str]:
        return self._decoders[True].names if self._decoders else []

    async def _answers(self) -> bool:
        """One request, no retry: is the device back?"""
        decoder = self._decoders.get(False)
        if decoder is None or not decoder.blocks:  # not yet discovered: discovery is the probe
            return True
        return await self.bus.read(decoder.blocks[0], self.unit_id) is not None

    def _back_off(self) -> None:
        most = max(1, int(self.backoff_max_s // self.interval_s))
        self.backoff_polls = min(most, max(1, 2 * self.backoff_polls))
        self.skip = self.backoff_polls - 1
        log.debug("device %s: next try in %.1f s", self.device_id, self.backoff_s)

    async def _poll(self) -> PollResult:
        profile = self.profile
        if profile is None:
            profile = await self.discover() if self.discover is not None else None
            if profile is None:
                self._availability(True, "SunSpec discovery found no model chain yet")
                return PollResult({}, Quality.BAD, self.clock())
            self._use(profile)
        include_slow = self.polls % profile.slow_every == 0
        self.polls += 1
        ts = self.clock()
        decoder = self._decoders[include_slow]
        words: list[list[int] | None] = []
        failed = 0
        for block in decoder.blocks:
            read = None
            for _attempt in range(self.retries + 1):
                read = await self.bus.read(block, self.unit_id)
                if read is not None:
                    break
            failed += read is None
            words.append(read)
        # Every value of the poll is reported: those not read are missing (None).
        values = decoder.decode(words)
        missing = sum(v is None for v in values.values())
        quality = Quality.GOOD if missing == 0 else Quality.BAD if missing == len(values) else Quality.PARTIAL
        self._availability(failed == len(words), f"{failed} of {len(words)} reads failed")
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
