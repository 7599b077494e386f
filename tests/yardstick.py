"""The DSO's yardstick, from outside the project's bookkeeping: each quarter hour's energy per connection from the
grid meters' own energy registers as InfluxDB stored them, summed per node, against the contract limits.

Nothing here reads what control recorded about itself (except, on purpose, which quarter hours it reported as
infeasible). The counters are read raw with InfluxQL; a quarter hour's energy is the net counter (import - export)
at its end minus at its start, each interpolated between the two stored readings on either side of the boundary,
as a meter read at the boundary itself would show. A quarter hour counts only when every connection of a node has
readings within ``max_gap_s`` of both its boundaries: a missing meter is no proof of a kept limit.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx

from energyhub.domain.limits import LimitBook
from energyhub.domain.topology import Community

ISP_S = 900


@dataclass(frozen=True)
class Over:
    node: str
    level: str
    isp: datetime
    direction: str  # "import" or "export"
    kw: float  # the quarter hour's average, + taken
    limit_kw: float


def query(url: str, db: str, q: str) -> list[dict]:
    response = httpx.get(f"{url}/query", params={"db": db, "q": q, "epoch": "ms"}, timeout=60)
    response.raise_for_status()
    result = response.json()["results"][0]
    if "error" in result:
        raise RuntimeError(f"{q}: {result['error']}")
    return result.get("series", [])


def meter_counters(
    url: str, db: str, site: str, start: datetime, end: datetime
) -> dict[str, list[tuple[float, float]]]:
    """Per connection: (epoch s, net Wh) of every stored grid meter reading in [start, end), in time order."""
    q = (
        "SELECT energy_import_wh, energy_export_wh FROM device "
        f"WHERE site = '{site}' AND role = 'meter' AND time >= '{start.isoformat()}' AND time < '{end.isoformat()}' "
        "GROUP BY connection"
    )
    out: dict[str, list[tuple[float, float]]] = {}
    for series in query(url, db, q):
        connection = series["tags"]["connection"]
        rows = sorted(
            (t / 1000.0, imp - exp) for t, imp, exp in series["values"] if imp is not None and exp is not None
        )
        out[connection] = rows
    return out


def counter_at(readings: list[tuple[float, float]], t: float, max_gap_s: float) -> float | None:
    """The net counter at ``t``, interpolated between the readings on either side (each within ``max_gap_s``)."""
    times = [r[0] for r in readings]
    i = bisect.bisect_left(times, t)
    if i < len(times) and times[i] == t:
        return readings[i][1]
    if i == 0 or i == len(times):
        return None
    (t0, e0), (t1, e1) = readings[i - 1], readings[i]
    if t - t0 > max_gap_s or t1 - t > max_gap_s:
        return None
    return e0 + (e1 - e0) * (t - t0) / (t1 - t0)


def window_energy_kwh(
    counters: dict[str, list[tuple[float, float]]], windows: list[tuple[datetime, datetime]], max_gap_s: float
) -> dict[tuple[str, datetime], float]:
    """(connection, window start) -> kWh (+ taken), for every window with both of its ends read."""
    out = {}
    for connection, readings in counters.items():
        for start, end in windows:
            a = counter_at(readings, start.timestamp(), max_gap_s)
            b = counter_at(readings, end.timestamp(), max_gap_s)
            if a is not None and b is not None:
                out[(connection, start)] = (b - a) / 1000.0
    return out


def energy_between(
    counters: dict[str, list[tuple[float, float]]],
    connections: list[str],
    a: datetime,
    b: datetime,
    max_gap_s: float,
) -> tuple[float, float] | None:
    """(net kWh, gross kWh) over [a, b] summed over ``connections``; gross adds each connection's size, the
    scale an error is measured against where flows cancel. None if a counter is missing at either end."""
    net = gross = 0.0
    for connection in connections:
        readings = counters.get(connection, [])
        start = counter_at(readings, a.timestamp(), max_gap_s)
        end = counter_at(readings, b.timestamp(), max_gap_s)
        if start is None or end is None:
            return None
        net += (end - start) / 1000.0
        gross += abs(end - start) / 1000.0
    return net, gross


def node_members(community: Community) -> dict[str, tuple[str, list[str]]]:
    """Node -> (level, its connections): the hub, each loop, each micro group, each connection."""
    members: dict[str, tuple[str, list[str]]] = {community.hub.id: ("hub", [])}
    for loop, micro, connection in community.connections():
        members[community.hub.id][1].append(connection.id)
        members.setdefault(loop.id, ("loop", []))[1].append(connection.id)
        if micro is not None:
            members.setdefault(micro.id, ("micro", []))[1].append(connection.id)
        members[connection.id] = ("connection", [connection.id])
    return members


def quarter_hours(start: datetime, end: datetime) -> list[datetime]:
    """Every whole quarter hour inside [start, end)."""
    first = math.ceil(start.timestamp() / ISP_S) * ISP_S
    last = math.floor(end.timestamp() / ISP_S) * ISP_S
    return [datetime.fromtimestamp(t, UTC) for t in range(first, last, ISP_S)]


@dataclass
class Yardstick:
    """Every node's quarter-hour averages in a window, and those over a limit."""

    node_kw: dict[tuple[str, datetime], float]
    overs: list[Over]
    isps: list[datetime]

    def worst_hub_feed_in_kw(self, hub: str) -> float:
        return max((-kw for (n, _t), kw in self.node_kw.items() if n == hub), default=math.nan)


