"""Grafana dashboards: the committed JSON is what the code makes, every panel reads an aggregate or has its range
pinned to at most a day, and every panel query returns data from influxd after a short run of the whole chain
(simulated devices, edge agents, broker, ingest, control) and the aggregator over it."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from energyhub.aggregates.service import Aggregator
from energyhub.aggregates.settings import AggregateSettings
from energyhub.api import quarter_hours as qh
from energyhub.api.models import CounterReset, NodeQuarterHours
from energyhub.api.quarter_hours import TimeRange
from energyhub.cli.services import free_port
from energyhub.control.online import ControlSettings, OnlineController
from energyhub.dashboards.build import AGGREGATES, JSON_DIR, render_all
from energyhub.dashboards.influxql import DATASOURCE_UID
from energyhub.domain.clock import CLOCK_ENV, Clock
from energyhub.domain.community import load_community
from energyhub.domain.isp import ISP, isp_start
from energyhub.ingest.points import DeviceTags, measurement_point
from energyhub.ingest.service import IngestService
from energyhub.ingest.settings import IngestSettings
from energyhub.io.influx import InfluxClient
from energyhub.wire.messages import Measurement, Quality
from energyhub.wire.roles import VOLUME_M3
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


DAY_S = 86_400
# Grafana's relative time: "6h", "now-6h", "1d"; a quarter-hour aggregate never asks for buckets under 15 minutes.
RELATIVE = re.compile(r"^(?:now-)?(\d+)([smhdw])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": DAY_S, "w": 7 * DAY_S}
FROM = re.compile(r'\bFROM\s+((?:"[^"]+"|\w+)(?:\.(?:"[^"]+"|\w+))?)', re.IGNORECASE)
RESOLUTION_S = {'"year".': 60, '"forever".': 900}


def _seconds(text: str | None) -> int | None:
    found = RELATIVE.match(text or "")
    return int(found[1]) * UNIT_S[found[2]] if found else None


def _panels(dashboard: dict) -> list[dict]:
    """Every panel but rows, the panels of a collapsed row too."""
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out += panel.get("panels", [])
        else:
            out.append(panel)
    return out


# A raw target may bound itself: ``time > now() - 1h`` beside $timeFilter (a trend's live tail).
SELF_BOUND = re.compile(r"\btime\s*>=?\s*now\(\)\s*-\s*(\d+[smhdw])\b")


def _raw_unbounded(query: str, pinned_s: int | None) -> list[str]:
    """The raw measurements ``query`` reads over a range that can exceed a day."""
    raw = sorted(set(FROM.findall(query)) - AGGREGATES)
    bounds = [_seconds(b) for b in SELF_BOUND.findall(query)] + [pinned_s]
    return [] if any(b is not None and b <= DAY_S for b in bounds) else raw


def range_problems(dashboard: dict) -> list[str]:
    """Each target of a panel must read only aggregates, or read raw points over at most a day: the panel's range
    pinned (``timeFrom``), or the query's own ``time > now() - X``. An aggregate panel's buckets are no finer than
    its data."""
    problems = []
    for panel in _panels(dashboard):
        title, queries = panel.get("title", "?"), [t["query"] for t in panel.get("targets", [])]
        sources = {found for q in queries for found in FROM.findall(q)}
        if not sources:
            problems.append(f"{title!r} reads nothing this check understands: {queries}")
            continue
        pinned = _seconds(panel.get("timeFrom"))
        raw = sorted({m for q in queries for m in _raw_unbounded(q, pinned)})
        if raw:
            problems.append(
                f"{title!r} reads raw points from {', '.join(raw)} over a range that can exceed a day "
                f"(timeFrom {panel.get('timeFrom')!r}): read an aggregate or pin timeFrom to at most 24h"
            )
        if pinned is None and any("$__interval" in q for q in queries):
            finest = max(
                (s for prefix, s in RESOLUTION_S.items() if any(src.startswith(prefix) for src in sources)),
                default=0,
            )
            interval = _seconds(panel.get("interval")) or 0
            if interval < finest:
                problems.append(
                    f"{title!r}: its interval {panel.get('interval')!r} is finer than its data ({finest} s)"
                )
    return problems


def test_every_panel_reads_an_aggregate_or_is_pinned_to_at_most_a_day():
    problems = [
        f"{name}: {p}" for name, text in render_all().items() for p in range_problems(json.loads(text))
    ]
    assert not problems, "\n".join(problems)
    # And the check catches what it must: a raw panel over the dashboard's range, one pinned to two days, one
    # mixing an aggregate with raw points, an aggregate asking for 10 s buckets of quarter hours.
    raw = {
        "type": "timeseries",
        "title": "raw",
        "targets": [{"query": 'SELECT mean("power_w") FROM "device"'}],
    }
    minutes = {"query": 'SELECT mean("mean_power_w") FROM "year"."device_1m"'}
    bad = {
        "panels": [
            raw,
            {**raw, "title": "two days", "timeFrom": "2d"},
            {
                **raw,
                "title": "tail of two days",
                "targets": [{"query": 'SELECT * FROM "device" WHERE time > now() - 2d'}],
            },
            {
                **raw,
                "title": "mixed",
                "targets": [
                    {"query": 'SELECT mean("mean_power_w") FROM "year"."device_1m"'},
                    *raw["targets"],
                ],
            },
            {
                "type": "row",
                "panels": [
                    {
                        **raw,
                        "title": "fine",
                        "interval": "10s",
                        "targets": [
                            {
                                "query": 'SELECT max("net_wh") FROM "forever"."node_qh" GROUP BY time($__interval)'
                            }
                        ],
                    }
                ],
            },
        ]
    }
    assert [p.split("'")[1] for p in range_problems(bad)] == [
        "raw",
        "two days",
        "tail of two days",
        "mixed",
        "fine",
    ]
    tail = {"query": 'SELECT mean("power_w") FROM "device" WHERE time > now() - 1h AND $timeFilter'}
    good = {
        "panels": [
            {**raw, "timeFrom": "24h"},
            {**raw, "targets": [minutes]},
            {**raw, "title": "live tail", "targets": [minutes, tail]},
        ]
    }
    assert range_problems(good) == []


def _queries() -> list[tuple[str, str, str]]:
    out = []
    for name, text in render_all().items():
        for panel in _panels(json.loads(text)):
            for target in panel.get("targets", []):
                out.append((name, panel["title"], target["query"]))
    return out


@dataclass(frozen=True)
class Pipeline:
    """What a short run of the chain stored: in its own database, from ``start`` to ``end`` on the data clock."""

    influx_url: str
    database: str
    site: str
    start: datetime
    end: datetime


SPEED = 60.0  # a quarter hour of data in 15 real seconds
DASH_DB = "ehub_dashboards"  # the run's own: the aggregator's progress per site is kept in the database


def _dash_community(site: str, tmp: Path) -> Path:
    """The loop test's estate, with a battery and a charger with a car on the second connection."""
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
    return path


