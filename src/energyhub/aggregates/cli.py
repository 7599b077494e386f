"""``energyhub aggregate``: run the aggregator of one site."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from energyhub.runtime.connection import connection_flags

__all__ = ["aggregate"]


@connection_flags
def aggregate(
    community: Annotated[
        Path | None, typer.Option(help="Community file: nodes, connections, limits.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Settings YAML (keys as in `src/energyhub/aggregates/settings.py`).")
    ] = None,
    site: Annotated[str | None, typer.Option(help="Site id (the community's id by default).")] = None,
    raw_retention_days: Annotated[
        float | None, typer.Option(min=0.01, help="Keep raw points this many days (default 30).")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Do every closed quarter hour, then stop.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    *,
    connection: dict[str, Any],
) -> None:
    """Write every device's and node's quarter hours (kept forever) and one-minute means (kept a year) as the
    quarter hours close, and again when late data arrives; set up the retention policies.

    Settings come from these flags, then EHUB_AGGREGATE_* environment variables, then --config, then defaults.
    """
    import asyncio

    from energyhub.aggregates.service import Aggregator
    from energyhub.aggregates.settings import load_settings
    from energyhub.runtime.service_cli import build_or_exit, configure_logging, run_until_stopped

    configure_logging(verbose, quiet=("httpx",))
    settings = build_or_exit(
        lambda: load_settings(
            config, **connection, community=community, site=site, raw_retention_days=raw_retention_days
        )
    )
    service = build_or_exit(lambda: Aggregator(settings))
    if once:

        async def one_pass() -> None:
            try:
                await service.setup()
                done = await service.catch_up()
                typer.echo(f"{done} quarter hour(s) done for site {service.site}")
            finally:
                await service.aclose()

        asyncio.run(one_pass())
        return
    run_until_stopped(service.run)
