"""The bodies the API takes: a day-ahead profile upload and a manual override."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field, field_validator

from energyhub.wire.roles import PV_LIMIT_PCT

__all__ = ["DayAheadUpload", "Override"]


class DayAheadUpload(BaseModel):
    """A DSO's day-ahead profile for one node: one value per quarter hour of the local day (92, 96 or 100)."""

    # Python's JSON parser takes NaN and Infinity: refused here with a 422, not later with a 500.
    model_config = ConfigDict(allow_inf_nan=False)

    date: date
    import_kw: list[float] | None = None
    export_kw: list[float] | None = None

    @field_validator("import_kw", "export_kw")
    @classmethod
    def _non_negative(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and any(v < 0 for v in values):
            raise ValueError("values are kW of transport capacity: none may be negative")
        return values


class Override(BaseModel):
    """A manual setpoint for one device, which expires like control's own."""

    model_config = ConfigDict(allow_inf_nan=False)

    gateway: str
    device: str
    name: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,62}$",
        description=f"A setpoint the device's role takes (src/energyhub/wire/roles.py), e.g. {PV_LIMIT_PCT}.",
    )
    value: float
    ttl_s: float = Field(300, gt=0, le=86_400)
    reason: str = Field("manual override", max_length=200)
