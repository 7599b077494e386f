"""The database and its retention policies on InfluxDB 1.x: raw points for a while, minutes a year, quarter hours
forever (``docs/data.md``; on 2.x and 3.x these are buckets, made as that page says).

The raw policy is the database's default, so every writer and reader of raw points names no policy. Made once,
by whichever service starts first (ingest, the aggregator, ``energyhub demo``); later calls only lengthen: a
policy is never shortened here, because shortening deletes data at once (the aggregates may not hold it yet).
Lengthening is what a simulated run needs: its data clock may lie months before the wall clock, and InfluxDB
refuses points older than the raw policy's duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
import time

from energyhub.domain.clock import Clock
from energyhub.io.influx import InfluxClient, InfluxError
from energyhub.io.schema import MINUTE_RP, QUARTER_RP, RAW_RP

__all__ = [
    "DAY_S",
    "MINUTE_KEEP_S",
    "RetentionError",
    "ensure_retention",
    "ensure_retention_blocking",
    "influx_duration",
    "keep_trying",
    "parse_duration",
    "raw_keep_for",
    "raw_keep_s",
]

log = logging.getLogger(__name__)

DAY_S = 86_400.0
MINUTE_KEEP_S = 366 * DAY_S  # one-minute data: a year, and a day so a whole year is always there
_PART = re.compile(r"(\d+)([wdhms])")
_UNIT_S = {"w": 7 * DAY_S, "d": DAY_S, "h": 3600.0, "m": 60.0, "s": 1.0}


class RetentionError(ValueError):
    """A retention duration that cannot be used."""


def parse_duration(text: str) -> float:
    """``30d``, ``720h``, ``52w``, ``INF`` (or InfluxDB's ``720h0m0s``; ``0s`` is InfluxDB's infinite) in seconds."""
    raw = text.strip()
    if raw.upper() == "INF":
        return math.inf
    parts = _PART.findall(raw)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != raw:
        raise RetentionError(f"retention {text!r}: give a duration such as 30d, 720h, 52w or INF")
    seconds = sum(int(n) * _UNIT_S[u] for n, u in parts)
    return math.inf if seconds == 0 else seconds


def influx_duration(seconds: float) -> str:
    """InfluxQL's duration: whole hours (at least one), or INF."""
    if math.isinf(seconds):
        return "INF"
    return f"{max(1, math.ceil(seconds / 3600))}h"


async def _policies(client: InfluxClient) -> dict[str, tuple[float, bool]]:
    series = await client.query(f'SHOW RETENTION POLICIES ON "{client.database}"', epoch=None)
    return {
        row["name"]: (parse_duration(row["duration"]), bool(row["default"]))
        for s in series
        for row in s.rows()
    }


async def ensure_retention(client: InfluxClient, raw_s: float) -> float:
    """Make the database and its three policies, raw kept at least ``raw_s``; return raw's duration now."""
    db = client.database
    databases = await client.query("SHOW DATABASES", epoch=None)
    if db not in {row["name"] for s in databases for row in s.rows()}:
        await client.query(f'CREATE DATABASE "{db}" WITH DURATION {influx_duration(raw_s)} NAME "{RAW_RP}"')
    policies = await _policies(client)
    default = next((name for name, (_d, is_default) in policies.items() if is_default), None)
    if default is None:  # a database whose default policy was dropped: raw gets one
        if RAW_RP in policies:
            await client.query(f'ALTER RETENTION POLICY "{RAW_RP}" ON "{db}" DEFAULT')
        else:
            await client.query(
                f'CREATE RETENTION POLICY "{RAW_RP}" ON "{db}" DURATION {influx_duration(raw_s)} '
                "REPLICATION 1 DEFAULT"
            )
        default = RAW_RP
        policies = await _policies(client)
    have_s = policies[default][0]
    if have_s < raw_s:
        await client.query(f'ALTER RETENTION POLICY "{default}" ON "{db}" DURATION {influx_duration(raw_s)}')
        log.info("raw data (policy %s) now kept %s", default, influx_duration(raw_s))
        have_s = raw_s
    elif have_s > raw_s * 1.5 and not math.isinf(raw_s):
        log.warning(
            "raw data (policy %s of %s) is kept %s, longer than the %s asked for; not shortened here (that "
            'deletes data at once): once the aggregates hold it, run ALTER RETENTION POLICY "%s" ON "%s" '
            "DURATION %s",
            default,
            db,
            influx_duration(have_s),
            influx_duration(raw_s),
            default,
            db,
            influx_duration(raw_s),
        )
    for name, keep_s in ((MINUTE_RP, MINUTE_KEEP_S), (QUARTER_RP, math.inf)):
        if name not in policies:
            await client.query(
                f'CREATE RETENTION POLICY "{name}" ON "{db}" DURATION {influx_duration(keep_s)} REPLICATION 1'
            )
        elif policies[name][0] < keep_s:
            await client.query(
                f'ALTER RETENTION POLICY "{name}" ON "{db}" DURATION {influx_duration(keep_s)}'
            )
    return have_s


def raw_keep_s(days: float, data_lag_s: float) -> float:
    """How long raw points must be kept: ``days`` of data time, and as far as the data clock lags the wall clock
    (a simulated run of last June still stores its points)."""
    return days * DAY_S + max(0.0, data_lag_s)


def raw_keep_for(days: float, clock: Clock) -> float:
    """``raw_keep_s`` for a run on ``clock``: as far as it lags the wall clock."""
    return raw_keep_s(days, time.time() - clock.timestamp())


async def keep_trying(client: InfluxClient, raw_s: float, stop: asyncio.Event, every_s: float) -> None:
    """``ensure_retention`` until InfluxDB answers or ``stop``; a refusal (4xx) is logged and given up, since
    InfluxDB 2.x/3.x have no InfluxQL management: their buckets are made as docs/data.md says."""
    while not stop.is_set():
        try:
            await ensure_retention(client, raw_s)
            return
        except InfluxError as exc:
            if not exc.retryable:
                log.warning("could not set up the retention policies (%s): see docs/data.md", exc)
                return
            log.warning("InfluxDB not ready for the retention policies (%s): trying again", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)


def ensure_retention_blocking(client: InfluxClient, raw_s: float) -> float:
    """``ensure_retention`` for start-up code without an event loop (or inside one: then on a thread of its own)."""

    async def once() -> float:
        try:
            return await ensure_retention(client, raw_s)
        finally:
            await client.aclose()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(once())
    result: list[float] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            result.append(asyncio.run(once()))
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]
