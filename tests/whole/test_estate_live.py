"""The whole chain live, as a user runs it: `energyhub demo --all` on a five-company estate with two loops, at the
demo's speed and at real time, checked from outside against the meters' own energy registers in InfluxDB."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from energyhub.cli.services import free_port
from energyhub.control.online import ControlSettings
from energyhub.domain.community import load_community
from tests.communities import ean
from tests.estate_run import DemoRun, wait_until
from tests.faults import per_session
from tests.yardstick import energy_between, infeasible_isps, measure, meter_counters, node_members, query

SITE = "estate-test"
# "Over a limit beyond the margin", as the issue puts it: control's own margin (2 %, at least 1 kW).
MARGIN = ControlSettings.model_fields["margin"].default
MARGIN_KW = ControlSettings.model_fields["margin_kw"].default
DB = "energyhub"
HUB_EXPORT_KW = 0.0
LOOP_2_EXPORT_KW = 60.0
C4_EXPORT_KW = 40.0


def estate(ports: list[int]) -> dict:
    """Five companies: PV everywhere but c-005, a battery at c-001, two car chargers at c-003; c-004 may feed
    40 kW into its connection, loop-2 60 kW into the loop, the substation nothing."""

    def device(n: int, unit: int, role: str, profile: str, **extra: object) -> dict:
        return {
            "id": f"{role}-{unit}" if role != "meter" else "meter",
            "role": role,
            "profile": profile,
            "modbus": {"host": "127.0.0.1", "port": ports[n - 1], "unit_id": unit},
            **extra,
        }

    def company(n: int, use_kwh: float, import_kw: float, export_kw: float, devices: list[dict]) -> dict:
        return {
            "id": f"c-{n:03d}",
            "ean": ean(700 + n),
            "company": f"Estate test {n}",
            "capacity_kva": 400,
            "limits": {"import_kw": import_kw, "export_kw": export_kw},
            "annual_use_kwh": use_kwh,
            "gateways": [{"id": f"gw-e{n}"}],
            "devices": [device(n, 1, "meter", "eastron_sdm630"), *devices],
        }

    return {
        "version": 1,
        "community": {"id": SITE, "name": "Live estate test", "timezone": "Europe/Amsterdam"},
        "hub": {"id": "hub", "capacity_kva": 2000, "limits": {"import_kw": 1500, "export_kw": HUB_EXPORT_KW}},
        "loops": [
            {
                "id": "loop-1",
                "limits": {"import_kw": 900, "export_kw": 200},
                "connections": [
                    company(
                        1,
                        150_000,
                        250,
                        100,
                        [
                            device(1, 2, "pv", "sunspec_inverter", kwp=160, ac_kw=150),
                            device(1, 3, "battery", "sunspec_battery", power_kw=60, capacity_kwh=120),
                        ],
                    ),
                    company(2, 60_000, 200, 0, [device(2, 2, "pv", "sunspec_inverter", kwp=90, ac_kw=80)]),
                    company(
                        3,
                        90_000,
                        250,
                        0,
                        [
                            device(3, 2, "pv", "sunspec_inverter", kwp=60, ac_kw=50),
                            device(3, 3, "ev", "ev_charger", power_kw=22, vehicle="car"),
                            device(3, 4, "ev", "ev_charger", power_kw=22, vehicle="car"),
                        ],
                    ),
                ],
            },
            {
                "id": "loop-2",
                "limits": {"import_kw": 600, "export_kw": LOOP_2_EXPORT_KW},
                "connections": [
                    company(
                        4,
                        40_000,
                        200,
                        C4_EXPORT_KW,
                        [device(4, 2, "pv", "sunspec_inverter", kwp=200, ac_kw=180)],
                    ),
                    company(5, 350_000, 300, 0, []),
                ],
            },
        ],
    }


@pytest.fixture
def estate_file(tmp_path: Path) -> Path:
    path = tmp_path / "estate.yaml"
    path.write_text(yaml.safe_dump(estate([free_port() for _ in range(5)]), sort_keys=False))
    return path


def data_now(run: DemoRun) -> datetime:
    return datetime.fromisoformat(run.get("/api/clock")["now"])  # type: ignore[index]


def sequence_gaps(run: DemoRun, before: datetime) -> dict[str, int]:
    """Per gateway session: seq numbers missing in what InfluxDB stored before ``before`` (sessions start at seq 0).
    Only what is a few real seconds old: a query while a batch is being written sees part of it."""
    out = {}
    where = f"time < '{before.isoformat()}'"
    for (gateway, session), (count, high, low) in per_session(
        run.influx, DB, where, "count(seq), max(seq), min(seq)"
    ).items():
        assert low == 0, (gateway, session, count, high)  # a session's first measurement is seq 0
        out[f"{gateway}/{session}"] = high + 1 - count
    return out


def hub_binding_cycles(run: DemoRun, start: datetime, end: datetime) -> int:
    rows = query(
        run.influx,
        DB,
        f"SELECT binding FROM control_cycle WHERE time >= '{start.isoformat()}' AND time < '{end.isoformat()}'",
    )
    return sum(1 for s in rows for _t, binding in s["values"] if "hub:export" in binding)


def failsafe_reports(run: DemoRun, start: datetime, end: datetime) -> int:
    rows = query(
        run.influx,
        DB,
        f"SELECT * FROM gateway_state WHERE time >= '{start.isoformat()}' AND time < '{end.isoformat()}'",
    )
    reports = 0
    for s in rows:
        columns = s["columns"]
        if "failsafe" not in columns:
            continue
        i = columns.index("failsafe")
        reports += sum(1 for row in s["values"] if row[i] in (True, 1, "true"))
    return reports


LAG_REAL_S = 3.0  # how old, in real seconds, the newest reading control holds may be: a poll and its way


def meter_power(run: DemoRun, start: datetime, end: datetime) -> dict[str, list[tuple[float, float]]]:
    """Per connection: (epoch s, W) of every stored grid meter power reading."""
    rows = query(
        run.influx,
        DB,
        f"SELECT power_w FROM device WHERE site = '{SITE}' AND role = 'meter' AND time >= '{start.isoformat()}' "
        f"AND time < '{end.isoformat()}' GROUP BY connection",
    )
    return {s["tags"]["connection"]: [(t / 1000, w) for t, w in s["values"] if w is not None] for s in rows}


def control_against_meters(
    run: DemoRun, community, start: datetime, end: datetime, max_gap_s: float, speed: float
) -> list[tuple[str, str, float, float, float, bool, float]]:
    """Every cycle's own count of the quarter hour's energy so far at every node, beside what the meters' registers
    say for the same span: (node, time, control kWh, meters kWh, gross kWh, counted by control from the registers,
    kWh that may flow unseen between two readings).

    Right after a boundary, before a meter's first reading in the new quarter hour, control can only integrate
    power. Control knows the meters only up to its newest reading and estimates the rest from the latest power;
    the yardstick, too, interpolates between stored readings a poll apart. At 60x a poll is a simulated minute and a
    reading LAG_REAL_S old three: PV released or a battery turning round in them moves a kWh. At 1x it is a few
    watt-hours, so the real-time test is where the count is checked tightly."""
    counters = meter_counters(run.influx, DB, SITE, start - timedelta(minutes=20), end + timedelta(minutes=5))
    power = meter_power(run, start - timedelta(minutes=20), end + timedelta(minutes=5))
    members = node_members(community)
    rows = query(
        run.influx,
        DB,
        f"SELECT isp_energy_kwh, metered FROM control_node WHERE time >= '{start.isoformat()}' "
        f"AND time < '{end.isoformat()}' "
        "GROUP BY node",
    )
    lag_h = LAG_REAL_S * speed / 3600
    out = []
    for series in rows:
        node = series["tags"]["node"]
        for t_ms, kwh, from_registers in series["values"]:
            t = datetime.fromtimestamp(t_ms / 1000, UTC)
            isp = datetime.fromtimestamp(t.timestamp() // 900 * 900, UTC)
            metered = energy_between(counters, members[node][1], isp, t, max_gap_s)
            if metered is None:
                continue
            # The readings on either side of t bound both control's estimate and the yardstick's interpolation.
            window = (t.timestamp() - LAG_REAL_S * speed, t.timestamp() + LAG_REAL_S * speed)
            peak_kw = (
                sum(
                    max((abs(w) for ts, w in power.get(c, []) if window[0] <= ts <= window[1]), default=0.0)
                    for c in members[node][1]
                )
                / 1000
            )
            out.append(
                (node, t.isoformat(), kwh, metered[0], metered[1], bool(from_registers), peak_kw * lag_h)
            )
    return out


def aggregated(run: DemoRun, start: datetime, end: datetime) -> dict[tuple[str, datetime], float]:
    """The aggregator's mean kW per (node, quarter hour) in [start, end)."""
    q = (
        f'SELECT "mean_kw" FROM "forever"."node_qh" WHERE "site" = \'{SITE}\' AND time >= \'{start.isoformat()}\' '
        f"AND time < '{end.isoformat()}' GROUP BY \"node\""
    )
    return {
        (series["tags"]["node"], datetime.fromtimestamp(t / 1000, UTC)): kw
        for series in query(run.influx, DB, q)
        for t, kw in series["values"]
    }


