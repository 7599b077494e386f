"""A small HTTP interface to switch faults at run time (tests, demos): loopback only, JSON in and out.

    GET    /devices                      every device with its endpoint, faults and main values
    PUT    /faults/<gateway>/<device>    body: any of {"offline", "delay_s", "exception_code", "nan", "frozen"}
    DELETE /faults/<gateway>/<device>    clear every fault of the device
    POST   /clock                        body: {"jump_s": 3600} moves the simulation clock (a clock jump)

Written on asyncio streams rather than a web framework: two verbs on a handful of paths, and the HTTP API of the
operator surfaces (FastAPI) is a separate service.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, fields
from datetime import timedelta
from typing import Any

from energyhub.simulators.community import CommunitySimulator
from energyhub.simulators.faults import Faults

__all__ = ["ControlServer"]

log = logging.getLogger(__name__)
_FAULT_FIELDS = {f.name: f.type for f in fields(Faults)}
_MAX_BODY = 64 * 1024


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
}


class ControlServer:
    def __init__(self, simulator: CommunitySimulator, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = simulator
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- HTTP ------------------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await self._respond(reader)
        except HttpError as exc:
            status, body = exc.status, {"error": str(exc)}
        except (asyncio.IncompleteReadError, ConnectionError, UnicodeDecodeError, ValueError) as exc:
            status, body = 400, {"error": f"malformed request: {exc}"}
        data = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode() + data)
            await writer.drain()
        finally:
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        request_line = (await reader.readline()).decode("ascii").strip()
        method, _, rest = request_line.partition(" ")
        path = rest.partition(" ")[0]
        length = 0
        while True:
            line = (await reader.readline()).decode("latin-1").strip()
            if not line:
                break
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length > _MAX_BODY:
            raise HttpError(413, "body too large")
        raw = await reader.readexactly(length) if length else b""
        payload = json.loads(raw) if raw else {}
        return self._route(method, path, payload)

    def _route(self, method: str, path: str, payload: Any) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        if parts == ["devices"] and method == "GET":
            return 200, self._devices()
        if len(parts) == 3 and parts[0] == "faults":
            faults = self._faults(parts[1], parts[2])
            if method == "PUT":
                self._apply(faults, payload)
            elif method == "DELETE":
                faults.clear()
            elif method != "GET":
                raise HttpError(405, f"{method} not allowed on {path}")
            log.info("faults of %s/%s: %s", parts[1], parts[2], asdict(faults))
            return 200, asdict(faults)
        if parts == ["clock"] and method == "POST":
            if not isinstance(payload, dict) or not isinstance(payload.get("jump_s"), int | float):
                raise HttpError(400, 'body must be {"jump_s": <seconds>}')
            self.simulator.now += timedelta(seconds=float(payload["jump_s"]))
            log.info("clock jumped by %s s to %s", payload["jump_s"], self.simulator.now.isoformat())
            return 200, {"now": self.simulator.now.isoformat()}
        raise HttpError(
            404, f"no route {method} {path}; see GET /devices, PUT|DELETE /faults/<gw>/<dev>, POST /clock"
        )

    def _faults(self, gateway: str, device: str) -> Faults:
        found = self.simulator.device(gateway, device)
        if found is None:
            raise HttpError(404, f"no simulated device {gateway}/{device}")
        return found.faults

    @staticmethod
    def _apply(faults: Faults, payload: Any) -> None:
        if not isinstance(payload, dict):
            raise HttpError(400, "body must be a JSON object of faults")
        unknown = set(payload) - set(_FAULT_FIELDS)
        if unknown:
            raise HttpError(400, f"unknown fault {sorted(unknown)}; known: {sorted(_FAULT_FIELDS)}")
        for name, value in payload.items():
            if name in ("offline", "nan", "frozen") and not isinstance(value, bool):
                raise HttpError(400, f"{name} must be true or false")
            if name == "delay_s" and (
                not isinstance(value, int | float) or isinstance(value, bool) or value < 0
            ):
                raise HttpError(400, "delay_s must be a number of seconds >= 0")
            if (
                name == "exception_code"
                and value is not None
                and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 255)
            ):
                raise HttpError(400, "exception_code must be a Modbus exception code 1-255 or null")
        for name, value in payload.items():
            setattr(faults, name, value)

    def _devices(self) -> list[dict[str, Any]]:
        out = []
        for endpoint in self.simulator.endpoints():
            device = self.simulator.device(endpoint.gateway, endpoint.device)
            assert device is not None
            out.append({**asdict(endpoint), "faults": asdict(device.faults), "reads": device.reads})
        return out
