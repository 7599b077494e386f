"""One set of connection settings for every central service: the broker (host, port, TLS CA, credentials) and the
database (URL, database, credentials or token), the command-line flags that set them, and the one reconnect loop.

The ingest, control and the API all take the same ``--mqtt-*`` and ``--influx-*`` flags and the same
``EHUB_<SERVICE>_MQTT_*`` / ``EHUB_<SERVICE>_INFLUX_*`` variables, so each of them can reach the broker's TLS
listener and a database that wants a login. Passwords are read from a credentials file or the environment, never
from a flag (a flag shows in ``ps``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import Field, model_validator

from energyhub.io.mqtt import MqttLink, MqttLinkError, Will
from energyhub.runtime.layered_settings import LayeredSettings

if TYPE_CHECKING:  # the InfluxDB client (httpx) is the central side's: a gateway's agent never loads it
    from energyhub.io.influx import InfluxClient

__all__ = ["ConnectedSettings", "broker_login", "broker_tls", "connection_flags", "keep_connected"]

F = TypeVar("F", bound=Callable[..., Any])


def broker_login(
    credentials_file: Path | None, username: str | None, password: str | None
) -> tuple[str | None, str | None]:
    """A broker login: the credentials file (as `energyhub broker` writes it) when given, else the user and
    password (none: anonymous). The services' settings and a gateway's agent config both name theirs this way."""
    if credentials_file is not None:
        creds = json.loads(credentials_file.read_text())
        return creds["username"], creds["password"]
    return username, password


def broker_tls(ca_file: Path | None) -> ssl.SSLContext | None:
    """TLS to the broker when a CA is given; the context checks the broker's name too."""
    return ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else None


class ConnectedSettings(LayeredSettings):
    """A central service's way to the broker and the database (the ingest, control and the API share these)."""

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(18830, ge=1, le=65535)
    mqtt_ca_file: Path | None = Field(
        None,
        description="CA certificate of the broker's TLS listener: connect with TLS (the port is then 8883's).",
    )
    mqtt_credentials_file: Path | None = Field(
        None, description="JSON with username and password, as `energyhub broker` writes them."
    )
    mqtt_username: str | None = Field(None, description="Broker user, when no credentials file is given.")
    mqtt_password: str | None = Field(None, description="Broker password (environment only, not a flag).")
    influx_url: str = "http://127.0.0.1:18086"
    influx_db: str = "energyhub"
    influx_username: str | None = Field(None, description="InfluxDB 1.x user.")
    influx_password: str | None = Field(None, description="InfluxDB 1.x password (environment only).")
    influx_token: str | None = Field(None, description="InfluxDB 2.x/3.x token (sent as 'Token ...').")
    raw_retention_days: float = Field(
        30.0,
        gt=0,
        description="Raw points are kept this many days of data time (the aggregates longer: docs/data.md).",
    )

    @model_validator(mode="after")
    def _files_exist(self) -> ConnectedSettings:
        for name in ("mqtt_ca_file", "mqtt_credentials_file"):
            path: Path | None = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a file")
        return self

    def mqtt_login(self) -> tuple[str | None, str | None]:
        """The credentials file when given, else ``mqtt_username`` and ``mqtt_password`` (none: anonymous)."""
        return broker_login(self.mqtt_credentials_file, self.mqtt_username, self.mqtt_password)

    def mqtt_tls(self) -> ssl.SSLContext | None:
        """TLS to the broker when a CA is given (the broker's certificate must name ``mqtt_host``)."""
        return broker_tls(self.mqtt_ca_file)

    async def connect_mqtt(self, client_id: str, *, will: Will | None = None, **options: Any) -> MqttLink:
        """A connected ``MqttLink`` with this service's host, port, TLS and login; ``options`` as ``MqttLink.connect``."""
        username, password = self.mqtt_login()
        return await MqttLink.connect(
            self.mqtt_host,
            self.mqtt_port,
            client_id=client_id,
            username=username,
            password=password,
            tls=self.mqtt_tls(),
            will=will,
            **options,
        )

    def influx(self, **options: Any) -> InfluxClient:
        """An ``InfluxClient`` for this service's database and login; ``options`` as ``InfluxClient``."""
        from energyhub.io.influx import InfluxClient

        return InfluxClient(
            url=self.influx_url,
            database=self.influx_db,
            token=self.influx_token,
            username=self.influx_username,
            password=self.influx_password,
            **options,
        )


