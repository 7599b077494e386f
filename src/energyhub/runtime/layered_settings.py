"""Settings of a service from flags, then ``EHUB_<SERVICE>_*`` environment variables, then a YAML file, then
defaults: one loader for every service, so they all behave and report errors alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

__all__ = ["LayeredSettings", "SettingsError", "load_layered"]


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
