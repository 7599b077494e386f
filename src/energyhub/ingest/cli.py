"""``energyhub ingest``: run one ingest worker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from energyhub.runtime.connection import connection_flags

__all__ = ["ingest"]


@connection_flags
def ingest(
    config: Annotated[
        Path | None, typer.Option(help="Settings YAML (keys as in `src/energyhub/ingest/settings.py`).")
    ] = None,
    worker: Annotated[str | None, typer.Option(help="Worker name: client id ehub-ingest-<worker>.")] = None,
    site: Annotated[str | None, typer.Option()] = None,
    community: Annotated[Path | None, typer.Option(help="Adds connection and role tags.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus /metrics here.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    *,
    connection: dict[str, Any],
) -> None:
    """Store every measurement and gateway state from MQTT in InfluxDB until Ctrl-C or SIGTERM.

    Settings come from these flags, then EHUB_INGEST_* environment variables, then --config, then defaults.
    """
    from energyhub.ingest.service import IngestService
    from energyhub.ingest.settings import load_settings
    from energyhub.runtime.service_cli import (
        build_or_exit,
        configure_logging,
        exit_if_port_taken,
        run_until_stopped,
    )

    configure_logging(verbose, quiet=("httpx",))  # httpx: one line per write otherwise
    settings = build_or_exit(
        lambda: load_settings(
            config,
            **connection,
            worker=worker,
            site=site,
            community=community,
            metrics_port=metrics_port,
        )
    )
    if settings.metrics_port is not None:
        exit_if_port_taken(settings.metrics_host, settings.metrics_port, "ingest metrics")
    service = build_or_exit(lambda: IngestService(settings))

    run_until_stopped(service.run)
