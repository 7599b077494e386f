"""Settings of the central services, from flags, ``EHUB_*`` environment variables, or defaults.

Every field is described once here; ``energyhub services --help`` and the docs are built from these descriptions.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from energyhub.wire.topics import DEFAULT_ROOT, check_id

__all__ = ["ServiceSettings"]


class ServiceSettings(BaseSettings):
    """Where the broker and the database run, and what they are called."""

    model_config = SettingsConfigDict(env_prefix="EHUB_", extra="forbid")

    state_dir: Path = Field(
        Path("var"), description="Folder for generated configs, data, logs and credentials."
    )
    host: str = Field("127.0.0.1", description="Address the broker and the database listen on.")
    mqtt_port: int = Field(18830, ge=1, le=65535, description="Mosquitto's plain MQTT listener.")
    mqtt_tls_port: int | None = Field(
        18831, ge=1, le=65535, description="Mosquitto's TLS listener (None: off)."
    )
    influx_port: int = Field(18086, ge=1, le=65535, description="influxd's HTTP API (v1 /write and /query).")
    influx_rpc_port: int = Field(
        18088, ge=1, le=65535, description="influxd's backup/RPC port (loopback only)."
    )
    api_port: int = Field(18090, ge=1, le=65535, description="The demo's HTTP API and live page.")
    ingest_metrics_port: int = Field(
        18089, ge=1, le=65535, description="The demo's ingest serves Prometheus /metrics here."
    )
    influx_db: str = Field("energyhub", description="InfluxDB database that measurements are written to.")
    raw_retention_days: float = Field(
        30.0, gt=0, description="Raw points are kept this many days of data time (docs/data.md)."
    )
    site: str = Field(
        "de-koumen", description="Site id (the community id): the level after the root in every MQTT topic."
    )
    topic_root: str = Field(DEFAULT_ROOT, description="Versioned root of every MQTT topic.")
    dev_mode: bool = Field(
        False,
        description="Allow anonymous MQTT clients full access to the site's topics. Never in production.",
    )

    @field_validator("site")
    @classmethod
    def _site_is_id(cls, value: str) -> str:
        return check_id(value, what="site")

    @property
    def influx_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.influx_port}"
