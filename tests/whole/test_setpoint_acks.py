"""A setpoint a real gateway refuses is stored in InfluxDB with its reason: edge agent, broker, ingest, influxd."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import yaml

from energyhub.cli.services import free_port
from energyhub.io.influx import InfluxClient
from energyhub.simulators.devices import InverterDevice, InverterState
from energyhub.simulators.modbus_server import GatewayServer
from energyhub.wire.messages import ControllerHeartbeat, Setpoint, encode
from energyhub.wire.topics import Topics
from tests.edge.test_edge_agent import running_agent
from tests.ingest.test_ingest import ingest_settings, running, wait_until
from tests.mqtt_helpers import link_as


def _agent_file(tmp_path, services, gateway: str, port: int):
    config = {
        "gateway": gateway,
        "site": services.settings.site,
        "mqtt": {
            "host": "127.0.0.1",
            "port": services.settings.mqtt_port,
            "credentials_file": str(services.accounts.credentials_path(gateway)),
        },
        "buffer_path": str(tmp_path / "buffer.db"),
        "interval_s": 0.5,
        "timeout_s": 0.2,
        "devices": [
            {"id": "pv", "profile": "sunspec_inverter", "host": "127.0.0.1", "port": port, "unit_id": 2}
        ],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_a_refused_setpoint_reaches_influxdb_with_its_reason(tmp_path, services, unique_id, gateway):
    topics = Topics(site=services.settings.site)
    inverter = InverterDevice(unit_id=2, state=InverterState(rated_w=50_000, available_w=20_000))
    server = GatewayServer(host="127.0.0.1", port=free_port(), devices=[inverter])
    control = await link_as(services, "ehub-control", client_id=f"ehub-control-{unique_id}")
    stop = asyncio.Event()

    async def heartbeat() -> None:
        # The gateway takes setpoints only while control's heartbeat is live (else it is in failsafe).
        cycle = 0
        while not stop.is_set():
            beat = ControllerHeartbeat(alive=True, ts=datetime.now(UTC), cycle=cycle, period_s=0.5)
            await control.publish(topics.heartbeat(), encode(beat), retain=True)
            cycle += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)  # the heartbeat's own period

    async with (
        server,
        running(ingest_settings(services, unique_id)),
        running_agent(_agent_file(tmp_path, services, gateway, server.port)) as agent,
    ):
        beating = asyncio.create_task(heartbeat())
        try:
            await asyncio.wait_for(agent.connected.wait(), 10)
            await wait_until(lambda: _async(not agent.failsafe), 15, "the gateway out of failsafe")
            now = datetime.now(UTC)
            # The SunSpec inverter's limit is a percentage: 150 is beyond what the profile allows.
            refused = Setpoint(
                id=f"sp-{unique_id}",
                name="active_power_limit_pct",
                value=150,
                created=now,
                expires=now + timedelta(seconds=30),
            )
            await control.publish(topics.setpoint(gateway, "pv"), encode(refused))

            async def stored() -> list[dict]:
                async with InfluxClient(
                    url=services.settings.influx_url, database=services.settings.influx_db
                ) as client:
                    series = await client.query(f"SELECT * FROM setpoint_ack WHERE gateway = '{gateway}'")
                return [row for s in series for row in s.rows()]

            rows = await wait_until(stored, 20, "the acknowledgement in InfluxDB")
        finally:
            stop.set()
            await beating
            control.abort()
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["status"], row["device"], row["id"]) == ("rejected", "pv", refused.id)
    assert (row["name"], row["value"]) == ("active_power_limit_pct", 150.0)
    assert "150" in row["reason"], row["reason"]
    assert "outside" in row["reason"], row["reason"]
    assert inverter.state.limit_pct != 150  # and the device was not touched


async def _async(value: bool) -> bool:
    return value
