"""Series in InfluxDB after a simulated year of weekly agent restarts across the reference estate (issue 17).

Against a real influxd on a loopback port (started as `energyhub services` starts it), for the reference community
(examples/de-koumen-2026.yaml: 100 gateways, 455 devices), every gateway's agent restarts once a week for
``--weeks`` (52) weeks; each session writes one point per device:

- old schema: ``session`` a tag of ``device`` (as the ingest wrote it before issue 17), into database ``old``;
- new schema: ``session`` an integer field, the lines made by ``energyhub.ingest.points.measurement_point``, into
  database ``new``.

Printed for both: the series in the database (the rows of ``SHOW SERIES``), ``SHOW SERIES CARDINALITY`` and
``SHOW SERIES EXACT CARDINALITY`` (influxd 1.6 sums both over the shards, a week each, so they count a series once
per week it was written in), their ratio, and the issue's own estimate beside them, with where it differs.

Then what counting per session costs now that InfluxQL cannot group by session: ``--count-points`` measurements
(a day of polling) in both schemas, most gateways in one session and every ``--restart-every``-th restarted twice,
counted three ways, each result checked against the others:

- old: ``SELECT count(seq), max(seq), min(seq) ... GROUP BY gateway, session`` (the tag; the baseline);
- new: ``tests.faults.per_session`` (one pass grouped by gateway, then per session only for restarted gateways);
- rows: every ``seq`` with its ``session`` fetched and grouped here (``tests.faults.stored_seqs``).

    .venv/bin/python bench/series.py
    .venv/bin/python bench/series.py --weeks 104 --count-points 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from energyhub.cli.services import free_port, start_influxd  # noqa: E402
from energyhub.domain.community import load_community  # noqa: E402
from energyhub.ingest.points import DeviceTags, measurement_point  # noqa: E402
from energyhub.io.influx import InfluxClient  # noqa: E402
from energyhub.io.line_protocol import FieldValue, encode_point, timestamp_ns  # noqa: E402
from energyhub.io.schema import DEVICE  # noqa: E402
from energyhub.runtime.settings import ServiceSettings  # noqa: E402
from energyhub.runtime.supervisor import Supervisor  # noqa: E402
from energyhub.wire.messages import Measurement, Quality  # noqa: E402

# As ``tests.faults`` (a namespace package), the helpers the fault tests count with.
from tests.faults import per_session, stored_seqs  # noqa: E402
from tests.yardstick import query  # noqa: E402

COMMUNITY = REPO / "examples" / "de-koumen-2026.yaml"
YEAR_START = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)  # a Monday morning: the weekly restart (an update, say)
# What the issue text estimates for the old schema at full estate scale with all devices.
ISSUE_ESTIMATE = 2_600_000
T = TypeVar("T")
BATCH = 10_000  # lines per /write, as the ingest's batches (5,000) give or take


@dataclass(frozen=True)
class EstateDevice:
    site: str
    gateway: str
    device: str
    tags: DeviceTags


def estate_devices(path: Path) -> list[EstateDevice]:
    community = load_community(path)
    return [
        EstateDevice(
            community.community.id,
            community.gateway_of(connection, device),
            device.id,
            DeviceTags(connection.id, device.role.value),
        )
        for connection, device in community.devices()
    ]


def old_line(d: EstateDevice, m: Measurement) -> str:
    """The line the ingest wrote before issue 17: the same fields, ``session`` among the tags."""
    tags = {
        "site": d.site,
        "gateway": d.gateway,
        "device": d.device,
        "session": str(m.session),
        "connection": d.tags.connection,
        "role": d.tags.role,
    }
    fields: dict[str, FieldValue] = {k: v for k, v in m.values.items() if v is not None}
    fields.update(seq=m.seq, quality=m.quality.value, replay=m.replay)
    return encode_point(DEVICE, tags, fields, timestamp_ns(m.ts))


def poll_lines(d: EstateDevice, session: int, seq: int, ts: datetime) -> tuple[str, str]:
    """One poll of ``d`` as the old and as the new schema writes it."""
    m = Measurement(ts=ts, session=session, seq=seq, quality=Quality.GOOD, values={"power_w": 1000.0 + seq})
    return old_line(d, m), measurement_point(
        d.site, d.gateway, d.device, m, {f"{d.gateway}/{d.device}": d.tags}
    )[0]


def both_lines(
    devices: list[EstateDevice], polls: Iterator[tuple[int, datetime, int]]
) -> tuple[list[str], list[str]]:
    """(old lines, new lines) of every device polled at each (session, time, first seq) of ``polls``: the
    gateway's seq runs on over its devices, as an agent numbers its messages."""
    old: list[str] = []
    new: list[str] = []
    for session, ts, first_seq in polls:
        seq_of: dict[str, int] = {}
        for d in devices:
            seq = seq_of.get(d.gateway, first_seq)
            seq_of[d.gateway] = seq + 1
            old_point, new_point = poll_lines(d, session, seq, ts)
            old.append(old_point)
            new.append(new_point)
    return old, new


