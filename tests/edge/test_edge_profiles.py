"""Device profiles decode what the simulated devices hold, read over real Modbus TCP with the planned block reads."""

from __future__ import annotations

import math

import pytest
from pymodbus.client import AsyncModbusTcpClient

from energyhub.cli.services import free_port
from energyhub.domain.topology import DeviceRole
from energyhub.edge.register_map import decode_values, plan_reads
from energyhub.simulators.devices import (
    BatteryDevice,
    BatteryState,
    InverterDevice,
    InverterState,
    MeterDevice,
)
from energyhub.simulators.ev_charger import ChargerDevice, ChargerState, Session
from energyhub.simulators.modbus_server import GatewayServer
from energyhub.simulators.sdm630 import MeterState
from energyhub.simulators.sunspec import SunSpecMap
from energyhub.wire.profile import PROFILE_DIR, ProfileError, load_profile, shipped_profiles


async def poll(client: AsyncModbusTcpClient, profile, unit: int, *, include_slow: bool = True) -> dict:
    blocks = {}
    for block in plan_reads(profile, include_slow=include_slow):
        read = client.read_input_registers if block.function == "input" else client.read_holding_registers
        r = await read(block.address, count=block.count, device_id=unit)
        assert not r.isError(), (block, r)
        blocks[(block.function, block.address)] = r.registers
    return decode_values(profile, blocks)


def test_every_shipped_profile_loads():
    names = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
    assert names == shipped_profiles()
    assert {"eastron_sdm630", "ev_charger", "sunspec_battery", "sunspec_inverter"} <= set(names)
    for name in names:
        profile = load_profile(name)
        assert profile.name == name
        assert all(b.count <= profile.max_registers for b in plan_reads(profile))


def test_reads_are_merged():
    meter = load_profile("eastron_sdm630")
    blocks = plan_reads(meter)
    assert [(b.function, b.address, b.count) for b in blocks] == [
        ("input", 0x00, 0x12),
        ("input", 0x34, 0x18),
    ]
    # The energy registers are read every poll: a quarter hour is counted on them.
    assert plan_reads(meter, include_slow=False) == blocks
    # A slow value (the charger's energy, far from the rest) is left out of the fast polls.
    charger = load_profile("ev_charger")
    assert (374, 4) in [(b.address, b.count) for b in plan_reads(charger)]
    assert (374, 4) not in [(b.address, b.count) for b in plan_reads(charger, include_slow=False)]
    assert len(plan_reads(load_profile("sunspec_inverter"))) == 2


def test_sunspec_profiles_match_the_sunspec_layout():
    # The profiles' fixed addresses must be where the SunSpec chain puts the points.
    inverter, battery = SunSpecMap([1, 103, 123]), SunSpecMap([1, 103, 124])
    p = {v.name: v for v in load_profile("sunspec_inverter").values}
    assert (p["power_w"].address, p["power_w"].sf_address) == (
        inverter.address(103, "W"),
        inverter.address(103, "W_SF"),
    )
    assert p["power_limit_pct"].address == inverter.address(123, "WMaxLimPct")
    assert p["power_limit_pct"].sf_address == inverter.address(123, "WMaxLimPct_SF")
    b = {v.name: v for v in load_profile("sunspec_battery").values}
    assert (b["soc_pct"].address, b["soc_pct"].sf_address) == (
        battery.address(124, "ChaState"),
        battery.address(124, "ChaState_SF"),
    )
    assert b["max_charge_w"].sf_address == battery.address(124, "WChaMax_SF")


