"""The community simulator: conservation of energy, determinism, and devices served at their addresses."""

from __future__ import annotations

import asyncio
import json
import struct
from datetime import UTC, datetime

import pytest
from pymodbus.client import AsyncModbusTcpClient

from energyhub.domain.community import load_community
from energyhub.simulators.community import CommunitySimulator
from tests.conftest import EXAMPLES

START = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)  # a sunny-season Monday morning


@pytest.fixture(scope="module")
def community():
    return load_community(EXAMPLES / "de-koumen.yaml")


def run(sim: CommunitySimulator, steps: int, dt: float) -> None:
    for _ in range(steps):
        sim.step(dt)


def test_energy_is_conserved(community):
    sim = CommunitySimulator(community, seed=3, start=START)
    # Remove the batteries' idle state: let each battery charge so its energy shows up in the balance.
    for model in sim.models:
        for battery in model.batteries:
            battery.state.setpoint_w = battery.state.max_w / 2
    run(sim, 120, 60.0)  # two hours in minute steps
    meters_wh = 0.0
    for model in sim.models:
        assert model.meter is not None
        state = model.meter.state
        net_wh = state.import_wh - state.export_wh
        load_wh = sum(s.state.import_wh for s, _share in model.sub_meters)
        pv_wh = sum(i.state.energy_wh for i in model.inverters)
        battery_wh = sum(b.state.energy_in_wh - b.state.energy_out_wh for b in model.batteries)
        ev_wh = sum(c.state.energy_wh for c, _k, _v in model.chargers)
        ev_wh += sum(
            c.sim.energy_wh(c.connector_id) for c in model.ocpp_chargers
        )  # the plaza's OCPP chargers
        # The grid meter's energy is the energy of everything behind it.
        assert net_wh + pv_wh - battery_wh - ev_wh == pytest.approx(model.load_energy_wh, rel=1e-9, abs=1e-6)
        if model.sub_meters:
            assert 0 < load_wh < model.load_energy_wh  # sub-meters see part of the load
        meters_wh += net_wh
    assert meters_wh == pytest.approx(
        sum(m.meter.state.import_wh - m.meter.state.export_wh for m in sim.models)
    )
    pv_total = sum(i.state.energy_wh for m in sim.models for i in m.inverters)
    assert pv_total > 1_000_000  # 2.7 MWp on a June morning makes more than 1 MWh in two hours


def test_meter_sum_is_the_hub_flow(community):
    sim = CommunitySimulator(community, seed=3, start=START)
    sim.step(1.0)
    assert sim.hub_flow_w() == pytest.approx(sum(m.net_w for m in sim.models))
    assert sim.hub_flow_w() == pytest.approx(
        sum(m.load_w for m in sim.models)
        - sum(i.state.output_w for m in sim.models for i in m.inverters)
        + sum(b.state.power_w for m in sim.models for b in m.batteries)
        + sum(c.state.power_w for m in sim.models for c, _k, _v in m.chargers)
        + sum(c.sim.power_w(c.connector_id) for m in sim.models for c in m.ocpp_chargers)
    )


def test_deterministic_for_seed_and_start_and_subset(community):
    def meters(seed: int, only=None) -> dict[str, float]:
        sim = CommunitySimulator(community, seed=seed, start=START, only=only)
        run(sim, 30, 60.0)
        return {m.connection.id: m.meter.state.import_wh - m.meter.state.export_wh for m in sim.models}

    first, second, other = meters(7), meters(7), meters(8)
    assert first == second
    assert first != other
    subset = meters(7, only={"gw-002", "gw-018"})
    assert subset == {k: first[k] for k in ("c-002", "c-018")}


def test_plaza_sessions_charge_vehicles(community):
    sim = CommunitySimulator(community, seed=5, start=datetime(2026, 6, 2, 4, 0, tzinfo=UTC), only={"gw-018"})
    for model in sim.models:
        for charger, _key, _vehicle in model.chargers:
            charger.state.modbus_max_current_a = 1000.0
            charger.state.setpoint_valid_for_s = 10**9
    run(sim, 12 * 60, 60.0)  # 12 hours
    (plaza,) = sim.models
    # The plaza's chargers are OCPP charge points: their own meter registers.
    assert not plaza.chargers
    trucks = [c.sim.energy_wh(c.connector_id) for c in plaza.ocpp_chargers if c.vehicle == "truck"]
    cars = [c.sim.energy_wh(c.connector_id) for c in plaza.ocpp_chargers if c.vehicle == "car"]
    assert sum(trucks) > 500_000  # several truck sessions of 150-350 kWh
    assert sum(1 for e in cars if e > 0) >= 6
    assert plaza.meter.state.import_wh == pytest.approx(plaza.load_energy_wh + sum(trucks) + sum(cars))


