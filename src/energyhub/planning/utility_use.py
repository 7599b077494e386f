"""Gas and water use per connection from the meters' volume counters, for the area passport.

A gas or water meter (role ``gas`` or ``water``) publishes ``volume_m3``, a counter that only grows. Its use over
a period is the sum of the counter's **positive** increments between consecutive readings in the period: for a
counter that never falls that is the last reading minus the first; a step down (the meter replaced, its counter
reset or rolled over) is skipped rather than counted as negative use, so only the volume between the last reading
before the fall and the first after it is lost. The volume between the period's start and its first reading, and
between its last reading and the end, is not counted (nothing is extrapolated); ``coverage`` says how much of the
period lies between the first and the last reading (the counter bridges gaps between readings, so a gap does not
lower it).

From InfluxDB, readings are an hour's last value (so a year is 8,760 rows a meter, not half a million): of the
one-minute means the aggregator keeps a year (``"year"."device_1m"``, ``mean_volume_m3``), and of the raw points
(``device``, ``volume_m3``, kept ``raw_retention_days``) after the last one-minute point, the part not yet
aggregated. A reset inside an hour loses that hour's volume after the reset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise

from energyhub.domain.topology import Community, DeviceRole
from energyhub.io.influx import InfluxClient, InfluxError, Series
from energyhub.io.schema import DEVICE, DEVICE_MINUTE, MINUTE_RP
from energyhub.wire.roles import VOLUME_M3

__all__ = [
    "UTILITY_ROLES",
    "CounterUse",
    "UtilityUse",
    "combine",
    "counter_use",
    "read_utility_use",
    "read_utility_use_blocking",
]

UTILITY_ROLES = (DeviceRole.GAS, DeviceRole.WATER)
Reading = tuple[datetime, float]


@dataclass(frozen=True, slots=True)
class CounterUse:
    """One counter's (or a connection's summed counters') use over a period."""

    use_m3: float
    readings: int
    resets: int  # steps down, skipped
    coverage: float  # share of the period between the first and the last reading, 0-1


@dataclass(frozen=True, slots=True)
class UtilityUse:
    """A connection's gas and water use; None where it has no such meter with readings in the period."""

    gas: CounterUse | None = None
    water: CounterUse | None = None


def counter_use(readings: Iterable[Reading], start: datetime, end: datetime) -> CounterUse | None:
    """The use of one counter over ``[start, end)`` from its readings (any order; those outside are ignored);
    None without any reading in the period."""
    inside = sorted((t, v) for t, v in readings if start <= t < end)
    if not inside:
        return None
    use, resets = 0.0, 0
    for (_t0, before), (_t1, after) in pairwise(inside):
        if after >= before:
            use += after - before
        else:
            resets += 1
    span = (end - start).total_seconds()
    covered = (inside[-1][0] - inside[0][0]).total_seconds()
    return CounterUse(use, len(inside), resets, covered / span if span > 0 else 0.0)


def combine(uses: Sequence[CounterUse]) -> CounterUse | None:
    """A connection's meters of one kind together: their use summed, coverage the least covered meter's."""
    if not uses:
        return None
    return CounterUse(
        sum(u.use_m3 for u in uses),
        sum(u.readings for u in uses),
        sum(u.resets for u in uses),
        min(u.coverage for u in uses),
    )


def _readings(series: list[Series], field: str, start: datetime) -> dict[tuple[str, str, str], list[Reading]]:
    """(connection, role, gateway/device) -> hourly readings of ``field``, from a query grouped by those tags.
    A bucket is stamped at its start; the first may start before ``start`` (a period not on the hour)."""
    out: dict[tuple[str, str, str], list[Reading]] = {}
    for s in series:
        key = (
            s.tags.get("connection", ""),
            s.tags.get("role", ""),
            f"{s.tags.get('gateway', '')}/{s.tags.get('device', '')}",
        )
        for row in s.rows():
            if row[field] is not None:
                t = max(datetime.fromtimestamp(row["time"], UTC), start)
                out.setdefault(key, []).append((t, float(row[field])))
    return out


def _hourly_last(source: str, field: str, where: str) -> str:
    return (
        f'SELECT last("{field}") AS "{field}" FROM {source} WHERE {where} '
        'GROUP BY time(1h), "connection", "role", "gateway", "device" fill(none)'
    )


async def _minutes_if_kept(client: InfluxClient, query: str) -> list[Series]:
    """The one-minute query's answer; none where no aggregator made the policy (the raw points are all there is)."""
    try:
        return await client.query(query, epoch="s")
    except InfluxError as exc:
        if f"retention policy not found: {MINUTE_RP}" in str(exc):
            return []
        raise


async def read_utility_use(
    client: InfluxClient, community: Community, start: datetime, end: datetime
) -> dict[str, UtilityUse]:
    """Connection id -> its gas and water use over ``[start, end)``; a connection without readings of either is
    left out."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    roles = "|".join(r.value for r in UTILITY_ROLES)
    site = community.community.id.replace("'", "\\'")
    where = (
        f"\"site\" = '{site}' AND \"role\" =~ /^({roles})$/ AND time >= '{start.isoformat()}' "
        f"AND time < '{end.isoformat()}'"
    )
    minute_field = f"mean_{VOLUME_M3}"
    minutes = _readings(
        await _minutes_if_kept(client, _hourly_last(f'"{MINUTE_RP}"."{DEVICE_MINUTE}"', minute_field, where)),
        minute_field,
        start,
    )
    raw = _readings(
        await client.query(_hourly_last(f'"{DEVICE}"', VOLUME_M3, where), epoch="s"), VOLUME_M3, start
    )
    per_meter: dict[tuple[str, str, str], list[Reading]] = {}
    for key in minutes.keys() | raw.keys():
        aggregated = minutes.get(key, [])
        after = aggregated[-1][0] if aggregated else None
        # Raw points only where the minutes end: the two differ a little (a mean against a reading).
        tail = [r for r in raw.get(key, []) if after is None or r[0] > after]
        per_meter[key] = aggregated + tail
    known = {c.id for _l, _m, c in community.connections()}
    found: dict[str, dict[str, list[CounterUse]]] = {}
    for (connection, role, _meter), readings in sorted(per_meter.items()):
        use = counter_use(readings, start, end)
        if connection in known and use is not None:
            found.setdefault(connection, {}).setdefault(role, []).append(use)
    return {
        connection: UtilityUse(
            gas=combine(by_role.get(DeviceRole.GAS.value, [])),
            water=combine(by_role.get(DeviceRole.WATER.value, [])),
        )
        for connection, by_role in found.items()
    }


def read_utility_use_blocking(
    client: InfluxClient, community: Community, start: datetime, end: datetime
) -> dict[str, UtilityUse]:
    """``read_utility_use`` for the CLI, which is not async."""

    async def run() -> dict[str, UtilityUse]:
        async with client:
            return await read_utility_use(client, community, start, end)

    return asyncio.run(run())
