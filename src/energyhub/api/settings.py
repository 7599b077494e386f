"""The API's settings: the shared broker and database connection (``ConnectedSettings``) and its own."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from energyhub.runtime.connection import ConnectedSettings
from energyhub.runtime.layered_settings import load_layered
from energyhub.wire.readings import MAX_AHEAD_S
from energyhub.wire.topics import DEFAULT_ROOT

__all__ = ["ApiSettings", "load_api_settings"]


class ApiSettings(ConnectedSettings):
    model_config = SettingsConfigDict(env_prefix="EHUB_API_", extra="forbid")

    community: Path = Path("examples/de-koumen.yaml")
    site: str | None = None
    topic_root: str = DEFAULT_ROOT
    host: str = "127.0.0.1"
    port: int = Field(18090, ge=1, le=65535)
    token: str | None = Field(None, description="Bearer token for the write endpoints; none: writes refused.")
    state_dir: Path = Field(Path("var/api"), description="Where uploaded day-ahead profiles are kept.")
    push_interval_s: float = Field(0.5, gt=0, le=10, description="Live page: at most one update this often.")
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=16 * 1024,
        le=64 * 1024 * 1024,
        description="The largest request body taken, in bytes; a larger one gets 413 before it is read. The "
        "largest the API takes is a day-ahead upload: 2 x 100 values, a few kB.",
    )
    max_ahead_s: float = Field(
        MAX_AHEAD_S,
        gt=0,
        le=3600,
        description="Live view: a measurement dated more than this many real seconds ahead of the data clock is "
        "ignored (and counted); at 60x that is 60 minutes of data.",
    )
    publish_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="An override waits this long for the broker's PUBACK, then answers 503: a broker that "
        "stopped answering must not hold the request.",
    )
    max_tracked_overrides: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Overrides whose acknowledgement the API remembers in memory; older ones are looked up in "
        "InfluxDB.",
    )


def load_api_settings(file: Path | None = None, **flags: object) -> ApiSettings:
    return load_layered(ApiSettings, file, **flags)
