"""Faults switched at run time over the simulator's HTTP control interface, seen by a real Modbus client."""

from __future__ import annotations

import asyncio
import math
import struct
from datetime import UTC, datetime

import httpx
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from energyhub.domain.community import load_community
from energyhub.simulators.community import CommunitySimulator
from energyhub.simulators.control_api import ControlServer
from tests.conftest import EXAMPLES


@pytest.fixture
async def running():
    sim = CommunitySimulator(
        load_community(EXAMPLES / "de-koumen.yaml"),
        seed=2,
        start=datetime(2026, 6, 1, 10, tzinfo=UTC),
        only={"gw-011"},
    )
    control = ControlServer(sim)
    await control.start()
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(sim.run(stop=stop, ready=ready, tick_s=0.1))
    await asyncio.wait_for(ready.wait(), 10)
    meter = next(e for e in sim.endpoints() if e.role == "meter")
    modbus = AsyncModbusTcpClient(meter.host, port=meter.port, timeout=1, retries=0)
    await modbus.connect()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{control.port}", timeout=5) as http:
        yield sim, http, modbus, meter
    modbus.close()
    stop.set()
    await task
    await control.stop()


async def power(modbus, meter) -> float | int:
    r = await modbus.read_input_registers(0x34, count=2, device_id=meter.unit_id)
    return r.exception_code if r.isError() else struct.unpack(">f", struct.pack(">HH", *r.registers))[0]


async def test_switch_every_fault_over_http(running):
    sim, http, modbus, meter = running
    url = f"/faults/{meter.gateway}/{meter.device}"
    devices = (await http.get("/devices")).json()
    assert {d["device"] for d in devices} == {e.device for e in sim.endpoints()}
    assert math.isfinite(await power(modbus, meter))

    r = await http.put(url, json={"offline": True})
    assert r.status_code == 200
    assert r.json()["offline"] is True
    assert await power(modbus, meter) == 0x0B
    await http.delete(url)
    assert math.isfinite(await power(modbus, meter))

    await http.put(url, json={"exception_code": 6})
    assert await power(modbus, meter) == 6  # server device busy
    await http.put(url, json={"exception_code": None, "nan": True})
    assert math.isnan(await power(modbus, meter))
    await http.put(url, json={"nan": False})
    assert math.isfinite(await power(modbus, meter))
    await http.put(url, json={"frozen": True})
    frozen = await power(modbus, meter)
    sim.models[0].meter.state.power_w = frozen + 12345.0
    assert await power(modbus, meter) == frozen
    await http.put(url, json={"frozen": False, "delay_s": 2.0})
    with pytest.raises(ModbusIOException):
        await modbus.read_input_registers(0x34, count=2, device_id=meter.unit_id)
    assert (await http.delete(url)).json() == {
        "offline": False,
        "delay_s": 0.0,
        "exception_code": None,
        "nan": False,
        "frozen": False,
    }


async def test_clock_jump(running):
    sim, http, _modbus, _meter = running
    before = sim.now
    r = await http.post("/clock", json={"jump_s": 7200})
    assert r.status_code == 200
    assert (sim.now - before).total_seconds() >= 7200


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("PUT", "/faults/gw-011/nope", {"offline": True}, 404, "no simulated device gw-011/nope"),
        ("PUT", "/faults/gw-011/meter", {"offlne": True}, 400, "unknown fault ['offlne']"),
        ("PUT", "/faults/gw-011/meter", {"offline": "yes"}, 400, "offline must be true or false"),
        ("PUT", "/faults/gw-011/meter", {"delay_s": -1}, 400, "delay_s must be a number of seconds >= 0"),
        ("PUT", "/faults/gw-011/meter", {"exception_code": 999}, 400, "exception_code must be"),
        ("PUT", "/faults/gw-011/meter", [1, 2], 400, "body must be a JSON object"),
        ("POST", "/clock", {"jump": 1}, 400, "jump_s"),
        ("GET", "/nothing", None, 404, "no route GET /nothing"),
        ("PATCH", "/faults/gw-011/meter", {}, 405, "PATCH not allowed"),
    ],
)
async def test_bad_requests_get_a_reason(running, method, path, body, status, words):
    _sim, http, _modbus, _meter = running
    r = await http.request(method, path, json=body)
    assert r.status_code == status
    assert words in r.json()["error"]
    assert (await http.get("/devices")).status_code == 200  # and the interface keeps serving


async def test_malformed_json(running):
    _sim, http, _modbus, _meter = running
    r = await http.put(
        "/faults/gw-011/meter", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert "malformed request" in r.json()["error"]
