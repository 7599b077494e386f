"""An RS-485 line at a real baud rate: a pseudo-terminal whose far end carries Modbus RTU frames to simulated
devices, each byte taking the time it takes on the wire.

A pty passes bytes at memory speed whatever baud rate is set on it, so the line's timing is enforced here: a
request is on the line for its length in character times (from when the line is free), the devices' server
answers, and the answer is released only after its own character times. One frame at a time, as on a
half-duplex line. A unit in ``silent`` gets its request but never answers, as an unplugged or dead device on a
real line does (an RTU-to-TCP gateway would answer 0x0B instead: that is ``Faults.offline``).

Every frame is logged with its times (``frames``), so a test can see the line as a logic analyser would: when
each request started, whether it was answered, and how busy the line was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from dataclasses import dataclass, field

__all__ = ["Frame", "RtuLine"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    unit: int
    function: int
    start: float  # loop time the request began on the line
    end: float  # loop time the line was free again (answer sent, or request ended when no answer)
    answered: bool


def request_length(buffer: bytes) -> int | None:
    """The length of the RTU request starting ``buffer``, once enough of it is there to tell."""
    if len(buffer) < 2:
        return None
    function = buffer[1]
    if function in (1, 2, 3, 4, 5, 6):
        return 8
    if function in (15, 16):
        return 9 + buffer[6] if len(buffer) >= 7 else None
    return len(buffer)  # a function the simulators do not serve: pass it on as it is


def answer_length(buffer: bytes) -> int | None:
    if len(buffer) < 3:
        return None
    function = buffer[1]
    if function & 0x80:
        return 5
    if function in (1, 2, 3, 4):
        return 5 + buffer[2]
    return 8


@dataclass
class RtuLine:
    """A pty at ``port`` (``/dev/pts/N``) for the agent; the devices are a ``GatewayServer(framer="rtu")`` at
    ``server``. ``char_bits`` is start + data + parity + stop bits (10 for 8N1)."""

    server: tuple[str, int]
    baudrate: int = 9600
    char_bits: int = 10
    silent: set[int] = field(default_factory=set)
    frames: list[Frame] = field(default_factory=list)
    port: str = ""
    _master: int = -1
    _slave: int = -1
    _task: asyncio.Task[None] | None = None

    @property
    def char_s(self) -> float:
        return self.char_bits / self.baudrate

    def busy_s(self, since: float = 0.0) -> float:
        """Line time used by frames that started after ``since``."""
        return sum(f.end - f.start for f in self.frames if f.start >= since)

    async def __aenter__(self) -> RtuLine:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline: bytes as they are
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        reader, writer = await asyncio.open_connection(*self.server)
        self._task = asyncio.create_task(self._relay(reader, writer), name=f"rtu-line-{self.port}")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        incoming: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        def readable() -> None:
            with contextlib.suppress(BlockingIOError, OSError):
                incoming.put_nowait((loop.time(), os.read(self._master, 4096)))

        loop.add_reader(self._master, readable)
        free_at = 0.0
        buffer, first_at = b"", 0.0
        try:
            while True:
                arrived, data = await incoming.get()
                if not buffer:
                    first_at = arrived
                buffer += data
                length = request_length(buffer)
                while length is not None and len(buffer) >= length:
                    request, buffer = buffer[:length], buffer[length:]
                    free_at = await self._carry(request, max(first_at, free_at), reader, writer)
                    first_at = loop.time()
                    length = request_length(buffer)
        finally:
            loop.remove_reader(self._master)
            writer.close()

    async def _carry(
        self, request: bytes, start: float, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> float:
        """Put ``request`` on the line from ``start``; returns when the line is free again."""
        loop = asyncio.get_running_loop()
        request_end = start + len(request) * self.char_s
        await asyncio.sleep(max(0.0, request_end - loop.time()))  # the request's own time on the wire
        unit, function = request[0], request[1]
        if unit in self.silent:
            self.frames.append(Frame(unit, function, start, request_end, answered=False))
            return request_end
        writer.write(request)
        await writer.drain()
        answer = await reader.readexactly(3)
        length = answer_length(answer)
        assert length is not None
        answer += await reader.readexactly(length - 3)
        answer_start = max(loop.time(), request_end + 3.5 * self.char_s)
        answer_end = answer_start + len(answer) * self.char_s
        await asyncio.sleep(max(0.0, answer_end - loop.time()))  # the answer's time on the wire
        os.write(self._master, answer)
        self.frames.append(Frame(unit, function, start, answer_end, answered=True))
        return answer_end