async def _stored_enough(client: InfluxClient, control: OnlineController) -> bool:
    needed = {"device", "gateway_state", "control_node", "control_cycle", "ingest", "ingest_gateway"}
    series = await client.query("SHOW MEASUREMENTS")
    have = {row["name"] for s in series for row in s.rows()}
    roles = await client.query('SHOW TAG VALUES FROM "device" WITH KEY = "role"')
    role_set = {row["value"] for s in roles for row in s.rows()}
    return needed <= have and {"meter", "pv", "battery", "ev"} <= role_set and control.cycles > 20


async def _reading_after(client: InfluxClient, t: datetime) -> bool:
    """A meter reading stamped after ``t`` is stored (the restarted simulator's counters are in)."""
    q = f'SELECT last("energy_import_wh") FROM "device" WHERE "role" = \'meter\' AND time > \'{t.isoformat()}\''
    return bool(await client.query(q))


# A gas meter replaced at minute 8 of the first quarter hour and a water meter, on c-001 (the Company board's first
# connection): one reading a minute, so a minute's mean is its reading.
UTILITY_METERS = {
    "gw-dash-1/gas1": DeviceTags("c-001", "gas"),
    "gw-dash-1/water1": DeviceTags("c-001", "water"),
}


def _utility_volume(device: str, minute: int) -> float:
    if device == "water1":
        return 50.0 + 0.05 * minute
    return 1_000.0 + 0.2 * minute if minute < 8 else 3.0 + 0.2 * (minute - 8)


def _utility_lines(site: str, q0: datetime) -> list[str]:
    lines = []
    for key in UTILITY_METERS:
        gateway, device = key.split("/")
        for minute in range(15):  # the first quarter hour, the one the aggregator closes
            message = Measurement(
                ts=q0 + timedelta(minutes=minute, seconds=30),
                session=1,
                seq=minute,
                quality=Quality.GOOD,
                values={VOLUME_M3: _utility_volume(device, minute)},
            )
            lines.append(measurement_point(site, gateway, device, message, UTILITY_METERS)[0])
    return lines


def _restart_simulator(estate: Estate, path: Path) -> None:
    """Stop the simulator and start it again on the same clock: its meters count from zero again, as a meter
    that lost power does, so the aggregator finds counter resets."""
    estate.restart_simulator("--seed", "6")


