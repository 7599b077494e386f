"""The whole estate live: every company of a community file as `energyhub demo --all` runs it, measured from outside.

Runs the 2026 reference community (455 devices, 100 gateways) through simulators, edge agents, Mosquitto, the
ingest, influxd, control and the API for a sunny midday, then prints:

- per node level, the quarter hours over a limit as the grid meters' own energy registers stored in InfluxDB count
  them (``tests/yardstick.py``, not control's records), and the hub's worst quarter-hour feed-in;
- control's cycle time p50/p99 (its ``control_cycle`` points), device-read-to-stored lag p99 (the ingest's points),
  sequence gaps counted per gateway session from the stored ``seq`` values;
- CPU (% of one core) and memory per kind of process, from /proc.

Baseline in the same run: a 4-company demo of De Koumen (31 devices) for the same real time at the same speed, so the
ratio of CPU per polled device says how the system scales from a demo to the estate.

    .venv/bin/python bench/estate.py                          # 30x, 6 quarter hours of 2026-06-21 from 10:00 UTC
    .venv/bin/python bench/estate.py --speed 60 --quarter-hours 4 --no-baseline
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from energyhub.domain.community import load_community  # noqa: E402
from energyhub.domain.topology import Community  # noqa: E402
from tests.estate_run import DemoRun, ProcessUse, wait_until  # noqa: E402
from tests.faults import per_session  # noqa: E402
from tests.yardstick import infeasible_isps, measure, query  # noqa: E402

SITE = "de-koumen"
DB = "energyhub"


def data_now(run: DemoRun) -> datetime:
    clock = run.get("/api/clock")
    assert isinstance(clock, dict)
    return datetime.fromisoformat(clock["now"])


def cpu_window(
    run: DemoRun, until: datetime, hub: str
) -> tuple[dict[str, ProcessUse], dict[str, ProcessUse], float, list[float]]:
    """Usage at the window's start and end (the data clock reaching ``until``), the real seconds between, and the
    hub's flow in the API's /api/flows every 2 real seconds meanwhile (what a user watching the live page sees)."""
    first, t0 = run.usage(), time.monotonic()
    samples: list[float] = []
    while data_now(run) < until:
        flows = run.get("/api/flows")
        assert isinstance(flows, list)
        flow = next(f["flow_kw"] for f in flows if f["node"] == hub)
        if flow is not None:
            samples.append(flow)
        time.sleep(2.0)  # the sampling period, not a synchronisation
    return first, run.usage(), time.monotonic() - t0, samples


def gaps(run: DemoRun, before: datetime) -> tuple[int, int, dict[str, int]]:
    """(measurements stored, seq numbers missing, missing per gateway session) over every gateway session, from the
    stored seq values before ``before`` (a session starts at seq 0). A query while the ingest writes a batch sees
    part of it: a count of everything up to now found 21 missing that the ingest had all stored."""
    stored = missing = 0
    per: dict[str, int] = {}
    where = f"time < '{before.isoformat()}'"
    for (gateway, session), (count, high) in per_session(
        run.influx, DB, where, "count(seq), max(seq)"
    ).items():
        stored += count
        missing += high + 1 - count
        if high + 1 - count:
            per[f"{gateway}/{session}"] = high + 1 - count
    return stored, missing, per


def ingest_totals(run: DemoRun) -> dict[str, float]:
    """The ingest's own last figures: dead letters, gaps it saw, messages."""
    rows = query(run.influx, DB, "SELECT last(dead_letters), last(gaps), last(messages) FROM ingest")
    if not rows:
        return {}
    _t, dead, seen_gaps, messages = rows[0]["values"][0]
    return {"dead_letters": dead, "gaps": seen_gaps, "messages": messages}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


def report_usage(first: dict[str, ProcessUse], last: dict[str, ProcessUse], seconds: float) -> float:
    total = 0.0
    print(f"  {'process':<12} {'count':>5} {'CPU % of a core':>16} {'memory MB':>10}")
    for kind in sorted(last):
        cpu = (last[kind].cpu_s - (first[kind].cpu_s if kind in first else 0.0)) / seconds * 100
        total += cpu
        print(f"  {kind:<12} {last[kind].count:>5} {cpu:>16.1f} {last[kind].rss_mb:>10.0f}")
    print(f"  {'together':<12} {'':>5} {total:>16.1f} {sum(u.rss_mb for u in last.values()):>10.0f}")
    return total


