"""What the aggregator reads from InfluxDB and writes back: the process image and the record of its cycle.

Reads of one span of whole quarter hours: the energy counters as read (with a margin either side, for the
readings across each boundary), each device's power per quarter hour and per minute (InfluxDB aggregates those
itself), the late marks the ingest left, and the aggregator's own progress. One-minute data is made by InfluxDB
too (``SELECT ... INTO``), for the same span, so a span done again after late data overwrites its minutes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from energyhub.aggregates.quarter import (
    COUNTERS,
    DeviceKey,
    DeviceQuarter,
    MinutePower,
    NodeQuarter,
    PowerStats,
)
from energyhub.io.influx import InfluxClient
from energyhub.io.line_protocol import FieldValue, encode_point
from energyhub.io.schema import (
    AGGREGATE_LATE,
    AGGREGATE_PROGRESS,
    CONTROL_NODE,
    CONTROL_NODE_MINUTE,
    COUNTER_RESET,
    DEVICE,
    DEVICE_MINUTE,
    DEVICE_QUARTER,
    MINUTE_RP,
    NODE_QUARTER,
    QUARTER_RP,
)
from energyhub.wire.roles import POWER_W

__all__ = ["LateMark", "Progress", "SpanReads", "device_lines", "node_lines", "read_span"]

NS = 1_000_000_000


def _q(value: str) -> str:
    """An InfluxQL string literal (ids are bounded, but a quote must never end the literal)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _between(site: str, start_s: float, end_s: float) -> str:
    return f'"site" = {_q(site)} AND time >= {int(start_s * NS)} AND time < {int(end_s * NS)}'


@dataclass
class SpanReads:
    counters: dict[DeviceKey, dict[str, list[tuple[float, float]]]]
    power: dict[DeviceKey, dict[float, PowerStats]]
    minutes: dict[DeviceKey, list[MinutePower]]


def _key(tags: Mapping[str, str]) -> DeviceKey:
    return DeviceKey(tags.get("gateway", ""), tags.get("device", ""))


