"""``energyhub plan``: a scenario over several years through the control simulation, and the battery sweep."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["plan_command"]


def plan_command(
    community: Annotated[Path, typer.Option(help="Community YAML file: the first year's estate.")],
    scenario: Annotated[Path, typer.Option(help="Scenario YAML file (docs/planning.md).")],
    out: Annotated[Path, typer.Option(help="Folder for the CSVs, the PNGs and each year's community.")],
    workers: Annotated[
        int, typer.Option(help="Simulations run at once (processes); default: the CPU count.")
    ] = 0,
    sweep_only: Annotated[bool, typer.Option("--sweep-only", help="Run only the scenario's sweep.")] = False,
) -> None:
    """Simulate each year of a scenario and, if it has one, sweep battery sizes for the smallest that keeps
    curtailment under the target."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from hub.community import CommunityError, load_community
    from planning.outputs import write_plan
    from planning.plan import run_plan
    from planning.scenario import ScenarioError, load_scenario

    try:
        base = load_community(community)
        parsed, lines = load_scenario(scenario)
    except (CommunityError, ScenarioError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if sweep_only and parsed.sweep is None:
        typer.echo(f"{scenario}: --sweep-only, but the scenario has no sweep", err=True)
        raise typer.Exit(1)
    columns = (
        TextColumn("{task.description:>14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        tasks: dict[str, object] = {}

        def totals(work: dict[str, int]) -> None:
            for kind, total in work.items():
                tasks[kind] = bar.add_task(kind, total=total)

        def progress(kind: str, n: int) -> None:
            if kind in tasks:
                bar.advance(tasks[kind], n)  # type: ignore[arg-type]

        try:
            result = run_plan(
                base,
                parsed,
                workers=workers or os.cpu_count() or 1,
                progress=progress,
                totals=totals,
                file=str(scenario),
                lines=lines,
                sweep_only=sweep_only,
            )
        except ScenarioError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from None
    written = write_plan(out, parsed, result)
    for outcome in result.years:
        f = outcome.figures
        typer.echo(
            f"{outcome.year}: {f['pv_kwp'] / 1000:.2f} MWp, {f['battery_kwh'] / 1000:.2f} MWh batteries; "
            f"curtailed {f['curtailed_kwh'] / 1000:.1f} MWh ({f['curtailed_pct']:.2f} %), "
            f"self-consumption {f['self_consumption_pct']:.1f} %, {f['violations']} violations "
            f"({f['infeasible_isps']} quarter hours no action could fix), "
            f"plaza served {f['plaza_served_kwh'] / 1000:.1f} of {f['plaza_requested_kwh'] / 1000:.1f} MWh"
        )
    if parsed.sweep is not None:
        for outcome in result.sweep:
            f = outcome.figures
            typer.echo(f"sweep {f['size_kwh']:>10g} kWh: curtailed {f['curtailed_pct']:.2f} %")
        target = parsed.sweep.target_curtailed_pct
        if result.chosen_kwh is None:
            typer.echo(f"no size tried keeps curtailment at or under {target:g} %: try larger sizes")
        else:
            typer.echo(
                f"smallest battery at {parsed.sweep.at} keeping curtailment at or under {target:g} %: "
                f"{result.chosen_kwh:g} kWh ({result.chosen_kwh * parsed.sweep.c_rate:g} kW)"
            )
    typer.echo(f"wrote {len(written)} files to {out}")