async def test_profiles_decode_the_simulated_devices():
    meter = MeterDevice(unit_id=1, state=MeterState(power_w=-5_432.5, import_wh=1_234_000, export_wh=56_000))
    inverter = InverterDevice(
        unit_id=2, state=InverterState(rated_w=60_000, available_w=41_230, energy_wh=98_765)
    )
    battery = BatteryDevice(unit_id=3, state=BatteryState(capacity_wh=200_000, max_w=100_000, soc=0.625))
    charger = ChargerDevice(unit_id=4, state=ChargerState(max_w=22_000))
    charger.state.session = Session(energy_wanted_wh=20_000, departure_s=1e9, vehicle_max_w=22_000)
    charger.state.modbus_max_current_a = 16.0
    charger.state.energy_wh = 4_321.5
    async with GatewayServer(
        host="127.0.0.1", port=free_port(), devices=[meter, inverter, battery, charger]
    ) as gw:
        client = AsyncModbusTcpClient("127.0.0.1", port=gw.port, timeout=2)
        await client.connect()
        m = await poll(client, load_profile("eastron_sdm630"), 1)
        i = await poll(client, load_profile("sunspec_inverter"), 2)
        b = await poll(client, load_profile("sunspec_battery"), 3)
        c = await poll(client, load_profile("ev_charger"), 4)
        fast = await poll(client, load_profile("ev_charger"), 4, include_slow=False)
        meter.faults.nan = True
        broken = await poll(client, load_profile("eastron_sdm630"), 1)
        inverter.faults.nan = True
        broken_inverter = await poll(client, load_profile("sunspec_inverter"), 2)
        client.close()
    assert m["power_w"] == -5_432.5
    assert m["voltage_l1_v"] == 230.0
    assert m["energy_import_wh"] == 1_234_000
    assert m["energy_export_wh"] == 56_000
    assert "energy_delivered_wh" not in fast  # slow values are read less often
    assert fast["power_w"] == c["power_w"]
    assert i["power_w"] == -41_230  # producing: negative, import-positive; W_SF = 1 keeps 10 W resolution
    assert i["frequency_hz"] == 50.0
    assert i["energy_produced_wh"] == 98_765
    assert i["power_limit_pct"] == 100.0
    assert b["soc_pct"] == 62.5
    assert b["max_charge_w"] == 100_000
    assert b["power_w"] == 0
    assert c["power_w"] == pytest.approx(16 * 3 * 230)
    assert c["mode3_state"] == 4  # C2: charging
    assert c["applied_current_a"] == 16.0
    assert c["energy_delivered_wh"] == 4_321.5
    assert all(broken[name] is None for name in ("power_w", "voltage_l1_v", "energy_import_wh"))
    assert broken_inverter["power_w"] is None  # 0x8000: not implemented, never a number
    assert broken_inverter["state"] is not None
    assert not math.isnan(broken_inverter["state"])


HEAD = "name: x\ndescription: d\nroles: [load]\n"  # a load needs power_w only


