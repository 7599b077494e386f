"""The API's quarter hours: a node's and a device's, and the counters that fell, read from a real influxd where
the points are written in the aggregator's schema (``"forever"."node_qh"``, ``device_qh``, ``counter_reset``) into
a database of this module's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import yaml

from energyhub.api.settings import ApiSettings
from energyhub.cli.services import free_port
from energyhub.domain.isp import ISP, isp_start
from energyhub.io.influx import InfluxClient
from energyhub.io.line_protocol import FieldValue, encode_point
from energyhub.io.retention import ensure_retention, raw_keep_s
from energyhub.io.schema import COUNTER_RESET, DEVICE_QUARTER, NODE_QUARTER, QUARTER_RP
from tests.api.test_api import api_settings, serving
from tests.control.test_control_loop import community_doc

# One API and one database for the module: its tests share the event loop the module fixture runs on.
pytestmark = [pytest.mark.live, pytest.mark.asyncio(loop_scope="module")]

GW = "gw-qh"
# Three closed quarter hours two hours ago, and one missing between them: q0, q1, (q2 missing), q3.
Q0 = isp_start(datetime.now(UTC) - timedelta(hours=2))
QUARTERS = [Q0, Q0 + ISP, Q0 + 3 * ISP]


def node_point(node: str, level: str, t: datetime, site: str, **fields: FieldValue) -> str:
    base: dict[str, FieldValue] = {
        "import_wh": 2_500.0,
        "export_wh": 0.0,
        "net_wh": 2_500.0,
        "mean_kw": 10.0,
        "peak_kw": 12.5,
        "limit_import_kw": 500.0,
        "limit_export_kw": 0.0,
        "over_import_wh": 0.0,
        "over_export_wh": 0.0,
        "connections": 2,
        "measured": 2,
        "metered": 2,
        "resets": 0,
    }
    return encode_point(NODE_QUARTER, {"site": site, "node": node, "level": level}, {**base, **fields}, t)


def device_point(device: str, role: str, t: datetime, site: str, **fields: FieldValue) -> str:
    tags = {"site": site, "gateway": f"{GW}-1", "device": device, "connection": "c-001", "role": role}
    return encode_point(DEVICE_QUARTER, tags, fields, t)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def qh_api(services, tmp_path_factory) -> AsyncIterator[tuple[ApiSettings, str]]:
    """The API on its own database holding quarter hours of the hub, c-001 and its devices, and two resets."""
    tmp = tmp_path_factory.mktemp("qh")
    site = services.settings.site
    doc = community_doc(site, [free_port(), free_port()], gateway_prefix=GW)
    path = tmp / "community.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    db = "ehub_quarter_hours"
    async with InfluxClient(
        url=services.settings.influx_url, database=db, retention_policy=QUARTER_RP
    ) as client:
        await ensure_retention(
            client, raw_keep_s(30, 0)
        )  # the database and its policies, as the services make them
        q0, q1, q3 = QUARTERS
        await client.write(
            [
                node_point("hub", "hub", q0, site),
                # Over its import limit by 500 Wh, a counter reset, no feed-in limit in force.
                node_point("hub", "hub", q1, site, import_wh=3_000.0, net_wh=3_000.0, limit_import_kw=10.0)
                .replace("limit_export_kw=0.0,", "")
                .replace("over_import_wh=0.0", "over_import_wh=500.0")
                .replace("resets=0i", "resets=1i"),
                node_point("hub", "hub", q3, site, export_wh=100.0, net_wh=2_400.0),
                node_point("hub", "hub", q1 - 4 * ISP, site),  # before the range asked for
                node_point("hub", "hub", q0, "other-site", import_wh=99.0),  # another site's
                node_point("c-001", "connection", q0, site, import_wh=1.0),  # another node's
                device_point(
                    "meter1", "meter", q0, site, import_wh=1_000.0, export_wh=0.0, coverage=1.0, samples=900
                ),
                device_point(
                    "meter1", "meter", q1, site, import_wh=1_200.0, export_wh=5.0, coverage=0.5, samples=450
                ),
                # A PV inverter without energy counters: power and coverage only.
                device_point(
                    "pv1", "pv", q0, site, mean_power_w=-3_000.0, coverage=1.0, samples=900, resets=0
                ),
                encode_point(
                    COUNTER_RESET,
                    # The counter a tag, as the aggregator writes it.
                    {"site": site, "gateway": f"{GW}-1", "device": "meter1", "counter": "energy_import_wh"},
                    {"before": 12_345.0, "after": 3.0},
                    q1 + timedelta(minutes=4),
                ),
                encode_point(
                    COUNTER_RESET,
                    {"site": site, "gateway": f"{GW}-2", "device": "meter2", "counter": "energy_export_wh"},
                    {"before": 50.0, "after": 0.0},
                    q3,
                ),
            ]
        )
    settings = api_settings(services, path, tmp / "api", influx_db=db)
    async with serving(settings):
        yield settings, site


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@pytest_asyncio.fixture(loop_scope="module")
async def client(qh_api) -> AsyncIterator[httpx.AsyncClient]:
    settings, _site = qh_api
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=10) as http:
        yield http


async def test_a_nodes_quarter_hours_with_limits_energy_beyond_them_and_what_is_missing(client):
    q0, q1, q3 = QUARTERS
    got = await client.get("/api/nodes/hub/quarter-hours", params={"start": iso(q0), "end": iso(q3 + ISP)})
    assert got.status_code == 200, got.text
    body = got.json()
    assert (body["node"], body["level"], body["start"], body["end"]) == ("hub", "hub", iso(q0), iso(q3 + ISP))
    assert [q["start"] for q in body["quarter_hours"]] == [iso(q0), iso(q1), iso(q3)]
    first, second, third = body["quarter_hours"]
    assert (first["import_wh"], first["limit_import_kw"], first["limit_export_kw"]) == (2_500.0, 500.0, 0.0)
    assert (second["over_import_wh"], second["limit_export_kw"], second["resets"]) == (500.0, None, 1)
    assert (third["export_wh"], third["net_wh"], third["connections"], third["measured"]) == (
        100.0,
        2_400.0,
        2,
        2,
    )
    totals = body["totals"]
    assert totals == {
        "quarter_hours": 3,
        "missing": 1,
        "over_limit": 1,
        "import_wh": 8_000.0,
        "export_wh": 100.0,
        "net_wh": 7_900.0,
        "over_import_wh": 500.0,
        "over_export_wh": 0.0,
        "peak_kw": 12.5,
        "resets": 1,
    }
    # The default range is the day up to now: the same three, and the earlier one too.
    default = (await client.get("/api/nodes/hub/quarter-hours")).json()
    assert [q["start"] for q in default["quarter_hours"]] == [iso(q1 - 4 * ISP), iso(q0), iso(q1), iso(q3)]
    # A range that starts inside a quarter hour takes those that start in it; an offset is taken as such.
    inside = await client.get(
        "/api/nodes/hub/quarter-hours",
        params={"start": (q0 + timedelta(minutes=1)).isoformat(), "end": (q1 + ISP).astimezone().isoformat()},
    )
    assert [q["start"] for q in inside.json()["quarter_hours"]] == [iso(q1)]
    # A node without points: an empty list, every closed quarter hour missing.
    empty = (
        await client.get(
            "/api/nodes/loop-1/quarter-hours", params={"start": iso(q0), "end": iso(q0 + 4 * ISP)}
        )
    ).json()
    assert (empty["level"], empty["quarter_hours"], empty["totals"]["missing"]) == ("loop", [], 4)
    assert empty["totals"]["import_wh"] is None
    # Only quarter hours that have ended count as missing, not those still to come.
    closed = [(isp_start(datetime.now(UTC)) - q0) // ISP]
    ahead = {"start": iso(q0), "end": iso(datetime.now(UTC) + timedelta(hours=1))}
    missing = (await client.get("/api/nodes/loop-1/quarter-hours", params=ahead)).json()["totals"]["missing"]
    closed.append((isp_start(datetime.now(UTC)) - q0) // ISP)  # a quarter hour may end meanwhile
    assert missing in closed


async def test_a_devices_quarter_hours_and_the_counters_that_fell(client):
    q0, q1, q3 = QUARTERS
    span = {"start": iso(q0), "end": iso(q1 + ISP)}
    meter = (await client.get(f"/api/devices/{GW}-1/meter1/quarter-hours", params=span)).json()
    assert (meter["connection"], meter["role"]) == ("c-001", "meter")
    assert [(q["import_wh"], q["samples"]) for q in meter["quarter_hours"]] == [
        (1_000.0, 900),
        (1_200.0, 450),
    ]
    assert meter["totals"]["import_wh"] == 2_200.0
    assert meter["totals"]["coverage"] == pytest.approx(0.75)
    pv = (await client.get(f"/api/devices/{GW}-1/pv1/quarter-hours", params=span)).json()
    assert [(q["import_wh"], q["mean_power_w"]) for q in pv["quarter_hours"]] == [(None, -3_000.0)]
    assert pv["totals"]["missing"] == 1

    resets = (await client.get("/api/counter-resets", params={"start": iso(q0), "end": iso(q3 + ISP)})).json()
    assert [(r["gateway"], r["device"], r["counter"], r["before"], r["after"]) for r in resets] == [
        (f"{GW}-1", "meter1", "energy_import_wh", 12_345.0, 3.0),
        (f"{GW}-2", "meter2", "energy_export_wh", 50.0, 0.0),
    ]
    one = (await client.get("/api/counter-resets", params={"gateway": f"{GW}-2"})).json()
    assert [r["device"] for r in one] == ["meter2"]


@pytest.mark.parametrize(
    ("path", "params", "status", "says"),
    [
        ("/api/nodes/nowhere/quarter-hours", {}, 404, "unknown node 'nowhere'"),
        ("/api/nodes/Hub!/quarter-hours", {}, 422, "node 'Hub!' is not a valid identifier"),
        ("/api/nodes/hub/quarter-hours", {"start": "2026-06-01T00:00:00"}, 422, "has no time zone"),
        ("/api/nodes/hub/quarter-hours", {"start": "yesterday"}, 422, "datetime"),
        (
            "/api/nodes/hub/quarter-hours",
            {"start": "2026-06-02T00:00:00Z", "end": "2026-06-01T00:00:00Z"},
            422,
            "is not before end",
        ),
        (
            "/api/nodes/hub/quarter-hours",
            {"start": "2026-06-01T00:00:00Z", "end": "2026-06-01T00:00:00Z"},
            422,
            "is not before end",
        ),
        (
            "/api/nodes/hub/quarter-hours",
            {"start": "2026-01-01T00:00:00Z", "end": "2026-02-02T00:00:00Z"},
            422,
            "at most 31 days",
        ),
        (
            f"/api/devices/{GW}-1/meter2/quarter-hours",
            {},
            404,
            f"unknown device 'meter2' behind gateway '{GW}-1'",
        ),
        ("/api/counter-resets", {"gateway": "gw-elsewhere"}, 404, "unknown gateway 'gw-elsewhere'"),
    ],
)
async def test_bad_input_gets_a_4xx_that_says_what(client, path, params, status, says):
    got = await client.get(path, params=params)
    assert got.status_code == status, got.text
    assert says in got.text


async def test_the_database_away_is_a_503(services, tmp_path: Path):
    doc = community_doc(services.settings.site, [free_port(), free_port()], gateway_prefix=GW)
    path = tmp_path / "community.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    settings = api_settings(services, path, tmp_path / "api", influx_url=f"http://127.0.0.1:{free_port()}")
    async with serving(settings), httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}") as http:
        for route in (
            "/api/nodes/hub/quarter-hours",
            f"/api/devices/{GW}-1/meter1/quarter-hours",
            "/api/counter-resets",
        ):
            got = await http.get(route)
            assert got.status_code == 503, (route, got.text)
            assert "the database did not answer" in got.text
