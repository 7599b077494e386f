"""The operators' Grafana dashboards, as code: Energy hub, Quarter hours, Company, Gateways, Control and Ingest.

Every panel queries what the ingest, control and the aggregator write (see docs/ingest.md, docs/control.md and
docs/dashboards.md) with InfluxQL, so the same JSON works on InfluxDB 1.x, and on 2.x and 3.x through their v1
compatibility (DBRP mapping). Target: Grafana 11.6 (grafana-foundation-sdk 11.6, pinned).
``energyhub dashboards generate`` writes them to ``src/energyhub/dashboards/json``; a test fails when the committed
JSON is not what this module makes.

**Which data a panel reads.** Grafana's InfluxQL data source cannot switch between raw points and aggregates by
the time range, so each panel chooses once: a panel whose range can exceed a day reads an aggregate (one-minute
``"year"."device_1m"`` and ``"year"."control_node_1m"`` for trends, the quarter hours of ``"forever"."node_qh"``
and ``"forever"."device_qh"`` for energy and limits); a panel that reads raw points has its range pinned to at
most a day (``RECENT``, Grafana's relative-time override), whatever the dashboard's time picker says. A test reads
the JSON and fails on a panel that does neither.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import table, timeseries
from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BarAlignment,
    GraphDrawStyle,
    LegendDisplayMode,
    LegendPlacement,
)
from grafana_foundation_sdk.models.dashboard import DynamicConfigValue, VariableRefresh

from energyhub.dashboards.influxql import DATASOURCE, InfluxQL
from energyhub.domain.topology import DeviceRole
from energyhub.io.schema import (
    CONTROL_NODE_MINUTE,
    COUNTER_RESET,
    DEVICE_MINUTE,
    DEVICE_QUARTER,
    MINUTE_RP,
    NODE_QUARTER,
    QUARTER_RP,
)
from energyhub.wire.roles import VOLUME_M3

__all__ = ["AGGREGATES", "DASHBOARDS", "JSON_DIR", "RECENT", "render_all", "write_all"]

JSON_DIR = Path(__file__).parent / "json"
TIME = "$timeFilter"
EVERY = "GROUP BY time($__interval)"

# The aggregates, as a FROM clause names them: "<policy>"."<measurement>".
DEVICE_1M = f'"{MINUTE_RP}"."{DEVICE_MINUTE}"'
NODE_1M = f'"{MINUTE_RP}"."{CONTROL_NODE_MINUTE}"'
DEVICE_QH = f'"{QUARTER_RP}"."{DEVICE_QUARTER}"'
NODE_QH = f'"{QUARTER_RP}"."{NODE_QUARTER}"'
RESETS = f'"{QUARTER_RP}"."{COUNTER_RESET}"'
AGGREGATES = frozenset({DEVICE_1M, NODE_1M, DEVICE_QH, NODE_QH, RESETS})
# The pinned range of a panel of raw points: control's cycles, the gateways' states and the ingest's figures come
# at most once a second per process or gateway, so a day is cheap; a panel over every device's raw readings is
# pinned shorter (500 devices x 1/s is 43 million points a day).
RECENT = "24h"
RECENT_DEVICES = "6h"
NOW = "1h"  # a table of the latest values
# The aggregator writes a quarter hour's minutes once it has closed, up to 16 minutes after: a trend of control's
# flows adds the last hour of raw points (its own query bounds them), so it reaches now.
LIVE_TAIL = "1h"
# A panel of one-minute data never asks for finer buckets than the data has, nor one of quarter hours.
MINUTE = "1m"
QUARTER = "15m"
HOUR = "1h"
DAY = "1d"
DAY_TZ = "Europe/Amsterdam"
# kW held for a quarter hour, in kWh: the energy a quarter-hour limit allows.
KWH_PER_QUARTER_KW = 0.25
WH_PER_QUARTER_KW = 250  # a quarter hour's Wh over this is its average kW


def _legend() -> VizLegendOptions:
    return (
        VizLegendOptions()
        .display_mode(LegendDisplayMode.TABLE)
        .placement(LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["lastNotNull", "max"])
    )


def _series(
    title: str,
    unit: str,
    *targets: InfluxQL,
    width: int = 12,
    description: str = "",
    time_from: str | None = None,
    interval: str | None = None,
    bars: bool = False,
    lines: str | None = None,
) -> timeseries.Panel:
    """A time series; ``time_from`` pins its range (raw points), ``interval`` is its finest bucket (aggregates).
    ``bars`` draws each value as a bar over its quarter hour, except the series ``lines`` matches (a regular
    expression of their names: the limits), drawn as steps."""
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
    if time_from:
        panel = panel.time_from(time_from)
    if interval:
        panel = panel.interval(interval)
    if bars:
        # A quarter hour is stored at its start: its bar covers the quarter hour after it.
        panel = panel.draw_style(GraphDrawStyle.BARS).bar_alignment(BarAlignment.AFTER).fill_opacity(60)
    if lines:
        panel = panel.override_by_regexp(
            lines,
            [
                DynamicConfigValue(id_val="custom.drawStyle", value="line"),
                DynamicConfigValue(id_val="custom.lineInterpolation", value="stepAfter"),
                DynamicConfigValue(id_val="custom.fillOpacity", value=0),
            ],
        )
    for target in targets:
        panel = panel.with_target(target)
    return panel


def _table(
    title: str, *targets: InfluxQL, width: int = 12, description: str = "", time_from: str | None = None
) -> table.Panel:
    panel = table.Panel().title(title).datasource(DATASOURCE).span(width).height(8)
    if description:
        panel = panel.description(description)
    if time_from:
        panel = panel.time_from(time_from)
    for target in targets:
        panel = panel.with_target(target)
    return panel


def _base(title: str, uid: str, tags: list[str], since: str = "now-6h") -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .tags(["energyhub", *tags])
        .refresh("10s")
        .time(since, "now")
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


def _quarter_hours_panel(
    where: str, title: str, *, width: int = 12, repeat: str | None = None
) -> timeseries.Panel:
    """A node's quarter hours as the DSO counts them: the energy taken and fed in (a connection's two registers;
    above it the quarter-hour balance) against the energy its limits allow; per bucket the highest quarter hour
    and the tightest limit, so a long range hides no peak."""
    panel = _series(
        title,
        "kwatth",
        InfluxQL(
            f'SELECT max("import_wh") / 1000 AS "taken", -max("export_wh") / 1000 AS "fed in", '
            f'min("limit_import_kw") * {KWH_PER_QUARTER_KW} AS "import limit", '
            f'-min("limit_export_kw") * {KWH_PER_QUARTER_KW} AS "feed-in limit" '
            f"FROM {NODE_QH} WHERE {where} AND {TIME} {EVERY} fill(none)"
        ),
        width=width,
        interval=QUARTER,
        bars=True,
        lines=".*limit$",
        description="Each quarter hour's energy from the meters' counters, taken (+) and fed in (-), against the "
        "energy the node's limits allow in a quarter hour (kW x 0.25 h). Over a long range each bar is the "
        "highest quarter hour in it, and the limit the tightest.",
    )
    return panel.repeat(repeat).max_per_row(2) if repeat else panel


def _beyond_limits_table(where: str = "") -> table.Panel:
    cond = f"{where} AND " if where else ""
    return _table(
        "Energy beyond the limits, per node",
        InfluxQL(
            f'SELECT sum("over_import_wh") / 1000 AS "beyond import limit kWh", '
            f'sum("over_export_wh") / 1000 AS "beyond feed-in limit kWh", sum("import_wh") / 1000 AS "taken kWh", '
            f'sum("export_wh") / 1000 AS "fed in kWh", sum("resets") AS "counter resets" '
            f'FROM {NODE_QH} WHERE {cond}{TIME} GROUP BY "node"',
            table=True,
        ),
        description="Per node over the chosen range: the energy taken or fed in beyond its quarter-hour limits "
        "(0 when every quarter hour kept them), the energy in all, and its meters' counter resets.",
    )


def _counter_resets_table() -> table.Panel:
    return _table(
        "Energy counters that fell",
        InfluxQL(
            f'SELECT "counter", "before" AS "before Wh", "after" AS "after Wh" FROM {RESETS} WHERE {TIME} '
            f'GROUP BY "gateway", "device"',
            table=True,
        ),
        description="A meter's energy counter that went down (replaced, reset, rolled over): its quarter hour "
        "counts from the counter's new start, and the energy across the fall is not in any quarter hour.",
    )


def _live_flow(where: str, *, by_node: bool = False) -> InfluxQL:
    """Control's measured flow of the last hour from raw points (ref B), beside a trend of one-minute data."""
    group = f'{EVERY}, "node"' if by_node else EVERY
    return InfluxQL(
        f'SELECT mean("flow_kw") AS "flow, last hour" FROM "control_node" WHERE {where} AND '
        f"time > now() - {LIVE_TAIL} AND {TIME} {group} fill(none)",
        ref_id="B",
        alias="$tag_node, last hour" if by_node else None,
    )


