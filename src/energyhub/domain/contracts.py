"""Contract parts that make up a node's limit, as written in the community file.

A limit combines these parts, per direction (import = offtake, export = feed-in), for each quarter hour:

* **firm** (``import_kw`` / ``export_kw``): always available; for a connection, its contracted transport capacity
  (GTV). ``None`` on a hub, loop or micro group means that node has no contract limit in that direction.
* **time blocks** ("blokstroom"): extra capacity only inside agreed weekly blocks of local time; added to firm.
* **day-ahead** (non-firm): extra capacity the DSO may restrict, announced the day before as one value per quarter
  hour of the local day; added to firm. Days without an announcement give the full contracted non-firm capacity
  (``unannounced: full``) or none (``unannounced: none``).
* **capacity limitation** (CBC): caps that apply in fixed weekly windows (optionally only in some months) or when
  called for an explicit period; they can only lower the limit.

Group agreements (groeps-ATO) are limits of their own, on a virtual node summing several connections.
Times of day are local (the community's timezone), on quarter hours; ``end`` at or before ``start`` runs past
midnight, ``24:00`` is the end of the day.
"""

from __future__ import annotations

import itertools
from datetime import date, datetime
from typing import Annotated, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from energyhub.domain.isp import ensure_utc, isps_in_local_day