@pytest.mark.timeout(420)
def test_the_estate_at_demo_speed_keeps_every_quarter_hour_limit_as_the_meters_count_it(
    estate_file, tmp_path
):
    community = load_community(estate_file)
    speed = 60.0
    start = datetime(2026, 6, 21, 10, 40, tzinfo=UTC)
    warm, end = start + timedelta(minutes=20), start + timedelta(minutes=80)  # four whole quarter hours
    run = DemoRun(
        tmp_path / "state",
        ["--all", "--community", str(estate_file), "--speed", f"{speed:g}", "--start", start.isoformat()],
    )
    try:
        run.start()
        wait_until(lambda: data_now(run) >= end + timedelta(minutes=3), 200, "four quarter hours", run.logs)
        yard = measure(
            community,
            url=run.influx,
            db=DB,
            site=SITE,
            start=warm,
            end=end,
            max_gap_s=5 * speed,
            margin=MARGIN,
            margin_kw=MARGIN_KW,
        )
        infeasible = infeasible_isps(run.influx, DB, SITE, warm, end)
        gaps = sequence_gaps(run, end)
        binding = hub_binding_cycles(run, warm, end)
        failsafe = failsafe_reports(run, warm, end)
        counted = control_against_meters(run, community, warm, end, 5 * speed, speed)
        states = run.get("/api/gateways")
        # The aggregator's quarter hours, once it has closed the last one (30 real s after its end).
        wait_until(
            lambda: len(aggregated(run, warm, end)) >= len(yard.node_kw), 90, "the aggregates", run.logs
        )
        quarters = aggregated(run, warm, end)
        policies = {
            r[0]: (r[1], r[4]) for s in query(run.influx, DB, "SHOW RETENTION POLICIES") for r in s["values"]
        }
        minutes = {
            s["name"]
            for name in ("device_1m", "control_node_1m")
            for s in query(run.influx, DB, f'SELECT count(*) FROM "year"."{name}"')
        }
    finally:
        code = run.stop()
    assert code == 0, run.logs()
    # The demo set up raw points (default, kept 30 days past its June data clock), minutes and quarter hours.
    assert policies["raw"][1] is True
    assert policies["year"] == ("8784h0m0s", False)
    assert policies["forever"] == ("0s", False)
    assert minutes == {"device_1m", "control_node_1m"}
    # Every node's stored quarter hour is the yardstick's, counted from the same meters by other code.
    wrong = {
        key: (quarters.get(key), kw)
        for key, kw in yard.node_kw.items()
        if key not in quarters or abs(quarters[key] - kw) > 0.001 * abs(kw) + 0.01
    }
    assert not wrong, wrong
    # Every node of every quarter hour was measured: five connections, two loops and the hub, four times.
    assert len(yard.isps) == 4
    assert len(yard.node_kw) == 8 * 4, sorted(yard.node_kw)
    # The sun offered more than the estate uses: the substation's zero was what control fought for.
    assert binding > 0, run.logs()
    over = [o for o in yard.overs if o.isp not in infeasible]
    assert not over, f"{over}\nhub averages { {t.isoformat(): yard.node_kw[('hub', t)] for t in yard.isps} }"
    # Control's own count of each quarter hour so far is what the meters' registers say, at every node and cycle
    # (within 1 % of the energy that flowed under the node and 0.1 kWh, beside what flows while a reading travels).
    assert len(counted) >= 8 * 50, len(counted)
    from_registers = [c for c in counted if c[5]]
    assert len(from_registers) >= 0.8 * len(counted), len(from_registers)  # all but a boundary's first cycle
    wrong = [c for c in from_registers if abs(c[2] - c[3]) > 0.01 * c[4] + 0.1 + c[6]]
    assert not wrong, wrong[:10]
    # Nothing lost, and no gateway reported a lost controller while control lived.
    assert len(gaps) == 5, gaps
    assert all(missing == 0 for missing in gaps.values()), gaps
    assert failsafe == 0
    assert all(not s["health"]["failsafe"] for s in states), states  # type: ignore[index, union-attr]


