"""``energyhub api``: the HTTP API and the live page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from energyhub.runtime.connection import connection_flags

__all__ = ["api_command"]


@connection_flags
def api_command(
    config: Annotated[
        Path | None, typer.Option(help="Settings YAML (keys as in `src/energyhub/api/settings.py`).")
    ] = None,
    community: Annotated[Path | None, typer.Option(help="Community YAML file.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to serve on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to serve on.")] = None,
    site: Annotated[str | None, typer.Option(help="Site id (default: the community id).")] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="Where uploads are kept (day-ahead profiles: STATE_DIR/day_ahead).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    *,
    connection: dict[str, Any],
) -> None:
    """Serve the API (OpenAPI at /docs) and the live page (/) until Ctrl-C. Writes need EHUB_API_TOKEN."""
    import uvicorn

    from energyhub.api.app import create_app, load_api_settings
    from energyhub.runtime.service_cli import build_or_exit, configure_logging, exit_if_port_taken

    configure_logging(verbose, quiet=("httpx",))
    settings = build_or_exit(
        lambda: load_api_settings(
            config,
            **connection,
            community=community,
            host=host,
            port=port,
            site=site,
            state_dir=state_dir,
        )
    )
    exit_if_port_taken(settings.host, settings.port, "API")
    app = build_or_exit(lambda: create_app(settings))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info" if verbose else "warning")