async def read_span(
    client: InfluxClient, site: str, start_s: float, end_s: float, margin_s: float
) -> SpanReads:
    where = _between(site, start_s, end_s)
    names = ", ".join(f'"{n}"' for n in COUNTERS)
    counters: dict[DeviceKey, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for s in await client.query(
        f'SELECT {names} FROM "{DEVICE}" WHERE {_between(site, start_s - margin_s, end_s + margin_s)} '
        'GROUP BY "gateway", "device"',
        epoch="ms",
    ):
        per = counters[_key(s.tags)]
        for row in s.rows():
            for name in COUNTERS:
                if row.get(name) is not None:
                    per[name].append((row["time"] / 1000, float(row[name])))
    power: dict[DeviceKey, dict[float, PowerStats]] = defaultdict(dict)
    for s in await client.query(
        f'SELECT mean("{POWER_W}") AS "mean", max("{POWER_W}") AS "max", min("{POWER_W}") AS "min", '
        f'count("{POWER_W}") AS "n" FROM "{DEVICE}" WHERE {where} GROUP BY time(15m), "gateway", "device" '
        "fill(none)",
        epoch="s",
    ):
        for row in s.rows():
            # InfluxDB's JSON writes a whole float as an integer (0, not 0.0): made floats again, or the
            # points would be written as integers, which InfluxDB refuses for a float field.
            power[_key(s.tags)][float(row["time"])] = PowerStats(
                float(row["mean"]), float(row["max"]), float(row["min"]), int(row["n"])
            )
    minutes: dict[DeviceKey, list[MinutePower]] = defaultdict(list)
    for s in await client.query(
        f'SELECT mean("{POWER_W}") AS "mean", count("seq") AS "n" FROM "{DEVICE}" WHERE {where} '
        'GROUP BY time(1m), "gateway", "device" fill(none)',
        epoch="s",
    ):
        minutes[_key(s.tags)].extend(
            MinutePower(float(row["time"]), None if row["mean"] is None else float(row["mean"]))
            for row in s.rows()
        )
    return SpanReads(dict(counters), dict(power), dict(minutes))


async def _float_fields(client: InfluxClient, measurement: str) -> list[str]:
    series = await client.query(f'SHOW FIELD KEYS FROM "{measurement}"', epoch=None)
    return sorted(row["fieldKey"] for s in series for row in s.rows() if row["fieldType"] == "float")


async def downsample_minutes(client: InfluxClient, site: str, start_s: float, end_s: float) -> None:
    """One-minute means of every float value of ``device`` and ``control_node`` over the span, into ``year``;
    a device's power also its minute's maximum and minimum (the peaks a mean hides)."""
    db, where = client.database, _between(site, start_s, end_s)
    for measurement, into, extra in (
        (
            DEVICE,
            DEVICE_MINUTE,
            f', max("{POWER_W}") AS "max_{POWER_W}", min("{POWER_W}") AS "min_{POWER_W}"',
        ),
        (CONTROL_NODE, CONTROL_NODE_MINUTE, ""),
    ):
        fields = await _float_fields(client, measurement)
        if not fields:
            continue
        means = ", ".join(f'mean("{f}") AS "mean_{f}"' for f in fields)
        tail = extra if POWER_W in fields else ""
        await client.query(
            f'SELECT {means}{tail} INTO "{db}"."{MINUTE_RP}"."{into}" FROM "{measurement}" WHERE {where} '
            "GROUP BY time(1m), * fill(none)"
        )


def device_lines(
    site: str,
    quarters: Mapping[DeviceKey, Mapping[float, DeviceQuarter]],
    tags: Mapping[DeviceKey, dict[str, str]],
) -> list[str]:
    lines = []
    for key, per in quarters.items():
        base = {"site": site, "gateway": key.gateway, "device": key.device, **tags.get(key, {})}
        for start, q in per.items():
            fields: dict[str, FieldValue] = {
                "samples": q.power.count if q.power else 0,
                "coverage": q.coverage,
            }
            if q.power is not None:
                fields.update(
                    mean_power_w=q.power.mean_w, peak_power_w=q.power.max_w, min_power_w=q.power.min_w
                )
            if q.import_wh is not None:
                fields["import_wh"] = q.import_wh
            if q.export_wh is not None:
                fields["export_wh"] = q.export_wh
            fields["resets"] = len(q.resets)
            lines.append(encode_point(DEVICE_QUARTER, base, fields, int(start * NS)))
            for counter, reset in q.resets:
                lines.append(
                    encode_point(
                        COUNTER_RESET,
                        # The counter a tag: both of a meter's counters fall at one restart, at one time.
                        {"site": site, "gateway": key.gateway, "device": key.device, "counter": counter},
                        {"before": reset.before, "after": reset.after},
                        int(reset.t * NS),
                    )
                )
    return lines


def node_lines(site: str, nodes: Sequence[NodeQuarter]) -> list[str]:
    lines = []
    for q in nodes:
        fields: dict[str, FieldValue] = {
            "import_wh": q.import_wh,
            "export_wh": q.export_wh,
            "net_wh": q.net_wh,
            "mean_kw": q.mean_kw,
            "over_import_wh": q.over_import_wh,
            "over_export_wh": q.over_export_wh,
            "connections": q.connections,
            "measured": q.measured,
            "metered": q.metered,
            "resets": q.resets,
        }
        if q.peak_kw is not None:
            fields["peak_kw"] = q.peak_kw
        if q.limit_import_kw is not None:
            fields["limit_import_kw"] = q.limit_import_kw
        if q.limit_export_kw is not None:
            fields["limit_export_kw"] = q.limit_export_kw
        lines.append(
            encode_point(
                NODE_QUARTER, {"site": site, "node": q.node, "level": q.level}, fields, int(q.start * NS)
            )
        )
    return lines


@dataclass(frozen=True, slots=True)
class LateMark:
    at_ns: int  # when the ingest stored them
    worker: str
    from_s: float
    to_s: float


async def read_late(client: InfluxClient, site: str, after_ns: int) -> list[LateMark]:
    series = await client.query(
        f'SELECT "from_ns", "to_ns" FROM "{AGGREGATE_LATE}" WHERE "site" = {_q(site)} AND time > {after_ns} '
        'GROUP BY "worker"'
    )
    return [
        LateMark(int(row["time"]), s.tags.get("worker", ""), row["from_ns"] / NS, row["to_ns"] / NS)
        for s in series
        for row in s.rows()
        if row["from_ns"] is not None and row["to_ns"] is not None
    ]


@dataclass(frozen=True, slots=True)
class Progress:
    done_to_s: float  # every quarter hour before this is done
    late_seen_ns: int  # late marks up to this are done


async def read_progress(client: InfluxClient, site: str) -> Progress | None:
    series = await client.query(
        f'SELECT last("late_seen_ns") FROM "{QUARTER_RP}"."{AGGREGATE_PROGRESS}" WHERE "site" = {_q(site)}'
    )
    for s in series:
        for row in s.rows():
            return Progress(int(row["time"]) / NS, int(row["last"]))
    return None


def progress_line(site: str, progress: Progress) -> str:
    return encode_point(
        AGGREGATE_PROGRESS,
        {"site": site},
        {"late_seen_ns": progress.late_seen_ns},
        int(progress.done_to_s * NS),
    )


async def first_raw_s(client: InfluxClient, site: str, after_s: float | None = None) -> float | None:
    """The time of the site's first raw measurement (at or after ``after_s``); None when there is none."""
    since = "" if after_s is None else f" AND time >= {int(after_s * NS)}"
    series = await client.query(
        f'SELECT first("seq") FROM "{DEVICE}" WHERE "site" = {_q(site)}{since}', epoch="s"
    )
    for s in series:
        for row in s.rows():
            return float(row["time"])
    return None
