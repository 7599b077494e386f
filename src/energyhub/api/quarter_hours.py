"""Reading the aggregator's quarter hours back: a node's (``"forever"."node_qh"``), a device's
(``"forever"."device_qh"``) and the energy counters that fell (``"forever"."counter_reset"``).

A range is ``[start, end)`` in UTC: the quarter hours that start in it. Both ends need a time zone; the range is
at most ``MAX_RANGE`` (31 days: 2,976 quarter hours per node), so one request cannot ask the database for years.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from energyhub.domain.isp import ISP, isp_start
from energyhub.io.influx import Series
from energyhub.io.line_protocol import timestamp_ns
from energyhub.io.schema import COUNTER_RESET, DEVICE_QUARTER, NODE_QUARTER, QUARTER_RP

__all__ = [
    "DEVICE_FIELDS",
    "MAX_RANGE",
    "NODE_FIELDS",
    "RESET_COLUMNS",
    "RangeError",
    "TimeRange",
    "device_totals",
    "node_totals",
    "quarter_query",
    "resets_query",
    "rows",
]

MAX_RANGE = timedelta(days=31)
DEFAULT_RANGE = timedelta(days=1)
NODE_FIELDS = (
    "import_wh",
    "export_wh",
    "net_wh",
    "mean_kw",
    "peak_kw",
    "limit_import_kw",
    "limit_export_kw",
    "over_import_wh",
    "over_export_wh",
    "connections",
    "measured",
    "metered",
    "resets",
)
DEVICE_FIELDS = (
    "import_wh",
    "export_wh",
    "mean_power_w",
    "peak_power_w",
    "min_power_w",
    "samples",
    "coverage",
    "resets",
)
RESET_COLUMNS = ("gateway", "device", "counter", "before", "after")


class RangeError(ValueError):
    """A time range the API does not take: its message says which end and why."""


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime

    @classmethod
    def of(cls, start: datetime | None, end: datetime | None, now: datetime) -> TimeRange:
        """``[start, end)`` from the query; a missing end is ``now`` (the data clock), a missing start a day
        before the end."""
        for name, value in (("start", start), ("end", end)):
            if value is not None and value.tzinfo is None:
                raise RangeError(f"{name} {value.isoformat()} has no time zone: give one, e.g. Z or +01:00")
        end = (end or now).astimezone(UTC)
        start = (start or end - DEFAULT_RANGE).astimezone(UTC)
        if start >= end:
            raise RangeError(f"start {start.isoformat()} is not before end {end.isoformat()}")
        if end - start > MAX_RANGE:
            raise RangeError(
                f"the range {start.isoformat()} to {end.isoformat()} is {(end - start) / timedelta(days=1):g} "
                f"days: at most {MAX_RANGE.days} days in one request"
            )
        return cls(start, end)

    def where(self) -> str:
        return f"time >= {timestamp_ns(self.start)} AND time < {timestamp_ns(self.end)}"

    def closed_quarters(self, now: datetime) -> int:
        """How many quarter hours start in the range and had ended by ``now``."""
        first = isp_start(self.start)
        if first < self.start:
            first += ISP
        count = 0
        while first < self.end and first + ISP <= now:
            count += 1
            first += ISP
        return count

    def to_json(self) -> dict[str, str]:
        return {"start": _iso(self.start), "end": _iso(self.end)}


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _site(site: str) -> str:
    # The aggregator tags the site; a point without the tag (``site = ''`` in InfluxQL) is taken as this site's.
    return f"(\"site\" = '{site}' OR \"site\" = '')"


def quarter_query(site: str, span: TimeRange, **tags: str) -> str:
    """InfluxQL for the quarter hours of one node (``node=``) or device (``gateway=``, ``device=``), oldest
    first. The tag values are checked identifiers (``check_id``), so quoting them is safe."""
    measurement, fields = (NODE_QUARTER, NODE_FIELDS) if "node" in tags else (DEVICE_QUARTER, DEVICE_FIELDS)
    where = [_site(site), *(f"\"{k}\" = '{v}'" for k, v in tags.items()), span.where()]
    columns = ", ".join(f'"{f}"' for f in fields)
    return (
        f'SELECT {columns} FROM "{QUARTER_RP}"."{measurement}" WHERE {" AND ".join(where)} ORDER BY time ASC'
    )


def resets_query(site: str, span: TimeRange, gateway: str | None = None) -> str:
    where = [_site(site), span.where()]
    if gateway is not None:
        where.append(f"\"gateway\" = '{gateway}'")
    columns = ", ".join(f'"{c}"' for c in RESET_COLUMNS)
    return f'SELECT {columns} FROM "{QUARTER_RP}"."{COUNTER_RESET}" WHERE {" AND ".join(where)} ORDER BY time ASC'


def rows(series: list[Series], columns: tuple[str, ...], time_as: str = "start") -> list[dict[str, Any]]:
    """Every row with its time as ``time_as`` and ``columns``, null where the point has none."""
    return [
        {time_as: row.get("time"), **{c: row.get(c) for c in columns}} for s in series for row in s.rows()
    ]


def _sum(found: list[dict[str, Any]], name: str) -> float | None:
    values = [r[name] for r in found if r.get(name) is not None]
    return float(sum(values)) if values else None


def node_totals(found: list[dict[str, Any]], span: TimeRange, now: datetime) -> dict[str, Any]:
    peaks = [r["peak_kw"] for r in found if r.get("peak_kw") is not None]
    return {
        "quarter_hours": len(found),
        "missing": max(0, span.closed_quarters(now) - len(found)),
        "over_limit": sum(
            1 for r in found if (r.get("over_import_wh") or 0) > 0 or (r.get("over_export_wh") or 0) > 0
        ),
        **{
            name: _sum(found, name)
            for name in ("import_wh", "export_wh", "net_wh", "over_import_wh", "over_export_wh")
        },
        "peak_kw": max(peaks) if peaks else None,
        "resets": int(_sum(found, "resets") or 0),
    }


def device_totals(found: list[dict[str, Any]], span: TimeRange, now: datetime) -> dict[str, Any]:
    covered = [r["coverage"] for r in found if r.get("coverage") is not None]
    return {
        "quarter_hours": len(found),
        "missing": max(0, span.closed_quarters(now) - len(found)),
        "import_wh": _sum(found, "import_wh"),
        "export_wh": _sum(found, "export_wh"),
        "coverage": sum(covered) / len(covered) if covered else None,
        "resets": int(_sum(found, "resets") or 0),
    }
