"""One Modbus TCP server per gateway: several simulated devices on one port, told apart by unit id, as behind an
RTU-to-TCP gateway. Built on pymodbus's server with one ``SimDevice`` per unit whose access hook renders the
device's state on every read and applies its writes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

from pymodbus import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from energyhub.runtime.ports import PortInUse, check_free
from energyhub.runtime.supervisor import ServiceError
from energyhub.simulators.devices import SimulatedDevice

__all__ = ["GatewayServer"]

log = logging.getLogger(__name__)


def _sim_device(device: SimulatedDevice[Any]) -> SimDevice:
    tables = device.register_blocks()
    if tables is not None:
        # pymodbus wants every table present: a one-bit coil and discrete input the profile never reads.
        bit = [SimData(0, values=False, datatype=DataType.BITS)]
        holding, inputs = (
            [SimData(start, count=1, values=regs, datatype=DataType.REGISTERS)]
            if (start, regs) != (0, [])
            else [SimData(0, values=0, datatype=DataType.REGISTERS)]
            for start, regs in (tables.get("holding", (0, [])), tables.get("input", (0, [])))
        )
        return SimDevice(device.unit_id, simdata=(bit, list(bit), holding, inputs), action=device.on_access)
    initial = device.initial_registers()
    # `values` is the whole block; SimData repeats it `count` times, so count stays 1.
    block = SimData(device.base_address, count=1, values=initial, datatype=DataType.REGISTERS)
    return SimDevice(device.unit_id, simdata=[block], action=device.on_access)


class GatewayServer:
    """A Modbus server on ``host:port`` serving ``devices`` by unit id.

    ``framer="rtu"`` speaks RTU frames (with CRC, no MBAP header) over TCP, as serial-to-Ethernet converters in
    transparent mode do; a serial client reaches it at ``socket://host:port``. That runs the agent's RTU path
    without a serial port.
    """

    def __init__(
        self, *, host: str, port: int, devices: list[SimulatedDevice[Any]], framer: str = "socket"
    ) -> None:
        ids = [d.unit_id for d in devices]
        if len(set(ids)) != len(ids):
            raise ValueError(f"unit ids on {host}:{port} must be unique, got {ids}")
        self.host = host
        self.port = port
        self.devices = {d.unit_id: d for d in devices}
        self._server = ModbusTcpServer(
            [_sim_device(d) for d in devices], address=(host, port), framer=FramerType(framer)
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start serving; returns once the port listens.

        Raises ``OSError`` (EADDRINUSE, naming the process that holds the port) if the port is taken: a client
        connecting would be answered by that other process, so a connection is no proof that this one serves.
        """
        self._check_port()
        self._task = asyncio.create_task(self._server.serve_forever(), name=f"modbus-{self.port}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        # pymodbus sets its transport once it listens; a failed bind it only logs, and ends the task.
        while not self._server.is_active():
            if self._task.done() or loop.time() > deadline:
                await self.stop()
                self._check_port()  # taken between the check and the bind: say by whom
                raise RuntimeError(f"Modbus server on {self.host}:{self.port} did not start")
            await asyncio.sleep(0.01)  # condition poll while the listener binds

    def _check_port(self) -> None:
        # As an OSError, like any server's failed bind: `energyhub sim` reports those as a port it cannot serve.
        try:
            check_free(self.host, self.port, "Modbus simulator")
        except PortInUse as exc:
            raise OSError(errno.EADDRINUSE, str(exc)) from exc
        except ServiceError as exc:
            raise OSError(str(exc)) from exc

    async def stop(self) -> None:
        await self._server.shutdown()  # type: ignore[no-untyped-call]
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def __aenter__(self) -> GatewayServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()
