"""Simulated devices read by independent clients at the documented addresses: pymodbus for the SDM630 meter,
pysunspec2's scan for the SunSpec inverter."""

from __future__ import annotations

import asyncio
import math
import struct

import pytest
import sunspec2.modbus.client as sunspec_client
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from energyhub.cli.services import free_port
from energyhub.simulators.devices import (
    BatteryDevice,
    BatteryState,
    InverterDevice,
    InverterState,
    MeterDevice,
)
from energyhub.simulators.modbus_server import GatewayServer
from energyhub.simulators.sdm630 import MeterState


def f32(registers: list[int], offset: int = 0) -> float:
    return struct.unpack(">f", struct.pack(">HH", *registers[offset : offset + 2]))[0]


@pytest.fixture
async def gateway():
    meter = MeterDevice(
        unit_id=1, state=MeterState(power_w=-12_000.0, import_wh=5_000_000.0, export_wh=250_000.0)
    )
    inverter = InverterDevice(
        unit_id=2, state=InverterState(rated_w=100_000, available_w=80_000, serial="INV42")
    )
    server = GatewayServer(host="127.0.0.1", port=free_port(), devices=[meter, inverter])
    async with server:
        client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=1, retries=0)
        await client.connect()
        yield server, meter, inverter, client
        client.close()


async def test_sdm630_at_eastron_addresses(gateway):
    _server, meter, _inverter, client = gateway
    # Eastron SDM630 protocol: 30001 (address 0) L1 voltage ... 30053 (0x34) total power, 30071 (0x46) frequency,
    # 30073 (0x48) import kWh, 30075 (0x4A) export kWh, 30343 (0x156) total kWh; float32, high word first.
    r = await client.read_input_registers(0x0000, count=0x4C, device_id=1)
    assert not r.isError()
    regs = r.registers
    assert [round(f32(regs, a), 3) for a in (0x00, 0x02, 0x04)] == [230.0, 230.0, 230.0]
    assert [round(f32(regs, a), 1) for a in (0x0C, 0x0E, 0x10)] == [-4000.0, -4000.0, -4000.0]
    assert round(f32(regs, 0x06), 3) == round(4000 / 230, 3)
    assert f32(regs, 0x34) == -12_000.0  # net feed-in: negative, as the meter shows it
    assert f32(regs, 0x46) == 50.0
    assert f32(regs, 0x48) == 5000.0
    assert f32(regs, 0x4A) == 250.0
    r = await client.read_input_registers(0x0156, count=2, device_id=1)
    assert f32(r.registers) == 5250.0
    # Energy counters integrate the power: 12 kW fed in for 30 minutes = 6 kWh more export.
    meter.state.advance(1800)
    r = await client.read_input_registers(0x0048, count=4, device_id=1)
    assert (f32(r.registers, 0), f32(r.registers, 2)) == (5000.0, 256.0)


async def test_meter_is_read_only(gateway):
    _server, _meter, _inverter, client = gateway
    r = await client.write_registers(0x34, [0, 0], device_id=1)
    assert r.isError()
    assert r.exception_code == 2  # illegal data address


def scan(port: int) -> sunspec_client.SunSpecModbusClientDeviceTCP:
    device = sunspec_client.SunSpecModbusClientDeviceTCP(
        slave_id=2, ipaddr="127.0.0.1", ipport=port, timeout=2
    )
    device.scan()
    return device


async def test_pysunspec2_scans_the_inverter_and_reads_scaled_values(gateway):
    server, _meter, inverter, _client = gateway

    def read() -> dict:
        device = scan(server.port)
        try:
            common = device.common[0]
            inv = device.inverter_three_phase[0]
            return {
                "models": [m for m in device.models if isinstance(m, int)],
                "sn": common.SN.cvalue,
                "w": inv.W.cvalue,
                "a": inv.A.cvalue,
                "v": inv.PhVphA.cvalue,
                "hz": inv.Hz.cvalue,
                "st": inv.St.cvalue,
                "wmax_sf": device.controls[0].WMaxLimPct_SF.value,
                "tmp": inv.TmpCab.cvalue,
            }
        finally:
            device.close()

    found = await asyncio.to_thread(read)
    assert found["models"] == [1, 103, 123]
    assert found["sn"] == "INV42"
    assert found["w"] == 80_000  # W with W_SF = 1 (100 kW does not fit an int16)
    assert found["a"] == pytest.approx(80_000 / 230, abs=0.1)
    assert (found["v"], found["hz"], found["st"]) == (230.0, 50.0, 4)
    assert found["wmax_sf"] == -1
    assert found["tmp"] is None  # not implemented: 0x8000, as SunSpec asks
    assert inverter.reads >= 1


async def test_power_limit_written_over_modbus_changes_the_output(gateway):
    server, _meter, inverter, _client = gateway

    def limit_to(pct: float) -> float:
        device = scan(server.port)
        try:
            controls = device.controls[0]
            controls.WMaxLimPct.cvalue = pct
            controls.WMaxLim_Ena.value = 1
            controls.write()
            inv = device.inverter_three_phase[0]
            inv.read()
            return inv.W.cvalue
        finally:
            device.close()

    assert await asyncio.to_thread(limit_to, 25.0) == 25_000
    assert inverter.state.limit_pct == 25.0
    assert inverter.state.limit_enabled
    assert inverter.state.output_w == 25_000
    inverter.state.available_w = 10_000  # clouds: the limit no longer binds
    assert await asyncio.to_thread(limit_to, 50.0) == 10_000


