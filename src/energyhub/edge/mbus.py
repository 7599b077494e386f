"""Wired M-Bus meters behind a TCP level converter: the link layer (EN 13757-2) and a poller per meter.

One ``MbusGateway`` per converter (host, port) owns the TCP connection and a lock, so the meters behind it are
asked in turn: the M-Bus line is half duplex and carries one telegram at a time. A poll is SND_NKE (the meter
answers the single character E5) and REQ_UD2 (it answers RSP_UD, a long frame with variable data records, CI 0x72),
by primary address. The frame is checked here (start, both lengths, stop, checksum, RSP_UD control field, the
address asked, CI) before pyMeterBus decodes its records; the meter's profile (``mbus_profile.py``) then says which
record is which value. A frame that fails a check is a failed read with its reason, never an exception out of
``poll``. A meter that does not answer is backed off as ``DevicePoller`` does.
"""

from __future__ import annotations

import asyncio
import decimal
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import meterbus
from meterbus.exceptions import MBusError

from energyhub.edge.config import DeviceConfig
from energyhub.edge.mbus_profile import MbusProfile, load_mbus_profile
from energyhub.edge.poller import PollResult
from energyhub.wire.messages import Quality

__all__ = [
    "ACK",
    "REQ_UD2",
    "SND_NKE",
    "MbusError",
    "MbusGateway",
    "MbusPoller",
    "MbusReading",
    "check_rsp_ud",
    "checksum",
    "decode_values",
    "parse_rsp_ud",
    "short_frame",
]

log = logging.getLogger(__name__)

ACK = 0xE5
SND_NKE = 0x40
REQ_UD2 = 0x5B  # FCV set, FCB clear: the first request after SND_NKE
RSP_UD = 0x08
CI_VARIABLE = frozenset({0x72, 0x76})  # variable data response, LSB and MSB first
START_SHORT, START_LONG, STOP = 0x10, 0x68, 0x16


class MbusError(Exception):
    """A failed exchange with a meter; the message says what went wrong."""


def checksum(data: bytes) -> int:
    """EN 13757-2's checksum: the arithmetic sum of C, A, CI and user data, modulo 256."""
    return sum(data) & 0xFF


def short_frame(control: int, address: int) -> bytes:
    return bytes([START_SHORT, control, address, checksum(bytes([control, address])), STOP])


def check_rsp_ud(frame: bytes, address: int) -> None:
    """Raise ``MbusError`` saying why ``frame`` is not an RSP_UD long frame from ``address``."""
    if len(frame) < 9 or frame[0] != START_LONG or frame[3] != START_LONG:
        raise MbusError(f"not a long frame: {frame[:8].hex(' ')}")
    if frame[1] != frame[2]:
        raise MbusError(f"the two length fields differ (0x{frame[1]:02X}, 0x{frame[2]:02X})")
    if len(frame) != frame[1] + 6 or frame[-1] != STOP:
        raise MbusError(f"length field says {frame[1] + 6} bytes with stop 0x16, got {len(frame)} bytes")
    body = frame[4:-2]
    if checksum(body) != frame[-2]:
        raise MbusError(f"checksum 0x{frame[-2]:02X}, computed 0x{checksum(body):02X}")
    control, answered, ci = body[0], body[1], body[2]
    if control & 0xCF != RSP_UD:  # ACD and DFC may be set
        raise MbusError(f"control field 0x{control:02X} is not RSP_UD")
    if answered != address:
        raise MbusError(f"answer from address {answered}, asked {address}")
    if ci not in CI_VARIABLE or len(body) < 15:
        raise MbusError(f"CI 0x{ci:02X} with {len(body) - 3} bytes is not a variable data response")


@dataclass(frozen=True)
class MbusReading:
    """A checked RSP_UD: its header and the telegram as pyMeterBus decoded it."""

    manufacturer: str
    medium: int
    telegram: Any  # meterbus.TelegramLong


