"""SunSpec discovery finds the model chain of the simulated inverter and battery and reads them without a profile."""

from __future__ import annotations

from energyhub.cli.services import free_port
from energyhub.edge.poller import Bus, DevicePoller
from energyhub.edge.sunspec import discover_profile
from energyhub.simulators.devices import (
    BatteryDevice,
    BatteryState,
    InverterDevice,
    InverterState,
    MeterDevice,
)
from energyhub.simulators.modbus_server import GatewayServer


async def test_discovery_reads_inverter_and_battery():
    inverter = InverterDevice(
        unit_id=2, state=InverterState(rated_w=60_000, available_w=41_230, energy_wh=1_000)
    )
    battery = BatteryDevice(unit_id=3, state=BatteryState(capacity_wh=100_000, max_w=50_000, soc=0.4))
    async with GatewayServer(
        host="127.0.0.1", port=free_port(), devices=[MeterDevice(unit_id=1), inverter, battery]
    ) as server:
        bus = Bus.tcp("127.0.0.1", server.port, timeout_s=1.0)
        inv_profile = await discover_profile(bus, 2)
        bat_profile = await discover_profile(bus, 3)
        assert await discover_profile(bus, 1) is None  # an SDM630 is not SunSpec
        inv = await DevicePoller("pv", inv_profile, bus, 2).poll()
        bat = await DevicePoller("bat", bat_profile, bus, 3).poll()
        bus.close()
    assert inv.values["power_w"] == -41_230
    assert inv.values["frequency_hz"] == 50.0
    assert inv.values["energy_produced_wh"] == 1_000
    assert inv.values["power_limit_pct"] == 100.0
    limit = next(s for s in inv_profile.setpoints if s.name == "active_power_limit_pct")
    assert limit.address == inverter.map.address(123, "WMaxLimPct")
    assert limit.scale == 0.1  # read from WMaxLimPct_SF = -1 on the device
    assert limit.also_write == [(inverter.map.address(123, "WMaxLim_Ena"), 1)]
    assert bat.values["soc_pct"] == 40.0
    assert bat.values["max_charge_w"] == 50_000
    assert {s.name for s in bat_profile.setpoints} == {"charge_rate_pct", "discharge_rate_pct"}
