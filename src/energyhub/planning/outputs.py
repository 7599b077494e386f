"""Write a plan's results: CSV for the spreadsheet, PNG for the meeting, each year's community for the record.

| file | what |
|---|---|
| ``years.csv`` | one row per year: PV, batteries, chargers, curtailment, violations, self-consumption, cycles, EV |
| ``headroom.csv`` | per year and node (connection, micro group, loop, hub): peaks against limits, spare by hour |
| ``curtailment_by_month.csv`` | per year and local month: curtailed kWh |
| ``sweep.csv`` | per battery size: the same figures as ``years.csv`` |
| ``plan.json`` | the scenario, the sweep's answer and where everything is |
| ``<year>/community.yaml`` | the community that year was simulated with |
| ``years.png``, ``curtailment_by_month.png``, ``headroom.png``, ``sweep.png`` | the pictures |
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from energyhub.planning.plan import PlanResult
from energyhub.planning.plots import plot_curtailment_by_month, plot_headroom, plot_sweep, plot_years
from energyhub.planning.scenario import Scenario, dump_community

__all__ = ["write_plan"]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_plan(out: Path, scenario: Scenario, result: PlanResult) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    title = scenario.name
    if result.years:
        rows = [o.figures for o in result.years]
        written.append(_write_csv(out / "years.csv", rows))
        headroom = [{"year": o.year, **row} for o in result.years for row in o.headroom]
        written.append(_write_csv(out / "headroom.csv", headroom))
        monthly = [
            {"year": o.year, "month": month, "curtailed_kwh": kwh}
            for o in result.years
            for month, kwh in o.monthly_curtailed_kwh.items()
        ]
        written.append(_write_csv(out / "curtailment_by_month.csv", monthly))
        written.append(plot_years(rows, out / "years.png", title))
        written.append(
            plot_curtailment_by_month(
                {o.year: o.monthly_curtailed_kwh for o in result.years},
                out / "curtailment_by_month.png",
                f"{title}: curtailment by month",
            )
        )
        written.append(
            plot_headroom(headroom, out / "headroom.png", f"{title}: highest quarter hour per loop")
        )
    for year, doc in result.documents.items():
        folder = out / str(year)
        folder.mkdir(exist_ok=True)
        (folder / "community.yaml").write_text(
            f"# The community of {year} in scenario {scenario.name!r}, as energyhub plan simulated it.\n"
            + dump_community(doc)
        )
        written.append(folder / "community.yaml")
    sweep = scenario.sweep
    if sweep is not None and result.sweep:
        rows = [o.figures for o in result.sweep]
        written.append(_write_csv(out / "sweep.csv", rows))
        written.append(
            plot_sweep(
                rows,
                sweep.target_curtailed_pct,
                result.chosen,
                sweep.kind,
                out / "sweep.png",
                f"{title}: {'battery' if sweep.kind == 'battery' else 'PV'} at {sweep.at} in {scenario.sweep_year}",
            )
        )
    plan = {
        "scenario": scenario.model_dump(mode="json"),
        "sweep": None
        if sweep is None
        else {
            "kind": sweep.kind,
            "at": sweep.at,
            "year": scenario.sweep_year,
            "target_curtailed_pct": sweep.target_curtailed_pct,
            "answer": result.chosen,
            "unit": sweep.unit,
            "power_kw": None
            if result.chosen is None or sweep.kind != "battery"
            else result.chosen * sweep.c_rate,
        },
        "files": [str(p.relative_to(out)) for p in written],
    }
    (out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    written.append(out / "plan.json")
    return written
