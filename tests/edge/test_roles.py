"""The edge follows wire/roles.py: safe modes are the roles' failsafes, SunSpec discovery declares the roles it
serves under the roles' names, and docs/profiles.md shows what roles.py declares."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from energyhub.cli.services import free_port
from energyhub.domain.community import load_community
from energyhub.domain.topology import DeviceRole
from energyhub.edge.gateway_config import SAFE_MODES, gateway_config
from energyhub.edge.poller import Bus
from energyhub.edge.sunspec import SUNSPEC_ROLES, discover_profile, profile_from_models
from energyhub.simulators.devices import (
    BatteryDevice,
    BatteryState,
    InverterDevice,
    InverterState,
    SunSpecDevice,
)
from energyhub.simulators.modbus_server import GatewayServer
from energyhub.wire.profile import load_profile
from energyhub.wire.roles import ROLES
from tests.conftest import EXAMPLES

REPO = Path(__file__).resolve().parents[2]


def test_safe_modes_are_the_roles_failsafes():
    assert {role: dict(modes) for role, modes in SAFE_MODES.items()} == {
        role: dict(spec.failsafe) for role, spec in ROLES.items() if spec.failsafe
    }
    for role, modes in SAFE_MODES.items():
        assert set(modes) <= set(ROLES[role].setpoints)  # a failsafe only sets what the role takes


def test_every_device_of_the_example_gets_a_safe_mode_its_profile_can_apply():
    community = load_community(EXAMPLES / "de-koumen.yaml")
    gateways = sorted({community.gateway_of(c, d) for c, d in community.devices()})
    kw = {"mqtt_host": "127.0.0.1", "mqtt_port": 1, "credentials_file": EXAMPLES, "buffer_path": EXAMPLES}
    checked = 0
    for gateway in gateways:
        for device in gateway_config(community, gateway, **kw)["devices"]:
            if "safe_mode" in device and device["profile"] not in ("sunspec", "ocpp"):  # ocpp: max_current_a
                profile = load_profile(device["profile"])
                assert set(device["safe_mode"]) <= {s.name for s in profile.setpoints}
                checked += 1
    assert checked > 20


def chain(models: list[int]) -> list[tuple[int, int]]:
    # Addresses do not matter to the roles: one model every 200 registers.
    return [(model, 40004 + 200 * i) for i, model in enumerate(models)]


@pytest.mark.parametrize(
    ("models", "roles"),
    [
        ([1, 103, 123], (DeviceRole.PV,)),
        ([1, 103, 124], (DeviceRole.BATTERY,)),
        ([1, 103, 123, 124], (DeviceRole.PV, DeviceRole.BATTERY)),  # a hybrid inverter
    ],
)
def test_discovered_profiles_declare_the_roles_their_chain_serves(models, roles):
    profile = profile_from_models(chain(models), {})
    assert profile.roles == roles
    assert set(roles) <= set(SUNSPEC_ROLES)
    for role in roles:
        names = {v.name for v in profile.values} | {s.name for s in profile.setpoints}
        assert set(ROLES[role].values) | set(ROLES[role].setpoints) <= names


def test_a_chain_that_serves_no_role_is_refused_saying_what_it_lacks():
    with pytest.raises(
        ValueError, match=r"chain \[1, 103\] serves no role: pv lacks setpoint 'active_power_limit_pct'"
    ):
        profile_from_models(chain([1, 103]), {})
    with pytest.raises(ValueError, match="no SunSpec model energyhub publishes"):
        profile_from_models(chain([1]), {})


@pytest.mark.live  # a Modbus server on loopback
async def test_discovery_on_the_simulators_declares_roles_and_skips_an_unsteerable_chain(caplog):
    inverter = InverterDevice(unit_id=2, state=InverterState(rated_w=60_000, available_w=10_000))
    battery = BatteryDevice(unit_id=3, state=BatteryState(capacity_wh=100_000, max_w=50_000))
    bare = SunSpecDevice(unit_id=4, models=[1, 103], serial="X1", manufacturer="sim")  # no model 123
    async with GatewayServer(host="127.0.0.1", port=free_port(), devices=[inverter, battery, bare]) as server:
        bus = Bus.tcp("127.0.0.1", server.port, timeout_s=1.0)
        inv = await discover_profile(bus, 2)
        bat = await discover_profile(bus, 3)
        with caplog.at_level(logging.ERROR, logger="energyhub.edge.sunspec"):
            first = await discover_profile(bus, 4)
            again = await discover_profile(bus, 4)
        bus.close()
    assert inv is not None
    assert inv.roles == (DeviceRole.PV,)
    assert bat is not None
    assert bat.roles == (DeviceRole.BATTERY,)
    assert (first, again) == (None, None)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # once per device, not every poll
    assert "serves no role: pv lacks setpoint 'active_power_limit_pct'" in errors[0]


def role_table() -> str:
    def names(items: tuple[str, ...]) -> str:
        return ", ".join(f"`{n}`" for n in items) or "-"

    rows = [
        "| role | values it needs | optional values | setpoints it needs | failsafe (control lost) |",
        "|---|---|---|---|---|",
    ]
    for role, spec in ROLES.items():
        failsafe = ", ".join(f"`{k}` = {v:g}" for k, v in spec.failsafe.items()) or "-"
        rows.append(
            f"| `{role.value}` | {names(spec.values)} | {names(spec.optional_values)} | "
            f"{names(spec.setpoints)} | {failsafe} |"
        )
    return "\n".join(rows)


def test_the_role_table_in_the_docs_is_roles_py():
    table = role_table()
    assert table in (REPO / "docs" / "profiles.md").read_text(), (
        "docs/profiles.md's role table differs from wire/roles.py; replace it with:\n" + table
    )