def run_estate(args: argparse.Namespace, folder: Path) -> float:
    community = load_community(args.community)
    devices = sum(1 for _ in community.devices())
    start = datetime.fromisoformat(args.start)
    warm = start + timedelta(minutes=args.warm_up_min)
    end = warm + timedelta(minutes=15 * args.quarter_hours)
    run = DemoRun(
        folder / "estate",
        [
            "--all",
            "--community",
            str(args.community),
            "--speed",
            f"{args.speed:g}",
            "--start",
            args.start,
            *(["--agents-per-process", str(args.agents_per_process)] if args.agents_per_process else []),
        ],
    )
    print(
        f"estate: {args.community} ({devices} devices), {args.speed:g}x from {args.start}, "
        f"{args.quarter_hours} quarter hours measured from {warm:%H:%M} UTC"
    )
    try:
        started = time.monotonic()
        run.start(ready_timeout_s=600)
        print(f"  up in {time.monotonic() - started:.0f} s")
        wait_until(lambda: data_now(run) >= warm, 3600, "the warm-up to end")
        # A poll past the last boundary.
        first, last, seconds, samples = cpu_window(run, end + timedelta(minutes=2), community.hub.id)
        stored, missing, per = gaps(run, end)
        time.sleep(20)  # then again: what was only on its way by then is no loss
        stored_later, missing_later, per_later = gaps(run, end + timedelta(minutes=5))
        own = ingest_totals(run)
        window = {
            "url": run.influx,
            "db": DB,
            "site": SITE,
            "start": warm,
            "end": end,
            "max_gap_s": 10 * args.speed,
        }
        yard = measure(community, **window)  # the DSO's strict reading
        beyond = measure(community, **window, margin=0.02, margin_kw=1.0)  # beyond control's default margin
        infeasible = infeasible_isps(run.influx, DB, SITE, warm, end)
        cycles = [
            r[1]
            for s in query(
                run.influx,
                DB,
                f"SELECT cycle_ms FROM control_cycle WHERE time >= '{warm.isoformat()}' "
                f"AND time < '{end.isoformat()}'",
            )
            for r in s["values"]
        ]
        lags = [
            r[1]
            for s in query(
                run.influx,
                DB,
                f"SELECT lag_p99_s FROM ingest WHERE time >= '{warm.isoformat()}' "
                f"AND time < '{end.isoformat()}'",
            )
            for r in s["values"]
            if r[1] is not None
        ]
    finally:
        code = run.stop()
    levels = ("hub", "loop", "micro", "connection")
    print(f"  quarter hours measured: {len(yard.isps)} ({', '.join(f'{t:%H:%M}' for t in yard.isps)})")
    for level in levels:
        counted = sum(1 for (n, _t) in yard.node_kw if _level(community, n) == level)
        over = [o for o in yard.overs if o.level == level]
        excused = sum(1 for o in over if o.isp in infeasible)
        past_margin = sum(1 for o in beyond.overs if o.level == level)
        print(
            f"  {level:<10} node-quarter-hours {counted:>5}   over a limit {len(over):>3}   beyond the margin "
            f"{past_margin:>3}   (over and reported infeasible by control: {excused})"
        )
    for o in yard.overs[:10]:
        print(f"    over: {o.node} {o.isp:%H:%M} {o.direction} {o.kw:.1f} kW against {o.limit_kw:.1f} kW")
    print(
        f"  hub worst quarter-hour feed-in: {max(0.0, yard.worst_hub_feed_in_kw(community.hub.id)):.2f} kW "
        f"(averages {', '.join(f'{yard.node_kw[(community.hub.id, t)]:.0f}' for t in yard.isps if (community.hub.id, t) in yard.node_kw)} kW)"
    )
    fed = sum(1 for v in samples if v < -5.0)
    print(
        f"  /api/flows every 2 s: hub mean {statistics.mean(samples):.1f} kW, {fed} of {len(samples)} samples "
        f"({100 * fed / max(len(samples), 1):.0f} %) over 5 kW fed in, lowest {min(samples):.1f} kW"
    )
    print(
        f"  control cycle: p50 {statistics.median(cycles):.1f} ms, p99 {percentile(cycles, 0.99):.1f} ms "
        f"({len(cycles)} cycles)"
    )
    print(
        f"  read-to-stored lag p99: median of the ingest's 10-s p99s {statistics.median(lags):.2f} s, "
        f"worst {max(lags):.2f} s"
    )
    print(
        f"  sequence: {stored} measurements stored, {missing} missing {per or ''}; 20 s later {stored_later} "
        f"stored, {missing_later} missing {per_later or ''}; the ingest's own count: {own}"
    )
    print(f"  CPU and memory over {seconds:.0f} real seconds:")
    total = report_usage(first, last, seconds)
    print(f"  demo exit code {code}")
    return total / devices


def _level(community: Community, node: str) -> str:
    from tests.yardstick import node_members

    return node_members(community)[node][0]


def run_baseline(args: argparse.Namespace, folder: Path, seconds: float) -> float:
    community = load_community(REPO / "examples" / "de-koumen.yaml")
    from energyhub.domain.community import only_gateways

    few = ["gw-002", "gw-011", "gw-018", "gw-049"]  # a shop, a PV roof, the plaza, the collective battery
    devices = sum(1 for _ in only_gateways(community, set(few)).devices())
    gateways = [arg for g in few for arg in ("--gateway", g)]
    run = DemoRun(folder / "baseline", ["--speed", f"{args.speed:g}", "--start", args.start, *gateways])
    try:
        run.start()
        time.sleep(20)  # warm-up before the window (a benchmark, not a test: no condition to wait on)
        first, t0 = run.usage(), time.monotonic()
        time.sleep(seconds)
        last, spent = run.usage(), time.monotonic() - t0
    finally:
        run.stop()
    print(f"baseline: the default demo ({devices} devices), {args.speed:g}x, {spent:.0f} real seconds")
    total = report_usage(first, last, spent)
    return total / devices


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--community", type=Path, default=REPO / "examples" / "de-koumen-2026.yaml")
    parser.add_argument("--speed", type=float, default=30.0)
    parser.add_argument("--start", default="2026-06-21T09:40:00+00:00")
    parser.add_argument("--warm-up-min", type=float, default=20.0, help="Simulated minutes before measuring.")
    parser.add_argument("--quarter-hours", type=int, default=6)
    parser.add_argument("--agents-per-process", type=int, default=None)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ehub-estate-") as tmp:
        folder = Path(tmp)
        per_device = run_estate(args, folder)
        if not args.no_baseline:
            base = run_baseline(args, folder, seconds=60.0)
            print(
                f"CPU per device: estate {per_device * 1000:.1f} vs demo {base * 1000:.1f} milli-% of a core "
                f"(ratio {per_device / base:.2f})"
            )


if __name__ == "__main__":
    main()