async def test_inverter_refuses_bad_writes(gateway):
    _server, _meter, inverter, client = gateway
    limit = inverter.map.address(123, "WMaxLimPct")
    r = await client.write_register(limit, 1001, device_id=2)  # 100.1 %
    assert r.isError()
    assert r.exception_code == 3  # illegal data value
    r = await client.write_register(inverter.map.address(103, "W"), 5, device_id=2)
    assert r.isError()
    assert r.exception_code == 2
    assert inverter.state.limit_pct == 100.0


async def test_faults(gateway):
    _server, meter, inverter, client = gateway

    async def meter_power() -> float | int:
        r = await client.read_input_registers(0x34, count=2, device_id=1)
        return r.exception_code if r.isError() else f32(r.registers)

    meter.faults.exception_code = 4
    assert await meter_power() == 4
    meter.faults.clear()
    meter.faults.offline = True
    assert await meter_power() == 0x0B  # gateway target device failed to respond
    meter.faults.clear()
    meter.faults.nan = True
    assert math.isnan(await meter_power())
    meter.faults.clear()
    assert await meter_power() == -12_000.0
    meter.faults.frozen = True
    meter.state.power_w = 999.0
    assert await meter_power() == -12_000.0  # the last rendered value, not the new one
    meter.faults.clear()
    assert await meter_power() == 999.0
    # Slow: the client times out while the other device on the same port keeps answering afterwards.
    meter.faults.delay_s = 3.0
    with pytest.raises(ModbusIOException):
        await client.read_input_registers(0x34, count=2, device_id=1)
    meter.faults.clear()
    other = AsyncModbusTcpClient("127.0.0.1", port=_server.port, timeout=1, retries=0)
    await other.connect()
    r = await other.read_holding_registers(inverter.map.address(103, "W"), count=1, device_id=2)
    assert r.registers == [8000]  # 80 kW at W_SF = 1
    other.close()


async def test_battery_follows_sunspec_storage_setpoints():
    state = BatteryState(capacity_wh=200_000, max_w=100_000, soc=0.5, serial="BAT7")
    battery = BatteryDevice(unit_id=3, state=state)
    async with GatewayServer(host="127.0.0.1", port=free_port(), devices=[battery]) as server:

        def command(mode: int, in_pct: float, out_pct: float) -> dict:
            device = sunspec_client.SunSpecModbusClientDeviceTCP(
                slave_id=3, ipaddr="127.0.0.1", ipport=server.port, timeout=2
            )
            device.scan()
            try:
                storage = device.models[124][0]
                storage.StorCtl_Mod.value = mode
                storage.InWRte.cvalue = in_pct
                storage.OutWRte.cvalue = out_pct
                storage.write()
                storage.read()
                inverter = device.inverter_three_phase[0]
                inverter.read()
                return {
                    "models": [m for m in device.models if isinstance(m, int)],
                    "soc": storage.ChaState.cvalue,
                    "w": inverter.W.cvalue,
                    "wchamax": storage.WChaMax.cvalue,
                    "chast": storage.ChaSt.value,
                }
            finally:
                device.close()

        charging = await asyncio.to_thread(command, 1, 50.0, 0.0)
        assert charging["models"] == [1, 103, 124]
        assert charging["wchamax"] == 100_000
        assert state.setpoint_w == 50_000
        assert charging["w"] == -50_000  # SunSpec W: negative while charging from the grid
        assert (charging["soc"], charging["chast"]) == (50.0, 4)
        state.advance(3600)  # one hour at 50 kW, 95 % efficient: +47.5 kWh of 200 kWh
        assert state.soc == pytest.approx(0.5 + 47.5 / 200)
        discharging = await asyncio.to_thread(command, 2, 0.0, 100.0)
        assert state.setpoint_w == -100_000
        assert discharging["w"] == 100_000
        assert discharging["chast"] == 3
        assert discharging["soc"] == pytest.approx(73.8, abs=0.05)
        held = await asyncio.to_thread(command, 0, 80.0, 80.0)
        assert (state.setpoint_w, held["w"], held["chast"]) == (0.0, 0, 6)


def test_battery_physics_limits():
    state = BatteryState(capacity_wh=10_000, max_w=5_000, soc=0.99, setpoint_w=20_000)
    assert state.power_w == 5_000  # limited to its rating
    state.advance(3600)
    assert state.soc == 1.0
    assert state.power_w == 0.0  # full: charging stops
    state.setpoint_w = -5_000
    state.advance(3600 * 3)
    assert state.soc == state.min_reserve
    assert state.power_w == 0.0  # at the reserve: discharging stops
    # Only the room left was charged (1 % of 10 kWh through 95 % efficiency), not a full hour at 5 kW.
    assert state.energy_in_wh == pytest.approx(100 / 0.95)
    assert state.energy_out_wh == pytest.approx((1.0 - 0.05) * 10_000 * 0.95)


async def test_registers_past_the_block_are_illegal(gateway):
    _server, _meter, inverter, client = gateway
    # The meter answers for 0x0000-0x015F only, like the real one; beyond that: illegal data address.
    r = await client.read_input_registers(0x0160, count=2, device_id=1)
    assert r.isError()
    assert r.exception_code == 2
    end = 40000 + inverter.size
    r = await client.read_holding_registers(end, count=1, device_id=2)
    assert r.isError()
    r = await client.read_holding_registers(39999, count=1, device_id=2)
    assert r.isError()
