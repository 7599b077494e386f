"""Quarter hours (ISPs, imbalance settlement periods) in UTC, and the local days that contracts are written in.

Storage and the wire use UTC. Contracts (time blocks, day-ahead profiles) are written in the community's local time,
where a day has 92, 96 or 100 quarter hours (daylight saving starts, a normal day, daylight saving ends).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

__all__ = [
    "ISP",
    "ensure_utc",
    "isp_end",
    "isp_index_in_local_day",
    "isp_range",
    "isp_start",
    "isp_start_s",
    "isps_in_local_day",
    "local_day_bounds",
]

ISP = timedelta(minutes=15)
_ISP_S = 900


def ensure_utc(t: datetime) -> datetime:
    """``t`` as an aware UTC datetime; a naive datetime is refused because its zone would be a guess."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"naive datetime {t.isoformat()}: give a timezone (UTC on the wire and in storage)")
    return t.astimezone(UTC)


def isp_start(t: datetime) -> datetime:
    """Start (UTC) of the quarter hour that contains ``t``."""
    t = ensure_utc(t)
    seconds = int(t.timestamp() // _ISP_S) * _ISP_S
    return datetime.fromtimestamp(seconds, UTC)


def isp_start_s(ts: float) -> float:
    """Start (epoch s) of the quarter hour containing epoch second ``ts``: ``isp_start`` for the hot path."""
    return (ts // _ISP_S) * _ISP_S


def isp_end(t: datetime) -> datetime:
    return isp_start(t) + ISP


def isp_range(start: datetime, end: datetime) -> Iterator[datetime]:
    """Starts of every quarter hour from the one containing ``start`` up to (excluding) ``end``."""
    t = isp_start(start)
    end = ensure_utc(end)
    while t < end:
        yield t
        t += ISP


def local_day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """UTC start and end of a local calendar day (23, 24 or 25 hours long)."""
    start = datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)
    following = day + timedelta(days=1)
    end = datetime(following.year, following.month, following.day, tzinfo=tz).astimezone(UTC)
    return start, end


def isps_in_local_day(day: date, tz: ZoneInfo) -> int:
    """How many quarter hours the local day has: 96, or 92 / 100 on the days daylight saving starts / ends."""
    start, end = local_day_bounds(day, tz)
    return int((end - start) / ISP)


def isp_index_in_local_day(t: datetime, tz: ZoneInfo) -> tuple[date, int]:
    """The local date of ``t`` and the 0-based position of its quarter hour in that day (0..91/95/99)."""
    t = isp_start(t)
    day = t.astimezone(tz).date()
    start, _ = local_day_bounds(day, tz)
    return day, int((t - start) / ISP)
