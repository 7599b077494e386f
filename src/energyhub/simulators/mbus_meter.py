"""Simulated wired M-Bus gas and water meters behind a simulated TCP M-Bus level converter.

``serve_mbus`` listens on TCP like a transparent converter (as the line behind it: one telegram at a time) and
answers for the meters at their primary addresses: SND_NKE with E5, REQ_UD2 with an RSP_UD long frame built per
EN 13757-2/-3 (CI 0x72, identification number in BCD, manufacturer FLAG code, medium, then the data records).
A gas meter sends its index as 8-digit BCD in 0.01 m³ (DIF 0x0C, VIF 0x14) and a due-date reading (storage 1);
a water meter sends litres as a 32-bit integer (DIF 0x04, VIF 0x13), a target volume (storage 1) and its flow
(VIF 0x3B, l/h). Counters grow with an hourly use profile on a clock a test injects. Fault modes per meter:
``silent`` (no answer) and ``garbled`` (a wrong checksum).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["MbusMeterSim", "MbusServer", "bcd", "manufacturer_code", "serve_mbus"]

Fault = Literal["silent", "garbled", "wrong_address"] | None

# Share of the daily use per hour of the day (sums to 1): gas for heating peaks in the morning, water in the
# morning and evening of a working day.
GAS_DAY = tuple(
    x / 24.0
    for x in (
        0.4,
        0.4,
        0.4,
        0.5,
        0.8,
        1.6,
        2.0,
        1.8,
        1.4,
        1.2,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        1.1,
        1.2,
        1.3,
        1.2,
        1.0,
        0.8,
        0.6,
        0.5,
    )
)
WATER_DAY = tuple(
    x / 24.0
    for x in (
        0.1,
        0.1,
        0.1,
        0.1,
        0.2,
        0.8,
        1.8,
        2.2,
        1.8,
        1.4,
        1.3,
        1.5,
        1.6,
        1.4,
        1.3,
        1.3,
        1.5,
        1.7,
        1.6,
        1.2,
        0.8,
        0.5,
        0.3,
        0.2,
    )
)


def bcd(value: int, nbytes: int) -> bytes:
    """``value`` as packed BCD, least significant byte first (EN 13757-3 type A)."""
    digits = f"{value:0{2 * nbytes}d}"
    if len(digits) > 2 * nbytes:
        raise ValueError(f"{value} does not fit {2 * nbytes} BCD digits")
    return bytes(int(digits[i : i + 2], 16) for i in range(0, len(digits), 2))[::-1]


def manufacturer_code(flag: str) -> bytes:
    """The FLAG association's three letters as EN 13757-3's 2-byte manufacturer field, LSB first."""
    letters = [ord(c) - 64 for c in flag.upper()]
    return (letters[0] << 10 | letters[1] << 5 | letters[2]).to_bytes(2, "little")


def _integral(profile: tuple[float, ...], start: float, end: float) -> float:
    """Days of use between two epoch times under an hourly profile (UTC hours)."""
    total, t = 0.0, start
    while t < end:
        hour_end = min(end, (t // 3600 + 1) * 3600)
        total += profile[int(t // 3600) % 24] * (hour_end - t) / 3600
        t = hour_end
    return total


@dataclass
class MbusMeterSim:
    """One meter on the line. ``volume_m3()`` is its register at the clock's time, in the resolution it sends."""

    address: int
    medium: int  # 0x03 gas, 0x07 water
    manufacturer: str
    serial: int
    start_m3: float
    m3_per_day: float
    day_profile: tuple[float, ...]
    resolution_m3: float  # 0.01 for the gas BCD index, 0.001 (litres) for water
    version: int = 1
    clock: Callable[[], float] = field(default=time.time, repr=False)
    start_ts: float = 0.0
    fault: Fault = None
    access_number: int = 0
    requests: int = 0

    @classmethod
    def gas(
        cls,
        address: int,
        *,
        clock: Callable[[], float] = time.time,
        start_m3: float = 1234.56,
        m3_per_day: float = 40.0,
        serial: int = 12345678,
    ) -> MbusMeterSim:
        return cls(
            address, 0x03, "ELS", serial, start_m3, m3_per_day, GAS_DAY, 0.01, clock=clock, start_ts=clock()
        )

    @classmethod
    def water(
        cls,
        address: int,
        *,
        clock: Callable[[], float] = time.time,
        start_m3: float = 321.987,
        m3_per_day: float = 6.0,
        serial: int = 87654321,
    ) -> MbusMeterSim:
        return cls(
            address,
            0x07,
            "KAM",
            serial,
            start_m3,
            m3_per_day,
            WATER_DAY,
            0.001,
            clock=clock,
            start_ts=clock(),
        )

    def counts(self, at: float | None = None) -> int:
        """The register in units of its resolution: monotonic, whole counts as the meter's index shows."""
        now = self.clock() if at is None else at
        m3 = self.start_m3 + self.m3_per_day * _integral(
            self.day_profile, self.start_ts, max(now, self.start_ts)
        )
        return math.floor(m3 / self.resolution_m3 + 1e-6)  # the index shows whole counts, never rounds up

    def volume_m3(self, at: float | None = None) -> float:
        return self.counts(at) * self.resolution_m3

    def flow_l_h(self) -> int:
        hour = int(self.clock() // 3600) % 24
        return round(self.m3_per_day * self.day_profile[hour] * 1000)

    def records(self) -> bytes:
        counts = self.counts()
        if self.medium == 0x03:
            due_date = round(self.start_m3 / self.resolution_m3)
            return (
                bytes([0x4C, 0x14])
                + bcd(due_date, 4)  # storage 1: the due-date reading
                + bytes([0x0C, 0x14])
                + bcd(counts, 4)
            )
        target = round(self.start_m3 / self.resolution_m3)
        return (
            bytes([0x44, 0x13])
            + target.to_bytes(4, "little")  # storage 1: the target volume
            + bytes([0x04, 0x13])
            + counts.to_bytes(4, "little")
            + bytes([0x02, 0x3B])
            + self.flow_l_h().to_bytes(2, "little")
        )

    def rsp_ud(self) -> bytes:
        """The RSP_UD long frame for the meter's state now."""
        self.access_number = (self.access_number + 1) & 0xFF
        address = (self.address + 1) % 251 if self.fault == "wrong_address" else self.address
        header = (
            bcd(self.serial, 4)
            + manufacturer_code(self.manufacturer)
            + bytes([self.version, self.medium, self.access_number, 0x00, 0x00, 0x00])
        )
        body = bytes([0x08, address, 0x72]) + header + self.records()
        check = sum(body) & 0xFF
        if self.fault == "garbled":
            check ^= 0x5A
        return bytes([0x68, len(body), len(body), 0x68]) + body + bytes([check, 0x16])


class MbusServer:
    """The converter: answers the meters' telegrams, one at a time, after ``reply_delay_s`` of line time."""

    def __init__(self, meters: Sequence[MbusMeterSim], *, reply_delay_s: float = 0.0) -> None:
        self.meters = {m.address: m for m in meters}
        self.reply_delay_s = reply_delay_s
        self.in_flight = 0
        self.overlaps = 0  # requests that arrived while another was still being answered
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._client, host, port)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                frame = await self._request(reader)
                if frame is None:
                    break
                if self.in_flight:
                    self.overlaps += 1
                self.in_flight += 1
                task = asyncio.create_task(self._answer(frame, writer))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    async def _request(reader: asyncio.StreamReader) -> bytes | None:
        head = await reader.read(1)
        if not head:
            return None
        if head[0] == 0x10:
            return head + await reader.readexactly(4)
        if head[0] == 0x68:
            rest = await reader.readexactly(3)
            return head + rest + await reader.readexactly(rest[0] + 2)
        return b""  # line noise: no meter answers it

    async def _answer(self, frame: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            reply = self._reply(frame)
            if reply is not None:
                await asyncio.sleep(self.reply_delay_s)  # the telegram's time on the line
                writer.write(reply)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.in_flight -= 1

    def _reply(self, frame: bytes) -> bytes | None:
        if len(frame) != 5 or frame[4] != 0x16 or (frame[1] + frame[2]) & 0xFF != frame[3]:
            return None  # a frame with a bad checksum is not answered (EN 13757-2)
        control, address = frame[1], frame[2]
        meter = self.meters.get(address)
        if meter is None or meter.fault == "silent":
            return None
        meter.requests += 1
        if control == 0x40:
            return b"\xe5"
        if control & 0xCF == 0x4B:  # REQ_UD2, FCB either way
            return meter.rsp_ud()
        return None


async def serve_mbus(
    host: str, port: int, meters: Sequence[MbusMeterSim], *, reply_delay_s: float = 0.0
) -> MbusServer:
    """A started simulated converter; ``port`` 0 takes a free one (``server.port`` says which)."""
    server = MbusServer(meters, reply_delay_s=reply_delay_s)
    await server.start(host, port)
    return server
