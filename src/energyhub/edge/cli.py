"""``energyhub edge``: run the gateway agent."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["edge"]


def edge(
    config: Annotated[
        list[Path],
        typer.Option(
            help="Gateway configuration YAML. Repeat it to run several gateways' agents in one process, as a "
            "hardware-in-the-loop host does for a whole estate (each keeps its own account, buffer and session)."
        ),
    ],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Check the configuration and its profiles, print each serial line's load, and exit (1 when a "
            "line is too busy) without connecting to anything.",
        ),
    ] = False,
) -> None:
    """Poll the gateway's devices, buffer on disk and publish to the broker until Ctrl-C or SIGTERM."""
    from energyhub.domain.clock import ClockError, clock_from_env
    from energyhub.edge import line_budget
    from energyhub.edge.agent import Agent
    from energyhub.edge.config import ConfigError, load_agent_config
    from energyhub.edge.mbus_profile import MbusProfileError, load_mbus_profile
    from energyhub.runtime.service_cli import configure_logging, run_until_stopped
    from energyhub.wire.profile import ProfileError, load_profile

    configure_logging(verbose)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # failures are reported per device, on change
    logging.getLogger("ocpp").setLevel(logging.WARNING)  # the library logs every message at INFO
    try:
        configs = [load_agent_config(path) for path in config]
        for settings in configs:
            for device in settings.devices:
                if device.mbus is not None:
                    load_mbus_profile(device.profile)
        profiles = {
            device.profile: load_profile(device.profile)  # a bad profile stops start-up with its own message
            for settings in configs
            for device in settings.devices
            # sunspec: discovered from the device itself; OCPP chargers and M-Bus meters have profiles of their own
            if device.profile != "sunspec" and device.ocpp is None and device.mbus is None
        }
        clock = clock_from_env()
    except (ConfigError, ProfileError, MbusProfileError, ClockError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    gateways = [c.gateway for c in configs]
    twice = sorted({g for g in gateways if gateways.count(g) > 1})
    if twice:
        typer.echo(f"error: gateway {', '.join(twice)} is configured twice: one agent per gateway", err=True)
        raise typer.Exit(2)
    buffers = [c.buffer_path.resolve() for c in configs]
    shared = sorted({str(b) for b in buffers if buffers.count(b) > 1})
    if shared:
        typer.echo(f"error: two gateways share the buffer {', '.join(shared)}: give each its own", err=True)
        raise typer.Exit(2)

    async def run(stop: asyncio.Event) -> None:
        # Modbus clients belong to the running event loop: agents are built inside it.
        agents = [Agent(settings, clock=clock) for settings in configs]
        async with asyncio.TaskGroup() as group:
            for agent in agents:
                group.create_task(agent.run(stop), name=f"agent-{agent.config.gateway}")

    if check:
        busy = False
        for settings in configs:
            lines = line_budget.line_loads(settings, profiles)
            for line in lines:
                typer.echo(f"{settings.gateway}: {line.describe()}")
            for warning in line_budget.warnings(settings, profiles):
                typer.echo(f"{settings.gateway}: warning: {warning}", err=True)
            busy = busy or any(line.load > line_budget.FULL for line in lines)
        typer.echo(
            f"{len(configs)} gateway configuration(s) checked: {'a line is too busy' if busy else 'ok'}"
        )
        raise typer.Exit(1 if busy else 0)
    run_until_stopped(run)


ocpp_app = typer.Typer(
    help="The plaza gateway's OCPP server: chargers' passwords and the server's certificate.",
    no_args_is_help=True,
)


@ocpp_app.command("add-charger")
def add_charger_command(
    charge_point_id: Annotated[str, typer.Argument(help="The station's identity, as in its URL path.")],
    file: Annotated[
        Path, typer.Option(help="The gateway's charger password file (ocpp: credentials_file).")
    ] = Path("var/ocpp/chargers.json"),
    password: Annotated[
        str | None,
        typer.Option(help="16 to 40 characters; generated when left out.", envvar="ENERGYHUB_OCPP_PASSWORD"),
    ] = None,
) -> None:
    """Add a charger (or set its new password): prints the password to configure on the charger, once."""
    from pydantic import ValidationError

    from energyhub.domain.topology import OcppPoint
    from energyhub.edge.charger_passwords import add_charger

    try:
        OcppPoint(charge_point_id=charge_point_id)
    except ValidationError:
        typer.echo(
            f"error: {charge_point_id!r}: a charge point id is 1 to 48 letters, digits, '.', '_' or '-'",
            err=True,
        )
        raise typer.Exit(2) from None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        secret = add_charger(file, charge_point_id, password)
    except ValueError as exc:
        typer.echo(f"error: {charge_point_id}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(secret)
