"""Nothing lost under faults (issue 14): the issue's scenarios as one run, counted from outside.

Each scenario starts its own chain of real processes (``tests/faults.py``: influxd, Mosquitto, ``energyhub ingest``,
``energyhub sim`` at real time, one ``energyhub edge`` per gateway; by default 4 gateways x 50 measurements/s),
lets it flow, injects the fault, recovers, waits until the buffers have drained into InfluxDB, stops the agents with
SIGTERM and counts per gateway session from InfluxDB's stored seqs and the agents' buffer files:

- kill: Mosquitto killed with SIGKILL and started again after ``--down-s`` (20 s);
- stop: Mosquitto stopped cleanly (SIGTERM) for ``--stop-s`` (300 s) while the agents buffer, then started;
- both: Mosquitto and the ingest killed together with SIGKILL, both started again after ``--down-s``.

Printed per scenario: measurements made, stored, still held in buffers, lost, duplicates (a seq stored at two
points), replayed, and the seconds from the recovery until drained. Baseline in the same run: for each scenario a
run as long without the fault (its outage and its drain), with the same counts and its drain time (what the
measurement itself takes). The gateways and the ingest reconnect on their own back-off, as they do in the field; ``--ingest-last``
holds the ingest back (SIGSTOP, or a later start) until every gateway has reconnected, the harsh order.

    .venv/bin/python bench/faults.py                            # all three, 4 x 50/s, with baselines (~15 min)
    .venv/bin/python bench/faults.py --scenario kill --scenario both --no-baseline
    .venv/bin/python bench/faults.py --scenario stop --stop-s 60 --gateways 2 --rate 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

# As ``tests.faults`` (a namespace package): a plain ``faults`` would be this script itself.
from tests.faults import Count, FaultRun, Load  # noqa: E402

WARM_S = 10.0  # flowing before the fault, and as long in the baseline


@dataclass(frozen=True)
class Result:
    name: str
    down_s: float
    count: Count
    drain_s: float


def hold(run: FaultRun, seconds: float) -> None:
    """Let ``seconds`` pass (the length of a fault, not a synchronisation), looking into the buffers meanwhile."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        run.observe(database=False)
        time.sleep(min(0.5, max(0.0, end - time.monotonic())))


def _broker_away(run: FaultRun, down_s: float, ingest_last: bool, *, kill: bool) -> None:
    if kill:
        run.kill_broker()
    else:
        run.stop_broker()
    hold(run, down_s)
    if ingest_last:
        run.hold_ingest()
    run.start_broker()
    if ingest_last:
        run.wait_agents_connected(timeout_s=120)
        run.release_ingest()


def _kill(run: FaultRun, down_s: float, ingest_last: bool) -> None:
    _broker_away(run, down_s, ingest_last, kill=True)


def _stop(run: FaultRun, down_s: float, ingest_last: bool) -> None:
    _broker_away(run, down_s, ingest_last, kill=False)


def _both(run: FaultRun, down_s: float, ingest_last: bool) -> None:
    run.kill_ingest()
    run.kill_broker()
    hold(run, down_s)
    run.start_broker()
    if ingest_last:
        run.wait_agents_connected(timeout_s=120)
    run.start_ingest()


def _none(run: FaultRun, down_s: float, ingest_last: bool) -> None:
    hold(run, down_s)


SCENARIOS: dict[str, tuple[str, Callable[[FaultRun, float, bool], None]]] = {
    "kill": ("broker SIGKILL", _kill),
    "stop": ("broker clean stop", _stop),
    "both": ("broker + ingest SIGKILL", _both),
}


def run_one(
    name: str, fault: Callable[[FaultRun, float, bool], None], down_s: float, args: argparse.Namespace
) -> Result:
    load = Load(gateways=args.gateways, rate_hz=args.rate, interval_s=args.interval)
    with tempfile.TemporaryDirectory(prefix="ehub-faults-") as tmp, FaultRun(Path(tmp), load) as run:
        run.start()
        run.wait_flowing(20)
        hold(run, WARM_S)
        fault(run, down_s, args.ingest_last)
        drain_s = run.wait_drained(timeout_s=max(180.0, down_s))
        count = run.finish()
    return Result(name, down_s, count, drain_s)


def report(result: Result, *, sessions: bool) -> None:
    c = result.count
    share = f"{100 * c.lost / c.made:.1f} %" if c.made else "-"
    print(
        f"  {result.name:<28} {result.down_s:>6.0f} {c.made:>8} {c.stored:>8} {c.held:>6} {c.lost:>7} {share:>7} "
        f"{c.duplicates:>5} {c.replayed:>8} {result.drain_s:>8.1f}",
        flush=True,
    )
    if sessions:
        for s in c.sessions:
            print(f"      {s.describe()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="Repeatable; all by default."
    )
    parser.add_argument("--down-s", type=float, default=20.0, help="Outage of the kill scenarios.")
    parser.add_argument("--stop-s", type=float, default=300.0, help="Outage of the clean stop.")
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument("--rate", type=float, default=50.0, help="Measurements per second per gateway.")
    parser.add_argument(
        "--interval", type=float, default=0.2, help="Poll interval; devices = rate x interval."
    )
    parser.add_argument(
        "--ingest-last", action="store_true", help="The ingest back only after every gateway."
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--sessions", action="store_true", help="Print the count of every gateway session.")
    args = parser.parse_args()
    load = Load(gateways=args.gateways, rate_hz=args.rate, interval_s=args.interval)
    print(
        f"faults: {load.describe()}, {load.total_hz:g} measurements/s in all; {WARM_S:g} s flowing before each "
        f"fault{'; the ingest back last' if args.ingest_last else ''}"
    )
    print(
        f"  {'scenario':<28} {'down s':>6} {'made':>8} {'stored':>8} {'held':>6} {'lost':>7} {'lost %':>7} "
        f"{'dup':>5} {'replayed':>8} {'drain s':>8}"
    )
    for key in args.scenario or list(SCENARIOS):
        title, fault = SCENARIOS[key]
        down_s = args.stop_s if key == "stop" else args.down_s
        result = run_one(title, fault, down_s, args)
        report(result, sessions=args.sessions)
        if not args.no_baseline:
            # As long as the fault's run: its outage and its drain.
            base = run_one("  baseline: no fault", _none, down_s + result.drain_s, args)
            report(base, sessions=args.sessions)


if __name__ == "__main__":
    main()
