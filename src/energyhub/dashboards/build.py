"""The operators' Grafana dashboards, as code: Energy hub, Company, Gateways, Control and Ingest.

Every panel queries what the ingest and control write (see docs/ingest.md and docs/control.md) with InfluxQL, so
the same JSON works on InfluxDB 1.x, and on 2.x and 3.x through their v1 compatibility (DBRP mapping). Target:
Grafana 11.6 (grafana-foundation-sdk 11.6, pinned). ``energyhub dashboards generate`` writes them to
``src/energyhub/dashboards/json``; a test fails when the committed JSON is not what this module makes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import table, timeseries
from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import VariableRefresh

from energyhub.dashboards.influxql import DATASOURCE, InfluxQL

__all__ = ["DASHBOARDS", "JSON_DIR", "render_all", "write_all"]

JSON_DIR = Path(__file__).parent / "json"
TIME = "$timeFilter"
EVERY = "GROUP BY time($__interval)"


def _legend() -> VizLegendOptions:
    return (
        VizLegendOptions()
        .display_mode(LegendDisplayMode.TABLE)
        .placement(LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["lastNotNull", "max"])
    )


def _series(
    title: str, unit: str, *targets: InfluxQL, width: int = 12, description: str = ""
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .unit(unit)
        .datasource(DATASOURCE)
        .legend(_legend())
        .span(width)
        .height(8)
    )
    if description:
        panel = panel.description(description)
    for target in targets:
        panel = panel.with_target(target)
    return panel


def _table(title: str, *targets: InfluxQL, width: int = 12, description: str = "") -> table.Panel:
    panel = table.Panel().title(title).datasource(DATASOURCE).span(width).height(8)
    if description:
        panel = panel.description(description)
    for target in targets:
        panel = panel.with_target(target)
    return panel


def _base(title: str, uid: str, tags: list[str]) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .tags(["energyhub", *tags])
        .refresh("10s")
        .time("now-6h", "now")
        .timezone("browser")
        .editable()
    )


def _node_variable(name: str, label: str, level: str) -> dash.QueryVariable:
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(f'SHOW TAG VALUES FROM "control_node" WITH KEY = "node" WHERE "level" = \'{level}\'')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
    )


def energy_hub() -> dash.Dashboard:
    return (
        _base("Energy hub", "energyhub-hub", ["hub"])
        .with_row(dash.Row("Substation and cable loops"))
        .with_panel(
            _series(
                "Substation flow against its limits (+ taken from the grid, - fed in)",
                "kwatt",
                InfluxQL(
                    f'SELECT mean("flow_kw") AS "flow", mean("limit_import_kw") AS "import limit", '
                    f'-mean("limit_export_kw") AS "feed-in limit" FROM "control_node" '
                    f"WHERE \"level\" = 'hub' AND {TIME} {EVERY} fill(none)"
                ),
                description="The flow at the substation, and the limits control keeps (margin included).",
            )
        )
        .with_panel(
            _series(
                "Cable loops",
                "kwatt",
                InfluxQL(
                    f'SELECT mean("flow_kw") FROM "control_node" WHERE "level" = \'loop\' AND {TIME} '
                    f'{EVERY}, "node" fill(none)',
                    alias="$tag_node",
                ),
                description="Each loop's flow; the Company dashboard shows one connection against its limits.",
            )
        )
        .with_row(dash.Row("Generation, storage, charging"))
        .with_panel(
            _series(
                "PV produced and curtailed",
                "kwatt",
                InfluxQL(
                    f'SELECT -mean("power_w") / 1000 FROM "device" WHERE "role" = \'pv\' AND {TIME} '
                    f'{EVERY}, "connection", "device" fill(none)',
                    alias="$tag_connection $tag_device",
                ),
                InfluxQL(
                    f'SELECT mean("curtailed_kw") AS "curtailed (all)" FROM "control_cycle" WHERE {TIME} '
                    f"{EVERY} fill(none)",
                    ref_id="B",
                ),
            )
        )
        .with_panel(
            _series(
                "Batteries: state of charge",
                "percent",
                InfluxQL(
                    f'SELECT mean("soc_pct") FROM "device" WHERE "role" = \'battery\' AND {TIME} '
                    f'{EVERY}, "connection", "device" fill(none)',
                    alias="$tag_connection $tag_device",
                ),
                width=6,
            )
        )
        .with_panel(
            _series(
                "Batteries: power (+ charging)",
                "kwatt",
                InfluxQL(
                    f'SELECT mean("power_w") / 1000 FROM "device" WHERE "role" = \'battery\' AND {TIME} '
                    f'{EVERY}, "connection", "device" fill(none)',
                    alias="$tag_connection $tag_device",
                ),
                width=6,
            )
        )
        .with_panel(
            _series(
                "Charging plaza",
                "kwatt",
                InfluxQL(
                    f'SELECT mean("power_w") / 1000 FROM "device" WHERE "role" = \'ev\' AND {TIME} '
                    f'{EVERY}, "device" fill(none)',
                    alias="$tag_device",
                ),
            )
        )
        .with_panel(
            _table(
                "Which limit binds now",
                InfluxQL(
                    f'SELECT last("binding") AS "binding", last("curtailed_kw") AS "curtailed kW" '
                    f'FROM "control_cycle" WHERE {TIME}',
                    table=True,
                ),
                description="The node and direction whose limit the last control cycle had to keep.",
            )
        )
    )


def company() -> dash.Dashboard:
    where = f'"node" =~ /^$connection$/ AND {TIME}'
    return (
        _base("Company", "energyhub-company", ["company"])
        .with_variable(_node_variable("connection", "Connection", "connection"))
        .with_panel(
            _series(
                "Flow against the contract (+ taken, - fed in)",
                "kwatt",
                InfluxQL(
                    f'SELECT mean("flow_kw") AS "flow", mean("limit_import_kw") AS "offtake limit", '
                    f'-mean("limit_export_kw") AS "feed-in limit" FROM "control_node" WHERE {where} '
                    f"{EVERY} fill(none)"
                ),
            )
        )
        .with_panel(
            _series(
                "Quarter-hour averages against contracted capacity",
                "kwatt",
                InfluxQL(
                    f'SELECT mean("flow_kw") AS "quarter-hour average", max("limit_import_kw") AS '
                    f'"contracted offtake" FROM "control_node" WHERE {where} GROUP BY time(15m) fill(none)'
                ),
                description="What the DSO bills and checks: the average of each quarter hour.",
            )
        )
        .with_panel(
            _series(
                "Its devices (+ taken, - produced)",
                "kwatt",
                InfluxQL(
                    f'SELECT mean("power_w") / 1000 FROM "device" WHERE "connection" =~ /^$connection$/ '
                    f'AND {TIME} {EVERY}, "device" fill(none)',
                    alias="$tag_device",
                ),
                width=24,
            )
        )
    )


def gateways() -> dash.Dashboard:
    return (
        _base("Gateways", "energyhub-gateways", ["edge"])
        .with_panel(
            _table(
                "Online, failing devices, buffer",
                InfluxQL(
                    f'SELECT last("online") AS "online", last("devices_ok") AS "devices ok", '
                    f'last("devices_failing") AS "failing", last("buffer_depth") AS "buffered", '
                    f'last("failsafe") AS "failsafe" FROM "gateway_state" WHERE {TIME} GROUP BY "gateway"',
                    table=True,
                ),
                width=24,
            )
        )
        .with_panel(
            _series(
                "Readings not good (partial or bad), per gateway",
                "short",
                InfluxQL(
                    f'SELECT count("seq") FROM "device" WHERE "quality" <> \'good\' AND {TIME} '
                    f'{EVERY}, "gateway" fill(0)',
                    alias="$tag_gateway",
                ),
                description="Measurements with missing values: a device that did not answer, or not fully.",
            )
        )
        .with_panel(
            _series(
                "Buffer depth",
                "short",
                InfluxQL(
                    f'SELECT max("buffer_depth") FROM "gateway_state" WHERE {TIME} {EVERY}, "gateway" '
                    f"fill(none)",
                    alias="$tag_gateway",
                ),
            )
        )
        .with_panel(
            _series(
                "Replayed measurements",
                "short",
                InfluxQL(
                    f'SELECT max("replayed") FROM "ingest_gateway" WHERE {TIME} {EVERY}, "gateway" '
                    f"fill(none)",
                    alias="$tag_gateway",
                ),
            )
        )
        .with_panel(
            _series(
                "Latency: device reading to stored",
                "s",
                InfluxQL(
                    f'SELECT mean("lag_s") FROM "ingest_gateway" WHERE {TIME} {EVERY}, "gateway" fill(none)',
                    alias="$tag_gateway",
                ),
            )
        )
    )


def control() -> dash.Dashboard:
    return (
        _base("Control", "energyhub-control", ["control"])
        .with_panel(
            _series(
                "Cycle time",
                "ms",
                InfluxQL(
                    f'SELECT mean("cycle_ms") AS "mean", max("cycle_ms") AS "max" FROM "control_cycle" '
                    f"WHERE {TIME} {EVERY} fill(none)"
                ),
            )
        )
        .with_panel(
            _series(
                "Setpoints sent",
                "short",
                InfluxQL(
                    f'SELECT sum("setpoints") FROM "control_cycle" WHERE {TIME} {EVERY} fill(0)',
                    alias="setpoints",
                ),
            )
        )
        .with_panel(
            _series(
                "Infeasible cycles (no action keeps every limit)",
                "short",
                InfluxQL(
                    f'SELECT sum("infeasible") FROM "control_cycle" WHERE {TIME} {EVERY} fill(0)',
                    alias="infeasible",
                ),
            )
        )
        .with_panel(
            _series(
                "PV curtailed",
                "kwatt",
                InfluxQL(
                    f'SELECT mean("curtailed_kw") FROM "control_cycle" WHERE {TIME} {EVERY} fill(none)',
                    alias="curtailed",
                ),
            )
        )
    )


def ingest() -> dash.Dashboard:
    return (
        _base("Ingest", "energyhub-ingest", ["ingest"])
        .with_panel(
            _series(
                "Rates",
                "short",
                InfluxQL(
                    f'SELECT mean("messages_per_s") AS "messages/s", mean("points_per_s") AS "points/s" '
                    f'FROM "ingest" WHERE {TIME} {EVERY}, "worker" fill(none)',
                    alias="$col $tag_worker",
                ),
            )
        )
        .with_panel(
            _series(
                "Lag: device reading to stored",
                "s",
                InfluxQL(
                    f'SELECT mean("lag_p50_s") AS "p50", max("lag_p99_s") AS "p99" FROM "ingest" '
                    f"WHERE {TIME} {EVERY} fill(none)"
                ),
            )
        )
        .with_panel(
            _series(
                "Dead letters and retries (totals)",
                "short",
                InfluxQL(
                    f'SELECT max("dead_letters") AS "dead letters", max("retries") AS "write retries" '
                    f'FROM "ingest" WHERE {TIME} {EVERY} fill(none)'
                ),
            )
        )
        .with_panel(
            _series(
                "Held, not yet stored",
                "short",
                InfluxQL(
                    f'SELECT max("pending") FROM "ingest" WHERE {TIME} {EVERY}, "worker" fill(none)',
                    alias="$tag_worker",
                ),
            )
        )
    )


DASHBOARDS: dict[str, Callable[[], dash.Dashboard]] = {
    "energy-hub": energy_hub,
    "company": company,
    "gateways": gateways,
    "control": control,
    "ingest": ingest,
}


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        f"{name}.json": json.dumps(
            json.loads(JSONEncoder(sort_keys=True).encode(make().build())), indent=2, sort_keys=True
        )
        + "\n"
        for name, make in DASHBOARDS.items()
    }


def write_all(out: Path = JSON_DIR) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = out / name
        path.write_text(text)
        written.append(path)
    return written