def parse_rsp_ud(frame: bytes, address: int) -> MbusReading:
    check_rsp_ud(frame, address)
    try:
        # TelegramLong, not meterbus.load: load tries wireless SND_NR first and takes a wired frame of length
        # 0x44 (the wireless C field) for one.
        telegram = meterbus.TelegramLong(list(frame))
        header = telegram.body.bodyHeader
        return MbusReading(str(telegram.manufacturer), header.measure_medium_field.parts[0], telegram)
    # pyMeterBus raises its own errors and, on truncated records, IndexError/KeyError/ValueError.
    except (MBusError, IndexError, KeyError, ValueError, AttributeError) as exc:
        raise MbusError(f"records cannot be decoded: {exc!r}") from None


def decode_values(profile: MbusProfile, telegram: Any) -> dict[str, float | None]:
    """The profile's values from a decoded telegram: the first record that matches each, None where none does."""
    values: dict[str, float | None] = dict.fromkeys(profile.value_names)
    for record in telegram.records:
        if record.more_records_follow or not record.vib.parts or not record.dib.parts:
            continue
        storage, tariff, _device = record.dib.parse_dife()
        function = record.dib.parts[0] >> 4 & 0x03
        for spec in profile.values:
            if values[spec.name] is not None:
                continue
            if not spec.matches(list(record.vib.parts), storage, tariff or 0, function):
                continue
            try:
                raw = record.parsed_value
            # a VIF pyMeterBus has no table entry for (KeyError), a data field of the wrong size, bad digits
            except (ValueError, IndexError, KeyError, decimal.InvalidOperation) as exc:
                log.debug("%s: record not decoded: %r", spec.name, exc)
                continue
            if isinstance(raw, int | float | decimal.Decimal) and not isinstance(raw, bool):
                value = float(raw) * spec.scale
                values[spec.name] = value if math.isfinite(value) else None  # a real's NaN is no reading
    return values


class MbusGateway:
    """One TCP M-Bus level converter: its connection and its lock."""

    def __init__(self, host: str, port: int, *, timeout_s: float) -> None:
        self.name = f"mbus:{host}:{port}"  # as DeviceConfig.bus_key
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @classmethod
    def for_device(cls, device: DeviceConfig, *, timeout_s: float) -> MbusGateway:
        if device.mbus is None:
            raise ValueError(f"device {device.id} has no mbus: address")
        return cls(device.mbus.host, device.mbus.port, timeout_s=timeout_s)

    async def read(self, address: int) -> bytes:
        """SND_NKE then REQ_UD2 to ``address``: the raw RSP_UD frame (not yet checked), or ``MbusError``."""
        async with self.lock:
            try:
                async with asyncio.timeout(self.timeout_s):
                    reader, writer = await self._connection()
                    writer.write(short_frame(SND_NKE, address))
                    await writer.drain()
                    if (first := await reader.readexactly(1))[0] != ACK:
                        raise MbusError(f"SND_NKE answered with 0x{first[0]:02X}, not E5")
                    writer.write(short_frame(REQ_UD2, address))
                    await writer.drain()
                    return await self._frame(reader)
            except TimeoutError:
                self._drop()  # a late answer would otherwise be read as the next meter's
                raise MbusError(f"no answer within {self.timeout_s:g} s") from None
            except (OSError, asyncio.IncompleteReadError) as exc:
                self._drop()
                raise MbusError(f"{self.name}: connection failed: {exc!r}") from None
            except MbusError:
                self._drop()  # the line is out of step: start clean
                raise

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    @staticmethod
    async def _frame(reader: asyncio.StreamReader) -> bytes:
        head = await reader.readexactly(1)
        if head[0] == START_LONG:
            rest = await reader.readexactly(3)
            if rest[0] != rest[1] or rest[2] != START_LONG:
                raise MbusError(f"garbled long frame header: 68 {rest.hex(' ')}")
            return head + rest + await reader.readexactly(rest[0] + 2)
        if head[0] == ACK:
            raise MbusError("REQ_UD2 answered with E5, not RSP_UD")
        raise MbusError(f"REQ_UD2 answered with a frame starting 0x{head[0]:02X}, not a long frame")

    def _drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    def close(self) -> None:
        self._drop()