@pytest.fixture(scope="module")
def pipeline(services, tmp_path_factory):
    """A quarter hour and more of the whole chain in about 20 seconds (a meter, PV, a battery and a charger with a
    car) on a data clock 45-60 minutes behind the wall clock, the simulator restarted inside the first quarter
    hour, then the aggregator over what was stored: the closed quarter hour and its minutes."""
    tmp = tmp_path_factory.mktemp("pipeline")
    settings = services.settings
    site = settings.site
    path = _dash_community(site, tmp)
    community = load_community(path)
    q0 = isp_start(datetime.now(UTC) - timedelta(minutes=45))
    clock = Clock.simulated(q0, SPEED)
    connected = {"influx_url": settings.influx_url, "influx_db": DASH_DB}
    estate = Estate(services, community, path, tmp)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(CLOCK_ENV, clock.to_env())  # the simulator and the agents, which inherit it
        estate.start(speed=SPEED, start=q0.isoformat(), seed=5, interval_s=0.5, timeout_s=0.2)
    # close_after_s is real seconds: one is a data minute at 60x.
    aggregator = Aggregator(
        AggregateSettings(community=path, site=site, close_after_s=1.0, **connected), clock=clock
    )

    async def run() -> None:
        await aggregator.setup()  # the run's database and its policies, before anything writes
        ingest = IngestService(
            IngestSettings(
                site=site,
                worker="dash",
                share_group="dash",
                mqtt_port=settings.mqtt_port,
                mqtt_credentials_file=services.accounts.credentials_path("ehub-ingest"),
                community=path,
                batch_max_delay_s=0.1,
                metrics_interval_s=1.0,
                **connected,
            ),
            clock=clock,
        )
        control = OnlineController(
            ControlSettings(
                community=path,
                site=site,
                cycle_s=0.5,
                mqtt_port=settings.mqtt_port,
                mqtt_credentials_file=services.accounts.credentials_path("ehub-control"),
                **connected,
            ),
            clock=clock,
        )
        stop = asyncio.Event()
        tasks = [asyncio.create_task(ingest.run(stop)), asyncio.create_task(control.run(stop))]
        restart_at = q0 + timedelta(minutes=8)
        try:
            async with (
                InfluxClient(url=settings.influx_url, database=DASH_DB) as client,
                asyncio.timeout(120),
            ):
                while clock.now() < restart_at or not await _stored_enough(client, control):
                    await asyncio.sleep(0.5)  # poll interval of a condition wait
                with pytest.MonkeyPatch.context() as env:
                    env.setenv(CLOCK_ENV, clock.to_env())
                    _restart_simulator(estate, path)
                restarted = clock.now()
                # The first quarter hour closed, and readings of the restarted meters stored.
                while clock.now() < q0 + ISP + timedelta(minutes=1, seconds=30) or not await _reading_after(
                    client, restarted
                ):
                    await asyncio.sleep(0.5)  # poll interval of a condition wait
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Gas and water meters (no simulator serves M-Bus): their readings as the ingest stores them.
        async with InfluxClient(url=settings.influx_url, database=DASH_DB) as client:
            await client.write(_utility_lines(site, q0))
        done = await aggregator.catch_up()
        assert done >= 1, f"the aggregator did {done} quarter hours"

    try:
        asyncio.run(run())
        yield Pipeline(settings.influx_url, DASH_DB, site, q0, clock.now())
    except TimeoutError:
        raise AssertionError(estate.logs()) from None
    finally:
        estate.stop()


def _expand(query: str, variables: dict[str, str], panel: dict, run: Pipeline) -> str:
    """Grafana's macros and this dashboard's variables, as Grafana would put them in: a pinned panel over its
    own last hours, the others over the run's span; buckets no finer than the panel's interval."""
    pinned = panel.get("timeFrom")
    if pinned:
        span = f"time > now() - {pinned}"
    else:
        span = f"time >= {int(run.start.timestamp() * 1e9)} AND time <= {int(run.end.timestamp() * 1e9)}"
    query = query.replace("$timeFilter", span).replace("$__interval", panel.get("interval") or "10s")
    for name, value in variables.items():
        query = query.replace(f"${name}", re.escape(value))
    return query


def _panel(dashboard: str, title: str) -> dict:
    return next(p for p in _panels(json.loads(render_all()[dashboard])) if p["title"] == title)