__all__ = [
    "WEEKDAYS",
    "CapacityCall",
    "CapacityLimitation",
    "CapacityWindow",
    "DayAhead",
    "DayAheadProfile",
    "Limits",
    "TimeBlock",
    "week_minutes",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAY_MIN = 24 * 60
_WEEK_MIN = 7 * _DAY_MIN


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, so a misspelt field never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _clock_minutes(value: object) -> int:
    # YAML 1.1 reads an unquoted 22:00 as the base-60 integer 1320, which is the minute of the day: accept it.
    if isinstance(value, bool):
        raise PydanticCustomError("clock_time", "must be a time of day like '22:00'")
    if isinstance(value, int):
        minutes = value
    elif isinstance(value, str):
        hours, sep, mins = value.strip().partition(":")
        if not sep or not hours.isdigit() or not mins.isdigit() or len(mins) != 2:
            raise PydanticCustomError(
                "clock_time", "must be a time of day like '22:00', got {value!r}", {"value": value}
            )
        minutes = int(hours) * 60 + int(mins)
    else:
        raise PydanticCustomError("clock_time", "must be a time of day like '22:00'")
    if not 0 <= minutes <= _DAY_MIN:
        raise PydanticCustomError("clock_time", "must lie between 00:00 and 24:00")
    if minutes % 15:
        raise PydanticCustomError(
            "clock_time",
            "{hhmm} is not on a quarter hour: contracts count per quarter hour (use :00, :15, :30, :45)",
            {"hhmm": f"{minutes // 60:02d}:{minutes % 60:02d}"},
        )
    return minutes


ClockMinutes = Annotated[
    int,
    BeforeValidator(_clock_minutes, json_schema_input_type=str),
    Field(examples=["22:00"], description="Local time of day HH:MM on a quarter hour; 24:00 ends the day."),
]
"""Minutes after local midnight, written ``HH:MM`` in the file."""

Kw = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def week_minutes(local: datetime) -> int:
    """Minutes since Monday 00:00 of a local (wall-clock) datetime."""
    return local.weekday() * _DAY_MIN + local.hour * 60 + local.minute


class _WeeklyWindow(Strict):
    """Days of the week and a local time span, possibly running past midnight."""

    days: list[Weekday] = Field(min_length=1)
    start: ClockMinutes
    end: ClockMinutes

    @field_validator("days")
    @classmethod
    def _unique_days(cls, days: list[Weekday]) -> list[Weekday]:
        if len(set(days)) != len(days):
            raise PydanticCustomError("duplicate_day", "names a day twice")
        return days

    def spans(self) -> list[tuple[int, int]]:
        """Half-open minute spans within the week [0, 10080), split where they wrap past Sunday midnight.

        ``end`` equal to ``start`` (or 00:00-24:00) is the whole day."""
        length = (self.end - self.start) % _DAY_MIN or _DAY_MIN
        out: list[tuple[int, int]] = []
        for day in self.days:
            begin = WEEKDAYS.index(day) * _DAY_MIN + self.start
            finish = begin + length
            if finish <= _WEEK_MIN:
                out.append((begin, finish))
            else:
                out.extend([(begin, _WEEK_MIN), (0, finish - _WEEK_MIN)])
        return out

    def covers(self, local: datetime) -> bool:
        minute = week_minutes(local)
        return any(begin <= minute < finish for begin, finish in self.spans())

    def describe(self) -> str:
        return f"{','.join(self.days)} {_hhmm(self.start)}-{_hhmm(self.end)}"


class TimeBlock(_WeeklyWindow):
    """Blokstroom: extra transport capacity inside a weekly block of local time (added to the firm part)."""

    import_kw: Kw = 0.0
    export_kw: Kw = 0.0


class DayAheadProfile(Strict):
    """One announced local day of non-firm capacity: one value per quarter hour (92, 96 or 100 values)."""

    date: date
    import_kw: list[Kw] | None = None
    export_kw: list[Kw] | None = None

    @model_validator(mode="after")
    def _length_fits_the_day(self, info: ValidationInfo) -> Self:
        from zoneinfo import ZoneInfo

        tz = ZoneInfo((info.context or {}).get("timezone", "Europe/Amsterdam"))
        expected = isps_in_local_day(self.date, tz)
        if self.import_kw is None and self.export_kw is None:
            raise PydanticCustomError("profile_empty", "gives neither import_kw nor export_kw values")
        for name in ("import_kw", "export_kw"):
            values = getattr(self, name)
            if values is not None and len(values) != expected:
                why = (
                    ""
                    if expected == 96
                    else (
                        f"; {self.date} is the day daylight saving {'starts' if expected == 92 else 'ends'} "
                        f"in {tz.key}, {expected // 4} hours long"
                    )
                )
                raise PydanticCustomError(
                    "profile_length",
                    "{name} has {count} values, expected {expected} (one per quarter hour of {day}{why})",
                    {
                        "name": name,
                        "count": len(values),
                        "expected": expected,
                        "day": str(self.date),
                        "why": why,
                    },
                )
        return self


class DayAhead(Strict):
    """Non-firm transport right: up to ``import_kw``/``export_kw``, restricted day-ahead per quarter hour."""

    import_kw: Kw = 0.0
    export_kw: Kw = 0.0
    unannounced: Literal["full", "none"] = "full"
    profiles: list[DayAheadProfile] = Field(default_factory=list)

    @model_validator(mode="after")
    def _profiles_within_contract(self) -> Self:
        seen: set[date] = set()
        for i, profile in enumerate(self.profiles):
            if profile.date in seen:
                raise PydanticCustomError(
                    "duplicate_profile",
                    "profiles[{i}]: a second profile for {day}",
                    {"i": i, "day": str(profile.date)},
                )
            seen.add(profile.date)
            for name in ("import_kw", "export_kw"):
                values = getattr(profile, name)
                cap = getattr(self, name)
                if values is not None and max(values, default=0.0) > cap:
                    raise PydanticCustomError(
                        "profile_above_contract",
                        "profiles[{i}].{name} announces {peak} kW, above the contracted non-firm {cap} kW",
                        {"i": i, "name": name, "peak": f"{max(values):g}", "cap": f"{cap:g}"},
                    )
        return self

    def by_date(self) -> dict[date, DayAheadProfile]:
        return {p.date: p for p in self.profiles}


class CapacityWindow(_WeeklyWindow):
    """A fixed CBC window: inside it the limit is at most the given caps (in the given months, or all year)."""

    months: list[Annotated[int, Field(ge=1, le=12)]] | None = None
    import_kw: Kw | None = None
    export_kw: Kw | None = None

    def applies(self, local: datetime) -> bool:
        # A window that runs past midnight belongs to the month it started in; close enough for monthly seasons.
        return (self.months is None or local.month in self.months) and self.covers(local)


class CapacityCall(Strict):
    """A called CBC period (announced day-ahead): caps between ``start`` and ``end`` (UTC, on quarter hours)."""

    start: AwareDatetime
    end: AwareDatetime
    import_kw: Kw | None = None
    export_kw: Kw | None = None

    @model_validator(mode="after")
    def _quarter_hours(self) -> Self:
        for name in ("start", "end"):
            t = ensure_utc(getattr(self, name))
            if t.minute % 15 or t.second or t.microsecond:
                raise PydanticCustomError(
                    "not_isp", "{name} {t} is not on a quarter hour", {"name": name, "t": t.isoformat()}
                )
        if self.end <= self.start:
            raise PydanticCustomError("empty_call", "end must be after start")
        return self

    def applies(self, t_utc: datetime) -> bool:
        return self.start <= t_utc < self.end


class CapacityLimitation(Strict):
    windows: list[CapacityWindow] = Field(default_factory=list)
    calls: list[CapacityCall] = Field(default_factory=list)


class Limits(Strict):
    """The contract parts of one node. See the module docstring for how they combine."""

    import_kw: Kw | None = Field(None, description="Firm offtake limit in kW (a connection's GTV afname).")
    export_kw: Kw | None = Field(None, description="Firm feed-in limit in kW (a connection's GTV invoeding).")
    time_blocks: list[TimeBlock] = Field(default_factory=list)
    day_ahead: DayAhead | None = None
    capacity_limitation: CapacityLimitation | None = None

    @field_validator("time_blocks")
    @classmethod
    def _blocks_do_not_overlap(cls, blocks: list[TimeBlock]) -> list[TimeBlock]:
        spans = [(begin, finish, i) for i, block in enumerate(blocks) for begin, finish in block.spans()]
        spans.sort()
        for (_b1, f1, i1), (b2, _f2, i2) in itertools.pairwise(spans):
            if b2 < f1:
                first, second = sorted((i1, i2))
                if first == second:
                    raise PydanticCustomError(
                        "block_overlap",
                        "[{i}] overlaps itself ({what})",
                        {"i": first, "what": blocks[first].describe()},
                    )
                raise PydanticCustomError(
                    "block_overlap",
                    "[{a}] ({wa}) and [{b}] ({wb}) overlap: a quarter hour can be in one time block only",
                    {
                        "a": first,
                        "wa": blocks[first].describe(),
                        "b": second,
                        "wb": blocks[second].describe(),
                    },
                )
        return blocks

    @model_validator(mode="after")
    def _additive_parts_need_a_firm_base(self) -> Self:
        if (self.time_blocks or self.day_ahead) and (self.import_kw is None or self.export_kw is None):
            raise PydanticCustomError(
                "firm_missing",
                "time_blocks and day_ahead add to the firm part: give import_kw and export_kw too "
                "(0 when the right exists only inside the blocks or the profile)",
            )
        return self
