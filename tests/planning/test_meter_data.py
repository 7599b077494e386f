"""Measured quarter-hour data in the formats DSOs and metering portals deliver, DST days, gaps and bad lines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from energyhub.planning.meter_data import MeterDataError, read_meter_data


def nl_day(day: str, rows: list[str]) -> str:
    return "Datum;Tijd;Afname (kWh);Teruglevering (kWh)\n" + "\n".join(f"{day};{r}" for r in rows) + "\n"


def local_times(repeat_hour: int | None = None, skip_hour: int | None = None) -> list[str]:
    out = []
    for hour in range(24):
        if hour == skip_hour:
            continue
        for _ in range(2 if hour == repeat_hour else 1):
            out += [f"{hour:02d}:{m:02d}" for m in (0, 15, 30, 45)]
    return out


def test_autumn_dst_day_has_100_quarter_hours_and_keeps_their_order(tmp_path):
    times = local_times(repeat_hour=2)
    assert len(times) == 100
    path = tmp_path / "c.csv"
    path.write_text(nl_day("25-10-2026", [f"{t};{i},5;0" for i, t in enumerate(times)]))
    series = read_meter_data(path, "nl-local")
    assert len(series.isp_starts) == 100
    assert series.isp_starts[0] == datetime(2026, 10, 24, 22, 0, tzinfo=UTC)  # 00:00 CEST
    assert series.isp_starts[-1] == datetime(2026, 10, 25, 22, 45, tzinfo=UTC)  # 23:45 CET
    assert all(
        b - a == timedelta(minutes=15) for a, b in zip(series.isp_starts, series.isp_starts[1:], strict=False)
    )
    assert series.import_kwh[8] == 8.5  # the first 02:00 (CEST) ...
    assert series.import_kwh[12] == 12.5  # ... and the second (CET), an hour later
    assert series.gaps == []


def test_spring_dst_day_has_92_and_a_skipped_local_time_is_an_error(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(nl_day("29-03-2026", [f"{t};1;0,25" for t in local_times(skip_hour=2)]))
    series = read_meter_data(path, "nl-local")
    assert len(series.isp_starts) == 92
    assert series.export_kwh.sum() == pytest.approx(23.0)
    path.write_text(nl_day("29-03-2026", ["01:45;1;0", "02:00;1;0"]))
    with pytest.raises(
        MeterDataError, match=r"c\.csv:3: 29-03-2026 02:00 does not exist in Europe/Amsterdam"
    ):
        read_meter_data(path, "nl-local")


def test_gaps_stay_gaps_and_agreeing_duplicates_are_dropped(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(
        "isp_start,import_kwh,export_kwh\n"
        "2026-06-01T00:00:00Z,1.0,0\n"
        "2026-06-01T00:15:00Z,2.0,0\n"
        "2026-06-01T00:15:00Z,2.0,0\n"
        "2026-06-01T01:00:00Z,5.0,0.5\n"
    )
    series = read_meter_data(path)
    assert len(series.isp_starts) == 5
    assert series.gaps == [datetime(2026, 6, 1, 0, 30, tzinfo=UTC), datetime(2026, 6, 1, 0, 45, tzinfo=UTC)]
    assert np.isnan(series.import_kwh[2])  # missing, not zero
    assert series.duplicates_dropped == 2
    assert series.net_kwh[4] == pytest.approx(4.5)


@pytest.mark.parametrize(
    ("fmt", "text", "problem"),
    [
        (
            "energyhub",
            "isp_start,import_kwh,export_kwh\n2026-06-01T00:00:00Z,1.0,0\n2026-06-01T00:00:00Z,2.0,0\n",
            r"c\.csv:3: offtake for 2026-06-01T00:00:00\+00:00 is 2 kWh, but .*c\.csv:2 said 1 kWh",
        ),
        (
            "energyhub",
            "isp_start,import_kwh,export_kwh\n2026-06-01T00:07:00Z,1.0,0\n",
            r"c\.csv:2: .* is not the start of a quarter hour",
        ),
        (
            "energyhub",
            "isp_start,import_kwh,export_kwh\n2026-06-01T00:00:00,1.0,0\n",
            r"c\.csv:2: .* has no UTC offset",
        ),
        (
            "energyhub",
            "isp_start,import_kwh,export_kwh\n2026-06-01T00:00:00Z,-1,0\n",
            r"c\.csv:2: energy '-1'",
        ),
        ("energyhub", "time,kwh\n", r"c\.csv:1: the columns must be isp_start,import_kwh,export_kwh"),
        (
            "nl-local",
            "Datum;Tijd;Afname;Teruglevering\n01-06-2026;00:00;abc;0\n",
            r"c\.csv:2: 'abc' is not a number",
        ),
        (
            "nl-local",
            "Datum;Tijd;Afname;Teruglevering\n2026-06-01;00:00;1;0\n",
            r"c\.csv:2: .* is not a date dd-mm-yyyy",
        ),
        (
            "long-utc",
            "start_utc,end_utc,channel,kwh\n2026-06-01T00:00Z,2026-06-01T00:30Z,offtake,1\n",
            r"c\.csv:2: .* is not one quarter hour",
        ),
        (
            "long-utc",
            "start_utc,end_utc,channel,kwh\n2026-06-01T00:00Z,2026-06-01T00:15Z,reactive,1\n",
            r"c\.csv:2: channel 'reactive' is neither offtake nor feed-in",
        ),
        ("energyhub", "", r"c\.csv: empty"),
    ],
)
def test_bad_lines_name_file_line_and_problem(tmp_path, fmt, text, problem):
    path = tmp_path / "c.csv"
    path.write_text(text)
    with pytest.raises(MeterDataError, match=problem):
        read_meter_data(path, fmt)


def test_long_utc_channels_join_into_one_quarter_hour(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(
        "start_utc,end_utc,channel,kwh\n"
        "2026-06-01T10:00:00Z,2026-06-01T10:15:00Z,offtake,0\n"
        "2026-06-01T10:00:00Z,2026-06-01T10:15:00Z,feed-in,12.5\n"
        "2026-06-01T10:15:00Z,2026-06-01T10:30:00Z,offtake,3\n"
    )
    series = read_meter_data(path, "long-utc")
    assert series.export_kwh[0] == 12.5
    assert series.import_kwh[1] == 3
    assert series.gaps == [datetime(2026, 6, 1, 10, 15, tzinfo=UTC)]  # its feed-in channel is missing
    assert series.duplicates_dropped == 0


async def test_quarter_hours_from_what_the_aggregator_stored(services, unique_id, tmp_path):
    """The meter's counters as stored, made quarter hours by the aggregator and read back as kWh; an hour without
    readings is bridged by the counter, a quarter hour after the last reading is a gap, not a zero."""
    from energyhub.aggregates.service import Aggregator
    from energyhub.aggregates.settings import AggregateSettings
    from energyhub.io.influx import InfluxClient
    from energyhub.io.line_protocol import encode_point
    from energyhub.planning.meter_data import read_from_influx
    from tests import communities

    doc = communities.base()
    doc["community"]["id"] = unique_id  # a site of its own in the shared database
    (tmp_path / "community.yaml").write_text(communities.dump(doc))
    t0 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    lines = []
    for minute in range(0, 75):  # one reading a minute, 10:00-11:15, but none in 10:30-10:45
        if 30 <= minute < 45:
            continue
        t = t0 + timedelta(minutes=minute, seconds=59)
        fields = {
            "energy_import_wh": 1_000_000.0 + 1_000.0 * minute,
            "energy_export_wh": 50_000.0 + 250.0 * minute,
            "seq": minute,  # as every stored measurement has
        }
        tags = {"site": unique_id, "gateway": "gw-001", "device": "meter"}
        lines.append(encode_point("device", tags, fields, t))
    s = services.settings
    aggregator = Aggregator(
        AggregateSettings(
            community=tmp_path / "community.yaml", influx_url=s.influx_url, influx_db=s.influx_db
        )
    )
    async with InfluxClient(url=s.influx_url, database=s.influx_db) as client:
        await client.write(lines)
        assert await aggregator.catch_up() >= 5  # 10:00 to 11:15, in whole chunks
        series = await read_from_influx(
            client, "c-001", t0 + timedelta(minutes=15), t0 + timedelta(minutes=90), site=unique_id
        )
    await aggregator.aclose()
    assert series.isp_starts[0] == t0 + timedelta(minutes=15)
    # 1 kWh a minute in, 0.25 out: 10:15-10:30 interpolated at both ends, 10:30-10:45 bridged by the counter.
    assert series.import_kwh[:3] == pytest.approx([15.0, 15.0, 15.0])
    assert series.export_kwh[:3] == pytest.approx([3.75, 3.75, 3.75])
    # 11:15-11:30 lies after the last reading: a gap, not a zero.
    assert series.gaps == [t0 + timedelta(minutes=75)]


def test_headroom_of_connections_and_their_loop():
    from zoneinfo import ZoneInfo

    from energyhub.domain.community import load_community
    from energyhub.planning.headroom import headroom_report
    from energyhub.planning.meter_data import MeterSeries

    community = load_community(Path(__file__).resolve().parents[2] / "examples" / "de-koumen.yaml")
    start = datetime(2026, 6, 1, tzinfo=ZoneInfo("Europe/Amsterdam")).astimezone(UTC)
    starts = [start + i * timedelta(minutes=15) for i in range(96 * 14)]  # two weeks
    hours = np.array([t.astimezone(ZoneInfo("Europe/Amsterdam")).hour for t in starts])
    night = hours < 6
    # c-002 (contract 125 kW in, 0 out): 20 kW at night, 50 kW by day, one 60 kW peak; feeds in 5 kW at noon.
    c2_imp = np.where(night, 20.0, 50.0) / 4
    c2_imp[500] = 60.0 / 4
    c2_exp = np.where(hours == 12, 5.0 / 4, 0.0)
    c2 = MeterSeries(starts, c2_imp, c2_exp)
    c1 = MeterSeries(starts, np.full(len(starts), 100.0 / 4), np.zeros(len(starts)))
    c1.import_kwh[10] = np.nan
    c1.gaps = [starts[10]]
    report = {h.node: h for h in headroom_report(community, {"c-001": c1, "c-002": c2})}
    two = report["c-002"]
    assert two.monthly_max_import_kw == {"2026-06": 60.0}
    assert two.utilisation_import == pytest.approx(60 / 125)
    assert two.under_half_used  # the DSO may take back capacity that stays under half used
    assert two.spare_import_kw_by_hour[3] == pytest.approx(105.0)  # reliably free at night: 125 - 20
    assert two.spare_import_kw_by_hour[14] == pytest.approx(75.0)
    assert two.spare_export_kw_by_hour[12] == pytest.approx(-5.0)  # no feed-in right, and 5 kW fed in at noon
    assert two.spare_export_kw_by_hour[3] == pytest.approx(0.0)
    assert two.annual_export_kwh == pytest.approx(5.0 / 4 * 4 * 14)  # 4 quarter hours at noon, 14 days
    loop = report["loop-1"]
    assert loop.level == "loop"
    assert loop.monthly_max_import_kw["2026-06"] == pytest.approx(160.0)  # 100 + 60 at the peak
    assert loop.gaps == 1  # the quarter hour c-001 is missing is missing for the loop, not counted as zero
    assert loop.measured_connections.startswith("2/")
    assert loop.row()["spare_import_kw_h03"] == pytest.approx(3750 - 120)
    assert loop.row()["spare_export_kw_h12"] == pytest.approx(loop.contracted_export_kw - 5)


def test_simultaneity_splits_pv_into_where_it_is_used():
    from energyhub.control.inputs import Inputs
    from energyhub.planning.simultaneity import simultaneity
    from tests.control.test_control import small_network

    # Two loops; loop0 = c0, c2; loop1 = c1, c3. One quarter hour (kW averages).
    network = small_network(4, loops=2)
    pv = np.array([[100.0], [40.0], [0.0], [0.0]])
    use = np.array([[20.0], [10.0], [50.0], [5.0]])
    start = datetime(2026, 6, 1, 10, tzinfo=UTC)
    result = simultaneity(network, Inputs([start], use, pv, []))
    # On the connection: c0 20, c1 10. Inside loop0: c0's 80 spare meets c2's 50 short: 50. Inside loop1: c1's 30
    # spare meets c3's 5 short: 5. Between loops nobody is short any more: 0. Left over: 30 + 25 = 55 (kW).
    assert result.on_connection_kwh[0] == pytest.approx(30 * 0.25)
    assert result.in_loop_kwh[0] == pytest.approx(55 * 0.25)
    assert result.in_hub_kwh[0] == pytest.approx(0.0)
    assert result.left_over_kwh[0] == pytest.approx(55 * 0.25)
    parts = result.on_connection_kwh + result.in_loop_kwh + result.in_hub_kwh + result.left_over_kwh
    assert parts[0] == pytest.approx(result.pv_kwh[0])  # every kWh of PV lands somewhere, once
    hub = result.table[result.table["node"] == "hub"].iloc[0]
    assert (hub["month"], hub["hour"]) == (6, 12)  # 10:00 UTC is noon in Amsterdam in June
    assert hub["left_over_kwh"] == pytest.approx(55 * 0.25)


def test_sharing_between_loops_counts_in_the_hub():
    from energyhub.control.inputs import Inputs
    from energyhub.planning.simultaneity import simultaneity
    from tests.control.test_control import small_network

    network = small_network(2, loops=2)  # c0 alone in loop0, c1 alone in loop1
    result = simultaneity(
        network,
        Inputs(
            [datetime(2026, 6, 1, 10, tzinfo=UTC)], np.array([[0.0], [30.0]]), np.array([[50.0], [0.0]]), []
        ),
    )
    assert result.in_loop_kwh[0] == 0
    assert result.in_hub_kwh[0] == pytest.approx(30 * 0.25)
    assert result.left_over_kwh[0] == pytest.approx(20 * 0.25)