@pytest.mark.parametrize(
    ("yaml_text", "words"),
    [
        (HEAD + "values: []\n", "bad.yaml:4: values: List should have at least 1 item"),
        (
            HEAD + "values:\n  - {name: power_w, address: 1, type: float16}\n",
            "bad.yaml:5: values[0].type: Input should be",
        ),
        (
            HEAD + "values:\n  - {name: power_w, address: 1, type: string}\n",
            "values[0]: a string needs count",
        ),
        (
            HEAD + "values:\n  - {name: power_w, address: 1, type: int32, count: 1}\n",
            "count 1 does not fit int32",
        ),
        (
            HEAD + "values:\n  - {name: power_w, address: 1, type: int16}\n"
            "  - {name: power_w, address: 2, type: int16}\n",
            "names used twice: power_w",
        ),
        (
            HEAD + "values:\n  - {name: power_w, address: 1, type: int16, colour: red}\n",
            "values[0].colour: Extra inputs are not permitted",
        ),
        (
            HEAD + "values:\n  - {name: power_w, address: 1, type: int16}\nsetpoints:\n"
            "  - {name: s, address: 2, type: int16, min: 5, max: 1}\n",
            "bad.yaml:7: setpoints[0]: min 5.0 is above max 1.0",
        ),
        (
            HEAD + "values:\n  - {name: power_w, address: 1, type: int16}\nsetpoints:\n"
            "  - {name: s, address: 2, type: string, count: 2, min: 0, max: 1}\n",
            "setpoints[0]: a setpoint is a number",
        ),
        (
            HEAD
            + "values:\n  - {name: power_w, address: 1, type: int16}\nword_order: big\nword_order: little\n",
            "bad.yaml:7: word_order: duplicate key (first on line 6)",
        ),
        ("name: [\n", "not valid YAML"),
    ],
)
def test_bad_profiles_name_file_line_field_and_problem(tmp_path, yaml_text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(path) in str(info.value)
    assert words in str(info.value)


def test_every_shipped_profile_names_the_roles_it_serves():
    roles = {name: load_profile(name).roles for name in shipped_profiles()}
    assert {
        name: roles[name] for name in ("eastron_sdm630", "ev_charger", "sunspec_battery", "sunspec_inverter")
    } == {
        "eastron_sdm630": (DeviceRole.METER, DeviceRole.LOAD),
        "ev_charger": (DeviceRole.EV,),
        "sunspec_battery": (DeviceRole.BATTERY,),
        "sunspec_inverter": (DeviceRole.PV,),
    }
    # The library covers what a company on the estate has: meters, PV inverters, batteries and chargers.
    served = {role: sum(role in r for r in roles.values()) for role in DeviceRole}
    least = {DeviceRole.METER: 8, DeviceRole.PV: 6, DeviceRole.BATTERY: 3, DeviceRole.EV: 4}
    assert {role: n for role, n in least.items() if served[role] < n} == {}, served
    for name in shipped_profiles():
        profile = load_profile(name)
        assert profile.unserved_roles() == []
        assert all(profile.serves(role) for role in profile.roles)


def test_a_profile_without_roles_is_refused_saying_what_to_add(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("name: x\ndescription: d\nvalues:\n  - {name: power_w, address: 1, type: int16}\n")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert f"{path}:1: roles: is missing: add `roles: [...]` with the roles this profile serves" in str(
        info.value
    )
    assert "meter, pv, battery, ev, load" in str(info.value)


def test_a_role_without_its_values_is_refused_on_the_line_of_that_role(tmp_path):
    path = tmp_path / "half.yaml"
    path.write_text(
        "name: half\n"
        "description: a meter that claims to be a battery too\n"
        "roles:\n"
        "  - meter\n"
        "  - battery\n"
        "  - pv\n"
        "values:\n"
        "  - {name: power_w, address: 1, type: float32}\n"
        "  - {name: soc_pct, address: 3, type: uint16}\n"
    )
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert message.startswith(f"{path}: 2 errors")
    assert (
        f"{path}:5: roles[1]: lacks setpoint 'charge_rate_pct', setpoint 'discharge_rate_pct': role 'battery' "
        "needs values power_w, soc_pct and setpoints charge_rate_pct, discharge_rate_pct" in message
    )
    assert f"{path}:6: roles[2]: lacks setpoint 'active_power_limit_pct'" in message
    assert "roles[0]" not in message  # the meter is served


def test_unknown_and_repeated_roles_are_refused_on_their_line(tmp_path):
    path = tmp_path / "odd.yaml"
    values = "values:\n  - {name: power_w, address: 1, type: float32}\n"
    path.write_text("name: odd\ndescription: d\nroles: [meter, inverter]\n" + values)
    with pytest.raises(ProfileError, match=r"odd.yaml:3: roles\[1\]: Input should be 'meter', 'pv'"):
        load_profile(path)
    path = tmp_path / "twice.yaml"
    path.write_text("name: twice\ndescription: d\nroles: [meter, meter]\n" + values)
    with pytest.raises(ProfileError, match=r"twice.yaml:3: roles: names role meter twice"):
        load_profile(path)


def test_an_unknown_profile_name_lists_the_shipped_ones():
    with pytest.raises(ProfileError) as info:
        load_profile("eastron_sdm63")
    assert "unknown profile 'eastron_sdm63' (did you mean eastron_sdm630" in str(info.value)
    assert "the shipped profiles are abb_b23, abb_m4m, abb_terra_ac, carlo_gavazzi_em24" in str(info.value)
    assert "'sunspec' discovers a SunSpec device" in str(info.value)
