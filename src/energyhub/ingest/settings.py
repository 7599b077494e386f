"""The ingest's settings: flags over ``EHUB_INGEST_*`` environment variables over a YAML file over defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from energyhub.runtime.connection import ConnectedSettings
from energyhub.runtime.layered_settings import SettingsError, load_layered
from energyhub.wire.readings import MAX_AHEAD_S
from energyhub.wire.topics import DEFAULT_ROOT, check_id

__all__ = ["IngestSettings", "SettingsError", "load_settings"]


class IngestSettings(ConnectedSettings):
    model_config = SettingsConfigDict(env_prefix="EHUB_INGEST_", extra="forbid")

    site: str = Field("de-koumen", description="Site id: the level after the topic root.")
    sites: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="On a core broker that estate brokers bridge to: every site to read (YAML list, or "
        "EHUB_INGEST_SITES=a,b), all in the one share group. Empty: only `site`.",
        examples=[["estate-a", "estate-b"]],
    )
    topic_root: str = Field(DEFAULT_ROOT, description="Versioned root of every MQTT topic.")
    worker: str = Field("1", description="This worker's name; its MQTT client id is ehub-ingest-<worker>.")
    share_group: str | None = Field(
        "ingest",
        description="MQTT 5 shared-subscription group: workers in one group split the messages. None: no sharing.",
    )
    track_gaps: bool = Field(
        True,
        description="Count sequence gaps from what this worker sees (exact only when it is the only one).",
    )
    session_expiry_s: int = Field(
        3600, ge=0, description="The broker keeps this worker's queue this long while it is away."
    )
    max_pending: int = Field(
        15_000,
        ge=10,
        le=65535,
        description="Messages held unacknowledged at most (MQTT Receive Maximum): beyond it the broker keeps them. "
        "Three batches: one written, one waiting, one filling.",
    )
    influx_rp: str | None = Field(None, description="Retention policy (InfluxDB 1.x; DBRP mapping in 2.x).")
    influx_gzip_min_bytes: int | None = Field(
        None,
        ge=0,
        description="Gzip write bodies from this size (None: never). Set it over a WAN only: on a LAN or loopback "
        "gzip costs both sides more CPU than it saves (bench/README.md, ingest).",
    )
    batch_max_points: int = Field(5000, ge=1, le=100_000)
    batch_max_delay_s: float = Field(
        0.2, gt=0, le=10, description="A batch is written at the latest after this."
    )
    retry_max_s: float = Field(30.0, gt=0, description="Longest wait between write retries.")
    community: Path | None = Field(
        None, description="Community file: adds connection and role tags to device points."
    )
    known_devices_only: bool = Field(
        True, description="With a community file: a device it does not name goes to the dead letters."
    )
    max_ahead_s: float = Field(
        MAX_AHEAD_S,
        gt=0,
        description="A measurement stamped further ahead of this ingest's clock (real seconds) is a dead letter.",
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics port (None: off)."
    )
    metrics_interval_s: float = Field(10.0, gt=0, description="How often the ingest writes its own figures.")

    @field_validator("site", "worker")
    @classmethod
    def _ids(cls, value: str) -> str:
        return check_id(value)

    @field_validator("sites", mode="before")
    @classmethod
    def _site_list(cls, value: object) -> object:
        if isinstance(value, str):  # from the environment: "a,b"
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("sites")
    @classmethod
    def _site_ids(cls, value: list[str]) -> list[str]:
        for site in value:
            check_id(site, what="site in sites")
        if len(set(value)) != len(value):
            raise ValueError(f"sites {value} names a site more than once")
        return value

    @model_validator(mode="after")
    def _one_community(self) -> IngestSettings:
        if self.community is not None and len(self.all_sites) > 1:
            raise ValueError(
                f"community {self.community} describes one site, but sites names {len(self.all_sites)}: "
                "run the ingest without a community file for several sites"
            )
        return self

    @property
    def all_sites(self) -> list[str]:
        """The sites this ingest reads: ``sites``, or ``site`` alone."""
        return list(self.sites) or [self.site]


def load_settings(file: Path | None = None, **flags: Any) -> IngestSettings:
    """Settings from ``flags`` (those not None), the environment, then ``file`` (YAML)."""
    return load_layered(IngestSettings, file, **flags)
