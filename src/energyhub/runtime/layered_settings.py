"""Settings of a service from flags, then ``EHUB_<SERVICE>_*`` environment variables, then a YAML file, then
defaults: one loader for every service, so they all behave and report errors alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

__all__ = ["ConnectedSettings", "LayeredSettings", "SettingsError", "load_layered"]


class SettingsError(ValueError):
    """Settings that cannot be used; the message names the source and the field."""


class LayeredSettings(BaseSettings):
    """Base class: flags (init arguments) over the environment over the YAML file named at load time."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if settings_cls.model_config.get("yaml_file"):
            sources += (YamlConfigSettingsSource(settings_cls),)
        return sources


class ConnectedSettings(LayeredSettings):
    """A central service's way to the broker and the database (the ingest, control and the API share these)."""

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(18830, ge=1, le=65535)
    mqtt_credentials_file: Path | None = Field(
        None, description="JSON with username and password, as `energyhub broker` writes them."
    )
    influx_url: str = "http://127.0.0.1:18086"
    influx_db: str = "energyhub"
    influx_token: str | None = Field(None, description="InfluxDB 2.x/3.x token (sent as 'Token ...').")

    def mqtt_login(self) -> tuple[str | None, str | None]:
        """Username and password for the broker, from ``mqtt_credentials_file`` (none: anonymous)."""
        if self.mqtt_credentials_file is None:
            return None, None
        creds = json.loads(self.mqtt_credentials_file.read_text())
        return creds["username"], creds["password"]


S = TypeVar("S", bound=LayeredSettings)


def load_layered(cls: type[S], file: Path | None = None, **flags: Any) -> S:
    """Settings of ``cls`` from ``flags`` (those not None), the environment, then ``file`` (YAML)."""
    given = {k: v for k, v in flags.items() if v is not None}
    chosen: type[S] = cls
    if file is not None:
        if not file.is_file():
            raise SettingsError(f"{file}: no such settings file")

        class _FromFile(cls):  # type: ignore[valid-type,misc]
            model_config = SettingsConfigDict(**{**cls.model_config, "yaml_file": file})

        chosen = _FromFile
    try:
        return chosen(**given)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        where = f"{file}" if file else f"{cls.__name__}"
        lines = [
            f"  {'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        ]
        raise SettingsError(f"{where} (flags, {prefix}* or file):\n" + "\n".join(lines)) from None
