"""Every profile of the device library end to end: a simulated device serves the profile from its YAML over real
Modbus TCP, one agent polls them all and publishes to a real Mosquitto, and what a subscriber receives is what each
device shows; each device with a setpoint takes one from control through the broker and the agent.

What this proves is the path (read planning, functions, word order, scale factors, writes, acks) for every
profile; that the profile's addresses are the manufacturer's is what tests/edge/test_profile_cases.py checks.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from energyhub.cli.services import free_port
from energyhub.domain.topology import DeviceRole
from energyhub.simulators.devices import BatteryState, InverterState
from energyhub.simulators.ev_charger import ChargerState, Session
from energyhub.simulators.modbus_server import GatewayServer
from energyhub.simulators.profile_device import ProfileDevice, readings
from energyhub.simulators.sdm630 import MeterState
from energyhub.wire import roles
from energyhub.wire.messages import ControllerHeartbeat, Setpoint, SetpointAck, SetpointStatus, encode
from energyhub.wire.profile import DeviceProfile, load_profile, shipped_profiles
from energyhub.wire.topics import Topics
from tests.edge.test_edge_agent import (
    GATEWAY,
    broker,
    collect_acks,
    control_link,
    gateway_yaml,
    observing,
    running_agent,
)

__all__ = ["broker"]  # the fixture, used by name

pytestmark = pytest.mark.live


def state_for(profile: DeviceProfile, index: int) -> Any:
    """A state of the profile's first role, different per device so one device's values cannot pass for another's."""
    role = profile.roles[0]
    k = 1 + index / 10
    if role in (DeviceRole.METER, DeviceRole.LOAD):
        return MeterState(power_w=-3456.5 * k, import_wh=1_234_567.0 * k, export_wh=76_543.0 * k)
    if role is DeviceRole.PV:
        return InverterState(rated_w=50_000, available_w=17_250 * k, energy_wh=9_876_543 * k)
    if role is DeviceRole.BATTERY:
        return BatteryState(capacity_wh=100_000, max_w=40_000, soc=0.6 + index / 100, setpoint_w=8_000 * k)
    charger = ChargerState(max_w=22_000, energy_wh=45_678.0 * k, modbus_max_current_a=16.0)
    charger.setpoint_valid_for_s = 10**9
    charger.session = Session(energy_wanted_wh=50_000, departure_s=2e9, vehicle_max_w=11_000)
    return charger


# What control writes to each role, and what the device must then show.
SETPOINTS = {
    DeviceRole.PV: (roles.PV_LIMIT_PCT, 40.0, lambda s: (s.limit_pct, s.limit_enabled) == (40.0, True)),
    DeviceRole.BATTERY: (roles.CHARGE_RATE_PCT, 25.0, lambda s: s.setpoint_w == pytest.approx(10_000.0)),
    DeviceRole.EV: (roles.MAX_CURRENT_A, 10.0, lambda s: s.modbus_max_current_a == pytest.approx(10.0)),
}


async def test_every_profile_runs_through_an_agent(tmp_path, broker):
    settings, accounts, _supervisor, _process = broker
    names = shipped_profiles()
    profiles = {name: load_profile(name) for name in names}
    devices = {
        name: ProfileDevice(unit_id=index + 1, profile=profiles[name], state=state_for(profiles[name], index))
        for index, name in enumerate(names)
    }
    async with GatewayServer(host="127.0.0.1", port=free_port(), devices=list(devices.values())) as server:
        devices_config = [
            {"id": name.replace("_", "-"), "profile": name, "host": "127.0.0.1", "port": server.port}
            | {"unit_id": device.unit_id}
            for name, device in devices.items()
        ]
        path = gateway_yaml(
            tmp_path, settings, accounts, devices_config, interval_s=1.0, timeout_s=0.3, retries=1
        )
        topics = Topics(site=settings.site)
        acks: dict[str, SetpointAck] = {}
        async with (
            observing(settings, accounts) as observer,
            running_agent(path) as agent,
            control_link(settings, accounts.credentials("ehub-control"), "control-test") as control,
        ):
            await control.subscribe(topics.all_acks(), qos=1)

            async def heartbeat() -> None:
                cycle = 0
                while True:
                    beat = ControllerHeartbeat(alive=True, ts=datetime.now(UTC), cycle=cycle, period_s=0.5)
                    await control.publish(topics.heartbeat(), encode(beat), qos=1, retain=True)
                    cycle += 1
                    await asyncio.sleep(0.5)  # the heartbeat's own period

            tasks = [asyncio.create_task(heartbeat()), asyncio.create_task(collect_acks(control, acks))]
            try:
                await asyncio.wait_for(agent.connected.wait(), 10)
                # Every value of every device has arrived at least once (slow values come every slow_every).
                seen: dict[str, dict[str, float | None]] = {}

                def complete() -> bool:
                    for device_id, message in observer.messages:
                        seen.setdefault(device_id, {}).update(
                            {k: v for k, v in message.values.items() if v is not None}
                        )
                    observer.messages.clear()
                    return all(
                        {v.name for v in profiles[n].values} <= set(seen.get(n.replace("_", "-"), {}))
                        for n in names
                    )

                await observer.wait_for(complete, 60)
                wrong = {}
                for name, device in devices.items():
                    want = readings(device.state)
                    got = seen[name.replace("_", "-")]
                    for spec in profiles[name].values:
                        expected = want.get(spec.name, 0.0)
                        tolerance = abs(spec.scale) * (100 if spec.sf_address is not None else 1) + 1e-3
                        if not math.isclose(got[spec.name], expected, rel_tol=1e-3, abs_tol=tolerance):
                            wrong[f"{name}.{spec.name}"] = (got[spec.name], expected)
                assert wrong == {}, "published != what the simulated device shows"
                # The sign convention of every role: production and discharge negative, consumption positive.
                for name in devices:
                    power = seen[name.replace("_", "-")][roles.POWER_W]
                    role = profiles[name].roles[0]
                    assert power is not None
                    assert (power < 0) == (role in (DeviceRole.METER, DeviceRole.LOAD, DeviceRole.PV)), name

                sent: dict[str, tuple[str, Any]] = {}
                for name in devices:
                    role = profiles[name].roles[0]
                    if role not in SETPOINTS:
                        continue
                    setpoint, value, _check = SETPOINTS[role]
                    now = datetime.now(UTC)
                    sp = Setpoint(
                        id=f"sp-{name}",
                        name=setpoint,
                        value=value,
                        created=now,
                        expires=now + timedelta(seconds=60),
                    )
                    await control.publish(topics.setpoint(GATEWAY, name.replace("_", "-")), encode(sp), qos=1)
                    sent[sp.id] = (name, role)
                await observer.wait_for(lambda: set(sent) <= set(acks), 30)
                refused = {
                    i: (a.status, a.reason) for i, a in acks.items() if a.status != SetpointStatus.APPLIED
                }
                assert refused == {}
                untouched = [n for n, role in sent.values() if not SETPOINTS[role][2](devices[n].state)]
                assert untouched == [], "acknowledged, but the device does not show the setpoint"
                assert len(sent) >= 15  # the chargers, inverters and batteries of the library
            finally:
                for task in tasks:
                    task.cancel()