def _hub_trends(board: dash.Dashboard) -> dash.Dashboard:
    return (
        board.with_row(dash.Row("Substation and cable loops"))
        .with_panel(
            _series(
                "Substation flow against its limits (+ taken from the grid, - fed in)",
                "kwatt",
                InfluxQL(
                    f'SELECT mean("mean_flow_kw") AS "flow", mean("mean_limit_import_kw") AS "import limit", '
                    f'-mean("mean_limit_export_kw") AS "feed-in limit" FROM {NODE_1M} '
                    f"WHERE \"level\" = 'hub' AND {TIME} {EVERY} fill(none)"
                ),
                _live_flow("\"level\" = 'hub'"),
                interval=MINUTE,
                description="The flow at the substation, and the limits control keeps (margin included); "
                "one-minute means, and the last hour from control's own points.",
            )
        )
        .with_panel(
            _series(
                "Cable loops",
                "kwatt",
                InfluxQL(
                    f'SELECT mean("mean_flow_kw") FROM {NODE_1M} WHERE "level" = \'loop\' AND {TIME} '
                    f'{EVERY}, "node" fill(none)',
                    alias="$tag_node",
                ),
                _live_flow("\"level\" = 'loop'", by_node=True),
                interval=MINUTE,
                description="Each loop's flow; the Company dashboard shows one connection against its limits.",
            )
        )
        .with_panel(_quarter_hours_panel("\"level\" = 'hub'", "Substation: quarter hours against its limits"))
        .with_panel(_beyond_limits_table())
    )


