"""``energyhub plan``: a scenario over several years through the control simulation, and the battery sweep."""

from __future__ import annotations

import csv
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from energyhub.domain.topology import Community, Connection
    from energyhub.planning.meter_data import MeterSeries
    from energyhub.planning.utility_use import UtilityUse

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
    from concurrent.futures.process import BrokenProcessPool

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from energyhub.domain.community import CommunityError, load_community
    from energyhub.planning.outputs import write_plan
    from energyhub.planning.plan import run_plan
    from energyhub.planning.scenario import ScenarioError, load_scenario

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
        # Without a terminal (a log, CI) the bar is not drawn: say every tenth instead.
        counted: dict[str, list[int]] = {}  # kind -> [done, total, tenths said]
        quiet_bar = not bar.console.is_terminal

        def totals(work: dict[str, int]) -> None:
            for kind, total in work.items():
                tasks[kind] = bar.add_task(kind, total=total)
                counted[kind] = [0, total, 0]

        def progress(kind: str, n: int) -> None:
            if kind in tasks:
                bar.advance(tasks[kind], n)  # type: ignore[arg-type]
            if quiet_bar and kind in counted:
                done, total, said = counted[kind]
                done += n
                tenths = 10 * done // max(total, 1)
                if tenths > said:
                    typer.echo(f"{kind}: {done:,} of {total:,} ({10 * tenths} %)")
                counted[kind] = [done, total, max(said, tenths)]

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
        except BrokenProcessPool:
            typer.echo(
                "error: a simulation process died (out of memory?); try fewer --workers, or days: N for a "
                "shorter period",
                err=True,
            )
            raise typer.Exit(1) from None
    written = write_plan(out, parsed, result)
    for outcome in result.years:
        f = outcome.figures
        typer.echo(
            f"{outcome.year}: {f['pv_kwp'] / 1000:.2f} MWp, {f['battery_kwh'] / 1000:.2f} MWh batteries; "
            f"curtailed {f['curtailed_kwh'] / 1000:.1f} MWh ({f['curtailed_pct']:.2f} %), "
            f"self-consumption {f['self_consumption_pct']:.1f} %, {f['violations']} violations "
            f"({f['violation_kwh'] / 1000:.1f} MWh over; in {f['infeasible_isps']} quarter hours no action kept "
            "every limit with the margin), "
            f"plaza served {f['plaza_served_kwh'] / 1000:.1f} of {f['plaza_requested_kwh'] / 1000:.1f} MWh"
        )
    sweep = parsed.sweep
    if sweep is not None:
        for outcome in result.sweep:
            f = outcome.figures
            typer.echo(f"sweep {f['size']:>10g} {sweep.unit}: curtailed {f['curtailed_pct']:.2f} %")
        target = sweep.target_curtailed_pct
        if result.chosen is None:
            hint = "larger" if sweep.kind == "battery" else "smaller"
            typer.echo(f"no size tried keeps curtailment at or under {target:g} %: try {hint} sizes")
        elif sweep.kind == "battery":
            typer.echo(
                f"smallest battery at {sweep.at} keeping curtailment at or under {target:g} %: "
                f"{result.chosen:g} kWh ({result.chosen * sweep.c_rate:g} kW)"
            )
        else:
            typer.echo(
                f"most PV on {sweep.at}'s roofs with curtailment at or under {target:g} %: {result.chosen:g} kWp more"
            )
    typer.echo(f"wrote {len(written)} files to {out}")


