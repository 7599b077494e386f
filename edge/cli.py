"""``energyhub edge``: run the gateway agent."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["edge"]


def edge(
    config: Annotated[Path, typer.Option(help="Gateway configuration YAML.")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Poll the gateway's devices, buffer on disk and publish to the broker until Ctrl-C or SIGTERM."""
    from edge.agent import Agent
    from edge.config import ConfigError, load_agent_config
    from edge.profile import ProfileError, load_profile
    from hub.service_cli import configure_logging, run_until_stopped

    configure_logging(verbose)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # failures are reported per device, on change
    try:
        settings = load_agent_config(config)
        for device in settings.devices:
            if device.profile != "sunspec":  # sunspec: discovered from the device itself
                load_profile(device.profile)  # a bad profile stops start-up with its own message
    except (ConfigError, ProfileError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None

    async def run(stop: asyncio.Event) -> None:
        agent = Agent(settings)  # Modbus clients belong to the running event loop
        await agent.run(stop)

    run_until_stopped(run)