# -- the flags ---------------------------------------------------------------------------------------------------
_FLAGS: dict[str, tuple[type, str]] = {
    "mqtt_host": (str, "Broker host."),
    "mqtt_port": (int, "Broker port (the TLS listener's with --mqtt-ca-file)."),
    "mqtt_ca_file": (Path, "CA certificate: connect to the broker with TLS."),
    "mqtt_credentials_file": (Path, "Broker login, from `energyhub broker`."),
    "mqtt_username": (str, "Broker user (password in EHUB_<SERVICE>_MQTT_PASSWORD)."),
    "influx_url": (str, "InfluxDB URL."),
    "influx_db": (str, "InfluxDB database (1.x) or DBRP-mapped bucket (2.x)."),
    "influx_username": (str, "InfluxDB 1.x user (password in EHUB_<SERVICE>_INFLUX_PASSWORD)."),
}


def connection_flags(command: F) -> F:
    """Give a Typer command the shared ``--mqtt-*`` and ``--influx-*`` flags. The command takes ``connection``,
    a dict of the flags that were given (None left out), to pass on to its settings loader."""
    signature = inspect.signature(command)
    params = [p for p in signature.parameters.values() if p.name != "connection"]
    for name, (kind, help_text) in _FLAGS.items():
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[kind | None, typer.Option(help=help_text)],
            )
        )

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in _FLAGS if name in kwargs}
        return command(*args, connection={k: v for k, v in given.items() if v is not None}, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


# -- the one reconnect loop ----------------------------------------------------------------------------------------
log = logging.getLogger(__name__)


async def keep_connected(
    connect: Callable[[], Awaitable[MqttLink]],
    use: Callable[[MqttLink], Awaitable[None]],
    *,
    what: str,
    ready: asyncio.Event | None = None,
    on_lost: Callable[[Exception], None] | None = None,
    first_backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
) -> None:
    """Connect, ``use`` the link until it breaks, and connect again, with jittered exponential back-off, until
    ``use`` returns or this is cancelled.

    ``use`` sets ``ready`` once the link serves (subscribed: a message sent before that would be missed); it is
    cleared whenever the link ends, and ``on_lost`` is called with why. An outage is logged once when it begins and
    once when it ends, not at every attempt. A refused login is retried too: an operator can fix the account
    while the service waits. ``use`` may run tasks in a TaskGroup: a group of link errors counts as one."""
    backoff = first_backoff_s
    down_since: float | None = None
    while True:
        link: MqttLink | None = None
        try:
            link = await connect()
            if down_since is not None:
                log.info("%s: broker connection back after %.0f s", what, time.monotonic() - down_since)
                down_since = None
            backoff = first_backoff_s
            await use(link)
            return  # ``use`` finished: the service is stopping
        except* MqttLinkError as group:
            exc = group.exceptions[0]
            if on_lost is not None:
                on_lost(exc)
            if down_since is None:
                down_since = time.monotonic()
                log.warning("%s: broker connection lost or refused (%s); retrying", what, exc)
            else:
                log.debug("%s: still no broker (%s)", what, exc)
        finally:
            if ready is not None:
                ready.clear()
            if link is not None:
                link.abort()
        # No check of ``current_task().cancelling()`` here: Python 3.11's TaskGroup leaves it raised after a
        # child's error (it uncancels too early), so the check would end the loop for good after the first outage.
        await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
        backoff = min(backoff * 2, max_backoff_s)
