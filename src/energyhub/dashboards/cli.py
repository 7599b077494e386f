"""``energyhub dashboards``: write the Grafana dashboards as JSON, or check that the committed ones are current."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Grafana dashboards as code.", no_args_is_help=True)


@app.command()
def generate(
    out: Annotated[
        Path | None, typer.Option(help="Folder for the JSON (default: src/energyhub/dashboards/json).")
    ] = None,
) -> None:
    """Write every dashboard's JSON."""
    from energyhub.dashboards.build import JSON_DIR, write_all

    for path in write_all(out or JSON_DIR):
        typer.echo(f"wrote {path}")


@app.command()
def check(
    folder: Annotated[
        Path | None, typer.Option(help="Folder of the JSON (default: src/energyhub/dashboards/json).")
    ] = None,
) -> None:
    """Exit 1 when a JSON file is missing or not what the code makes (run `energyhub dashboards generate`)."""
    from energyhub.dashboards.build import JSON_DIR, render_all

    folder = folder or JSON_DIR
    stale = [
        name
        for name, text in render_all().items()
        if not (folder / name).exists() or (folder / name).read_text() != text
    ]
    if stale:
        typer.echo(
            f"out of date in {folder}: {', '.join(stale)}; run `energyhub dashboards generate`", err=True
        )
        raise typer.Exit(1)
    typer.echo(f"{folder}: every dashboard is current")