def _device_trend(
    title: str, unit: str, select: str, role: str, by: str, width: int = 12
) -> timeseries.Panel:
    tags = ", ".join(f'"{tag}"' for tag in by.split())
    return _series(
        title,
        unit,
        InfluxQL(
            f"SELECT {select} FROM {DEVICE_1M} WHERE \"role\" = '{role}' AND {TIME} {EVERY}, {tags} fill(none)",
            alias=" ".join(f"$tag_{tag}" for tag in by.split()),
        ),
        width=width,
        interval=MINUTE,
    )


def energy_hub() -> dash.Dashboard:
    return (
        _hub_trends(_base("Energy hub", "energyhub-hub", ["hub"]))
        .with_row(dash.Row("Generation, storage, charging"))
        .with_panel(
            _device_trend("PV produced", "kwatt", '-mean("mean_power_w") / 1000', "pv", "connection device")
        )
        .with_panel(
            _series(
                "PV curtailed (all)",
                "kwatt",
                InfluxQL(
                    f'SELECT mean("curtailed_kw") AS "curtailed (all)" FROM "control_cycle" WHERE {TIME} '
                    f"{EVERY} fill(none)"
                ),
                time_from=RECENT,
                description="What control held back, from its cycles (raw points: the last 24 hours).",
            )
        )
        .with_panel(
            _device_trend(
                "Batteries: state of charge",
                "percent",
                'mean("mean_soc_pct")',
                "battery",
                "connection device",
                width=6,
            )
        )
        .with_panel(
            _device_trend(
                "Batteries: power (+ charging)",
                "kwatt",
                'mean("mean_power_w") / 1000',
                "battery",
                "connection device",
                width=6,
            )
        )
        .with_panel(_device_trend("Charging plaza", "kwatt", 'mean("mean_power_w") / 1000', "ev", "device"))
        .with_panel(
            _table(
                "Which limit binds now",
                InfluxQL(
                    f'SELECT last("binding") AS "binding", last("curtailed_kw") AS "curtailed kW" '
                    f'FROM "control_cycle" WHERE {TIME}',
                    table=True,
                ),
                time_from=NOW,
                description="The node and direction whose limit the last control cycle had to keep.",
            )
        )
    )


