"""Grafana dashboards: the committed JSON is what the code makes, and every panel query returns data from influxd
after a short run of the whole chain (simulated devices, edge agents, broker, ingest, control)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
import yaml

from energyhub.cli.services import free_port
from energyhub.control.online import ControlSettings, OnlineController
from energyhub.dashboards.build import JSON_DIR, render_all
from energyhub.dashboards.influxql import DATASOURCE_UID
from energyhub.domain.community import load_community
from energyhub.ingest.service import IngestService
from energyhub.ingest.settings import IngestSettings
from energyhub.io.influx import InfluxClient
from tests.chain import Estate
from tests.control.test_control_loop import community_doc

REPO = Path(__file__).resolve().parents[2]
PROVISIONING = REPO / "src" / "energyhub" / "dashboards" / "provisioning"


def test_committed_json_is_current():
    rendered = render_all()
    assert sorted(rendered) == sorted(p.name for p in JSON_DIR.glob("*.json"))
    for name, text in rendered.items():
        assert (JSON_DIR / name).read_text() == text, f"{name} is stale: run `energyhub dashboards generate`"


def test_every_panel_has_a_unit_a_title_and_the_provisioned_datasource():
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "influxdb.yaml").read_text())["datasources"]
    assert [d["uid"] for d in datasources] == [DATASOURCE_UID]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "energyhub.yaml").read_text())["providers"]
    assert providers[0]["type"] == "file"
    for name, text in render_all().items():
        dashboard = json.loads(text)
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        assert panels, name
        for panel in panels:
            assert panel["title"], name
            assert panel["datasource"]["uid"] == DATASOURCE_UID
            if panel["type"] == "timeseries":
                assert panel["fieldConfig"]["defaults"]["unit"], f"{name}: {panel['title']} has no unit"
                assert panel["options"]["legend"]["showLegend"]


def _queries() -> list[tuple[str, str, str]]:
    out = []
    for name, text in render_all().items():
        for panel in json.loads(text)["panels"]:
            for target in panel.get("targets", []):
                out.append((name, panel["title"], target["query"]))
    return out


@pytest.fixture(scope="module")
def pipeline(services, tmp_path_factory):
    """A few minutes' worth of the whole chain, in seconds: a meter, PV, a battery and a charger with a car."""
    tmp = tmp_path_factory.mktemp("pipeline")
    settings = services.settings
    site = settings.site
    ports = [free_port(), free_port()]
    doc = community_doc(site, ports, gateway_prefix="gw-dash")
    conn2 = doc["loops"][0]["connections"][1]
    conn2["devices"] += [
        {
            "id": "battery",
            "role": "battery",
            "profile": "sunspec_battery",
            "power_kw": 30,
            "capacity_kwh": 60,
            "modbus": {"host": "127.0.0.1", "port": ports[1], "unit_id": 2},
        },
        {
            "id": "charger",
            "role": "ev",
            "profile": "ev_charger",
            "power_kw": 22,
            "vehicle": "car",
            "modbus": {"host": "127.0.0.1", "port": ports[1], "unit_id": 3},
        },
    ]
    path = tmp / "community.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    community = load_community(path)
    estate = Estate(services, community, path, tmp)
    estate.start(speed=30, start="2026-06-15T08:00:00Z", seed=5, interval_s=0.5, timeout_s=0.2)

    async def run() -> None:
        ingest = IngestService(
            IngestSettings(
                site=site,
                worker="dash",
                share_group="dash",
                mqtt_port=settings.mqtt_port,
                mqtt_credentials_file=services.accounts.credentials_path("ehub-ingest"),
                influx_url=settings.influx_url,
                influx_db=settings.influx_db,
                community=path,
                batch_max_delay_s=0.1,
                metrics_interval_s=1.0,
            )
        )
        control = OnlineController(
            ControlSettings(
                community=path,
                site=site,
                cycle_s=0.5,
                mqtt_port=settings.mqtt_port,
                mqtt_credentials_file=services.accounts.credentials_path("ehub-control"),
                influx_url=settings.influx_url,
                influx_db=settings.influx_db,
            )
        )
        stop = asyncio.Event()
        tasks = [asyncio.create_task(ingest.run(stop)), asyncio.create_task(control.run(stop))]
        try:
            async with InfluxClient(url=settings.influx_url, database=settings.influx_db) as client:
                needed = {
                    "device",
                    "gateway_state",
                    "control_node",
                    "control_cycle",
                    "ingest",
                    "ingest_gateway",
                }
                async with asyncio.timeout(90):
                    while True:
                        series = await client.query("SHOW MEASUREMENTS")
                        have = {row["name"] for s in series for row in s.rows()}
                        roles = await client.query('SHOW TAG VALUES FROM "device" WITH KEY = "role"')
                        role_set = {row["value"] for s in roles for row in s.rows()}
                        if (
                            needed <= have
                            and {"meter", "pv", "battery", "ev"} <= role_set
                            and control.cycles > 20
                        ):
                            break
                        await asyncio.sleep(0.5)  # poll interval of a condition wait
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run(run())
        yield settings
    except TimeoutError:
        raise AssertionError(estate.logs()) from None
    finally:
        estate.stop()


def _expand(query: str, variables: dict[str, str]) -> str:
    """Grafana's macros and this dashboard's variables, as Grafana would put them in."""
    query = query.replace("$timeFilter", "time > now() - 1h").replace("$__interval", "10s")
    for name, value in variables.items():
        query = query.replace(f"${name}", re.escape(value))
    return query


@pytest.mark.parametrize(
    ("dashboard", "panel", "query"), _queries(), ids=lambda v: v if len(v) < 40 else None
)
def test_every_panel_query_returns_data(pipeline, dashboard, panel, query):
    settings = pipeline

    async def ask() -> list:
        async with InfluxClient(url=settings.influx_url, database=settings.influx_db) as client:
            variables = {}
            for variable in json.loads(render_all()[dashboard]).get("templating", {}).get("list", []):
                values = await client.query(variable["query"])
                found = [row["value"] for s in values for row in s.rows()]
                assert found, f"variable {variable['name']} has no values"
                variables[variable["name"]] = sorted(found)[0]
            return await client.query(_expand(query, variables))

    series = asyncio.run(ask())
    values = [v for s in series for row in s.values for v in row[1:] if v is not None]
    assert values, f"{dashboard}: {panel!r} returned no data"