def weekly_restarts(weeks: int) -> Iterator[tuple[int, datetime, int]]:
    """One poll per weekly session; the session number as an agent gives it (at least the clock's Unix seconds)."""
    for week in range(weeks):
        start = YEAR_START + timedelta(weeks=week)
        yield int(start.timestamp()), start + timedelta(seconds=1), 0


async def write(client: InfluxClient, lines: list[str]) -> None:
    await client.create_database()
    for at in range(0, len(lines), BATCH):
        await client.write(lines[at : at + BATCH])


@dataclass(frozen=True)
class SeriesCount:
    distinct: int  # rows of SHOW SERIES: series keys in the database, what influxd's (inmem) index holds
    estimate: int  # SHOW SERIES CARDINALITY: influxd's sketch of the same
    per_shard: int  # SHOW SERIES EXACT CARDINALITY: on influxd 1.6 the sum over the shards
    shards: int


async def series_counts(client: InfluxClient) -> SeriesCount:
    listed = await client.query(f'SHOW SERIES FROM "{DEVICE}"')
    estimate = await client.query(f'SHOW SERIES CARDINALITY FROM "{DEVICE}"')
    exact = await client.query(f'SHOW SERIES EXACT CARDINALITY FROM "{DEVICE}"')
    shards = await client.query("SHOW SHARDS")
    return SeriesCount(
        distinct=sum(len(s.values) for s in listed),
        estimate=sum(int(row[0]) for s in estimate for row in s.values),
        per_shard=sum(int(row[0]) for s in exact for row in s.values),
        shards=sum(1 for s in shards if s.name == client.database for _row in s.values),
    )


async def year(settings: ServiceSettings, devices: list[EstateDevice], weeks: int) -> dict[str, SeriesCount]:
    old, new = both_lines(devices, weekly_restarts(weeks))
    out = {}
    for name, lines in (("old", old), ("new", new)):
        async with InfluxClient(url=settings.influx_url, database=name) as client:
            await write(client, lines)
            out[name] = await series_counts(client)
    return out


def report_year(devices: list[EstateDevice], weeks: int, counts: dict[str, SeriesCount]) -> None:
    gateways = len({d.gateway for d in devices})
    old, new = counts["old"], counts["new"]
    print(
        f"reference estate: {gateways} gateways, {len(devices)} devices; {weeks} weekly restarts of every agent"
    )
    for label, c in (("old schema (session a tag)", old), ("new schema (session a field)", new)):
        print(
            f"  {label:<29} {c.distinct:>9,} series (SHOW SERIES CARDINALITY {c.estimate:,}; EXACT CARDINALITY "
            f"{c.per_shard:,} summed over {c.shards} shards)"
        )
    print(
        f"  ratio old / new: {old.distinct / new.distinct:.1f} (the sessions: new keeps one series per device)"
    )
    print(
        f"  per shard both hold {old.per_shard // old.shards:,} here: a shard is a week (from Thursday 00:00 UTC) and "
        "holds one session's point of each device. Polled all week, a shard spans a restart and the old schema "
        "has two sessions' series in it. influxd's index of the database holds every series of every shard kept: "
        "with the old schema it grows by every device at every restart, for as long as the data is kept."
    )
    issue = gateways * len(devices) * weeks
    print(
        f"  the issue's estimate for the old schema: ~{ISSUE_ESTIMATE:,}. Measured: {old.distinct:,} = devices x "
        f"sessions = {len(devices)} x {weeks}. The estimate matches gateways x devices x weeks = {gateways} x "
        f"{len(devices)} x {weeks} = {issue:,}: it counts the gateways twice, as if each had all the estate's "
        f"{len(devices)} devices (a gateway has {len(devices) / gateways:.1f} on average); with the estate's "
        f"500 devices of the architecture page, 100 x 500 x 52 = {100 * 500 * 52:,}."
    )


