"""The simulated charger read and commanded with pymodbus at the Alfen NG9xx addresses."""

from __future__ import annotations

import struct

import pytest
from pymodbus.client import AsyncModbusTcpClient

from energyhub.cli.services import free_port
from energyhub.simulators.ev_charger import ChargerDevice, ChargerState, Session
from energyhub.simulators.modbus_server import GatewayServer


def f32(regs: list[int], offset: int) -> float:
    return struct.unpack(">f", struct.pack(">HH", *regs[offset : offset + 2]))[0]


def f32_words(value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", value)))


@pytest.fixture
async def charger():
    state = ChargerState(max_w=22_000)
    device = ChargerDevice(unit_id=5, state=state)
    async with GatewayServer(host="127.0.0.1", port=free_port(), devices=[device]) as server:
        client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=1, retries=0)
        await client.connect()
        yield state, client
        client.close()


async def read(client) -> dict:
    socket = (await client.read_holding_registers(300, count=78, device_id=5)).registers
    status = (await client.read_holding_registers(1200, count=16, device_id=5)).registers
    energy = struct.unpack(">d", struct.pack(">4H", *socket[74:78]))[0]
    return {
        "power": f32(socket, 44),
        "current_l1": f32(socket, 20),
        "voltage_l1": f32(socket, 6),
        "energy": energy,
        "mode3": bytes(b for w in status[1:6] for b in w.to_bytes(2, "big")).rstrip(b"\0").decode(),
        "applied": f32(status, 6),
        "valid_s": (status[8] << 16) | status[9],
        "max_current": f32(status, 10),
    }


async def test_session_current_limit_and_fallback(charger):
    state, client = charger
    assert (await read(client))["mode3"] == "A"  # no vehicle
    state.session = Session(energy_wanted_wh=10_000, departure_s=3600 * 8, vehicle_max_w=11_000)
    # No Modbus setpoint yet: the safe current (6 A) applies: 6 A x 3 x 230 V = 4140 W.
    values = await read(client)
    assert (values["mode3"], values["applied"], values["power"]) == ("C2", 6.0, 4140.0)
    assert values["voltage_l1"] == 230.0
    r = await client.write_registers(1210, f32_words(16.0), device_id=5)
    assert not r.isError()
    values = await read(client)
    assert values["applied"] == 16.0
    assert values["power"] == 11_000.0  # the car takes at most 11 kW although 16 A would allow 11.04 kW
    assert values["valid_s"] == 60
    state.advance(1800)  # half an hour at 11 kW
    values = await read(client)
    assert values["energy"] == pytest.approx(5_500)
    assert state.session.remaining_wh == pytest.approx(4_500)
    state.advance(40)  # past the 60 s validity of the setpoint: back to the safe current
    values = await read(client)
    assert (values["applied"], values["valid_s"], values["power"]) == (6.0, 0, 4140.0)
    # Below 6 A the vehicle pauses.
    await client.write_registers(1210, f32_words(3.0), device_id=5)
    values = await read(client)
    assert (values["mode3"], values["power"]) == ("B1", 0.0)
    # Full: the session stops drawing.
    await client.write_registers(1210, f32_words(32.0), device_id=5)
    state.advance(3600)
    values = await read(client)
    assert (values["mode3"], values["power"]) == ("B2", 0.0)
    assert values["energy"] == pytest.approx(10_000)


async def test_only_the_max_current_is_writable(charger):
    _state, client = charger
    r = await client.write_registers(344, f32_words(1.0), device_id=5)
    assert r.exception_code == 2
    r = await client.write_registers(1210, f32_words(-1.0), device_id=5)
    assert r.exception_code == 3
    r = await client.write_register(1210, 1, device_id=5)  # half a float
    assert r.exception_code == 2


def test_truck_charger_power_from_current():
    state = ChargerState(max_w=350_000)
    state.session = Session(energy_wanted_wh=300_000, departure_s=7200, vehicle_max_w=400_000)
    state.modbus_max_current_a = 400.0
    assert state.power_w == pytest.approx(400 * 3 * 230)
    state.modbus_max_current_a = 1000.0
    assert state.power_w == 350_000  # the charger's rating caps it


def test_setpoint_validity_counts_real_seconds_whatever_the_speed():
    # At 60x each real second is a minute of physics; the charger's own 60 s timer still counts real seconds, so
    # a written current lasts a real minute (counted in simulated seconds it lasted one, and the trucks fell back
    # to 6 A between two control cycles).
    state = ChargerState(max_w=350_000)
    state.session = Session(energy_wanted_wh=1e9, departure_s=1e12, vehicle_max_w=350_000)
    state.modbus_max_current_a = 400.0
    for _second in range(59):
        state.advance(60.0, real_s=1.0)
    assert state.applied_current_a == 400.0
    assert state.power_w == pytest.approx(400 * 3 * 230)
    state.advance(60.0, real_s=1.0)
    state.advance(60.0, real_s=1.0)
    assert state.applied_current_a == state.safe_current_a == 6.0
