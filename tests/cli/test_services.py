"""The real broker and database, started by the project: publish/subscribe, write/query, clean stops."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import struct
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pymodbus.client import ModbusTcpClient

from energyhub.cli.services import free_port, tcp_answers
from energyhub.io.influx import InfluxClient, InfluxError
from energyhub.io.line_protocol import encode_point
from energyhub.io.mqtt import MqttLink
from energyhub.runtime.supervisor import ProcessSpec, ServiceError, Supervisor, wait_for
from energyhub.wire.messages import ControllerHeartbeat, Measurement, Quality, decode, encode
from energyhub.wire.topics import Topics
from tests.mqtt_helpers import can_log_in, mqtt_client, next_message

REPO = Path(__file__).resolve().parents[2]


def topics(services) -> Topics:
    return Topics(site=services.settings.site, root=services.settings.topic_root)


async def test_gateway_publishes_and_ingest_receives(services, unique_id):
    gateway = f"gw-{unique_id}"
    services.accounts.add_gateway(gateway)
    services.accounts.reload_broker()
    t = topics(services)
    sent = Measurement(
        ts=datetime(2026, 6, 1, 12, 0, tzinfo=UTC),
        session=1,
        seq=0,
        quality=Quality.GOOD,
        values={"p_w": -1234.5, "e_import_wh": 98765.0},
    )

    await can_log_in(services, gateway)
    async with mqtt_client(services, "ehub-ingest") as ingest:
        await ingest.subscribe(t.all_measurements(), qos=1)
        async with mqtt_client(services, gateway) as gw:
            await gw.publish(t.measurement(gateway, "meter"), encode(sent), qos=1)
        message = await next_message(ingest)
    assert str(message.topic) == t.measurement(gateway, "meter")
    assert message.qos == 1
    assert decode(Measurement, message.payload) == sent
    assert t.parse(str(message.topic)).gateway == gateway


async def test_write_and_query_influxdb(services, unique_id):
    client = InfluxClient(url=services.settings.influx_url, database=services.settings.influx_db)
    t0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    lines = [
        encode_point(
            "energy flow",
            {"gateway": unique_id, "device": "meter 1,a=b", "role": "meter"},
            {"p_w": 1500.25, "e_import_wh": 10, "ok": True, "note": 'say "hi" \\ bye'},
            t0,
        ),
        encode_point(
            "energy flow",
            {"gateway": unique_id, "device": "meter 1,a=b", "role": "meter"},
            {"p_w": -200.0, "e_import_wh": 11, "ok": False, "note": "é ☀"},
            t0.replace(second=1),
        ),
    ]
    async with client:
        assert await client.ping()
        await client.write(lines)
        series = await client.query(
            f"SELECT p_w, e_import_wh, ok, note FROM \"energy flow\" WHERE gateway = '{unique_id}' GROUP BY device",
            epoch="s",
        )
    assert len(series) == 1
    assert series[0].tags == {"device": "meter 1,a=b"}
    rows = series[0].rows()
    assert rows == [
        {
            "time": int(t0.timestamp()),
            "p_w": 1500.25,
            "e_import_wh": 10,
            "ok": True,
            "note": 'say "hi" \\ bye',
        },
        {"time": int(t0.timestamp()) + 1, "p_w": -200.0, "e_import_wh": 11, "ok": False, "note": "é ☀"},
    ]


async def test_influx_errors_tell_bad_data_from_outage(services):
    client = InfluxClient(url=services.settings.influx_url, database=services.settings.influx_db)
    async with client:
        with pytest.raises(InfluxError) as info:
            await client.write("not line protocol at all")
        assert info.value.status == 400
        assert not info.value.retryable
        with pytest.raises(InfluxError) as info:
            await client.query("SELEKT nonsense")
        assert not info.value.retryable
    down = InfluxClient(url=f"http://127.0.0.1:{free_port()}", database="x", timeout_s=1)
    async with down:
        assert not await down.ping()
        with pytest.raises(InfluxError) as info:
            await down.write("m v=1 1")
        assert info.value.status is None
        assert info.value.retryable


def test_supervisor_stops_with_sigterm_then_sigkill(tmp_path):
    with Supervisor() as supervisor:
        polite = supervisor.start(
            ProcessSpec(name="polite", argv=["sleep", "60"], log_path=tmp_path / "p.log", ready=lambda: True)
        )
        stubborn = supervisor.start(
            ProcessSpec(
                name="stubborn",
                argv=["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"],
                log_path=tmp_path / "s.log",
                ready=lambda: (tmp_path / "s.log").read_text().startswith("ready"),
                stop_timeout_s=0.5,
            )
        )
        assert polite.running
        assert stubborn.running
        assert polite.stop() == -signal.SIGTERM
        assert stubborn.stop() == -signal.SIGKILL  # ignored SIGTERM, killed after the timeout
        assert not polite.running
        assert not stubborn.running


def test_supervisor_reports_a_service_that_dies_before_answering(tmp_path):
    with Supervisor() as supervisor, pytest.raises(ServiceError) as info:
        supervisor.start(
            ProcessSpec(
                name="broken",
                argv=["sh", "-c", "echo 'bad config line 3' >&2; exit 3"],
                log_path=tmp_path / "b.log",
                ready=lambda: False,
            )
        )
    assert "broken exited with code 3 before it answered" in str(info.value)
    assert "bad config line 3" in str(info.value)
    with (
        Supervisor() as supervisor,
        pytest.raises(ServiceError, match=r"timed out after 0\.3 s waiting for slow"),
    ):
        supervisor.start(
            ProcessSpec(
                name="slow",
                argv=["sleep", "30"],
                log_path=tmp_path / "s.log",
                ready=lambda: False,
                ready_timeout_s=0.3,
            )
        )


def test_services_die_with_a_killed_supervisor(tmp_path):
    """A supervisor killed by SIGKILL leaves no broker or database behind (PR_SET_PDEATHSIG)."""
    ports = {name: free_port() for name in ("mqtt", "tls", "influx", "rpc")}
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from energyhub.cli.services import start_services
        from energyhub.runtime.settings import ServiceSettings
        from energyhub.runtime.supervisor import Supervisor
        settings = ServiceSettings(state_dir=Path({str(tmp_path)!r}), mqtt_port={ports["mqtt"]},
                                   mqtt_tls_port={ports["tls"]}, influx_port={ports["influx"]},
                                   influx_rpc_port={ports["rpc"]})
        supervisor = Supervisor()
        running = start_services(supervisor, settings)
        print(running.broker.pid, running.influxd.pid, flush=True)
        sys.stdin.read()
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        line = parent.stdout.readline()
        broker_pid, influxd_pid = (int(p) for p in line.split())
        assert tcp_answers("127.0.0.1", ports["mqtt"])
        assert tcp_answers("127.0.0.1", ports["influx"])
        parent.kill()
        parent.wait()

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            # A zombie (exited, not yet reaped by init) is gone for our purposes.
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

        wait_for(lambda: gone(broker_pid) and gone(influxd_pid), timeout_s=15, what="orphans to exit")
        wait_for(lambda: not tcp_answers("127.0.0.1", ports["mqtt"]), timeout_s=5, what="MQTT port to close")
    finally:
        if parent.poll() is None:
            parent.kill()


async def _demo_link(port: int, creds: dict, client_id: str, topic_filter: str) -> MqttLink:
    link = await MqttLink.connect(
        "127.0.0.1", port, client_id=client_id, username=creds["username"], password=creds["password"]
    )
    assert await link.subscribe([(topic_filter, 1)]) == [1]
    return link


async def _gateways_publishing(port: int, creds: dict, *, want: int, timeout_s: float = 60) -> set[str]:
    topics = Topics(site="de-koumen")
    seen: set[str] = set()
    link = await _demo_link(port, creds, "demo-test", topics.all_measurements())
    try:
        async with asyncio.timeout(timeout_s):
            while len(seen) < want:
                message = await link.next_message()
                info = topics.parse(message.topic)
                decode(Measurement, message.payload)  # a valid measurement, not just bytes on the topic
                seen.add(info.gateway)
    finally:
        await link.disconnect()
    return seen


async def _heartbeat(port: int, creds: dict, timeout_s: float = 30) -> ControllerHeartbeat:
    topics = Topics(site="de-koumen")
    link = await _demo_link(port, creds, "demo-beat", topics.heartbeat())
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                beat = decode(ControllerHeartbeat, (await link.next_message()).payload)
                if beat.alive:
                    return beat
    finally:
        await link.disconnect()


def test_energyhub_services_stops_both_on_ctrl_c(tmp_path):
    ports = {
        "EHUB_MQTT_PORT": free_port(),
        "EHUB_MQTT_TLS_PORT": free_port(),
        "EHUB_INFLUX_PORT": free_port(),
        "EHUB_INFLUX_RPC_PORT": free_port(),
        "EHUB_INGEST_METRICS_PORT": free_port(),
        "EHUB_API_PORT": free_port(),
    }
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}}
    # A scaled-down community: a shop with PV and a battery, a PV roof, the charging plaza, the collective battery.
    few = ["--gateway", "gw-002", "--gateway", "gw-011", "--gateway", "gw-018", "--gateway", "gw-049"]
    cli = [sys.executable, "-m", "energyhub", "demo", "--state-dir", str(tmp_path), *few]
    proc = subprocess.Popen(
        cli, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO
    )
    output = []
    try:
        for line in proc.stdout:
            output.append(line)
            if "Live page:" in line:
                break
        text = "".join(output)
        assert f"mqtt://127.0.0.1:{ports['EHUB_MQTT_PORT']}" in text, text
        assert f"http://127.0.0.1:{ports['EHUB_INFLUX_PORT']}" in text
        assert tcp_answers("127.0.0.1", ports["EHUB_MQTT_PORT"])
        assert tcp_answers("127.0.0.1", ports["EHUB_INFLUX_PORT"])
        # The scaled-down community answers over Modbus: a grid meter at its address gives a power reading.
        endpoints = json.loads((tmp_path / "sim" / "endpoints.json").read_text())
        assert {e["gateway"] for e in endpoints} == {"gw-002", "gw-011", "gw-018", "gw-049"}
        meter = next(e for e in endpoints if e["role"] == "meter")
        client = ModbusTcpClient(meter["host"], port=meter["port"], timeout=2)
        client.connect()
        reply = client.read_input_registers(0x34, count=2, device_id=meter["unit_id"])
        client.close()
        assert not reply.isError()
        assert math.isfinite(struct.unpack(">f", struct.pack(">HH", *reply.registers))[0])
        # Each simulated gateway's edge agent publishes its devices' measurements through the broker.
        creds = json.loads((tmp_path / "broker" / "credentials" / "ehub-ingest.json").read_text())
        seen = asyncio.run(_gateways_publishing(ports["EHUB_MQTT_PORT"], creds, want=4))
        assert seen == {"gw-002", "gw-011", "gw-018", "gw-049"}, text
        # The ingest stores them, tagged with each device's role from the community file.
        influx = InfluxClient(url=f"http://127.0.0.1:{ports['EHUB_INFLUX_PORT']}", database="energyhub")

        async def roles() -> set[str]:
            async with influx:
                while True:
                    series = await influx.query('SHOW TAG VALUES FROM "device" WITH KEY = "role"')
                    found = {row["value"] for s in series for row in s.rows()}
                    if {"meter", "pv"} <= found:
                        return found
                    await asyncio.sleep(0.2)  # poll interval of a condition wait

        assert {"meter", "pv"} <= asyncio.run(asyncio.wait_for(roles(), 30))

        async def plaza_over_ocpp() -> list[str]:
            # The plaza's chargers are simulated OCPP charge points: their meter values reach influxd through
            # gw-018's OCPP server (TLS, the demo's passwords), its buffer, the broker and the ingest.
            async with influx:
                while True:
                    series = await influx.query(
                        'SELECT last("energy_delivered_wh") FROM "device" WHERE "gateway" = \'gw-018\' '
                        'AND "role" = \'ev\' GROUP BY "device"'
                    )
                    found = sorted(s.tags["device"] for s in series)
                    if len(found) == 18:
                        return found
                    await asyncio.sleep(0.2)  # poll interval of a condition wait

        chargers = asyncio.run(asyncio.wait_for(plaza_over_ocpp(), 60))
        assert {c for c in chargers if c.startswith("ev-truck-")} == {f"ev-truck-{n}" for n in range(1, 7)}

        async def gas_and_water() -> dict[str, float]:
            # gw-002's gas and water meters, read over M-Bus from the simulated converter, are in influxd.
            async with influx:
                while True:
                    series = await influx.query(
                        'SELECT last("volume_m3") FROM "device" WHERE "gateway" = \'gw-002\' GROUP BY "role"'
                    )
                    found = {s.tags["role"]: s.values[0][1] for s in series}
                    if {"gas", "water"} <= found.keys():
                        return found
                    await asyncio.sleep(0.2)  # poll interval of a condition wait

        volumes = asyncio.run(asyncio.wait_for(gas_and_water(), 60))
        assert volumes["gas"] > 1000  # the simulated meters start at 1234.56 and 321.987 m³
        assert volumes["water"] > 300
        # The demo ends by naming the live page, which answers with the flows of the simulated part.
        assert output[-1].strip() == f"Live page: http://127.0.0.1:{ports['EHUB_API_PORT']}/"
        flows = httpx.get(f"http://127.0.0.1:{ports['EHUB_API_PORT']}/api/flows", timeout=10).json()
        assert {f["level"] for f in flows} >= {"hub", "loop", "connection"}
        # Control runs: its retained heartbeat says it is alive.
        assert asyncio.run(_heartbeat(ports["EHUB_MQTT_PORT"], creds)).alive
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "stopped." in rest
    assert not tcp_answers("127.0.0.1", ports["EHUB_MQTT_PORT"])
    assert not tcp_answers("127.0.0.1", ports["EHUB_INFLUX_PORT"])
