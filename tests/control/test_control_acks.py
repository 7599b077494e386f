"""Setpoint acknowledgements: control counts them per gateway and in total, matches them to what it sent, logs a
rejection once a minute per device and kind of reason, and records its counts in InfluxDB each cycle."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from energyhub.cli.services import free_port
from energyhub.control.acks import SentSetpoint, SetpointAcks
from energyhub.control.online import ControlSettings, OnlineController
from energyhub.io.influx import InfluxClient
from energyhub.simulators.devices import InverterDevice, InverterState, MeterDevice
from energyhub.simulators.modbus_server import GatewayServer
from energyhub.simulators.sdm630 import MeterState
from energyhub.wire.messages import MessageError, SetpointAck, SetpointStatus, encode
from energyhub.wire.roles import CHARGE_RATE_PCT, PV_LIMIT_PCT
from tests.communities import ean
from tests.control.test_control_loop import until
from tests.edge.test_edge_agent import running_agent
from tests.mqtt_helpers import can_log_in

NOW = datetime(2026, 6, 15, 10, 0, tzinfo=UTC)
ACKS_LOG = "energyhub.control.acks"


def ack(setpoint_id: str, status: SetpointStatus, reason: str | None = None, **extra: object) -> SetpointAck:
    # ``name`` only where this version of the message has it: control must do without.
    known = {k: v for k, v in extra.items() if k in SetpointAck.model_fields}
    return SetpointAck(id=setpoint_id, status=status, ts=NOW, reason=reason, **known)


def acks_sent(gateway: str, device: str, value: float) -> SentSetpoint:
    return SentSetpoint(gateway, device, PV_LIMIT_PCT, value)


def test_acks_are_counted_per_gateway_and_matched_to_what_control_sent_on_its_topic():
    acks = SetpointAcks()
    acks.sent("a1", SentSetpoint("gw-1", "pv", PV_LIMIT_PCT, 12.5))
    acks.sent("b1", SentSetpoint("gw-2", "bat", CHARGE_RATE_PCT, 40.0))
    assert acks.count("gw-1", "pv", ack("a1", SetpointStatus.APPLIED), 0.0) == acks_sent("gw-1", "pv", 12.5)
    # gw-1 answering gw-2's setpoint id (ids are no secret): counted for gw-1, matched to nothing.
    assert acks.count("gw-1", "pv", ack("b1", SetpointStatus.REJECTED, "no"), 1.0) is None
    assert acks.count("gw-2", "bat", ack("b1", SetpointStatus.REJECTED, "soc 100 %"), 2.0) is not None
    assert acks.count("gw-2", "bat", ack("zz", SetpointStatus.APPLIED), 3.0) is None  # the API's, say
    assert (acks.total.applied, acks.total.rejected) == (2, 2)
    assert (acks.gateways["gw-1"].applied, acks.gateways["gw-1"].rejected) == (1, 1)
    assert (acks.gateways["gw-2"].applied, acks.gateways["gw-2"].rejected) == (1, 1)
    assert (acks.matched, acks.unmatched, acks.waiting) == (2, 2, 0)
    assert acks.last_rejection == {("gw-1", "pv"): "no", ("gw-2", "bat"): "soc 100 %"}


def test_the_ids_waiting_for_an_ack_are_bounded():
    acks = SetpointAcks(kept=3)
    for i in range(5):
        acks.sent(f"s{i}", acks_sent("gw-1", "pv", i))
    assert acks.waiting == 3
    assert acks.count("gw-1", "pv", ack("s0", SetpointStatus.APPLIED), 0.0) is None  # forgotten: the oldest
    assert acks.count("gw-1", "pv", ack("s4", SetpointStatus.APPLIED), 0.0) is not None


def test_a_rejection_is_logged_once_a_minute_per_device_and_kind_of_reason(caplog):
    caplog.set_level(logging.WARNING, logger=ACKS_LOG)
    acks = SetpointAcks()
    for i in range(5):  # one device refusing every cycle, the value in its reason changing
        acks.sent(f"s{i}", acks_sent("gw-1", "pv", 10.0 + i))
        reason = f"active_power_limit_pct {10.0 + i:g} is outside [50, 100]"
        acks.count("gw-1", "pv", ack(f"s{i}", SetpointStatus.REJECTED, reason, name=PV_LIMIT_PCT), float(i))
    acks.count("gw-1", "pv", ack("x", SetpointStatus.REJECTED, "gateway gw-1 is in failsafe"), 5.0)
    acks.count(
        "gw-2", "pv", ack("y", SetpointStatus.REJECTED, "active_power_limit_pct 3 is outside [50, 100]"), 6.0
    )
    lines = [r.getMessage() for r in caplog.records if r.name == ACKS_LOG]
    assert lines == [
        "gw-1/pv rejected active_power_limit_pct 10 (setpoint s0): active_power_limit_pct 10 is outside [50, 100]",
        # Not matched, and (in a message without ``name``) nothing to name the setpoint by.
        "gw-1/pv rejected a setpoint (setpoint x): gateway gw-1 is in failsafe",
        "gw-2/pv rejected a setpoint (setpoint y): active_power_limit_pct 3 is outside [50, 100]",
    ]
    caplog.clear()
    acks.count(
        "gw-1", "pv", ack("z", SetpointStatus.REJECTED, "active_power_limit_pct 9 is outside [50, 100]"), 61.0
    )
    (line,) = [r.getMessage() for r in caplog.records if r.name == ACKS_LOG]
    assert line.endswith("is outside [50, 100] (4 more like it since)"), line
    assert acks.total.rejected == 8


def test_a_retained_ack_is_old_news_and_a_bad_one_is_refused():
    acks = SetpointAcks()
    payload = encode(ack("a", SetpointStatus.APPLIED))
    acks.take("gw-1", "pv", payload, retained=True, mono=0.0)
    with pytest.raises(MessageError):
        acks.take("gw-1", "pv", b'{"id": "a", "status": "maybe"}', retained=False, mono=0.0)
    acks.take("gw-1", "pv", payload, retained=False, mono=0.0)
    assert (acks.total.applied, acks.ignored) == (1, 2)


# -- for real: edge agents, the broker, control and influxd -------------------------------------------------------


# One company, its devices by Modbus unit id on one simulated server, behind two gateways: the meter and one
# inverter behind the first, two inverters behind the second. A connection's inverters all get the same limit at
# the same moments, so the second gateway is sent twice the setpoints of the first, by construction.
UNITS = ({"meter": 1, "pv1": 2}, {"pv2": 3, "pv3": 4})


def community_file(path: Path, site: str, gateways: list[str], port: int) -> Path:
    devices = []
    for gateway, units in zip(gateways, UNITS, strict=True):
        for device, unit in units.items():
            where = {"gateway": gateway, "modbus": {"host": "127.0.0.1", "port": port, "unit_id": unit}}
            if device == "meter":
                devices.append({"id": device, "role": "meter", "profile": "eastron_sdm630", **where})
            else:
                devices.append(
                    {"id": device, "role": "pv", "profile": "sunspec_inverter", "kwp": 50, **where}
                )
    company = {
        "id": "c-001",
        "ean": ean(801),
        "company": "Ack test",
        "capacity_kva": 250,
        "limits": {"import_kw": 150, "export_kw": 150},
        "annual_use_kwh": 30_000,
        "gateways": [{"id": gateway} for gateway in gateways],
        "devices": devices,
    }
    doc = {
        "version": 1,
        "community": {"id": site, "name": "Acknowledgement test estate", "timezone": "Europe/Amsterdam"},
        "hub": {"id": "hub", "capacity_kva": 1000, "limits": {"import_kw": 500, "export_kw": 0}},
        "loops": [{"id": "loop-1", "connections": [company]}],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def agent_file(folder: Path, services, gateway: str, units: dict[str, int], port: int, pv: dict) -> Path:
    def device(name: str, unit: int) -> dict:
        entry = {"id": name, "host": "127.0.0.1", "port": port, "unit_id": unit}
        return (
            {**entry, "profile": "eastron_sdm630"}
            if name == "meter"
            else {**entry, "profile": "sunspec_inverter", **pv}
        )

    config = {
        "gateway": gateway,
        "site": services.settings.site,
        "mqtt": {
            "host": "127.0.0.1",
            "port": services.settings.mqtt_port,
            "credentials_file": str(services.accounts.credentials_path(gateway)),
        },
        "buffer_path": str(folder / f"{gateway}.db"),
        "interval_s": 0.3,
        "timeout_s": 0.1,
        "retries": 1,
        "devices": [device(name, unit) for name, unit in units.items()],
    }
    path = folder / f"{gateway}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.timeout(120)
async def test_a_gateway_refusing_controls_setpoints_is_counted_logged_and_recorded(
    services, tmp_path, unique_id, caplog
):
    """Two real edge agents on simulated devices of one company; one may not limit its inverters below 50 % (its
    installer's bounds), so it refuses every limit control sends there while the other applies them."""
    caplog.set_level(logging.WARNING, logger=ACKS_LOG)
    settings = services.settings
    accepting, refusing = f"gw-{unique_id}-a", f"gw-{unique_id}-b"
    for gateway in (accepting, refusing):
        services.accounts.add_gateway(gateway)
    services.accounts.reload_broker()
    for gateway in (accepting, refusing):
        await can_log_in(services, gateway)
    # The company feeds in 110 kW with 40 kW of sun on each 50 kWp: the substation's zero needs PV held far below
    # 50 %.
    devices = {
        unit: MeterDevice(unit_id=unit, state=MeterState(power_w=-110_000.0))
        if name == "meter"
        else InverterDevice(unit_id=unit, state=InverterState(rated_w=50_000, available_w=40_000))
        for units in UNITS
        for name, unit in units.items()
    }
    server = GatewayServer(host="127.0.0.1", port=free_port(), devices=list(devices.values()))
    path = community_file(tmp_path / "community.yaml", settings.site, [accepting, refusing], server.port)
    bounds = {"setpoint_bounds": {PV_LIMIT_PCT: [50.0, 100.0]}}
    control = OnlineController(
        ControlSettings(
            community=path,
            site=settings.site,
            policy="greedy",  # and the points of this run told apart from the other tests' by it
            cycle_s=0.5,
            setpoint_ttl_s=5.0,
            mqtt_port=settings.mqtt_port,
            mqtt_credentials_file=services.accounts.credentials_path("ehub-control"),
            influx_url=settings.influx_url,
            influx_db=settings.influx_db,
            day_ahead_dir=None,
        )
    )
    started = datetime.now(UTC)
    stop = asyncio.Event()
    running: asyncio.Task[None] | None = None

    def counts(gateway: str) -> tuple[int, int]:
        found = control.acks.gateways.get(gateway)
        return (found.applied, found.rejected) if found else (0, 0)

    def explain() -> str:
        return f"acks {control.acks.gateways}, sent {control.sent}, cycles {control.cycles}"

    try:
        async with (
            server,
            running_agent(agent_file(tmp_path, services, accepting, UNITS[0], server.port, {})) as agent_a,
            running_agent(agent_file(tmp_path, services, refusing, UNITS[1], server.port, bounds)) as agent_b,
        ):
            await asyncio.wait_for(asyncio.gather(agent_a.connected.wait(), agent_b.connected.wait()), 15)
            running = asyncio.create_task(control.run(stop))
            await until(
                lambda: counts(accepting)[0] >= 3 and counts(refusing)[1] >= 6, 30, "acks of both", explain
            )
            # Each gateway as it is: one applies, the other refuses, and the refusals' reason is the bound.
            assert counts(accepting)[1] == 0, explain()
            assert counts(refusing)[0] == 0, explain()
            assert "is outside [50, 100]" in control.acks.last_rejection[(refusing, "pv2")]
            assert devices[2].state.limit_pct < 50.0  # applied on the device itself
            # The refusing gateway's inverters were never touched.
            assert devices[3].state.limit_pct == devices[4].state.limit_pct == 100.0
        # The agents are gone: no ack comes after this. Two more cycles record the final counts.
        cycles = control.cycles
        await until(lambda: control.cycles >= cycles + 2, 10, "two cycles more", explain)
    finally:
        stop.set()
        if running is not None:
            await running
    total = control.acks.total
    assert total.applied >= 3
    # Twice the setpoints refused as applied (but for the last cycle or so while the agents stopped): the two
    # counts differ, so a field recorded under the other's name shows below.
    assert total.rejected > total.applied
    # Every ack answered a setpoint control sent, on the topic it sent it to.
    assert control.acks.matched >= sum(counts(accepting)) + sum(counts(refusing))
    # Logged once, though refused at every change (all within a minute).
    for inverter in ("pv2", "pv3"):
        lines = [
            m
            for r in caplog.records
            if r.name == ACKS_LOG and (m := r.getMessage()).startswith(f"{refusing}/{inverter} ")
        ]
        assert len([line for line in lines if "is outside [50, 100]" in line]) == 1, lines
        assert lines[0].startswith(f"{refusing}/{inverter} rejected {PV_LIMIT_PCT} "), lines

    # InfluxDB, as influxd has it: the counts of every cycle since start, the last one the final count.
    async with InfluxClient(url=settings.influx_url, database=settings.influx_db) as influx:
        series = await influx.query(
            "SELECT setpoints_applied, setpoints_rejected FROM control_cycle "
            f"WHERE site = '{settings.site}' AND \"policy\" = 'greedy' AND time >= '{started:%Y-%m-%dT%H:%M:%S.%fZ}'",
            epoch=None,
        )
    rows = series[0].rows()
    assert len(rows) >= control.cycles - 1
    rejected = [r["setpoints_rejected"] for r in rows]
    assert rejected == sorted(rejected), rejected  # cumulative
    assert (rows[-1]["setpoints_applied"], rows[-1]["setpoints_rejected"]) == (total.applied, total.rejected)
