"""Load and PV forecasts against persistence over a year of the 2026 reference scenario, and their time per call.

1. The simulators export the year's quarter-hour inputs for `examples/de-koumen-2026.yaml` (seed 0; `--community`
   another file, `--weeks N` only the first N weeks, `--inputs` an export already made).
2. Every hour of the period (`--every` quarter hours), each forecaster of `src/energyhub/control/forecast.py` forecasts the next
   24 hours of every connection from what is measured up to that quarter hour, as `Mpc` would ask it:
   - load: persistence as `Mpc` has done it (a week ago, a day ago in the first week), a day ago, and the
     blend of the same local time on the last three days of the same day type (`Forecaster.load`);
   - PV: persistence (a day ago) and the clear-sky envelope times a clearness index (`Forecaster.pv`), with a
     weather forecast file too when `--clearness` names one.
3. Printed per forecast: `normalised_mae` (mean absolute error over the mean actual value, pooled over every
   connection and sample) for the next hour, the next 6 hours and the next 24 hours (the quarter hour measured now
   not counted); for the cautious load forecast (`load_high`) how often the load exceeds it; and the median time
   per call for all connections and a 24-hour horizon, measured inside this loop (caches as cold as between the
   control loop's other work).

The period's first four weeks are included: both kinds of forecast fall back there, as they would in a simulation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from energyhub.control.forecast import ErrorSum, Forecaster, day_ago, read_clearness, week_ago  # noqa: E402
from energyhub.control.inputs import Inputs  # noqa: E402
from energyhub.domain.community import load_community  # noqa: E402
from energyhub.domain.network import Network  # noqa: E402
from energyhub.synthetic.export import export_quarter_hours  # noqa: E402

HORIZONS = {"next 1 h": 4, "next 6 h": 24, "next 24 h": 96}
CALL = 97  # the quarter hour now and the next 96


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--community", type=Path, default=REPO / "examples" / "de-koumen-2026.yaml")
    parser.add_argument("--year", type=int, default=2026)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weeks", type=int, default=None, help="only the first N weeks (a quick look)")
    parser.add_argument("--inputs", type=Path, help="an export of that period already made")
    parser.add_argument(
        "--every", type=int, default=4, help="quarter hours between samples (default: hourly)"
    )
    parser.add_argument("--clearness", type=Path, help="a weather forecast: isp_start,clear_sky_index")
    args = parser.parse_args()
    community = load_community(args.community)
    network = Network.from_community(community)
    start = datetime(args.year, 1, 1, tzinfo=UTC)
    end = datetime(args.year + 1, 1, 1, tzinfo=UTC)
    if args.weeks is not None:
        end = min(end, start + timedelta(weeks=args.weeks))
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.inputs
        if folder is None:
            folder = Path(tmp) / "inputs"
            t = time.perf_counter()
            export_quarter_hours(community, start=start, end=end, seed=args.seed, out_dir=folder)
            print(f"exported {(end - start).days} days of inputs in {time.perf_counter() - t:.0f} s")
        inputs = Inputs.from_folder(folder, network, start, end)
    load, pv = inputs.load_kw, inputs.pv_kw
    t = time.perf_counter()
    forecaster = Forecaster(inputs.isp_starts, community.community.timezone)
    built_ms = 1000 * (time.perf_counter() - t)
    clearness = read_clearness(args.clearness, inputs.isp_starts) if args.clearness else None
    weather = Forecaster(inputs.isp_starts, community.community.timezone, clearness=clearness)

    forecasts: dict[str, tuple[str, Callable[[np.ndarray, int, int], np.ndarray]]] = {
        "load, a week ago (Mpc)": ("load", week_ago),
        "load, a day ago": ("load", day_ago),
        "load, blend of 3 days by day type": ("load", forecaster.load),
        "load, highest of those 3 days": ("load", forecaster.load_high),
        "pv, a day ago (Mpc)": ("pv", day_ago),
        "pv, clear sky x clearness": ("pv", forecaster.pv),
    }
    if clearness is not None:
        forecasts["pv, clear sky x weather file"] = ("pv", weather.pv)
    errors = {(name, h): ErrorSum() for name in forecasts for h in HORIZONS}
    times: dict[str, list[float]] = {name: [] for name in forecasts}
    above = {
        name: [0, 0] for name in forecasts
    }  # quarter hours where the actual exceeds the forecast, of all
    samples = range(0, inputs.isps - 1, args.every)
    for t in samples:
        for name, (kind, forecast) in forecasts.items():
            history = load if kind == "load" else pv
            started = time.perf_counter()
            values = forecast(history, t, CALL)
            times[name].append(time.perf_counter() - started)
            n = min(CALL, inputs.isps - t) - 1  # the period's end cuts the last day's horizons short
            for label, h in HORIZONS.items():
                k = min(h, n)
                if k > 0:
                    errors[name, label].add(values[:, 1 : 1 + k], history[:, t + 1 : t + 1 + k])
            if kind == "load" and n > 0:
                above[name][0] += int((history[:, t + 1 : t + 1 + n] > values[:, 1 : 1 + n] + 1e-9).sum())
                above[name][1] += history[:, t + 1 : t + 1 + n].size

    print(
        f"{community.community.id} ({args.community.name}), seed {args.seed}, {start:%Y-%m-%d} to {end:%Y-%m-%d}: "
        f"{len(network.connection_ids)} connections ({int((pv.sum(axis=1) > 0).sum())} with PV), "
        f"{len(samples):,} samples every {15 * args.every} min; forecaster built in {built_ms:.0f} ms"
    )
    print(
        "  normalised MAE (mean absolute error / mean actual), and the median time per call (all connections)"
    )
    print(
        f"  {'forecast':<36}" + "".join(f"{label:>11}" for label in HORIZONS) + f"{'ms/call':>9}{'over %':>8}"
    )
    for name, (kind, _) in forecasts.items():
        cells = "".join(f"{errors[name, label].normalised_mae:>11.4f}" for label in HORIZONS)
        over = f"{100 * above[name][0] / above[name][1]:>8.1f}" if kind == "load" else ""
        print(f"  {name:<36}{cells}{1000 * statistics.median(times[name]):>9.3f}{over}")
    for kind, baseline, better in (
        ("load", "load, a week ago (Mpc)", "load, blend of 3 days by day type"),
        ("pv", "pv, a day ago (Mpc)", "pv, clear sky x clearness"),
    ):
        ratios = ", ".join(
            f"{label} {errors[better, label].normalised_mae / errors[baseline, label].normalised_mae:.2f}"
            for label in HORIZONS
        )
        print(f"  {kind}: new / persistence: {ratios}")
    print("  over %: the share of the next 24 hours' quarter hours in which the load exceeded the forecast")


if __name__ == "__main__":
    main()
