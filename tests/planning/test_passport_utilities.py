"""Gas and water in the area passport: the counter arithmetic (resets, gaps, the period's edges), the passport's
columns and totals, and the whole path from points as the ingest writes them, through the aggregator's one-minute
data and the raw tail, to ``energyhub report``'s passport.csv."""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from energyhub.aggregates.store import downsample_minutes
from energyhub.domain.community import parse_community
from energyhub.ingest.points import DeviceTags, measurement_point
from energyhub.io.influx import InfluxClient
from energyhub.planning.passport import passport, totals, write_passport
from energyhub.planning.utility_use import CounterUse, UtilityUse, combine, counter_use, read_utility_use
from energyhub.wire.messages import Measurement, Quality
from energyhub.wire.roles import VOLUME_M3
from tests.communities import base, dump

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
YEAR_END = datetime(2027, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _at(hours: float, value: float) -> tuple[datetime, float]:
    return T0 + hours * HOUR, value


def test_a_counter_that_only_grows_uses_last_minus_first():
    use = counter_use([_at(0, 100.0), _at(5, 103.5), _at(2, 101.0)], T0, YEAR_END)  # any order
    assert use == CounterUse(use_m3=3.5, readings=3, resets=0, coverage=pytest.approx(5 / 8760))


def test_a_meter_replaced_counts_both_meters_and_skips_the_step_down():
    # The old meter 100 -> 120, the new one starts at 2 and reaches 17: 20 + 15, not 20 + 15 - 118.
    readings = [_at(0, 100.0), _at(1, 110.0), _at(2, 120.0), _at(3, 2.0), _at(4, 7.0), _at(5, 17.0)]
    use = counter_use(readings, T0, YEAR_END)
    assert use is not None
    assert (use.use_m3, use.resets) == (35.0, 1)


def test_a_gap_is_bridged_by_the_counter_and_coverage_is_the_span_of_readings():
    # No readings for 100 days in between: the counter's increase still holds all of it.
    use = counter_use([_at(0, 10.0), _at(2400, 510.0), _at(4380, 700.0)], T0, YEAR_END)
    assert use is not None
    assert use.use_m3 == 690.0
    assert use.coverage == pytest.approx(0.5)


def test_only_readings_inside_the_period_count_its_end_exclusive():
    readings = [
        (T0 - HOUR, 0.0),  # last year's
        _at(0, 50.0),
        _at(10, 60.0),
        (YEAR_END, 9_000.0),  # next year's first hour
    ]
    use = counter_use(readings, T0, YEAR_END)
    assert use is not None
    assert (use.use_m3, use.readings) == (10.0, 2)
    assert counter_use(readings, YEAR_END + HOUR, YEAR_END + 2 * HOUR) is None
    assert counter_use([], T0, YEAR_END) is None


def test_a_connections_meters_add_up_and_the_least_covered_sets_coverage():
    both = combine([CounterUse(10.0, 5, 0, 0.9), CounterUse(2.5, 3, 1, 0.4)])
    assert both == CounterUse(12.5, 8, 1, 0.4)
    assert combine([]) is None


def test_the_passport_has_gas_and_water_columns_summed_in_the_totals(tmp_path):
    community = parse_community(dump(base()))
    utilities = {
        "c-001": UtilityUse(gas=CounterUse(1234.56, 10, 0, 0.98765), water=CounterUse(80.0, 10, 0, 1.0)),
        "c-003": UtilityUse(gas=CounterUse(100.0, 10, 1, 0.5)),
    }
    rows = passport(community, year=2026, utilities=utilities)
    by_id = {r["connection"]: r for r in rows}
    assert (by_id["c-001"]["gas_m3"], by_id["c-001"]["gas_coverage"]) == (1234.6, 0.988)
    assert (by_id["c-001"]["water_m3"], by_id["c-001"]["water_coverage"]) == (80.0, 1.0)
    assert (by_id["c-003"]["gas_m3"], by_id["c-003"]["water_m3"]) == (100.0, None)
    assert (by_id["c-002"]["gas_m3"], by_id["c-002"]["water_coverage"]) == (None, None)  # no meter, no data
    total = totals(rows)
    assert (total["gas_m3"], total["water_m3"]) == (1334.6, 80.0)
    assert [r["gas_m3"] for r in passport(community, year=2026)] == [None] * len(rows)
    written = write_passport(rows, tmp_path, title="t")
    html = (tmp_path / "passport.html").read_text()
    assert "gas m³/yr (measured)" in html
    assert "99 %" in html  # coverage as a share
    with written[0].open() as handle:
        assert next(csv.DictReader(handle))["gas_m3"] == "1234.6"


def _reading(t: datetime, seq: int, volume: float) -> Measurement:
    return Measurement(ts=t, session=1, seq=seq, quality=Quality.GOOD, values={VOLUME_M3: volume})


def test_report_reads_the_meters_as_the_ingest_stored_them(services, unique_id, tmp_path):
    """Hourly readings over two days, as the ingest writes them: c-001's gas meter replaced half way, its water
    meter, c-002's gas meter; a reading before and after the period; the aggregator's minutes over the first day,
    raw points only after. ``energyhub report`` puts the increase in the passport."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=5)
    end = start + timedelta(days=2)
    meters = {
        ("gw-001", "gas"): DeviceTags("c-001", "gas"),
        ("gw-001", "water"): DeviceTags("c-001", "water"),
        ("gw-002", "gas"): DeviceTags("c-002", "gas"),
    }
    known = {f"{gw}/{device}": tags for (gw, device), tags in meters.items()}
    series: dict[tuple[str, str], list[tuple[datetime, float]]] = {key: [] for key in meters}
    for hour in range(-1, 49):  # one hour before the period, and its end (exclusive) too
        t = start + hour * HOUR
        series["gw-001", "gas"].append((t, 5_000.0 + 2.5 * hour if hour < 24 else 1.0 + 3.0 * (hour - 24)))
        series["gw-001", "water"].append((t, 300.0 + 0.25 * hour))
        if hour % 6 == 0:  # a gap: read every six hours only
            series["gw-002", "gas"].append((t, 80.0 + 1.5 * hour))
    lines = [
        measurement_point(unique_id, gw, device, _reading(t, i, v), known)[0]
        for (gw, device), readings in series.items()
        for i, (t, v) in enumerate(readings)
    ]

    def expected(key: tuple[str, str]) -> float:
        """Per meter in the period: last minus first, the replaced meter as two."""
        inside = [v for t, v in series[key] if start <= t < end]
        if key == ("gw-001", "gas"):
            old, new = inside[:24], inside[24:]
            return (old[-1] - old[0]) + (new[-1] - new[0])
        return inside[-1] - inside[0]

    s = services.settings

    async def store() -> dict[str, UtilityUse]:
        async with InfluxClient(url=s.influx_url, database=s.influx_db) as client:
            await client.write(lines)
            day = start + timedelta(days=1)
            await downsample_minutes(client, unique_id, (start - HOUR).timestamp(), day.timestamp())
            minutes = await client.query(
                f'SELECT count("mean_{VOLUME_M3}") FROM "year"."device_1m" WHERE "site" = \'{unique_id}\''
            )
            assert minutes[0].values[0][1] == 2 * 25 + 4  # hours -1 to 23 of two meters, 4 of the third
            community = parse_community(
                dump({**base(), "community": {**base()["community"], "id": unique_id}})
            )
            return await read_utility_use(client, community, start, end)

    used = asyncio.run(store())
    gas1, water1, gas2 = used["c-001"].gas, used["c-001"].water, used["c-002"].gas
    assert gas1 is not None
    assert water1 is not None
    assert gas2 is not None
    assert gas1.use_m3 == pytest.approx(expected(("gw-001", "gas")))
    assert gas1.resets == 1
    assert water1.use_m3 == pytest.approx(expected(("gw-001", "water")))
    assert gas2.use_m3 == pytest.approx(expected(("gw-002", "gas")))
    assert used["c-002"].water is None
    assert gas2.coverage == pytest.approx(42 / 48)  # hours 0 to 42 of 48
    assert set(used) == {"c-001", "c-002"}

    doc = base()
    doc["community"]["id"] = unique_id
    (tmp_path / "community.yaml").write_text(dump(doc))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "energyhub",
            "report",
            "--community",
            str(tmp_path / "community.yaml"),
            "--influx-url",
            s.influx_url,
            "--database",
            s.influx_db,
            "--from",
            start.isoformat(),
            "--to",
            end.isoformat(),
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "c-001: a gas meter's counter fell 1 time(s)" in run.stderr
    with (tmp_path / "out" / "passport.csv").open() as handle:
        rows = {r["connection"]: r for r in csv.DictReader(handle)}
    assert float(rows["c-001"]["gas_m3"]) == pytest.approx(
        expected(("gw-001", "gas")), abs=0.051
    )  # the passport rounds to 0.1 m³
    assert float(rows["c-001"]["water_m3"]) == pytest.approx(
        expected(("gw-001", "water")), abs=0.051
    )  # the passport rounds to 0.1 m³
    assert float(rows["c-002"]["gas_m3"]) == pytest.approx(
        expected(("gw-002", "gas")), abs=0.051
    )  # the passport rounds to 0.1 m³
    assert rows["c-002"]["water_m3"] == rows["c-003"]["gas_m3"] == ""


def test_a_database_without_the_aggregators_policies_reads_the_raw_points(services, unique_id):
    """No aggregator ran (no "year" policy): the raw points alone give the use."""
    s = services.settings
    database = f"ehub_utilities_{unique_id.replace('-', '_')}"
    t = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
    known = {"gw-001/gas": DeviceTags("c-001", "gas")}
    lines = [
        measurement_point(unique_id, "gw-001", "gas", _reading(t + i * HOUR, i, 7.0 + i), known)[0]
        for i in range(3)
    ]
    community = parse_community(dump({**base(), "community": {**base()["community"], "id": unique_id}}))

    async def read() -> dict[str, UtilityUse]:
        async with InfluxClient(url=s.influx_url, database=database) as client:
            await client.query(f'CREATE DATABASE "{database}"')
            try:
                await client.write(lines)
                return await read_utility_use(client, community, t, t + 3 * HOUR)
            finally:
                await client.query(f'DROP DATABASE "{database}"')

    used = asyncio.run(read())
    gas = used["c-001"].gas
    assert gas is not None
    assert gas.use_m3 == 2.0
