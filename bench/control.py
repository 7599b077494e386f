"""greedy, mpc and oracle over a year of the 2026 reference scenario; the online engine's time per cycle.

1. The simulators export a year of quarter-hour inputs for `examples/de-koumen-2026.yaml` (seed 0), unless
   `--inputs` names an export already made.
2. The year is cut into weeks (Monday 00:00 UTC; the last days make a short week). Each policy runs every week
   from the same start (batteries half full), so the oracle, one linear program with perfect foresight per week,
   is comparable. Violations, curtailed and undelivered kWh are summed, and the ratios mpc/oracle and
   greedy/oracle printed. Violations that no action could prevent (the load alone over a contract) are shown apart.
3. mpc over the whole year as one run, as `energyhub simulate` does it: wall time.
4. The online engine's compute per cycle for the full community: the time of one `decide` (dispatch, and the
   MPC plan) per quarter hour of that run, p50 and p99.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from control.inputs import Inputs  # noqa: E402
from control.limits import LimitTable  # noqa: E402
from control.network import Network  # noqa: E402
from control.oracle import oracle  # noqa: E402
from control.policies import Greedy, Mpc  # noqa: E402
from control.simulate import SimulationResult, simulate  # noqa: E402
from hub.community import load_community  # noqa: E402
from simulators.export import export_quarter_hours  # noqa: E402


class Timed:
    """A policy whose every decision is timed: the online engine does the same work once per cycle."""

    def __init__(self, policy: Mpc) -> None:
        self.policy, self.name, self.times = policy, policy.name, []

    def decide(self, step):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        result = self.policy.decide(step)
        self.times.append(time.perf_counter() - started)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--year", type=int, default=2026)
    parser.add_argument("--inputs", type=Path, help="an export of that year already made")
    parser.add_argument("--weeks", type=int, default=None, help="only the first N weeks (a quick look)")
    args = parser.parse_args()
    community = load_community(REPO / "examples" / "de-koumen-2026.yaml")
    network = Network.from_community(community)
    start, end = datetime(args.year, 1, 1, tzinfo=UTC), datetime(args.year + 1, 1, 1, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.inputs
        if folder is None:
            folder = Path(tmp) / "inputs"
            t = time.perf_counter()
            export_quarter_hours(community, start=start, end=end, seed=0, out_dir=folder)
            print(f"exported a year of inputs in {time.perf_counter() - t:.0f} s")
        year = Inputs.from_folder(folder, network, start, end)
        limits = LimitTable.build(community, network.node_ids, year.isp_starts)
        # Weeks from the first Monday; the days before it and after the last full week are short weeks.
        bounds = [start]
        monday = start + timedelta(days=(7 - start.weekday()) % 7)
        while monday < end:
            if monday > bounds[-1]:
                bounds.append(monday)
            monday += timedelta(days=7)
        bounds.append(end)
        periods = list(itertools.pairwise(bounds))[: args.weeks]
        totals: dict[str, list[SimulationResult]] = {"greedy": [], "mpc": [], "oracle": []}
        for a, b in periods:
            i, j = int((a - start) / timedelta(minutes=15)), int((b - start) / timedelta(minutes=15))
            part = Inputs(
                year.isp_starts[i:j],
                year.load_kw[:, i:j],
                year.pv_kw[:, i:j],
                [s for s in year.sessions if s.departure > a and s.arrival < b],
            )
            part_limits = LimitTable(
                network.node_ids,
                part.isp_starts,
                limits.import_kw[:, i:j],
                limits.export_kw[:, i:j],
                limits.physical_kw,
                limits.book,
            )
            totals["greedy"].append(simulate(network, part, part_limits, Greedy(network)))
            totals["mpc"].append(simulate(network, part, part_limits, Mpc(network)))
            totals["oracle"].append(oracle(network, part, part_limits))
        # The year in one run, timed per decision.
        timed = Timed(Mpc(network))
        whole = simulate(network, year, limits, timed) if args.weeks is None else None

    def total(name: str, field: str) -> float:
        return float(sum(getattr(r, field) for r in totals[name]))

    print(
        f"2026 reference scenario (10.7 MWp, {len(network.batteries)} batteries, {len(network.chargers)} chargers), "
        f"{len(periods)} weekly periods of {args.year}, each policy from the same start"
    )
    print(
        f"  {'policy':<7} {'violations':>10} {'(unavoidable)':>13} {'over kWh':>9} {'curtailed kWh':>14} "
        f"{'undelivered kWh':>16} {'self-use %':>10} {'battery kWh':>12} {'run s':>7}"
    )
    for name in ("greedy", "mpc", "oracle"):
        pv = total(name, "pv_available_kwh")
        used = pv - total(name, "curtailed_kwh") - total(name, "hub_export_kwh")
        print(
            f"  {name:<7} {int(total(name, 'violations')):>10} {int(total('oracle', 'infeasible_isps')):>13} "
            f"{total(name, 'violation_kwh'):>9.1f} {total(name, 'curtailed_kwh'):>14,.0f} "
            f"{total(name, 'ev_undelivered_kwh'):>16,.1f} {100 * used / pv:>10.1f} "
            f"{total(name, 'battery_throughput_kwh'):>12,.0f} {total(name, 'runtime_s'):>7.1f}"
        )
    for field, label in (("curtailed_kwh", "curtailed"), ("ev_undelivered_kwh", "undelivered")):
        o = total("oracle", field)
        for name in ("mpc", "greedy"):
            ratio = total(name, field) / o if o else float("nan")
            print(f"  {label} {name}/oracle: {ratio:.4f}")
    if whole is not None:
        times = np.array(timed.times) * 1000
        print(
            f"  mpc over the whole year in one run: {whole.runtime_s:.0f} s wall ({whole.isps:,} quarter hours, "
            f"{whole.violations} violations, {whole.infeasible_isps} quarter hours infeasible)"
        )
        print(
            f"  online engine, one decision for the full community (dispatch + MPC plan): p50 "
            f"{statistics.median(times):.1f} ms, p99 {np.percentile(times, 99):.1f} ms, max {times.max():.1f} ms"
        )


if __name__ == "__main__":
    main()