def _measured(
    community_path: Path,
    meter_data: Path | None,
    fmt: str,
    influx_url: str | None,
    database: str,
    from_: str | None,
    to: str | None,
    influx_username: str | None = None,
    influx_password: str | None = None,
    influx_token: str | None = None,
) -> tuple[Community, dict[str, MeterSeries]]:
    """The community and its measured quarter hours from a folder or from InfluxDB; exits with the error."""
    from energyhub.control.cli import _date
    from energyhub.domain.community import CommunityError, load_community
    from energyhub.io.influx import InfluxClient, InfluxError
    from energyhub.planning.measured import read_folder, read_influx
    from energyhub.planning.meter_data import MeterDataError

    try:
        community = load_community(community_path)
    except CommunityError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    try:
        if meter_data is not None:
            return community, read_folder(meter_data, community, fmt)
        if influx_url is not None:
            if from_ is None or to is None:
                raise typer.BadParameter("--influx-url needs --from and --to")
            client = InfluxClient(
                url=influx_url,
                database=database,
                username=influx_username,
                password=influx_password,
                token=influx_token,
            )
            measured = read_influx(client, community, _date(from_, "--from"), _date(to, "--to"))
            for connection, series in measured.items():
                if series.resets:
                    # Counted from the reset on, not as zero: the energy before it in that quarter hour is unknown.
                    typer.echo(
                        f"warning: {connection}: the meter's energy counter was reset in {len(series.resets)} "
                        f"quarter hour(s), first at {series.resets[0].isoformat()}",
                        err=True,
                    )
            return community, measured
    except (MeterDataError, InfluxError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    return community, {}


FormatOption = Annotated[str, typer.Option("--format", help="energyhub, nl-local or long-utc.")]
MeterDataOption = Annotated[
    Path | None, typer.Option(help="Folder of measured quarter hours, a file per connection (id or EAN).")
]
DatabaseOption = Annotated[str, typer.Option(help="InfluxDB database.")]
FromOption = Annotated[str | None, typer.Option("--from", help="Start (ISO), for InfluxDB.")]
ToOption = Annotated[str | None, typer.Option(help="End (ISO, exclusive), for InfluxDB.")]
UserOption = Annotated[str | None, typer.Option(envvar="EHUB_INFLUX_USERNAME", help="InfluxDB 1.x user.")]
PasswordOption = Annotated[str | None, typer.Option(envvar="EHUB_INFLUX_PASSWORD", help="Its password.")]
TokenOption = Annotated[str | None, typer.Option(envvar="EHUB_INFLUX_TOKEN", help="InfluxDB 2.x/3.x token.")]
InfluxOption = Annotated[
    str | None, typer.Option(help="Read what the ingest stored instead (with --from/--to).")
]


def report_command(
    community: Annotated[Path, typer.Option(help="Community YAML file.")],
    out: Annotated[Path, typer.Option(help="Folder for the reports.")],
    meter_data: MeterDataOption = None,
    fmt: FormatOption = "energyhub",
    influx_url: InfluxOption = None,
    database: DatabaseOption = "energyhub",
    from_: FromOption = None,
    to: ToOption = None,
    influx_username: UserOption = None,
    influx_password: PasswordOption = None,
    influx_token: TokenOption = None,
    planned: Annotated[
        Path | None, typer.Option(help="The planned estate (a community file): the passport's PV potential.")
    ] = None,
    inputs: Annotated[
        Path | None,
        typer.Option(help="PV and use per connection (the simulators' export layout): simultaneity."),
    ] = None,
    year: Annotated[int, typer.Option(help="The year of the PV yield figures.")] = 2026,
    seed: Annotated[int, typer.Option(help="Weather seed of the PV yield figures.")] = 0,
) -> None:
    """Area passport, headroom (from measured data) and simultaneity (from PV and use per connection)."""
    from energyhub.control.inputs import InputError, Inputs
    from energyhub.domain.community import CommunityError, load_community
    from energyhub.domain.network import Network
    from energyhub.planning.headroom import headroom_report
    from energyhub.planning.passport import passport as make_passport
    from energyhub.planning.passport import write_passport
    from energyhub.planning.simultaneity import simultaneity

    parsed, measured = _measured(
        community,
        meter_data,
        fmt,
        influx_url,
        database,
        from_,
        to,
        influx_username,
        influx_password,
        influx_token,
    )
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    headroom = headroom_report(parsed, measured) if measured else []
    if headroom:
        path = out / "headroom.csv"
        rows = [h.row() for h in headroom]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        written.append(path)
        gaps = sum(len(s.gaps) for s in measured.values())
        typer.echo(f"measured data for {len(measured)} connections ({gaps} quarter hours missing)")
    try:
        planned_community = load_community(planned) if planned is not None else None
    except CommunityError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    utilities = _utility_use(
        parsed, influx_url, database, from_, to, influx_username, influx_password, influx_token
    )
    rows = make_passport(
        parsed, year=year, seed=seed, planned=planned_community, measured=headroom, utilities=utilities
    )
    written += write_passport(rows, out, title=f"{parsed.community.name}: area passport")
    if inputs is not None:
        network = Network.from_community(parsed)
        manifest = inputs / "manifest.json"
        try:
            import json

            info = json.loads(manifest.read_text())
            start, end = _span(info["start"], info["end"])
            data = Inputs.from_folder(inputs, network, start, end)
        except (OSError, KeyError, ValueError, InputError) as exc:
            typer.echo(f"error: {inputs}: {exc}", err=True)
            raise typer.Exit(1) from None
        found = simultaneity(network, data, timezone=parsed.community.timezone)
        found.table.round(3).to_csv(out / "simultaneity.csv", index=False)
        written.append(out / "simultaneity.csv")
        pv = found.pv_kwh.sum()
        if pv > 0:
            typer.echo(
                f"PV {pv / 1000:.1f} MWh: {100 * found.on_connection_kwh.sum() / pv:.1f} % used on the connection, "
                f"{100 * found.in_loop_kwh.sum() / pv:.1f} % in the loop, {100 * found.in_hub_kwh.sum() / pv:.1f} % "
                f"in the hub, {100 * found.left_over_kwh.sum() / pv:.1f} % left to store or curtail"
            )
    typer.echo(f"wrote {', '.join(p.name for p in written)} to {out}")


def _utility_use(
    community: Community,
    influx_url: str | None,
    database: str,
    from_: str | None,
    to: str | None,
    influx_username: str | None,
    influx_password: str | None,
    influx_token: str | None,
) -> dict[str, UtilityUse]:
    """The passport's gas and water use over --from/--to, from InfluxDB (files hold electricity only)."""
    from energyhub.control.cli import _date
    from energyhub.io.influx import InfluxClient, InfluxError
    from energyhub.planning.utility_use import read_utility_use_blocking

    if influx_url is None or from_ is None or to is None:
        return {}
    client = InfluxClient(
        url=influx_url,
        database=database,
        username=influx_username,
        password=influx_password,
        token=influx_token,
    )
    try:
        found = read_utility_use_blocking(client, community, _date(from_, "--from"), _date(to, "--to"))
    except InfluxError as exc:
        typer.echo(f"error: gas and water use: {exc}", err=True)
        raise typer.Exit(1) from None
    for connection, use in found.items():
        for kind, counted in (("gas", use.gas), ("water", use.water)):
            if counted is not None and counted.resets:
                typer.echo(
                    f"warning: {connection}: a {kind} meter's counter fell {counted.resets} time(s) (replaced?): "
                    "the steps down are skipped",
                    err=True,
                )
    return found


def _span(start: str, end: str) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(start.replace("Z", "+00:00")), datetime.fromisoformat(
        end.replace("Z", "+00:00")
    )


def settle_command(
    community: Annotated[Path, typer.Option(help="Community YAML file: the members are its connections.")],
    out: Annotated[Path, typer.Option(help="Folder for ledger.csv, balance.csv and the statements.")],
    meter_data: MeterDataOption = None,
    fmt: FormatOption = "energyhub",
    influx_url: InfluxOption = None,
    database: DatabaseOption = "energyhub",
    from_: FromOption = None,
    to: ToOption = None,
    influx_username: UserOption = None,
    influx_password: PasswordOption = None,
    influx_token: TokenOption = None,
    key: Annotated[
        str, typer.Option(help="How shared energy is allocated: use, static or contracted.")
    ] = "use",
    shares: Annotated[
        Path | None, typer.Option(help="YAML: connection id -> share, for --key static.")
    ] = None,
    prices: Annotated[
        Path | None, typer.Option(help="YAML with the Prices fields (docs/planning.md).")
    ] = None,
) -> None:
    """Settle measured quarter hours: who supplied whom, bill lines, and monthly statements (CSV and HTML)."""
    import numpy as np
    import yaml

    from energyhub.planning.ledger import KEYS, Prices, settle
    from energyhub.planning.measured import aligned_wh
    from energyhub.planning.statements import write_settlement

    if key not in KEYS:
        raise typer.BadParameter(f"--key {key!r}: one of {', '.join(KEYS)}")
    if meter_data is None and influx_url is None:
        raise typer.BadParameter("give --meter-data or --influx-url")
    parsed, measured = _measured(
        community,
        meter_data,
        fmt,
        influx_url,
        database,
        from_,
        to,
        influx_username,
        influx_password,
        influx_token,
    )
    if not measured:
        typer.echo("error: no measured quarter hours for any connection", err=True)
        raise typer.Exit(1)
    connections = {c.id: c for _l, _m, c in parsed.connections()}
    members = [c for c in connections if c in measured]
    contracted = np.array([connections[m].limits.import_kw or 0.0 for m in members])
    static = None
    try:
        if key == "static":
            if shares is None:
                raise ValueError("--key static needs --shares FILE")
            table = yaml.safe_load(shares.read_text()) or {}
            unknown = sorted(set(table) - set(members))
            if not isinstance(table, dict) or unknown:
                raise ValueError(
                    f"{shares}: shares name connections with data; unknown: {', '.join(map(str, unknown))}"
                )
            static = np.array([float(table.get(m, 0.0)) for m in members])
            if (static < 0).any():
                raise ValueError(f"{shares}: a share is not negative")
        price_table = yaml.safe_load(prices.read_text()) if prices is not None else {}
        price = Prices(**(price_table or {}))
        if price.fixed_split not in ("capacity", "use"):
            raise ValueError(f"{prices}: fixed_split must be capacity or use")
    except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    starts, offtake, feed_in, complete = aligned_wh(members, measured)
    ledger = settle(
        members,
        starts,
        offtake,
        feed_in,
        key=key,
        static_shares=static,
        contracted_kw=contracted,
        shareable=complete,
    )
    written = write_settlement(
        ledger,
        price,
        contracted,
        out,
        community=parsed.community.name,
        key=key,
        timezone=parsed.community.timezone,
        names={m: connections[m].company for m in members},
        storage={m for m in members if _is_storage(connections[m])},
        plaza={m for m in members if connections[m].load_profile == "ev_plaza"},
    )
    shared = int(ledger.received_wh.sum())
    typer.echo(
        f"{len(members)} members, {len(starts)} quarter hours ({int((~complete).sum())} not shared: a member's data "
        f"has a gap); {shared / 1000:.1f} kWh shared of {int(offtake.sum()) / 1000:.1f} kWh taken"
    )
    typer.echo(f"wrote {len(written)} files to {out}")


def _is_storage(connection: Connection) -> bool:
    """A battery's own connection: a battery and nothing that uses or makes energy besides."""
    from energyhub.domain.topology import DeviceRole

    roles = {d.role for d in connection.devices}
    return DeviceRole.BATTERY in roles and not roles & {DeviceRole.PV, DeviceRole.EV, DeviceRole.LOAD}
