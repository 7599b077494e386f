"""`energyhub settle` and `energyhub report` on measured quarter hours, and the reference community's PV yield."""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from energyhub.domain.community import load_community, parse_community
from energyhub.planning.pv_yield import annual_pv_kwh
from energyhub.synthetic.export import export_quarter_hours
from tests.communities import base, connection, dump

REPO = Path(__file__).resolve().parents[2]
START, END = datetime(2026, 6, 29, 22, tzinfo=UTC), datetime(2026, 7, 1, 22, tzinfo=UTC)  # across a month end


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "energyhub", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two days of a small estate: the simulators' load and PV, netted per quarter hour into what a meter
    records, written as metering files (one named by EAN), with a gap at c-003."""
    folder = tmp_path_factory.mktemp("measured")
    doc = base()
    for loop in doc["loops"]:
        for member in loop.get("connections", []) + [
            c for m in loop.get("micro_groups", []) for c in m["connections"]
        ]:
            member["annual_use_kwh"] = 120_000
    store = connection(6, annual_use_kwh=0, load_profile="none")
    store["devices"][1] = {
        "id": "battery",
        "role": "battery",
        "profile": "sunspec_battery",
        "power_kw": 50,
        "capacity_kwh": 100,
        "modbus": {"host": "127.0.0.1", "port": 20006, "unit_id": 2},
    }
    doc["loops"][0]["connections"].append(store)
    (folder / "community.yaml").write_text(dump(doc))
    community = parse_community(dump(doc))
    export_quarter_hours(community, start=START, end=END, seed=5, out_dir=folder / "inputs")
    (folder / "meters").mkdir()
    for _l, _m, member in community.connections():
        load = np.array([float(r["kwh"]) for r in _rows(folder / "inputs" / f"{member.id}.load.csv")])
        pv_file = folder / "inputs" / f"{member.id}.pv.csv"
        pv = np.array([float(r["kwh"]) for r in _rows(pv_file)]) if pv_file.exists() else np.zeros_like(load)
        times = [r["isp_start"] for r in _rows(folder / "inputs" / f"{member.id}.load.csv")]
        net = load - pv
        if member.id == "c-006":  # the battery: charges at midday, discharges in the evening
            hours = np.array([int(t[11:13]) for t in times])
            net = np.where(
                (hours >= 10) & (hours < 14), 2.5, np.where((hours >= 17) & (hours < 21), -2.25, 0.0)
            )
        name = member.ean if member.id == "c-002" else member.id
        lines = ["isp_start,import_kwh,export_kwh"]
        for i, (t, n) in enumerate(zip(times, net, strict=True)):
            if member.id == "c-003" and 40 <= i < 44:
                continue  # the meter was offline for an hour
            lines.append(f"{t},{max(n, 0):.3f},{max(-n, 0):.3f}")
        (folder / "meters" / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_settle_balances_to_the_wh_and_writes_statements(measured: Path) -> None:
    (measured / "prices.yaml").write_text(
        "grid_energy: 0.30\ncommunity: 0.12\nfixed_total: 100\nfixed_split: use\n"
    )
    out = measured / "settlement"
    run = _run(
        "settle",
        "--community",
        str(measured / "community.yaml"),
        "--meter-data",
        str(measured / "meters"),
        "--prices",
        str(measured / "prices.yaml"),
        "--out",
        str(out),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "6 members, 192 quarter hours (4 not shared" in run.stdout, run.stdout
    balance = _rows(out / "balance.csv")
    assert [r["month"] for r in balance] == ["2026-06", "2026-07"]
    for row in balance:
        assert row["received_minus_supplied_wh"] == "0"
        assert row["offtake_minus_parts_wh"] == "0"
        assert row["feed_in_minus_parts_wh"] == "0"
        assert row["use_minus_sources_wh"] == "0"
    # The battery (c-006, a connection of its own) is storage: 2 days x 16 quarter hours of 2.5 kWh in, 2.25 out.
    assert sum(int(r["storage_charge_wh"]) for r in balance) == 2 * 16 * 2500
    assert sum(int(r["storage_discharge_wh"]) for r in balance) == 2 * 16 * 2250
    assert sum(int(r["received_wh"]) for r in balance) > 0, "PV surplus at some members must be shared"
    ledger = _rows(out / "ledger.csv")
    assert len(ledger) == 6 * 192
    # The ledger holds exactly what the meters said, in Wh.
    c3 = [r for r in ledger if r["member"] == "c-003"]
    meter = {r["isp_start"]: r for r in _rows(measured / "meters" / "c-003.csv")}
    for row in c3:
        if row["isp_start"] in meter:
            assert int(row["offtake_wh"]) == round(float(meter[row["isp_start"]]["import_kwh"]) * 1000)
        else:  # the gap: nothing measured, nothing shared
            assert row["offtake_wh"] == row["received_wh"] == "0"
    gap_times = {row["isp_start"] for row in c3 if row["isp_start"] not in meter}
    assert len(gap_times) == 4
    assert all(r["received_wh"] == "0" for r in ledger if r["isp_start"] in gap_times)
    statement = {
        r["item"]: r
        for r in csv.reader((out / "statements" / "c-001-2026-07.csv").open())
        for r in [dict(zip(["item", "kWh", "EUR"], r, strict=True))]
    }
    html = (out / "statements" / "c-001-2026-07.html").read_text()
    assert "Bedrijf 1 B.V. (c-001), 2026-07" in html
    assert f"{float(statement['total']['EUR']):,.2f}" in html
    # Fixed costs split by use over the members: they add up to the month's total.
    fixed = [
        float(
            next(
                r
                for r in csv.reader((out / "statements" / f"{m}-2026-07.csv").open())
                if r[0] == "fixed costs"
            )[2]
        )
        for m in ("c-001", "c-002", "c-003", "c-004", "c-005", "c-006")
    ]
    assert sum(fixed) == pytest.approx(100, abs=0.03)


def test_settle_names_a_file_that_belongs_to_no_connection(measured: Path, tmp_path: Path) -> None:
    meters = tmp_path / "meters"
    meters.mkdir()
    (meters / "c-001.csv").write_text((measured / "meters" / "c-001.csv").read_text())
    (meters / "bakery.csv").write_text("isp_start,import_kwh,export_kwh\n")
    run = _run(
        "settle",
        "--community",
        str(measured / "community.yaml"),
        "--meter-data",
        str(meters),
        "--out",
        str(tmp_path / "o"),
    )
    assert run.returncode == 1
    assert f"{meters / 'bakery.csv'}: the name is neither a connection id nor an EAN of test" in run.stderr


def test_report_writes_passport_headroom_and_simultaneity(measured: Path) -> None:
    out = measured / "report"
    run = _run(
        "report",
        "--community",
        str(measured / "community.yaml"),
        "--meter-data",
        str(measured / "meters"),
        "--inputs",
        str(measured / "inputs"),
        "--planned",
        str(measured / "community.yaml"),
        "--out",
        str(out),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    passport = {r["connection"]: r for r in _rows(out / "passport.csv")}
    assert list(passport) == ["c-001", "c-002", "c-006", "c-003", "c-004", "c-005"]
    assert passport["c-002"]["measured_import_kwh"] != ""  # found by its EAN
    assert float(passport["c-001"]["pv_kwp"]) == 50
    assert float(passport["c-001"]["pv_kwh_year"]) == pytest.approx(
        float(passport["c-001"]["potential_kwh_year"])
    )
    assert 40_000 < float(passport["c-001"]["pv_kwh_year"]) < 50_000  # 50 kWp at 800-1,000 kWh/kWp
    assert passport["c-005"]["participates"] == "False"
    assert passport["c-001"]["group_agreement"] == "group-1"
    html = (out / "passport.html").read_text()
    assert "6 connections" in html
    assert float(passport["c-006"]["battery_kwh"]) == 100
    headroom = {r["node"]: r for r in _rows(out / "headroom.csv")}
    assert headroom["c-003"]["gaps"] == "4"
    assert headroom["loop-1"]["measured_connections"] == "3/3"
    simultaneity = _rows(out / "simultaneity.csv")
    hub = [r for r in simultaneity if r["node"] == "hub"]
    pv = sum(float(r["pv_kwh"]) for r in hub)
    parts = sum(
        float(r[k]) for r in hub for k in ("on_connection_kwh", "in_loop_kwh", "in_hub_kwh", "left_over_kwh")
    )
    assert pv > 0
    assert parts == pytest.approx(pv, abs=0.0005 * 5 * len(hub))  # each figure is rounded to the Wh
    assert "% used on the connection" in run.stdout


@pytest.mark.parametrize("seed", [0, 2026])
def test_the_reference_pv_gives_the_published_yield(seed: int) -> None:
    # De Koumen: 2.7 MWp of rooftop PV gives about 2.4 GWh a year, the planned 8.0 MWp about 7.4 GWh.
    today = load_community(REPO / "examples" / "de-koumen.yaml")
    planned = load_community(REPO / "examples" / "de-koumen-2026.yaml")
    assert sum(c.pv_kwp for _l, _m, c in today.connections()) == 2700
    assert sum(c.pv_kwp for _l, _m, c in planned.connections()) == 10700
    now = sum(annual_pv_kwh(today, year=2026, seed=seed).values())
    more = sum(annual_pv_kwh(planned, year=2026, seed=seed).values()) - now
    assert now == pytest.approx(2.4e6, rel=0.10)
    assert more == pytest.approx(7.4e6, rel=0.10)


def test_settle_reads_what_the_ingest_stored(services, unique_id: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two members' meter counters in influxd; c-002 feeds in during the second hour while c-001 takes."""
    import asyncio
    from datetime import timedelta

    from energyhub.io.influx import InfluxClient
    from energyhub.io.line_protocol import encode_point

    # A site of its own in the shared database (other tests write c-001 points), two hours of last month.
    t0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=30)
    lines = []
    for minute in range(123):  # and past the end: the last quarter hour's end lies between two readings
        t = t0 + timedelta(minutes=minute)  # a reading counts the minute up to it
        for member, imp, exp in (
            ("c-001", 400.0 * minute, 0.0),  # 24 kW all the time
            ("c-002", 100.0 * min(minute, 60), 500.0 * max(minute - 60, 0)),  # 6 kW, then 30 kW fed in
        ):
            tags = {
                "connection": member,
                "role": "meter",
                "device": "meter",
                "gateway": "gw-001" if member == "c-001" else "gw-002",
                "site": unique_id,
            }
            fields = {"energy_import_wh": 1e6 + imp, "energy_export_wh": 2e5 + exp, "seq": minute}
            lines.append(encode_point("device", tags, fields, t))

    async def write() -> None:
        async with InfluxClient(
            url=services.settings.influx_url, database=services.settings.influx_db
        ) as client:
            await client.write(lines)

    asyncio.run(write())
    doc = base()
    doc["community"]["id"] = unique_id
    (tmp_path / "community.yaml").write_text(dump(doc))
    # Settlement reads the quarter hours the aggregator made of the counters, as a user runs them.
    aggregated = _run(
        "aggregate",
        "--once",
        "--community",
        str(tmp_path / "community.yaml"),
        "--influx-url",
        services.settings.influx_url,
        "--influx-db",
        services.settings.influx_db,
    )
    assert aggregated.returncode == 0, aggregated.stderr[-3000:]
    assert "quarter hour(s) done" in aggregated.stdout
    out = tmp_path / "settlement"
    run = _run(
        "settle",
        "--community",
        str(tmp_path / "community.yaml"),
        "--influx-url",
        services.settings.influx_url,
        "--database",
        services.settings.influx_db,
        "--from",
        t0.isoformat(),
        "--to",
        (t0 + timedelta(hours=2)).isoformat(),
        "--out",
        str(out),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 members, 8 quarter hours (0 not shared" in run.stdout, run.stdout
    ledger = _rows(out / "ledger.csv")
    c1 = [r for r in ledger if r["member"] == "c-001"]
    c2 = [r for r in ledger if r["member"] == "c-002"]
    assert [int(r["offtake_wh"]) for r in c1] == [6000] * 8  # 400 Wh a minute
    assert [int(r["feed_in_wh"]) for r in c2] == [0] * 4 + [7500] * 4
    assert [int(r["received_wh"]) for r in c1] == [0] * 4 + [6000] * 4  # all it takes, from c-002
    assert [int(r["grid_export_wh"]) for r in c2] == [0] * 4 + [1500] * 4
