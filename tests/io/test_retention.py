"""The retention policies on the real influxd: made once, lengthened when asked, never shortened."""

from __future__ import annotations

import math

import pytest

from energyhub.io.influx import InfluxClient, InfluxError
from energyhub.io.retention import (
    RetentionError,
    ensure_retention,
    influx_duration,
    parse_duration,
    raw_keep_s,
)

pytestmark = pytest.mark.live
DAY = 86_400.0


def test_durations_read_and_written():
    assert parse_duration("30d") == 30 * DAY
    assert parse_duration("720h0m0s") == 30 * DAY
    assert parse_duration("52w") == 364 * DAY
    assert math.isinf(parse_duration("INF"))
    assert math.isinf(parse_duration("0s"))  # InfluxDB's way of saying infinite
    assert influx_duration(30 * DAY) == "720h"
    assert influx_duration(math.inf) == "INF"
    assert raw_keep_s(30, 10 * DAY) == 40 * DAY
    assert raw_keep_s(30, -5.0) == 30 * DAY
    with pytest.raises(RetentionError, match="30 days"):
        parse_duration("30 days")


async def _policies(client: InfluxClient) -> dict[str, tuple[str, bool]]:
    series = await client.query(f'SHOW RETENTION POLICIES ON "{client.database}"', epoch=None)
    return {row["name"]: (row["duration"], row["default"]) for s in series for row in s.rows()}


async def test_made_lengthened_never_shortened(services, unique_id, caplog):
    async with InfluxClient(url=services.settings.influx_url, database=f"rp_{unique_id}") as client:
        assert await ensure_retention(client, 30 * DAY) == 30 * DAY
        assert await _policies(client) == {
            "raw": ("720h0m0s", True),
            "year": ("8784h0m0s", False),
            "forever": ("0s", False),
        }
        # A run whose data clock lies months back needs its raw points kept longer: lengthened.
        assert await ensure_retention(client, 200 * DAY) == 200 * DAY
        assert (await _policies(client))["raw"] == ("4800h0m0s", True)
        # Asked for less again: kept (shortening deletes at once), and the log says how to do it by hand.
        assert await ensure_retention(client, 30 * DAY) == 200 * DAY
        assert (await _policies(client))["raw"] == ("4800h0m0s", True)
        assert "ALTER RETENTION POLICY" in caplog.text
        # A point older than raw's duration is refused by InfluxDB itself, as bad data (4xx: the ingest makes it a
        # dead letter that says so, rather than retrying for ever).
        with pytest.raises(InfluxError, match="beyond retention policy") as refused:
            await client.write("device,site=s,gateway=g,device=d seq=1i 1000000000")  # 1970
        assert not refused.value.retryable


async def test_an_existing_database_keeps_its_default_policy(services, unique_id):
    async with InfluxClient(url=services.settings.influx_url, database=f"rp_{unique_id}") as client:
        await client.create_database()  # autogen, infinite: as an older energyhub made it
        assert math.isinf(await ensure_retention(client, 30 * DAY))
        policies = await _policies(client)
        assert policies["autogen"] == ("0s", True)
        assert {"year", "forever"} <= set(policies)
