"""Setpoint acknowledgements in the API: live from the broker (a gateway's own account publishes them), stored in
InfluxDB (written here in the ingest's ``setpoint_ack`` schema), and the override that asked for them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from energyhub.cli.services import free_port
from energyhub.io.influx import InfluxClient
from energyhub.io.line_protocol import encode_point
from energyhub.wire.messages import Setpoint, SetpointAck, SetpointStatus, decode, encode
from energyhub.wire.roles import CHARGE_RATE_PCT, PV_LIMIT_PCT
from energyhub.wire.topics import Topics
from tests.api.test_api import TOKEN, api_settings, serving, wait_json
from tests.control.test_control_loop import community_doc
from tests.mqtt_helpers import can_log_in, link_as

AUTH = {"Authorization": f"Bearer {TOKEN}"}
OTHER = "gw-api-2"  # a second gateway, on the second connection


@pytest.fixture
async def ack_community(services, gateway, tmp_path) -> Path:
    """Two connections: c-001 (meter1, pv1) behind the fresh ``gateway``, c-002 (meter2) behind gw-api-2."""
    doc = community_doc(services.settings.site, [free_port(), free_port()], gateway_prefix="gw-api")
    doc["loops"][0]["connections"][0]["gateways"] = [{"id": gateway}]
    path = tmp_path / "community.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    if OTHER not in services.accounts.accounts():
        services.accounts.add_gateway(OTHER)
        services.accounts.reload_broker()
    await can_log_in(services, OTHER)
    return path


@pytest.fixture
async def ack_api(services, ack_community, tmp_path):
    settings = api_settings(services, ack_community, tmp_path / "api")
    async with serving(settings) as app:
        # Subscribed: an ack published from now on reaches the live view.
        await asyncio.wait_for(app.state.link.ready.wait(), 10)
        yield settings


def ack(setpoint_id: str, status: SetpointStatus, **fields) -> SetpointAck:
    return SetpointAck(id=setpoint_id, status=status, ts=datetime.now(UTC), **fields)


async def test_the_gateways_rejection_shows_on_the_override_and_the_gateway(services, gateway, ack_api):
    topics = Topics(site=services.settings.site)
    base = f"http://127.0.0.1:{ack_api.port}"
    gw = await link_as(services, gateway)  # the gateway's own account and client id
    other = await link_as(services, OTHER)
    try:
        await gw.subscribe([(topics.setpoints_for(gateway), 1)])
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            body = {"gateway": gateway, "device": "pv1", "name": PV_LIMIT_PCT, "value": 20, "ttl_s": 60}
            sent = await client.post("/api/overrides", json=body, headers=AUTH)
            assert sent.status_code == 202, sent.text
            sid = sent.json()["id"]
            assert sent.json()["acknowledgement"] == f"/api/overrides/{sid}"
            received = decode(Setpoint, (await asyncio.wait_for(gw.next_message(), 5)).payload)
            assert received.id == sid
            # Not answered yet: said plainly.
            pending = (await client.get(f"/api/overrides/{sid}")).json()
            assert (pending["state"], pending["message"], pending["ack"]) == (
                "sent",
                "sent, not yet acknowledged",
                None,
            )
            # The gateway refuses it, as an agent without the new ``name`` field does.
            reason = f"{PV_LIMIT_PCT} 20.0 is below the inverter's minimum of 30"
            await gw.publish(
                topics.ack(gateway, "pv1"), encode(ack(sid, SetpointStatus.REJECTED, reason=reason))
            )
            answered = await wait_json(client, f"/api/overrides/{sid}", lambda b: b["acknowledged"])
            assert answered["state"] == "rejected"
            assert answered["ack"]["reason"] == reason
            assert answered["message"] == f"rejected by the gateway: {reason}"
            gateways = await wait_json(
                client, "/api/gateways", lambda b: any(g["gateway"] == gateway for g in b)
            )
            mine = next(g for g in gateways if g["gateway"] == gateway)
            assert mine["online"] is None  # heard only through its ack: no state yet
            assert mine["acks"]["applied"] == 0
            assert mine["acks"]["rejected"] == 1
            last = mine["acks"]["last_rejection"]
            assert (last["device"], last["id"], last["name"], last["reason"]) == (
                "pv1",
                sid,
                PV_LIMIT_PCT,
                reason,
            )

            # A second override, applied; the ack names the setpoint itself where the message has the field.
            second = await client.post("/api/overrides", json={**body, "value": 40}, headers=AUTH)
            sid2 = second.json()["id"]
            assert decode(Setpoint, (await asyncio.wait_for(gw.next_message(), 5)).payload).id == sid2
            extra = {"name": PV_LIMIT_PCT} if "name" in SetpointAck.model_fields else {}
            applied = ack(sid2, SetpointStatus.APPLIED, readback=40.0, **extra)
            await gw.publish(topics.ack(gateway, "pv1"), encode(applied))
            answered = await wait_json(client, f"/api/overrides/{sid2}", lambda b: b["acknowledged"])
            assert (answered["state"], answered["ack"]["readback"]) == ("applied", 40.0)
            # Another gateway may publish on its own ack topic only: naming our id there does not settle it.
            forged = ack(sid2, SetpointStatus.REJECTED, reason="forged")
            await other.publish(topics.ack(OTHER, "meter2"), encode(forged))
            gateways = await wait_json(
                client,
                "/api/gateways",
                lambda b: any(g["gateway"] == OTHER and g["acks"]["rejected"] == 1 for g in b),
            )
            mine = next(g for g in gateways if g["gateway"] == gateway)
            assert (mine["acks"]["applied"], mine["acks"]["rejected"]) == (1, 1)
            assert mine["acks"]["last_rejection"]["id"] == sid
            assert (await client.get(f"/api/overrides/{sid2}")).json()["state"] == "applied"
    finally:
        await gw.disconnect()
        await other.disconnect()


async def test_an_override_names_what_is_wrong(services, gateway, ack_api):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ack_api.port}", timeout=10) as client:
        body = {"gateway": gateway, "device": "pv1", "name": PV_LIMIT_PCT, "value": 20}

        async def post(**change):
            return await client.post("/api/overrides", json={**body, **change}, headers=AUTH)

        wrong = await post(name=CHARGE_RATE_PCT)
        assert wrong.status_code == 422
        assert wrong.json()["detail"] == (
            f"device 'pv1' is a pv: it takes {PV_LIMIT_PCT}, not {CHARGE_RATE_PCT!r}"
        )
        meter = await post(device="meter1")
        assert meter.status_code == 422
        assert "it takes no setpoints" in meter.json()["detail"]
        assert (await post(gateway="GW 1")).status_code == 422
        # Python's JSON parser takes NaN: refused as a value, not a 500 when the setpoint is made.
        nan = await client.post(
            "/api/overrides",
            content=f'{{"gateway": "{gateway}", "device": "pv1", "name": "{PV_LIMIT_PCT}", "value": NaN}}',
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert nan.status_code == 422
        assert "value" in nan.text
        bad_id = await client.get("/api/overrides/x'y")
        assert bad_id.status_code == 422
        assert "not a setpoint id" in bad_id.json()["detail"]
        unknown = await client.get("/api/overrides/manual-000000000000")
        assert unknown.status_code == 404
        assert "has not sent it" in unknown.json()["detail"]


async def write_acks(services, points: list[tuple[dict[str, str], dict[str, object], datetime]]) -> None:
    """``setpoint_ack`` points, in the ingest's schema, straight into influxd."""
    lines = [encode_point("setpoint_ack", tags, fields, ts) for tags, fields, ts in points]
    async with InfluxClient(url=services.settings.influx_url, database=services.settings.influx_db) as influx:
        await influx.write(lines)