def measure(
    community: Community,
    *,
    url: str,
    db: str,
    site: str,
    start: datetime,
    end: datetime,
    max_gap_s: float,
    tolerance_kw: float = 0.0,
    windows: list[tuple[datetime, datetime]] | None = None,
    margin: float = 0.0,
    margin_kw: float = 0.0,
) -> Yardstick:
    """The whole quarter hours of [start, end) as the meters counted them (or the given ``windows`` inside
    quarter hours, their average against the limit of their quarter hour); over = beyond the contract by more
    than ``tolerance_kw`` and the control margin (``margin`` of the limit, at least ``margin_kw``: 0 for the DSO's
    strict reading)."""
    if windows is None:
        windows = [(t, t + timedelta(seconds=ISP_S)) for t in quarter_hours(start, end)]
    isps = [a for a, _b in windows]
    hours = {a: (b - a).total_seconds() / 3600 for a, b in windows}
    counters = meter_counters(url, db, site, start - timedelta(minutes=5), end + timedelta(minutes=5))
    energy = window_energy_kwh(counters, windows, max_gap_s)
    book = LimitBook(community)
    node_kw: dict[tuple[str, datetime], float] = {}
    overs = []
    for node, (level, connections) in node_members(community).items():
        for isp in isps:
            parts = [energy.get((c, isp)) for c in connections]
            if any(p is None for p in parts):
                continue
            kw = sum(p for p in parts if p is not None) / hours[isp]
            node_kw[(node, isp)] = kw
            limit = book.limit_at(node, isp)
            imp, exp = limit.import_w / 1000.0, limit.export_w / 1000.0
            if kw > imp + max(margin * imp, margin_kw) + tolerance_kw:
                overs.append(Over(node, level, isp, "import", kw, imp))
            if -kw > exp + max(margin * exp, margin_kw) + tolerance_kw:
                overs.append(Over(node, level, isp, "export", kw, exp))
    return Yardstick(node_kw, overs, isps)


def infeasible_isps(url: str, db: str, site: str, start: datetime, end: datetime) -> set[datetime]:
    """Quarter hours in which control reported at least one cycle with no action keeping every limit."""
    q = (
        "SELECT sum(infeasible) FROM control_cycle "
        f"WHERE site = '{site}' AND time >= '{start.isoformat()}' AND time < '{end.isoformat()}' GROUP BY time(15m)"
    )
    out = set()
    for series in query(url, db, q):
        for t, total in series["values"]:
            if total:
                out.add(datetime.fromtimestamp(t / 1000.0, UTC))
    return out
