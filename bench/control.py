"""greedy, mpc and the exact oracle over representative weeks of the sharing reference; mpc over a whole year.

1. The simulators export a year of quarter-hour inputs for `examples/de-koumen-2026-sharing.yaml` (seed 0): the
   2026 estate as one group agreement, whose members may feed into the estate while the substation takes nothing,
   so sharing, the batteries and the charging plaza decide the outcome.
2. Eight representative weeks (Monday 00:00 UTC), two per season and each with what makes control hard:
   January and late November (CBC window, winter evenings), February (day-ahead restriction, 2026-02-16),
   Easter week (a sunny holiday: little load, much PV), Ascension week (another holiday), June and August
   (long days, school holidays), the week daylight saving ends (2026-10-25: a 25-hour day). Each runs from the
   same start (batteries half full); the policies' forecasts look back on the four weeks before it, as a
   controller that has been running would.
3. Per week: greedy; mpc with its forecasts (and with `persistence` forecasts, and with the data's own future,
   `perfect`, which tells how much of a gap is the plan's and how much the forecasts'); the exact oracle (no
   battery charging and discharging at once, proven optimal within the gap it reports); the plain linear
   program the oracle used to be (what it claimed); and the least battery throughput that curtails no more than
   mpc did (the yardstick for cycling).
4. Violations are counted from each policy's booked node flows against the contracts; the oracle's own
   violations are proven infeasible (perfect foresight could not keep them), and the rest are avoidable.
5. mpc over the whole year in one run, as `energyhub simulate` runs it: wall time (target: under 120 s), and the
   time of one decision (dispatch and plan) for the full community: p50/p99.

Forecast errors (persistence against the blend, per horizon) are measured by `bench/forecasts.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from energyhub.control.inputs import Inputs  # noqa: E402
from energyhub.control.limits import LimitTable  # noqa: E402
from energyhub.control.oracle import oracle  # noqa: E402
from energyhub.control.policies import Greedy, Mpc  # noqa: E402
from energyhub.control.simulate import SimulationResult, simulate  # noqa: E402
from energyhub.domain.community import load_community  # noqa: E402
from energyhub.domain.network import Network  # noqa: E402
from energyhub.synthetic.export import export_quarter_hours  # noqa: E402

ISP = timedelta(minutes=15)
WEEKS = (
    "2026-01-12",
    "2026-02-16",
    "2026-04-06",
    "2026-05-11",
    "2026-06-15",
    "2026-08-10",
    "2026-10-19",
    "2026-11-30",
)
HISTORY = timedelta(days=28)
POLICIES = ("greedy", "mpc", "mpc-persistence", "mpc-perfect", "oracle", "oracle-lp", "least-throughput")


class Timed:
    """A policy whose every decision is timed: the online engine does the same work once per cycle."""

    def __init__(self, policy: Mpc) -> None:
        self.policy, self.name, self.times = policy, policy.name, []

    def decide(self, step):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        result = self.policy.decide(step)
        self.times.append(time.perf_counter() - started)
        return result


@dataclass
class Week:
    start: datetime
    results: dict[str, SimulationResult]
    over: dict[str, set[tuple[int, int]]]  # per policy: (node, quarter hour) over a contract


def cut(
    year: Inputs, limits: LimitTable, network: Network, a: datetime, b: datetime
) -> tuple[Inputs, Inputs, LimitTable]:
    start = year.isp_starts[0]
    i, j = int((a - start) / ISP), int((b - start) / ISP)
    h = max(0, i - int(HISTORY / ISP))
    part, history = year.window(i, j), year.window(h, i)
    part_limits = LimitTable(
        network.node_ids,
        part.isp_starts,
        limits.import_kw[:, i:j],
        limits.export_kw[:, i:j],
        limits.physical_kw,
        limits.book,
    )
    return part, history, part_limits


def over_set(result: SimulationResult, limits: LimitTable) -> set[tuple[int, int]]:
    """(node, quarter hour) where the booked flow is over the contract: counted here, from the flows."""
    flow = result.node_kw
    over = (flow > limits.import_kw + 1e-6) | (-flow > limits.export_kw + 1e-6)
    return {(int(n), int(t)) for n, t in zip(*np.nonzero(over), strict=True)}


def run_week(network: Network, year: Inputs, limits: LimitTable, a: datetime, caution: float) -> Week:
    part, history, part_limits = cut(year, limits, network, a, a + timedelta(days=7))
    results: dict[str, SimulationResult] = {}
    results["greedy"] = simulate(network, part, part_limits, Greedy(network), history=history)
    results["mpc"] = simulate(network, part, part_limits, Mpc(network, caution=caution), history=history)
    results["mpc-persistence"] = simulate(
        network, part, part_limits, Mpc(network, forecasts="persistence"), history=history
    )
    results["mpc-perfect"] = simulate(
        network, part, part_limits, Mpc(network, forecasts="perfect"), history=history
    )
    results["oracle"] = oracle(network, part, part_limits)
    results["oracle-lp"] = oracle(network, part, part_limits, exclusive=False)
    results["least-throughput"] = oracle(
        network, part, part_limits, curtailed_at_most_kwh=results["mpc"].curtailed_kwh + 1e-3
    )
    over = {name: over_set(r, part_limits) for name, r in results.items()}
    return Week(a, results, over)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--community", type=Path, default=REPO / "examples" / "de-koumen-2026-sharing.yaml")
    parser.add_argument("--inputs", type=Path, help="an export of the year already made")
    parser.add_argument("--weeks", type=int, default=len(WEEKS), help="only the first N weeks (a quick look)")
    parser.add_argument("--caution", type=float, default=None, help="mpc's caution (default: the policy's)")
    parser.add_argument("--no-year", action="store_true", help="skip mpc over the whole year")
    parser.add_argument("--wear", type=float, default=None, help="every battery's wear, EUR per kWh moved")
    args = parser.parse_args()
    caution = Mpc.__init__.__kwdefaults__["caution"] if args.caution is None else args.caution  # type: ignore[index]
    community = load_community(args.community)
    network = Network.from_community(community)
    if args.wear is not None:
        network.batteries = [dataclasses.replace(b, wear_eur_per_kwh=args.wear) for b in network.batteries]
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.inputs
        if folder is None:
            folder = Path(tmp) / "inputs"
            t = time.perf_counter()
            export_quarter_hours(community, start=start, end=end, seed=0, out_dir=folder)
            print(f"exported a year of inputs in {time.perf_counter() - t:.0f} s")
        year = Inputs.from_folder(folder, network, start, end)
    limits = LimitTable.build(community, network.node_ids, year.isp_starts)
    weeks = []
    for day in WEEKS[: args.weeks]:
        a = datetime.fromisoformat(day).replace(tzinfo=UTC)
        t = time.perf_counter()
        weeks.append(run_week(network, year, limits, a, caution))
        print(f"  week of {day}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    report(network, community.community.name, weeks, caution)
    if not args.no_year:
        timed = Timed(Mpc(network, caution=caution))
        whole = simulate(network, year, limits, timed)
        times = np.array(timed.times) * 1000
        print(
            f"\nmpc over the whole year in one run: {whole.runtime_s:.0f} s wall ({whole.isps:,} quarter hours, "
            f"{whole.violations} violations, {whole.infeasible_isps} quarter hours infeasible, "
            f"{whole.curtailed_kwh:,.0f} kWh curtailed, {whole.battery_throughput_kwh:,.0f} kWh moved)"
        )
        print(
            f"online engine, one decision for the full community (dispatch + plan): p50 "
            f"{statistics.median(times):.1f} ms, p99 {np.percentile(times, 99):.1f} ms, max {times.max():.1f} ms"
        )
        print("batteries over the year (equivalent full cycles):")
        for battery, figures in whole.battery_summary().items():
            print(
                f"  {battery:<16} {figures['throughput_kwh']:>10,.0f} kWh moved  {figures['full_cycles']:>6.1f} cycles"
            )


def report(network: Network, name: str, weeks: list[Week], caution: float) -> None:
    def total(policy: str, field: str) -> float:
        return float(sum(getattr(w.results[policy], field) for w in weeks))

    proven = [w.over["oracle"] for w in weeks]
    print(
        f"\n{name}: {len(network.connection_ids)} connections, {len(network.batteries)} batteries, "
        f"{len(network.chargers)} chargers; {len(weeks)} weeks from {', '.join(f'{w.start:%m-%d}' for w in weeks)}"
        f" (mpc caution {caution}, wear {sorted({b.wear_eur_per_kwh for b in network.batteries})} EUR/kWh moved)"
    )
    print(
        f"  {'policy':<17} {'over':>5} {'avoidable':>9} {'curtailed kWh':>14} {'undelivered kWh':>16} "
        f"{'battery kWh':>12} {'simultaneous':>12} {'run s':>7}"
    )
    for policy in POLICIES:
        over = sum(len(w.over[policy]) for w in weeks)
        avoidable = sum(len(w.over[policy] - p) for w, p in zip(weeks, proven, strict=True))
        print(
            f"  {policy:<17} {over:>5} {avoidable:>9} {total(policy, 'curtailed_kwh'):>14,.1f} "
            f"{total(policy, 'ev_undelivered_kwh'):>16,.1f} {total(policy, 'battery_throughput_kwh'):>12,.0f} "
            f"{int(total(policy, 'simultaneous_isps')):>12} {total(policy, 'runtime_s'):>7.1f}"
        )
    gap = total("oracle", "optimality_gap_kwh")
    rounds = max(w.results["oracle"].exact_rounds for w in weeks)
    binaries = total("oracle", "exact_binaries")
    print(
        f"  exact oracle: within {gap:.3f} kWh (curtailment-equivalent) of proven optimal over all weeks; at most "
        f"{rounds} rounds, {int(binaries)} battery modes made binary"
    )
    lp_claim = total("oracle-lp", "curtailed_kwh")
    exact = total("oracle", "curtailed_kwh")
    print(
        f"  the plain LP claimed {lp_claim:,.1f} kWh curtailed, {exact - lp_claim:,.1f} kWh less than is possible"
    )
    for field, label in (("curtailed_kwh", "curtailed"), ("ev_undelivered_kwh", "undelivered")):
        o = total("oracle", field)
        for policy in ("mpc", "mpc-persistence", "mpc-perfect", "greedy"):
            ratio = total(policy, field) / o if o else float("nan")
            print(f"  {label} {policy}/oracle: {ratio:.3f}")
    least = total("least-throughput", "battery_throughput_kwh")
    print(
        f"  throughput mpc / least for the same curtailment: {total('mpc', 'battery_throughput_kwh') / least:.2f}"
        if least
        else "  throughput: no battery move is needed for mpc's curtailment"
    )
    print("  per week (curtailed kWh: oracle, mpc, mpc-perfect; battery kWh: least, mpc):")
    for w in weeks:
        r: dict[str, Any] = w.results
        print(
            f"    {w.start:%Y-%m-%d}: {r['oracle'].curtailed_kwh:8,.1f} {r['mpc'].curtailed_kwh:8,.1f} "
            f"{r['mpc-perfect'].curtailed_kwh:8,.1f} | {r['least-throughput'].battery_throughput_kwh:7,.0f} "
            f"{r['mpc'].battery_throughput_kwh:7,.0f} | avoidable over: {len(w.over['mpc'] - w.over['oracle'])}"
        )


if __name__ == "__main__":
    main()