def day_of_polls(devices: list[EstateDevice], points: int, restart_every: int) -> tuple[list[str], list[str]]:
    """``points`` measurements of a day's polling: one session for most gateways, three for every
    ``restart_every``-th gateway (restarted after a third and two thirds of the polls)."""
    gateways = sorted({d.gateway for d in devices})
    restarted = set(gateways[::restart_every])
    polls = max(1, points // len(devices))
    step = timedelta(seconds=86_400 / polls)
    base = int(YEAR_START.timestamp())
    old: list[str] = []
    new: list[str] = []
    seq_of: dict[tuple[str, int], int] = {}
    for poll in range(polls):
        ts = YEAR_START + poll * step
        for d in devices:
            session = base + (3 * poll // polls if d.gateway in restarted else 0)
            seq = seq_of.get((d.gateway, session), 0)
            seq_of[d.gateway, session] = seq + 1
            old_point, new_point = poll_lines(d, session, seq, ts)
            old.append(old_point)
            new.append(new_point)
    return old, new


def timed_best(function: Callable[[], T], runs: int = 3) -> tuple[float, T]:
    """Best of ``runs`` wall-clock seconds of ``function()`` (influxd's caches warm after the first), its result."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - t0)
    return best, result


Counts = dict[tuple[str, int], tuple[int, int, int]]  # (gateway, session): count, max and min of seq


def count_old(url: str, site: str) -> Counts:
    q = f"SELECT count(seq), max(seq), min(seq) FROM device WHERE site = '{site}' GROUP BY gateway, session"
    out: Counts = {}
    for series in query(url, "old", q):
        _t, count, high, low = series["values"][0]
        out[series["tags"]["gateway"], int(series["tags"]["session"])] = (int(count), int(high), int(low))
    return out


def count_new(url: str, site: str) -> Counts:
    found = per_session(url, "new", f"site = '{site}'", "count(seq), max(seq), min(seq)")
    return {key: (int(v[0]), int(v[1]), int(v[2])) for key, v in found.items()}


def count_rows(url: str, site: str) -> Counts:
    stored = stored_seqs(url, "new", site)
    return {key: (sum(c.values()), max(c), min(c)) for key, c in stored.seqs.items()}


def counting(url: str, devices: list[EstateDevice], points: int, restart_every: int) -> None:
    old, new = day_of_polls(devices, points, restart_every)
    t0 = time.perf_counter()
    for name, lines in (("old", old), ("new", new)):
        asyncio.run(_write_to(url, name, lines))
    written = time.perf_counter() - t0
    site = devices[0].site
    print(
        f"counting per session: {len(new):,} measurements per schema (written in {written:.1f} s, both), every "
        f"{restart_every}th gateway in three sessions"
    )
    ways = {"old": count_old, "new": count_new, "rows": count_rows}
    results: dict[str, tuple[float, Counts]] = {}
    for name, way in ways.items():
        results[name] = timed_best(partial(way, url, site))
    baseline_s, expected = results["old"]
    for name, (seconds, got) in results.items():
        if got != expected:
            raise SystemExit(
                f"{name}: counts differ from the old schema's ({len(got)} vs {len(expected)} sessions)"
            )
        print(
            f"  {name:<5} {seconds * 1000:>8.0f} ms  x{seconds / baseline_s:.2f} of old  ({len(got)} sessions)"
        )


async def _write_to(url: str, database: str, lines: list[str]) -> None:
    async with InfluxClient(url=url, database=database) as client:
        await write(client, lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--community", type=Path, default=COMMUNITY)
    parser.add_argument("--weeks", type=int, default=52, help="weekly sessions of every agent")
    parser.add_argument(
        "--count-points", type=int, default=400_000, help="measurements for the counting part"
    )
    parser.add_argument("--restart-every", type=int, default=10, help="every n-th gateway restarts twice")
    args = parser.parse_args()
    if args.weeks < 1 or args.count_points < 1 or args.restart_every < 1:
        raise SystemExit("--weeks, --count-points and --restart-every must each be at least 1")
    devices = estate_devices(args.community)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, Supervisor() as supervisor:
        settings = ServiceSettings(
            state_dir=Path(tmp),
            mqtt_port=free_port(),
            mqtt_tls_port=None,
            influx_port=free_port(),
            influx_rpc_port=free_port(),
        )
        start_influxd(supervisor, settings)
        report_year(devices, args.weeks, asyncio.run(year(settings, devices, args.weeks)))
        # The year's databases go first, so the counting part reads only its own day.
        for name in ("old", "new"):
            httpx.post(
                f"{settings.influx_url}/query", data={"q": f'DROP DATABASE "{name}"'}
            ).raise_for_status()
        counting(settings.influx_url, devices, args.count_points, args.restart_every)
    print(f"({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