def test_unknown_gateway_in_only(community):
    with pytest.raises(ValueError, match="--only names unknown gateways: gw-999"):
        CommunitySimulator(community, seed=1, start=START, only={"gw-999"})


async def test_devices_are_served_and_setpoints_change_the_physics(community, tmp_path):
    sim = CommunitySimulator(community, seed=1, start=START, only={"gw-002"})
    path = tmp_path / "endpoints.json"
    sim.write_endpoints(path)
    endpoints = json.loads(path.read_text())
    assert {e["role"] for e in endpoints} == {"meter", "load", "pv", "battery"}
    assert all(e["host"] == "127.0.0.1" and e["gateway"] == "gw-002" for e in endpoints)
    (model,) = sim.models
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(sim.run(stop=stop, ready=ready, tick_s=3600))  # physics stepped by hand below
    try:
        await asyncio.wait_for(ready.wait(), 10)
        meter = next(e for e in endpoints if e["role"] == "meter")
        inverter = next(e for e in endpoints if e["role"] == "pv")
        client = AsyncModbusTcpClient(meter["host"], port=meter["port"], timeout=2)
        await client.connect()
        r = await client.read_input_registers(0x34, count=2, device_id=meter["unit_id"])
        assert struct.unpack(">f", struct.pack(">HH", *r.registers))[0] == pytest.approx(
            model.net_w, rel=1e-6
        )
        produced = sum(i.state.output_w for i in model.inverters)
        assert produced > 0
        # Curtail the first inverter to 0 % over Modbus (SunSpec model 123): the grid meter rises by its output.
        device = model.inverters[0]
        before = model.net_w
        output = device.state.output_w
        limit = device.map.address(123, "WMaxLimPct")
        assert not (await client.write_registers(limit, [0], device_id=inverter["unit_id"])).isError()
        assert not (
            await client.write_registers(
                device.map.address(123, "WMaxLim_Ena"), [1], device_id=inverter["unit_id"]
            )
        ).isError()
        sim.step(0.0)
        assert device.state.output_w == 0
        assert model.net_w == pytest.approx(before + output, rel=1e-6)
        r = await client.read_input_registers(0x34, count=2, device_id=meter["unit_id"])
        assert struct.unpack(">f", struct.pack(">HH", *r.registers))[0] == pytest.approx(
            model.net_w, rel=1e-6
        )
        client.close()
    finally:
        stop.set()
        await task


def test_energyhub_sim_command(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from energyhub.runtime.supervisor import wait_for
    from tests.conftest import REPO

    path = tmp_path / "endpoints.json"
    cmd = [
        sys.executable,
        "-m",
        "energyhub.cli.main",
        "sim",
        "--community",
        str(EXAMPLES / "de-koumen.yaml"),
        "--only",
        "gw-049",
        "--only",
        "gw-018",
        "--speed",
        "60",
        "--start",
        "2026-06-01T10:00Z",
        "--seed",
        "4",
        "--endpoints-json",
        str(path),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env={**os.environ}
    )
    try:
        line = proc.stdout.readline()
        while line and "Modbus TCP ports" not in line:
            line = proc.stdout.readline()
        # The plaza's 18 chargers are OCPP charge points: no password given here, so they charge but do not connect.
        assert "simulating 3 devices of 2 connections on 2 Modbus TCP ports" in line, line
        line = proc.stdout.readline()
        assert line.startswith("and 12 OCPP charge points (0 connecting to their gateway)"), line
        endpoints = json.loads(path.read_text())
        assert {e["gateway"] for e in endpoints} == {"gw-018", "gw-049"}
        battery = next(e for e in endpoints if e["role"] == "battery")

        async def read_soc() -> float:
            import sunspec2.modbus.client as sunspec_client

            def scan() -> float:
                d = sunspec_client.SunSpecModbusClientDeviceTCP(
                    slave_id=battery["unit_id"], ipaddr="127.0.0.1", ipport=battery["port"], timeout=2
                )
                d.scan()
                try:
                    return d.models[124][0].ChaState.cvalue
                finally:
                    d.close()

            return await asyncio.to_thread(scan)

        assert asyncio.run(read_soc()) == 50.0
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "simulator stopped." in out
        wait_for(lambda: proc.poll() is not None, timeout_s=5, what="the simulator to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