def quarter_hours() -> dash.Dashboard:
    """Every node's quarter hours against its limits, as the DSO counts them, and the counters behind them."""
    return (
        _base("Quarter hours", "energyhub-quarter-hours", ["hub", "settlement"], since="now-7d")
        .with_variable(
            dash.QueryVariable("node")
            .label("Node")
            .datasource(DATASOURCE)
            .query(f'SHOW TAG VALUES FROM {NODE_QH} WITH KEY = "node"')
            .multi(True)
            .include_all(True)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
        .with_panel(
            _quarter_hours_panel(
                '"node" =~ /^$node$/', "$node: quarter hours against its limits", repeat="node"
            )
        )
        .with_panel(_beyond_limits_table('"node" =~ /^$node$/'))
        .with_panel(_counter_resets_table())
        .with_panel(
            _table(
                "Devices: energy and data coverage",
                InfluxQL(
                    f'SELECT sum("import_wh") / 1000 AS "taken kWh", sum("export_wh") / 1000 AS "fed in kWh", '
                    f'mean("coverage") AS "coverage", sum("resets") AS "counter resets" FROM {DEVICE_QH} '
                    f'WHERE {TIME} GROUP BY "connection", "device"',
                    table=True,
                ),
                width=24,
                description="Per device over the range: energy from its counters (meters), and the share of "
                "each quarter hour its readings covered (1 = no gap).",
            )
        )
    )


def _company_quarters(where: str) -> list[timeseries.Panel]:
    return [
        _series(
            "Quarter-hour averages against contracted capacity",
            "kwatt",
            InfluxQL(
                f'SELECT max("import_wh") / {WH_PER_QUARTER_KW} AS "offtake", '
                f'-max("export_wh") / {WH_PER_QUARTER_KW} AS "feed-in", '
                f'min("limit_import_kw") AS "contracted offtake limit", '
                f'-min("limit_export_kw") AS "contracted feed-in limit" FROM {NODE_QH} WHERE {where} '
                f"{EVERY} fill(none)"
            ),
            interval=QUARTER,
            bars=True,
            lines=".*limit$",
            description="What the DSO bills and checks: each quarter hour's average offtake and feed-in, from "
            "the meter's two registers. Over a long range each bar is the highest quarter hour in it.",
        ),
        _series(
            "Energy per quarter hour (+ taken, - fed in)",
            "kwatth",
            InfluxQL(
                f'SELECT sum("import_wh") / 1000 AS "taken", -sum("export_wh") / 1000 AS "fed in", '
                f'sum("over_import_wh") / 1000 AS "taken beyond the contract", '
                f'-sum("over_export_wh") / 1000 AS "fed in beyond the contract" FROM {NODE_QH} WHERE {where} '
                f"{EVERY} fill(none)"
            ),
            interval=QUARTER,
            bars=True,
            description="Energy summed per bar: a quarter hour, or more of them over a long range.",
        ),
    ]


UTILITY_ROLES = (DeviceRole.GAS, DeviceRole.WATER)


def _utility_use(title: str, interval: str, tail: str = "") -> timeseries.Panel:
    """A connection's gas and water use per bucket: the counters' minute-to-minute increases summed. Each
    meter's increase is taken on its own (inner query) and a step down, a meter replaced or reset, skipped
    (``non_negative_difference``), as the passport counts (``planning/utility_use.py``)."""
    roles = "|".join(r.value for r in UTILITY_ROLES)
    return _series(
        title,
        "m3",
        InfluxQL(
            f'SELECT sum("used") FROM (SELECT non_negative_difference("mean_{VOLUME_M3}") AS "used" '
            f'FROM {DEVICE_1M} WHERE "connection" =~ /^$connection$/ AND "role" =~ /^({roles})$/ AND {TIME} '
            f'GROUP BY "role", "gateway", "device") WHERE {TIME} {EVERY}, "role" fill(none){tail}',
            alias="$tag_role",
        ),
        width=12,
        interval=interval,
        bars=True,
        description="Gas and water used, m³ per bar, from the meters' volume counters (one-minute data): a "
        "meter's counter that fell (replaced, reset) counts from its new start.",
    )


def company() -> dash.Dashboard:
    where = f'"node" =~ /^$connection$/ AND {TIME}'
    board = (
        _base("Company", "energyhub-company", ["company"])
        .with_variable(_node_variable("connection", "Connection", "connection"))
        .with_panel(
            _series(
                "Flow against the contract (+ taken, - fed in)",
                "kwatt",
                InfluxQL(
                    f'SELECT mean("mean_flow_kw") AS "flow", mean("mean_limit_import_kw") AS "offtake limit", '
                    f'-mean("mean_limit_export_kw") AS "feed-in limit" FROM {NODE_1M} WHERE {where} '
                    f"{EVERY} fill(none)"
                ),
                _live_flow('"node" =~ /^$connection$/'),
                interval=MINUTE,
            )
        )
    )
    for panel in _company_quarters(where):
        board = board.with_panel(panel)
    board = board.with_panel(
        _series(
            "Its devices (+ taken, - produced)",
            "kwatt",
            InfluxQL(
                f'SELECT mean("mean_power_w") / 1000 FROM {DEVICE_1M} WHERE "connection" =~ /^$connection$/ '
                f'AND {TIME} {EVERY}, "device" fill(none)',
                alias="$tag_device",
            ),
            interval=MINUTE,
        )
    )
    board = board.with_row(dash.Row("Gas and water")).with_panel(_utility_use("Gas and water per hour", HOUR))
    # Days as the estate counts them: InfluxQL's are UTC unless told.
    board = board.with_panel(_utility_use("Gas and water per day", DAY, f" tz('{DAY_TZ}')"))
    return board


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
                time_from=RECENT,
            )
        )
        .with_panel(
            _series(
                "Data coverage per gateway (quarter hours)",
                "percentunit",
                InfluxQL(
                    f'SELECT mean("coverage") FROM {DEVICE_QH} WHERE {TIME} {EVERY}, "gateway" fill(none)',
                    alias="$tag_gateway",
                ),
                interval=QUARTER,
                description="The share of each quarter hour its devices' readings covered (1 = no gap), for any "
                "range.",
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
                time_from=RECENT_DEVICES,
                description="Measurements with missing values: a device that did not answer, or not fully.",
            )
        )
        .with_panel(_gateway_series("Buffer depth", "max", "buffer_depth", "gateway_state"))
        .with_panel(_gateway_series("Replayed measurements", "max", "replayed", "ingest_gateway"))
        .with_panel(
            _gateway_series("Latency: device reading to stored", "mean", "lag_s", "ingest_gateway", unit="s")
        )
    )


