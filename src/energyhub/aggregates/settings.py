"""The aggregator's settings: flags over ``EHUB_AGGREGATE_*`` environment variables over a YAML file over defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from energyhub.runtime.connection import ConnectedSettings
from energyhub.runtime.layered_settings import SettingsError, load_layered
from energyhub.wire.topics import check_id

__all__ = ["AggregateSettings", "SettingsError", "load_settings"]


class AggregateSettings(ConnectedSettings):
    model_config = SettingsConfigDict(env_prefix="EHUB_AGGREGATE_", extra="forbid")

    community: Path = Field(description="Community file: its nodes, their connections and limits.")
    site: str | None = Field(None, description="Site id of the stored points; the community's id by default.")
    interval_s: float = Field(5.0, gt=0, description="Real seconds between two passes.")
    close_after_s: float = Field(
        30.0,
        gt=0,
        description="Real seconds after a quarter hour's end before it is done: what is later is done again "
        "when the ingest marks it late.",
    )
    chunk_s: float = Field(
        3600.0, ge=900, description="Data seconds read at once (whole quarter hours): bounds a query's size."
    )
    margin_s: float = Field(
        300.0, ge=0, description="Counters are read this far beyond a span, for the readings across its ends."
    )

    @field_validator("site")
    @classmethod
    def _site(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value, what="site")


def load_settings(file: Path | None = None, **flags: Any) -> AggregateSettings:
    """Settings from ``flags`` (those not None), the environment, then ``file`` (YAML)."""
    return load_layered(AggregateSettings, file, **flags)