@pytest.mark.parametrize(
    ("dashboard", "panel", "query"), _queries(), ids=lambda v: v if len(v) < 40 else None
)
def test_every_panel_query_returns_data(pipeline, dashboard, panel, query):
    run = pipeline

    async def ask() -> list:
        async with InfluxClient(url=run.influx_url, database=run.database) as client:
            variables = {}
            for variable in json.loads(render_all()[dashboard]).get("templating", {}).get("list", []):
                values = await client.query(variable["query"])
                found = [row["value"] for s in values for row in s.rows()]
                assert found, f"variable {variable['name']} has no values"
                variables[variable["name"]] = sorted(found)[0]
            return await client.query(_expand(query, variables, _panel(dashboard, panel), run))

    series = asyncio.run(ask())
    values = [v for s in series for row in s.values for v in row[1:] if v is not None]
    assert values, f"{dashboard}: {panel!r} returned no data"


def test_the_simulator_restart_shows_in_the_resets_and_the_quarter_hours(pipeline):
    """Not only some data: the panels show what happened. Both meters counted from zero after the restart, and the
    substation's quarter hours carry energy and the limits."""
    run = pipeline

    async def ask(dashboard: str, title: str) -> list:
        (query,) = [t["query"] for t in _panel(dashboard, title)["targets"]]
        async with InfluxClient(url=run.influx_url, database=run.database) as client:
            return await client.query(_expand(query, {"node": "hub"}, _panel(dashboard, title), run))

    resets = asyncio.run(ask("quarter-hours.json", "Energy counters that fell"))
    fell = {
        (s.tags["gateway"], s.tags["device"])
        for s in resets
        for row in s.rows()
        if row["before Wh"] > row["after Wh"]
    }
    assert {("gw-dash-1", "meter1"), ("gw-dash-2", "meter2")} <= fell
    quarters = asyncio.run(ask("energy-hub.json", "Substation: quarter hours against its limits"))
    rows = [row for s in quarters for row in s.rows()]
    assert rows, quarters
    assert all(row["import limit"] == 500 * 0.25 and row["feed-in limit"] == 0 for row in rows), rows
    assert any(row["taken"] or row["fed in"] for row in rows), rows


def test_the_apis_quarter_hours_read_what_the_aggregator_wrote(pipeline):
    """The API's queries and models over the real aggregator's points (tests/api writes its own in that schema)."""
    run = pipeline
    span = TimeRange.of(run.start, run.end, run.end)

    async def ask(query: str, columns: tuple[str, ...], time_as: str = "start") -> list[dict]:
        async with InfluxClient(url=run.influx_url, database=run.database) as client:
            return qh.rows(await client.query(query, epoch=None), columns, time_as)

    site = run.site
    hub = asyncio.run(ask(qh.quarter_query(site, span, node="hub"), qh.NODE_FIELDS))
    assert hub
    assert hub[0]["start"] == run.start.isoformat().replace("+00:00", "Z")
    NodeQuarterHours.model_validate(
        {
            "node": "hub",
            "level": "hub",
            **span.to_json(),
            "quarter_hours": hub,
            "totals": qh.node_totals(hub, span, run.end),
        }
    )
    assert (hub[0]["connections"], hub[0]["limit_import_kw"]) == (2, 500)
    meter = asyncio.run(
        ask(qh.quarter_query(site, span, gateway="gw-dash-2", device="meter2"), qh.DEVICE_FIELDS)
    )
    assert meter[0]["import_wh"] is not None
    assert meter[0]["resets"] >= 1
    resets = asyncio.run(ask(qh.resets_query(site, span), qh.RESET_COLUMNS, "ts"))
    assert {CounterReset.model_validate(r).device for r in resets} >= {"meter1", "meter2"}


@pytest.mark.parametrize("title", ["Gas and water per hour", "Gas and water per day"])
def test_the_gas_and_water_panels_show_the_counters_increase(pipeline, title):
    """The panels sum each meter's increase over the range, a replaced meter's step down skipped: what the
    readings written above add up to, computed here from them."""
    run = pipeline
    panel = _panel("company.json", title)
    (query,) = [t["query"] for t in panel["targets"]]

    async def ask() -> list:
        async with InfluxClient(url=run.influx_url, database=run.database) as client:
            return await client.query(_expand(query, {"connection": "c-001"}, panel, run))

    used: dict[str, float] = {}
    for s in asyncio.run(ask()):
        used[s.tags["role"]] = sum(row[1] for row in s.values if row[1] is not None)
    volumes = {d: [_utility_volume(d, m) for m in range(15)] for d in ("gas1", "water1")}
    expected = {
        role: sum(b - a for a, b in pairwise(v) if b >= a)
        for role, v in (("gas", volumes["gas1"]), ("water", volumes["water1"]))
    }
    assert expected["gas"] == pytest.approx(0.2 * 14 - 0.2)  # 14 steps of 0.2, but the one down skipped
    assert used == pytest.approx(expected)
