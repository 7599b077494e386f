"""The bodies the API takes (a day-ahead profile upload, a manual override) and the quarter hours it answers with."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field, field_validator

from energyhub.wire.roles import PV_LIMIT_PCT

__all__ = [
    "CounterReset",
    "DayAheadUpload",
    "DeviceQuarterHour",
    "DeviceQuarterHours",
    "DeviceQuarterTotals",
    "NodeQuarterHour",
    "NodeQuarterHours",
    "NodeQuarterTotals",
    "Override",
]


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


class NodeQuarterHour(BaseModel):
    """One quarter hour of a node, as the aggregator stored it (``"forever"."node_qh"``); null where it has none
    (no limit in that direction, no counters)."""

    start: str = Field(description="The quarter hour's start, UTC (RFC 3339).")
    import_wh: float | None = None
    export_wh: float | None = None
    net_wh: float | None = Field(None, description="+ taken from the grid, - fed in.")
    mean_kw: float | None = None
    peak_kw: float | None = None
    limit_import_kw: float | None = None
    limit_export_kw: float | None = None
    over_import_wh: float | None = Field(
        None, description="Energy taken beyond the import limit (0 within it)."
    )
    over_export_wh: float | None = Field(
        None, description="Energy fed in beyond the feed-in limit (0 within it)."
    )
    connections: int | None = Field(None, description="Connections under the node.")
    measured: int | None = Field(None, description="Of them, with a reading in this quarter hour.")
    metered: int | None = Field(None, description="Of them, counted from their meters' energy counters.")
    resets: int | None = Field(None, description="Energy counters that fell in this quarter hour.")


class NodeQuarterTotals(BaseModel):
    quarter_hours: int = Field(description="Quarter hours stored in the range.")
    missing: int = Field(description="Closed quarter hours in the range without a stored one.")
    over_limit: int = Field(description="Quarter hours with energy beyond a limit.")
    import_wh: float | None = None
    export_wh: float | None = None
    net_wh: float | None = None
    over_import_wh: float | None = None
    over_export_wh: float | None = None
    peak_kw: float | None = None
    resets: int = 0


class NodeQuarterHours(BaseModel):
    node: str
    level: str
    start: str = Field(description="The range asked for (UTC): quarter hours that start in [start, end).")
    end: str
    quarter_hours: list[NodeQuarterHour]
    totals: NodeQuarterTotals


class DeviceQuarterHour(BaseModel):
    """One quarter hour of a device (``"forever"."device_qh"``); energies only for a device with counters."""

    start: str
    import_wh: float | None = None
    export_wh: float | None = None
    mean_power_w: float | None = None
    peak_power_w: float | None = None
    min_power_w: float | None = None
    samples: int | None = None
    coverage: float | None = Field(
        None, description="The share of the quarter hour its readings covered, 0-1."
    )
    resets: int | None = None


class DeviceQuarterTotals(BaseModel):
    quarter_hours: int
    missing: int
    import_wh: float | None = None
    export_wh: float | None = None
    coverage: float | None = Field(None, description="The mean coverage of the stored quarter hours.")
    resets: int = 0


class DeviceQuarterHours(BaseModel):
    gateway: str
    device: str
    connection: str
    role: str
    start: str
    end: str
    quarter_hours: list[DeviceQuarterHour]
    totals: DeviceQuarterTotals


class CounterReset(BaseModel):
    """An energy counter that fell (``"forever"."counter_reset"``): a meter replaced, reset or rolled over."""

    ts: str
    gateway: str | None = None
    device: str | None = None
    counter: str | None = None
    before: float | None = None
    after: float | None = None