async def test_the_acks_endpoint_reads_the_stored_acks_newest_first(services, gateway, ack_api, unique_id):
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)

    def tags(status: str, **more: str) -> dict[str, str]:
        return {"gateway": gateway, "device": "pv1", "status": status, **more}

    sp = [f"{unique_id}-{n}" for n in range(7)]
    await write_acks(
        services,
        [
            (
                tags("rejected", connection="c-001", role="pv"),
                {"id": sp[1], "name": PV_LIMIT_PCT, "reason": "below the minimum"},
                t0,
            ),
            (
                tags("applied"),
                {"id": sp[2], "readback": 40.0},
                t0 + timedelta(seconds=1),
            ),  # no name, no reason
            (tags("rejected"), {"id": sp[3], "reason": "expired"}, t0 + timedelta(seconds=2)),
            # The ingest also tags the site: this site's counts, another's does not.
            (tags("applied", site=services.settings.site), {"id": sp[4]}, t0 + timedelta(seconds=3)),
            (tags("applied", site="elsewhere"), {"id": sp[5]}, t0 + timedelta(seconds=4)),
            (
                {**tags("rejected"), "gateway": OTHER},
                {"id": sp[6], "reason": "not mine"},
                t0 + timedelta(seconds=5),
            ),
        ],
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ack_api.port}", timeout=10) as client:
        rows = (await client.get(f"/api/gateways/{gateway}/acks")).json()
        assert [r["id"] for r in rows] == [sp[4], sp[3], sp[2], sp[1]]
        first = rows[-1]
        assert datetime.fromisoformat(first["ts"]) == t0
        assert {
            k: first[k] for k in ("device", "status", "name", "reason", "readback", "connection", "role")
        } == {
            "device": "pv1",
            "status": "rejected",
            "name": PV_LIMIT_PCT,
            "reason": "below the minimum",
            "readback": None,
            "connection": "c-001",
            "role": "pv",
        }
        applied = rows[2]
        assert (applied["readback"], applied["name"], applied["reason"], applied["connection"]) == (
            40.0,
            None,
            None,
            None,
        )
        rejected = (await client.get(f"/api/gateways/{gateway}/acks?status=rejected")).json()
        assert [r["id"] for r in rejected] == [sp[3], sp[1]]
        assert [r["id"] for r in (await client.get(f"/api/gateways/{gateway}/acks?limit=1")).json()] == [
            sp[4]
        ]
        # A setpoint this API did not send (or sent before it started): its answer from the database.
        stored = (await client.get(f"/api/overrides/{sp[1]}")).json()
        assert (stored["state"], stored["source"], stored["ack"]["reason"]) == (
            "rejected",
            "database",
            "below the minimum",
        )
        # Bad input names what is wrong.
        unknown = await client.get("/api/gateways/gw-nowhere/acks")
        assert unknown.status_code == 404
        assert "unknown gateway 'gw-nowhere'" in unknown.json()["detail"]
        assert (await client.get("/api/gateways/GW!/acks")).status_code == 422
        status = await client.get(f"/api/gateways/{gateway}/acks?status=maybe")
        assert status.status_code == 422
        assert "status" in status.text
        assert (await client.get(f"/api/gateways/{gateway}/acks?limit=0")).status_code == 422


async def test_the_database_away_is_a_503(services, ack_community, gateway, tmp_path):
    settings = api_settings(
        services, ack_community, tmp_path / "api", influx_url=f"http://127.0.0.1:{free_port()}"
    )
    async with (
        serving(settings),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=10) as client,
    ):
        for path in (f"/api/gateways/{gateway}/acks", "/api/decisions", "/api/overrides/manual-000000000000"):
            r = await client.get(path)
            assert r.status_code == 503, (path, r.text)
            assert "the database did not answer" in r.json()["detail"]
