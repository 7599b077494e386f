"""What every long-running `energyhub` command does alike: log in words to stderr, and run until Ctrl-C or
SIGTERM, then stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["build_or_exit", "configure_logging", "exit_if_port_taken", "run_until_stopped"]

T = TypeVar("T")


def configure_logging(verbose: bool, *, quiet: tuple[str, ...] = ()) -> None:
    """INFO (DEBUG with ``verbose``) with timestamps; ``quiet`` loggers only from WARNING (per-request chatter)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


def run_until_stopped(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``run(stop)`` in a new event loop; SIGINT and SIGTERM set ``stop``."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run(stop)

    asyncio.run(main())


def build_or_exit(build: Callable[[], T]) -> T:
    """Run ``build`` (load settings, read the community file, make the service); on bad settings or a bad
    community file print what is wrong and exit 2, without a traceback."""
    import typer

    from energyhub.domain.community import CommunityError
    from energyhub.runtime.layered_settings import SettingsError

    try:
        return build()
    except (SettingsError, CommunityError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def exit_if_port_taken(host: str, port: int, what: str) -> None:
    """Exit 1 with one line naming the port and its holder if it is taken: a server library would otherwise fail
    with a traceback, or only once the service has connected."""
    import typer

    from energyhub.runtime.ports import check_free
    from energyhub.runtime.supervisor import ServiceError

    try:
        check_free(host, port, what)
    except ServiceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