@dataclass
class RealTimeEstate:
    """The estate at 1x, started when collection ends: its data clock starts 45 s before a quarter hour, which
    is over some 16 real minutes later, while the rest of the suite runs."""

    run: DemoRun
    community_path: Path
    isp: datetime

    def stop(self) -> int | None:
        return self.run.stop()


def start_real_time_estate(folder: Path) -> RealTimeEstate:
    path = folder / "estate.yaml"
    path.write_text(yaml.safe_dump(estate([free_port() for _ in range(5)]), sort_keys=False))
    isp = datetime(2026, 6, 21, 11, 45, tzinfo=UTC)
    start = isp - timedelta(seconds=45)
    run = DemoRun(
        folder / "state", ["--all", "--community", str(path), "--speed", "1", "--start", start.isoformat()]
    )
    run.start()
    return RealTimeEstate(run, path, isp)


@pytest.mark.real_time_estate
@pytest.mark.timeout(1200)
def test_the_estate_at_real_time_keeps_a_whole_quarter_hour_as_the_meters_count_it(real_time_estate):
    estate_run: RealTimeEstate = real_time_estate
    run, isp = estate_run.run, estate_run.isp
    community = load_community(estate_run.community_path)
    end = isp + timedelta(minutes=15)
    wait_until(lambda: data_now(run) >= end + timedelta(seconds=5), 1100, "the quarter hour to end", run.logs)
    # At real time the strict reading: not a watt fed in past the substation over the quarter hour.
    yard = measure(community, url=run.influx, db=DB, site=SITE, start=isp, end=end, max_gap_s=5)
    infeasible = infeasible_isps(run.influx, DB, SITE, isp, end)
    binding = hub_binding_cycles(run, isp, end)
    gaps = sequence_gaps(run, end)
    counted = control_against_meters(run, community, isp, end, 5, 1.0)
    failsafe = failsafe_reports(run, isp, end)
    code = estate_run.stop()
    assert code == 0, run.logs()
    assert yard.isps == [isp]
    assert len(yard.node_kw) == 8, sorted(yard.node_kw)
    assert binding > 0, run.logs()
    over = [o for o in yard.overs if o.isp not in infeasible]
    assert not over, f"{over}\n{yard.node_kw}\ninfeasible: {infeasible}"
    assert len(counted) >= 8 * 800, len(counted)  # a cycle a second
    assert sum(c[5] for c in counted) >= 0.98 * len(
        counted
    )  # at 1x a reading follows a boundary within a second
    wrong = [c for c in counted if abs(c[2] - c[3]) > 0.01 * c[4] + 0.1 + c[6]]
    assert not wrong, wrong[:10]
    assert len(gaps) == 5, gaps
    assert all(missing == 0 for missing in gaps.values()), gaps
    assert failsafe == 0
