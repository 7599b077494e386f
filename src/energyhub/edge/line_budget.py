"""Does a serial line carry what its devices and intervals ask? Line time per second, from the read plans.

An RS-485 line carries one request at a time. Each read is a request frame (8 bytes) and an answer
(5 bytes + 2 per register), each followed by the 3.5 characters of silence Modbus RTU ends a frame with, and then
the line's ``pause_s``. At 9600 baud 8N1 a character takes 1.04 ms, so a 40-register read takes about 0.12 s: six
meters polled every second already use most of a line. The agent warns at start-up (and ``energyhub edge --check``
prints it) when a line is over-subscribed, before the polls fall behind in the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from energyhub.edge.config import AgentConfig, DeviceConfig, SerialLine
from energyhub.edge.register_map import plan_reads
from energyhub.wire.profile import DeviceProfile

__all__ = ["FULL", "TIGHT", "LineLoad", "line_loads", "read_time_s", "warnings"]

REQUEST_BYTES = 8  # unit, function, address (2), count (2), CRC (2)
ANSWER_BYTES = 5  # unit, function, byte count, CRC (2); plus 2 per register
FRAME_GAP_CHARS = 3.5
TIGHT = 0.7  # a line busier than this has no room left for a retry or a dead device's timeout
FULL = 1.0  # busier than this cannot be polled at the intervals asked


def read_time_s(line: SerialLine, registers: int) -> float:
    """Line time of one read of ``registers`` registers: both frames, their silences, and the line's pause."""
    char_s = line.char_bits / line.baudrate
    chars = REQUEST_BYTES + ANSWER_BYTES + 2 * registers + 2 * FRAME_GAP_CHARS
    return chars * char_s + line.pause_s


def device_load(line: SerialLine, profile: DeviceProfile, interval_s: float) -> float:
    """Seconds of line time per second that polling ``profile`` every ``interval_s`` takes."""
    fast = sum(read_time_s(line, b.count) for b in plan_reads(profile, include_slow=False))
    full = sum(read_time_s(line, b.count) for b in plan_reads(profile, include_slow=True))
    per_poll = fast + (full - fast) / profile.slow_every  # slow values on one poll in slow_every
    return per_poll / interval_s


@dataclass(frozen=True)
class LineLoad:
    port: str
    baudrate: int
    devices: dict[str, float]  # device id -> its share of the line (seconds per second)
    unplanned: tuple[str, ...]  # devices whose reads are not known before they answer (SunSpec discovery)

    @property
    def load(self) -> float:
        return sum(self.devices.values())

    def describe(self) -> str:
        busiest = max(self.devices, key=self.devices.__getitem__) if self.devices else "-"
        return (
            f"serial line {self.port} at {self.baudrate} baud: {len(self.devices)} device(s) use "
            f"{self.load:.0%} of the line (busiest: {busiest}, {self.devices.get(busiest, 0.0):.0%})"
        )


def line_loads(config: AgentConfig, profiles: Mapping[str, DeviceProfile]) -> list[LineLoad]:
    """The load of every serial line of ``config``; ``profiles`` by profile name (those not in it: unplanned)."""
    lines: dict[str, tuple[SerialLine, list[DeviceConfig]]] = {}
    for device in config.devices:
        if device.serial is not None:
            lines.setdefault(device.serial.port, (device.serial, []))[1].append(device)
    out = []
    for port, (line, devices) in lines.items():
        loads, unplanned = {}, []
        for device in devices:
            profile = profiles.get(device.profile)
            if profile is None:
                unplanned.append(device.id)
                continue
            loads[device.id] = device_load(line, profile, device.interval_s or config.interval_s)
        out.append(LineLoad(port, line.baudrate, loads, tuple(unplanned)))
    return out


def warnings(config: AgentConfig, profiles: Mapping[str, DeviceProfile]) -> list[str]:
    """What an installer must hear about the serial lines of ``config``: one sentence per line that is tight or
    over-subscribed, saying what to change."""
    out = []
    for line in line_loads(config, profiles):
        if line.load > FULL:
            out.append(
                f"{line.describe()}: the polls cannot keep their intervals; lengthen the intervals, raise the "
                f"baud rate or split the devices over two lines"
            )
        elif line.load > TIGHT:
            out.append(
                f"{line.describe()}: above {TIGHT:.0%}, a retry or a device that stops answering (timeout_s "
                f"{config.timeout_s:g} s per try) will delay the others' polls"
            )
        if line.unplanned:
            out.append(
                f"serial line {line.port}: {', '.join(line.unplanned)} discover their registers when they answer "
                "(profile sunspec), so their share of the line is not counted above"
            )
    return out