def _gateway_series(
    title: str, how: str, field: str, measurement: str, unit: str = "short"
) -> timeseries.Panel:
    return _series(
        title,
        unit,
        InfluxQL(
            f'SELECT {how}("{field}") FROM "{measurement}" WHERE {TIME} {EVERY}, "gateway" fill(none)',
            alias="$tag_gateway",
        ),
        time_from=RECENT,
    )


def _cycle_series(
    title: str, unit: str, select: str, fill: str, alias: str | None = None
) -> timeseries.Panel:
    return _series(
        title,
        unit,
        InfluxQL(f'SELECT {select} FROM "control_cycle" WHERE {TIME} {EVERY} fill({fill})', alias=alias),
        time_from=RECENT,
    )


def control() -> dash.Dashboard:
    return (
        _base("Control", "energyhub-control", ["control"], since="now-24h")
        .with_panel(
            _series(
                "Substation: planned against measured flow",
                "kwatt",
                InfluxQL(
                    f'SELECT mean("mean_flow_kw") AS "measured", mean("mean_planned_kw") AS "planned" '
                    f"FROM {NODE_1M} WHERE \"level\" = 'hub' AND {TIME} {EVERY} fill(none)"
                ),
                interval=MINUTE,
                width=24,
                description="The flow control's decisions planned at the substation, and what its meters measured "
                "(one-minute means, any range).",
            )
        )
        .with_panel(
            _cycle_series("Cycle time", "ms", 'mean("cycle_ms") AS "mean", max("cycle_ms") AS "max"', "none")
        )
        .with_panel(_cycle_series("Setpoints sent", "short", 'sum("setpoints")', "0", alias="setpoints"))
        .with_panel(
            _cycle_series(
                "Infeasible cycles (no action keeps every limit)",
                "short",
                'sum("infeasible")',
                "0",
                "infeasible",
            )
        )
        .with_panel(_cycle_series("PV curtailed", "kwatt", 'mean("curtailed_kw")', "none", alias="curtailed"))
    )


def _ingest_series(
    title: str, unit: str, select: str, by_worker: bool, alias: str | None
) -> timeseries.Panel:
    group = f'{EVERY}, "worker"' if by_worker else EVERY
    return _series(
        title,
        unit,
        InfluxQL(f'SELECT {select} FROM "ingest" WHERE {TIME} {group} fill(none)', alias=alias),
        time_from=RECENT,
    )


def ingest() -> dash.Dashboard:
    return (
        _base("Ingest", "energyhub-ingest", ["ingest"], since="now-24h")
        .with_panel(
            _ingest_series(
                "Rates",
                "short",
                'mean("messages_per_s") AS "messages/s", mean("points_per_s") AS "points/s"',
                True,
                "$col $tag_worker",
            )
        )
        .with_panel(
            _ingest_series(
                "Lag: device reading to stored",
                "s",
                'mean("lag_p50_s") AS "p50", max("lag_p99_s") AS "p99"',
                False,
                None,
            )
        )
        .with_panel(
            _ingest_series(
                "Dead letters and retries (totals)",
                "short",
                'max("dead_letters") AS "dead letters", max("retries") AS "write retries"',
                False,
                None,
            )
        )
        .with_panel(_ingest_series("Held, not yet stored", "short", 'max("pending")', True, "$tag_worker"))
    )


DASHBOARDS: dict[str, Callable[[], dash.Dashboard]] = {
    "energy-hub": energy_hub,
    "quarter-hours": quarter_hours,
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
