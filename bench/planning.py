"""A 10-size battery sweep over a year of the reference community, as `energyhub plan --sweep-only` runs it.

The scenario is `examples/plan-de-koumen.yaml`: the 2026 estate (10.7 MWp) in its sweep year, the battery at the
substation, ten sizes. Printed:

1. the year's inputs generated once (weather, loads, EV sessions of 100+ connections, minute resolution);
2. the baseline, measured in the same run: one size (the middle one) simulated alone, in this process;
3. the whole sweep in a pool of ``--workers`` processes (default: the CPU count), wall time, against the target
   of 10 minutes and against ten times the baseline (the parallel speed-up);
4. curtailment per size and the smallest size meeting the target.

``--days N`` runs a shorter period for a quick look (then the figures are not a year's).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from energyhub.domain.community import load_community  # noqa: E402
from energyhub.planning.plan import generate_quarter_hours, run_plan, simulate_community, sweep_community  # noqa: E402
from energyhub.planning.scenario import community_for_year, load_scenario  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", type=Path, default=REPO / "examples" / "plan-de-koumen.yaml")
    parser.add_argument("--community", type=Path, default=REPO / "examples" / "de-koumen-2026.yaml")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--days", type=int, default=None)
    args = parser.parse_args()
    base = load_community(args.community)
    scenario, lines = load_scenario(args.scenario)
    if args.days:
        scenario = scenario.model_copy(update={"days": args.days})
    assert scenario.sweep is not None, "the scenario needs a sweep"
    sizes = sorted(set(scenario.sweep.sizes))
    year = scenario.sweep_year
    tz = base.community.timezone
    community, doc = community_for_year(base, scenario, year, lines=lines)
    print(
        f"{scenario.name}: sweep of {len(sizes)} sizes at {scenario.sweep.at} in {year}, policy {scenario.policy}"
    )

    t = time.perf_counter()
    data = generate_quarter_hours(community, scenario, year, lambda n: None)
    generate_s = time.perf_counter() - t
    print(
        f"inputs generated once: {generate_s:.0f} s ({len(data.connections)} connections, {data.isps} quarter hours)"
    )

    middle = sizes[len(sizes) // 2]
    t = time.perf_counter()
    assert scenario.sweep.kind == "battery", "this bench sweeps a battery (a PV sweep adds a roof's inputs)"
    _n, _i, alone = simulate_community(
        sweep_community(doc, scenario, middle, tz), data, scenario, lambda n: None
    )
    baseline_s = time.perf_counter() - t
    print(f"baseline: one size ({middle:g} kWh) alone: {baseline_s:.0f} s")

    t = time.perf_counter()
    result = run_plan(base, scenario, workers=args.workers, sweep_only=True, lines=lines)
    sweep_s = time.perf_counter() - t
    print(
        f"sweep of {len(sizes)} sizes with {args.workers} workers: {sweep_s:.0f} s wall "
        f"({sweep_s / 60:.1f} min, target < 10 min); {sweep_s / baseline_s:.2f}x one size alone, "
        f"speed-up {len(sizes) * baseline_s / sweep_s:.2f} over running them one by one"
    )
    for outcome in result.sweep:
        f = outcome.figures
        print(
            f"  {f['size']:>8g} kWh: curtailed {f['curtailed_kwh'] / 1000:8.1f} MWh ({f['curtailed_pct']:6.2f} %), "
            f"cycles {f['battery_cycles']:6.1f}, violations {f['violations']}, run {f['runtime_s']:.0f} s"
        )
    alone_pct = 100 * alone.curtailed_kwh / alone.pv_available_kwh
    same = next(o for o in result.sweep if o.figures["size"] == middle)
    print(
        f"check: the baseline's curtailment {alone_pct:.3f} % equals the sweep's {same.figures['curtailed_pct']:.3f} %"
    )
    target = scenario.sweep.target_curtailed_pct
    if result.chosen is None:
        print(f"no size keeps curtailment at or under {target:g} %")
    else:
        print(f"smallest battery keeping curtailment at or under {target:g} %: {result.chosen:g} kWh")


if __name__ == "__main__":
    main()
