"""``energyhub sim``: run a whole community of simulated Modbus devices."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from energyhub.simulators.community import ChargerAccess, CommunitySimulator

__all__ = ["app"]

app = typer.Typer(help="Simulated Modbus devices for demos and hardware-in-the-loop tests.")


def _parse_start(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC).replace(microsecond=0)
    try:
        start = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO date or time, e.g. 2026-06-01 or 2026-06-01T10:00Z"
        ) from None
    return start.replace(tzinfo=UTC) if start.tzinfo is None else start


OCPP_CHARGERS_HELP = (
    'JSON {charge point id: {"password": ..., "ca_file": ... or null}}: the chargers with ocpp: connect to their '
    "gateway's OCPP server with these (left out: they charge in the physics but do not connect)."
)


@app.callback(invoke_without_command=True)
def sim(
    ctx: typer.Context,
    community: Annotated[Path | None, typer.Option(help="Community YAML file.")] = None,
    only: Annotated[list[str] | None, typer.Option(help="Simulate only this gateway (repeatable).")] = None,
    speed: Annotated[float, typer.Option(min=0.001, help="Simulated seconds per real second.")] = 1.0,
    start: Annotated[
        str | None, typer.Option(help="Simulated start, ISO date/time (UTC if no zone); now if omitted.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of weather, loads and sessions.")] = 0,
    endpoints_json: Annotated[
        Path | None, typer.Option(help="Write the device endpoints here as JSON.")
    ] = None,
    tick: Annotated[float, typer.Option(min=0.05, help="Physics step in real seconds.")] = 1.0,
    control_port: Annotated[
        int | None, typer.Option(help="Serve the fault-control HTTP interface on 127.0.0.1:PORT.")
    ] = None,
    ocpp_chargers: Annotated[Path | None, typer.Option(help=OCPP_CHARGERS_HELP)] = None,
) -> None:
    """Serve every device of the community file on its Modbus address until Ctrl-C.

    The physics runs on a data clock that reads --start now and runs --speed times real time; with
    EHUB_SIM_CLOCK set (as `energyhub demo` sets it for every process it starts) it follows that clock instead, so
    the agents, the ingest and control stamp and count their data on the same time. A device's own timers (a
    charger's setpoint validity) count real seconds."""
    if ctx.invoked_subcommand is not None:
        return
    if community is None:
        raise typer.BadParameter("--community FILE is required")
    from energyhub.domain.clock import CLOCK_ENV, Clock, ClockError, clock_from_env
    from energyhub.domain.community import CommunityError, load_community
    from energyhub.simulators.community import CommunitySimulator

    try:
        clock = clock_from_env()
    except ClockError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not clock.is_simulated:
        clock = Clock.simulated(_parse_start(start), speed)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # client disconnects are normal for a simulator
    logging.getLogger("ocpp").setLevel(logging.WARNING)  # the library logs every message at INFO
    access = _charger_access(ocpp_chargers)
    try:
        simulator = CommunitySimulator(
            load_community(community),
            seed=seed,
            start=clock.now(),
            speed=clock.speed,
            only=set(only) if only else None,
            ocpp_chargers=access,
        )
    except CommunityError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if endpoints_json is not None:
        simulator.write_endpoints(endpoints_json)

    async def main() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        control = None
        if control_port is not None:
            from energyhub.simulators.control_api import ControlServer

            control = ControlServer(simulator, port=control_port)
            await control.start()
            typer.echo(f"fault control: http://127.0.0.1:{control.port}/devices")
        task = asyncio.create_task(simulator.run(stop=stop, ready=ready, tick_s=tick, clock=clock))
        await asyncio.wait([task, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():
            _say_what_is_served(simulator, access)
            typer.echo(
                f"data clock: {clock.describe()}; agents and services of this run take {CLOCK_ENV}="
                f"{clock.to_env()}"
            )
        await task
        if control is not None:
            await control.stop()

    try:
        asyncio.run(main())
    except OSError as exc:
        typer.echo(f"error: cannot serve a Modbus port: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("simulator stopped.")


@app.command("export")
def export(
    community: Annotated[Path, typer.Option(help="Community YAML file.")],
    out: Annotated[Path, typer.Option(help="Folder for the CSV files.")],
    year: Annotated[int | None, typer.Option(help="Calendar year (UTC) to export.")] = None,
    from_: Annotated[
        str | None, typer.Option("--from", help="Start instead of --year, ISO date/time (UTC).")
    ] = None,
    to: Annotated[str | None, typer.Option(help="End instead of --year, ISO date/time (UTC).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of weather, loads and sessions.")] = 0,
) -> None:
    """Write the scenario as quarter-hour CSV, one file per connection and role (load, pv, ev)."""
    from energyhub.domain.community import CommunityError, load_community
    from energyhub.synthetic.export import export_quarter_hours

    if year is not None:
        start, end = datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)
    elif from_ and to:
        start, end = _parse_start(from_), _parse_start(to)
    else:
        raise typer.BadParameter("give --year, or --from and --to")
    try:
        parsed = load_community(community)
    except CommunityError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    with typer.progressbar(length=sum(1 for _ in parsed.connections()), label="exporting") as bar:
        summary = export_quarter_hours(
            parsed, start=start, end=end, seed=seed, out_dir=out, progress=lambda done, _total: bar.update(1)
        )
    typer.echo(
        f"{len(summary.files)} files, {summary.isps} quarter hours in {out}: load {summary.load_kwh / 1e6:.2f} GWh, "
        f"PV {summary.pv_kwh / 1e6:.2f} GWh, EV {summary.ev_kwh / 1e6:.3f} GWh in {summary.sessions} sessions"
    )


def _charger_access(path: Path | None) -> dict[str, ChargerAccess]:
    """``--ocpp-chargers``: each simulated charge point's password and CA; an unreadable file stops the start."""
    from energyhub.simulators.community import ChargerAccess

    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text())
        return {
            cp: ChargerAccess(str(a["password"]), Path(a["ca_file"]) if a.get("ca_file") else None)
            for cp, a in raw.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        typer.echo(f"error: {path}: not a charger access file: {exc}", err=True)
        raise typer.Exit(2) from None


def _say_what_is_served(simulator: CommunitySimulator, access: dict[str, ChargerAccess]) -> None:
    ports = sorted({(e.host, e.port) for e in simulator.endpoints()})
    typer.echo(
        f"simulating {len(simulator.endpoints())} devices of {len(simulator.models)} connections on "
        f"{len(ports)} Modbus TCP ports ({ports[0][0]}:{ports[0][1]}..{ports[-1][1]}); Ctrl-C stops"
    )
    if simulator.stations or simulator.mbus_meters:
        meters = sum(len(m) for m in simulator.mbus_meters.values())
        online = sum(p in access for p in simulator.stations)
        typer.echo(
            f"and {len(simulator.stations)} OCPP charge points ({online} connecting to their gateway), "
            f"{meters} gas and water meters behind {len(simulator.mbus_meters)} M-Bus converters"
        )