@dataclass
class MbusPoller:
    """Polls one meter; the same interface as ``DevicePoller`` for the agent's poll loop."""

    device_id: str
    bus: MbusGateway
    address: int
    mbus_profile: MbusProfile
    interval_s: float = 60.0
    backoff_max_s: float = 900.0
    clock: Callable[[], float] = field(default=time.time, repr=False)
    profile: None = None  # the agent's Modbus line budget looks at it; M-Bus has none
    next_due: float = 0.0
    polls: int = 0
    last_success: float | None = None
    last_error: str | None = None
    failing: bool = False
    backoff_polls: int = 0
    skip: int = 0

    @classmethod
    def for_device(
        cls,
        device: DeviceConfig,
        gateway: MbusGateway,
        *,
        interval_s: float,
        backoff_max_s: float,
        clock: Callable[[], float],
    ) -> MbusPoller:
        """The poller of ``device``; raises ``MbusProfileError`` for a missing or bad profile."""
        if device.mbus is None:
            raise ValueError(f"device {device.id} has no mbus: address")
        return cls(
            device_id=device.id,
            bus=gateway,
            address=device.mbus.address,
            mbus_profile=load_mbus_profile(device.profile),
            interval_s=interval_s,
            backoff_max_s=backoff_max_s,
            clock=clock,
        )

    @property
    def backoff_s(self) -> float:
        return self.backoff_polls * self.interval_s

    async def poll(self) -> PollResult | None:
        """Read the meter: a result (None values where not read), or None while backed off."""
        if self.skip > 0:
            self.skip -= 1
            return None
        self.polls += 1
        ts = self.clock()
        try:
            reading = parse_rsp_ud(await self.bus.read(self.address), self.address)
            self._check_identity(reading)
        except MbusError as exc:
            self._availability(f"{self.bus.name} address {self.address}: {exc}")
            self._back_off()
            return PollResult(dict.fromkeys(self.mbus_profile.value_names), Quality.BAD, ts)
        values = decode_values(self.mbus_profile, reading.telegram)
        missing = sum(v is None for v in values.values())
        quality = Quality.GOOD if missing == 0 else Quality.BAD if missing == len(values) else Quality.PARTIAL
        self._availability(None)
        if missing:
            log.debug("meter %s: %d of %d values not in its telegram", self.device_id, missing, len(values))
        self.backoff_polls = self.skip = 0
        return PollResult(values, quality, ts)

    def _check_identity(self, reading: MbusReading) -> None:
        """A different meter at the address (swapped, readdressed) is refused rather than read as this one."""
        profile = self.mbus_profile
        if profile.manufacturer is not None and reading.manufacturer != profile.manufacturer:
            raise MbusError(
                f"manufacturer {reading.manufacturer}, profile {profile.name} expects {profile.manufacturer}"
            )
        if reading.medium != profile.medium:
            raise MbusError(
                f"medium 0x{reading.medium:02X}, profile {profile.name} expects 0x{profile.medium:02X}"
            )

    def _back_off(self) -> None:
        most = max(1, int(self.backoff_max_s // self.interval_s))
        self.backoff_polls = min(most, max(1, 2 * self.backoff_polls))
        self.skip = self.backoff_polls - 1
        log.debug("meter %s: next try in %.1f s", self.device_id, self.backoff_s)

    def _availability(self, why: str | None) -> None:
        # Logged once when a meter starts failing and once when it recovers, not every poll.
        if why is not None:
            if not self.failing:
                log.warning("meter %s stopped answering: %s", self.device_id, why)
            self.failing = True
            self.last_error = why
            return
        if self.failing:
            log.info("meter %s answers again", self.device_id)
        self.failing = False
        self.last_success = time.time()
