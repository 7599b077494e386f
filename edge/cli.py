"""``energyhub edge``: run the gateway agent."""

from __future__ import annotations

import asyncio
import logging
import signal
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

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # failures are reported per device, on change
    try:
        settings = load_agent_config(config)
        for device in settings.devices:
            if device.profile != "sunspec":  # sunspec: discovered from the device itself
                load_profile(device.profile)  # a bad profile stops start-up with its own message
    except (ConfigError, ProfileError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None

    async def main() -> None:
        agent = Agent(settings)  # Modbus clients belong to the running event loop
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await agent.run(stop)

    asyncio.run(main())
