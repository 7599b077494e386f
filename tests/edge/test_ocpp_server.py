"""The plaza gateway's OCPP server as a charger meets it: the handshake's checks, each meter value on disk before
it is answered, and hostile or malformed messages answered with OCPP's error and the service still serving.

The station side here is the ``ocpp`` library's own ChargePoint, or raw WebSocket frames where a real library
would refuse to send them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
import yaml
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from websockets.exceptions import ConnectionClosed, InvalidStatus

from energyhub.broker.certs import ensure_certificates
from energyhub.cli.services import free_port
from energyhub.edge.agent import Agent
from energyhub.edge.charger_passwords import add_charger
from energyhub.edge.config import load_agent_config
from energyhub.wire.messages import Measurement, Quality, decode

PASSWORD = "a-charger-password-of-24c"


def gateway(tmp_path: Path, port: int, *, tls: bool = False) -> Path:
    add_charger(tmp_path / "chargers.json", "CAR-1", PASSWORD)
    add_charger(tmp_path / "chargers.json", "CAR-2", PASSWORD + "x")
    server: dict[str, Any] = {"port": port, "credentials_file": str(tmp_path / "chargers.json")}
    if tls:
        certs = ensure_certificates(tmp_path / "certs", ["127.0.0.1"])
        server |= {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)}
    else:
        server["security_profile"] = 1
    config = {
        "gateway": "gw-plaza",
        "site": "s",
        "buffer_path": str(tmp_path / "buffer.db"),
        "mqtt": {"port": free_port()},  # no broker: the buffer is what is checked
        "ocpp": server,
        "devices": [
            {"id": "car-1", "profile": "ocpp", "ocpp": {"charge_point_id": "CAR-1", "connector_id": 1}},
            {"id": "car-2", "profile": "ocpp", "ocpp": {"charge_point_id": "CAR-2", "connector_id": 1}},
        ],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Agent, int]]:
    port = free_port()
    agent = Agent(load_agent_config(gateway(tmp_path, port)))
    assert agent.ocpp is not None
    await agent.ocpp.start()
    yield agent, port
    assert agent.ocpp.server is not None
    agent.ocpp.server.close()
    await agent.ocpp.server.wait_closed()
    agent.buffer.close()


def auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def stored(path: Path) -> list[tuple[str, Measurement]]:
    """The buffer file as another process sees it: every measurement on disk."""
    with sqlite3.connect(path) as db:
        rows = db.execute("select topic, payload from messages order by id").fetchall()
    return [(topic, decode(Measurement, payload)) for topic, payload in rows]


class Car(ChargePoint16):
    """A 1.6J station that accepts every profile."""

    profiles: list[dict[str, Any]]

    @on("SetChargingProfile")
    def on_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        self.profiles.append(cs_charging_profiles)
        return result16.SetChargingProfile(status="Accepted")

    @on("ChangeConfiguration")
    def on_config(self, key: str, value: str) -> Any:
        return result16.ChangeConfiguration(status="Accepted")


async def handshake_refused(port: int, path: str, headers: dict[str, str], protocol: str = "ocpp1.6") -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/{path}", subprotocols=[protocol], additional_headers=headers
        ):
            pass
    return refused.value.response.status_code


async def test_a_station_gets_in_only_with_its_own_identity_password_and_version(served):
    _agent, port = served
    assert await handshake_refused(port, "NOBODY", auth("NOBODY", PASSWORD)) == 404
    assert await handshake_refused(port, "CAR-1", {}) == 401
    assert await handshake_refused(port, "CAR-1", auth("CAR-1", "wrong-password-of-20c")) == 401
    # CAR-2's identity in the path with CAR-1's credentials: one charger's password opens no other's session.
    assert await handshake_refused(port, "CAR-2", auth("CAR-1", PASSWORD)) == 401
    assert await handshake_refused(port, "CAR-1", {"Authorization": "Basic !!notbase64"}) == 401
    assert await handshake_refused(port, "CAR-1", auth("CAR-1", PASSWORD), protocol="ocpp2.0.1") == 400
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/CAR-1", subprotocols=["ocpp1.6"], additional_headers=auth("CAR-1", PASSWORD)
    ) as ws:
        assert ws.subprotocol == "ocpp1.6"


async def test_a_meter_value_is_on_disk_before_it_is_answered(served, tmp_path):
    agent, port = served
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/CAR-1", subprotocols=["ocpp1.6"], additional_headers=auth("CAR-1", PASSWORD)
    ) as ws:
        car = Car("CAR-1", ws)
        car.profiles = []
        reader = asyncio.create_task(car.start())
        boot = await car.call(call16.BootNotification(charge_point_vendor="test", charge_point_model="AC"))
        assert boot.status == "Accepted"
        await car.call(call16.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
        for n in range(5):
            sample = [
                {"value": str(7_400 + n), "measurand": "Power.Active.Import", "unit": "W"},
                {"value": str(12.5 + n / 1000), "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
            ]
            await car.call(
                call16.MeterValues(
                    connector_id=1,
                    transaction_id=7,
                    meter_value=[{"timestamp": f"2026-12-04T10:00:0{n}Z", "sampled_value": sample}],
                )
            )
            # Answered: so it is in the buffer file already, with the next sequence number.
            rows = stored(tmp_path / "buffer.db")
            assert len(rows) == n + 1
            topic, message = rows[-1]
            assert topic == "ehub/v1/s/gw/gw-plaza/meas/car-1", topic
            assert message.seq == n
            assert message.quality is Quality.GOOD
            assert message.values["power_w"] == 7_400 + n
            assert message.values["energy_delivered_wh"] == pytest.approx(12_500 + n)
            assert message.values["mode3_state"] == 4  # Charging: C2, as the Modbus chargers report it
            assert message.ts.isoformat() == f"2026-12-04T10:00:0{n}+00:00"  # the station's time, not ours
        # The failsafe default profile came right after boot: level 0, no end, the EV role's 6 A.
        await asyncio.wait_for(_until(lambda: bool(car.profiles)), 5)
        failsafe = car.profiles[0]
        assert failsafe["stack_level"] == 0
        assert failsafe["charging_profile_purpose"] == "TxDefaultProfile"
        assert "valid_to" not in failsafe
        assert failsafe["charging_schedule"]["charging_schedule_period"][0]["limit"] == 6.0
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    assert agent.seq == 5


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.02)


async def raw_answer(ws: Any, frame: str | bytes) -> list[Any]:
    await ws.send(frame)
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def test_malformed_and_hostile_messages_get_ocpps_error_and_the_service_keeps_serving(served, tmp_path):
    _agent, port = served
    url, headers = f"ws://127.0.0.1:{port}/CAR-1", auth("CAR-1", PASSWORD)
    async with websockets.connect(url, subprotocols=["ocpp1.6"], additional_headers=headers) as ws:
        # Not JSON at all: a CALLERROR, with "-1" for the id that could not be read.
        assert (await raw_answer(ws, "{this is not json"))[:3] == [4, "-1", "FormatViolation"]
        # JSON, but not an OCPP-J frame.
        assert (await raw_answer(ws, json.dumps({"hello": 1})))[:3] == [4, "-1", "ProtocolError"]
        assert (await raw_answer(ws, json.dumps([2, "m-1", "Heartbeat"])))[:3] == [4, "m-1", "ProtocolError"]
        # An action OCPP 1.6 does not have, and one it has but this server does not take.
        assert (await raw_answer(ws, json.dumps([2, "m-2", "Launch", {}])))[0:2] == [4, "m-2"]
        answer = await raw_answer(
            ws, json.dumps([2, "m-3", "DiagnosticsStatusNotification", {"status": "Idle"}])
        )
        assert answer[:3] == [4, "m-3", "NotImplemented"]
        # A payload that breaks the schema, and one whose types are wrong.
        answer = await raw_answer(ws, json.dumps([2, "m-4", "MeterValues", {"connectorId": "one"}]))
        assert answer[0:2] == [4, "m-4"]
        assert answer[2] in ("FormationViolation", "TypeConstraintViolation")
        answer = await raw_answer(ws, json.dumps([2, "m-5", "StopTransaction", {"meterStop": 1}]))
        assert answer[0:2] == [4, "m-5"]
        # A meter value whose number does not parse: stored without it, flagged, and answered.
        bad_value = {
            "connectorId": 1,
            "meterValue": [
                {
                    "timestamp": "2026-12-04T10:00:00Z",
                    "sampledValue": [
                        {"value": "NaN", "measurand": "Power.Active.Import"},
                        {"value": "lots", "unit": "Wh"},
                    ],
                }
            ],
        }
        assert (await raw_answer(ws, json.dumps([2, "m-6", "MeterValues", bad_value])))[:2] == [3, "m-6"]
        # Still the same session: a good call is answered.
        beat = await raw_answer(ws, json.dumps([2, "m-7", "Heartbeat", {}]))
        assert beat[:2] == [3, "m-7"]
        assert "currentTime" in beat[2]
    # A frame far beyond any OCPP message closes that connection (1009), and only that one.
    async with websockets.connect(url, subprotocols=["ocpp1.6"], additional_headers=headers) as ws:
        await ws.send(json.dumps([2, "big", "DataTransfer", {"vendorId": "x", "data": "y" * 200_000}]))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
    async with websockets.connect(url, subprotocols=["ocpp1.6"], additional_headers=headers) as ws:
        assert (await raw_answer(ws, json.dumps([2, "after", "Heartbeat", {}])))[:2] == [3, "after"]
    rows = stored(tmp_path / "buffer.db")
    assert len(rows) == 1
    assert rows[0][1].quality is Quality.PARTIAL
    assert rows[0][1].values["power_w"] is None
    assert rows[0][1].values["energy_delivered_wh"] is None


async def test_security_profile_2_speaks_tls_with_the_gateways_certificate(tmp_path):
    port = free_port()
    agent = Agent(load_agent_config(gateway(tmp_path, port, tls=True)))
    assert agent.ocpp is not None
    server = await agent.ocpp.start()
    try:
        trust = ssl.create_default_context(cafile=tmp_path / "certs" / "ca.crt")
        async with websockets.connect(
            f"wss://127.0.0.1:{port}/CAR-1",
            subprotocols=["ocpp1.6"],
            additional_headers=auth("CAR-1", PASSWORD),
            ssl=trust,
        ) as ws:
            assert (await raw_answer(ws, json.dumps([2, "t", "Heartbeat", {}])))[:2] == [3, "t"]
        # Plain WebSocket to a TLS port gets nowhere.
        with pytest.raises((ConnectionClosed, OSError, websockets.InvalidHandshake, asyncio.TimeoutError)):
            await plain_session(port)
    finally:
        server.close()
        await server.wait_closed()
        agent.buffer.close()


async def plain_session(port: int) -> None:
    async with asyncio.timeout(5):
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/CAR-1",
            subprotocols=["ocpp1.6"],
            additional_headers=auth("CAR-1", PASSWORD),
        ) as ws:
            await ws.recv()


async def test_a_setpoint_is_acknowledged_with_what_the_charger_reports_and_a_refusal_with_its_reason(served):
    from datetime import UTC, datetime, timedelta

    from energyhub.simulators.ocpp_station import ChargePointSim, ConnectorSpec
    from energyhub.wire.messages import Setpoint, SetpointStatus

    agent, port = served
    sim = ChargePointSim(
        "CAR-1",
        f"ws://127.0.0.1:{port}",
        version="1.6",
        connectors=[ConnectorSpec(connector_id=1, kind="ac", max_power_w=22_000)],
        password=PASSWORD,
        meter_interval_s=0.1,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(sim.run(stop))
    try:
        await asyncio.wait_for(sim.connected.wait(), 10)
        await asyncio.wait_for(_until(lambda: any(p.stack_level == 0 for p in sim.profiles)), 10)
        now = datetime.now(UTC)

        def setpoint(value: float) -> Setpoint:
            return Setpoint(
                id=f"s-{value:g}",
                name="max_current_a",
                value=value,
                created=now,
                expires=now + timedelta(seconds=30),
            )

        ack = await agent.controls["car-1"].apply(setpoint(16.0))
        assert ack.status is SetpointStatus.APPLIED, ack
        assert ack.readback == pytest.approx(16.0)  # the station's own composite schedule, read back
        assert sim.limit_w(1) == pytest.approx(16.0 * 230 * 3)
        sim.reject_profiles = True
        ack = await agent.controls["car-1"].apply(setpoint(10.0))
        assert ack.status is SetpointStatus.REJECTED
        assert "answered Rejected" in (ack.reason or "")
        assert sim.limit_w(1) == pytest.approx(16.0 * 230 * 3)  # the refused one did not take
        # Out of bounds and not a charger's setpoint: refused before anything is sent.
        ack = await agent.controls["car-1"].apply(setpoint(900.0))
        assert ack.status is SetpointStatus.REJECTED
        assert "outside [0, 600]" in (ack.reason or "")
        # A station that is not connected: refused, saying so.
        ack = await agent.controls["car-2"].apply(setpoint(16.0))
        assert ack.status is SetpointStatus.REJECTED
        assert "CAR-2 is not connected" in (ack.reason or "")
    finally:
        stop.set()
        await task
