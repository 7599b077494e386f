"""OCPP smart-charging profiles and the composite limit a charge point computes from them (pure functions).

One typed ``Profile`` for both versions (1.6's ``csChargingProfiles`` and 2.0.1's ``chargingProfile``, as the
``ocpp`` library hands them to a handler: snake_case dicts), validated once here. The composite limit of a
connector at an instant follows OCPP (1.6 §3.13.2, 2.0.1 K01/K08):

- only profiles valid at that instant count (``valid_from <= now < valid_to``) and only while their schedule runs
  (a period covers the instant, within ``duration``); an expired profile falls away by the charger's own clock,
  which is the failsafe when the CSMS goes quiet;
- per purpose the highest stack level wins (a connector's own profile beats connector 0's at the same level);
- TxProfile, if one applies, replaces TxDefaultProfile; that limit is then capped by the station maximum
  (ChargePointMaxProfile in 1.6, ChargingStationMaxProfile in 2.0.1) and by the hardware rating;
- amperes become watts at 230 V x phases (the period's ``number_phases`` if given, else the connector's).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

__all__ = [
    "PHASE_VOLTAGE",
    "Period",
    "Profile",
    "ProfileError",
    "Purpose",
    "clear_profiles",
    "composite_limit_w",
    "composite_schedule",
    "install_profile",
    "parse_profile",
    "parse_time",
    "profile_limit_w",
    "to_unit",
]

PHASE_VOLTAGE = 230.0
_WEEK_S = 7 * 86_400.0
_DAY_S = 86_400.0


class ProfileError(ValueError):
    """A charging profile that cannot be used: the message names the field and what is wrong with it."""


class Purpose(StrEnum):
    STATION_MAX = "station_max"  # 1.6 ChargePointMaxProfile, 2.0.1 ChargingStationMaxProfile
    TX_DEFAULT = "tx_default"
    TX = "tx"


_PURPOSES = {
    "ChargePointMaxProfile": Purpose.STATION_MAX,
    "ChargingStationMaxProfile": Purpose.STATION_MAX,
    "TxDefaultProfile": Purpose.TX_DEFAULT,
    "TxProfile": Purpose.TX,
}


@dataclass(frozen=True, kw_only=True)
class Period:
    start_s: float  # from the schedule's start
    limit: float  # in the profile's unit
    phases: int | None = None


@dataclass(frozen=True, kw_only=True)
class Profile:
    id: int
    connector_id: int  # 0: the whole station
    purpose: Purpose
    stack_level: int
    kind: str  # Absolute, Relative or Recurring
    unit: str  # "A" or "W"
    periods: tuple[Period, ...]
    valid_from: float | None = None  # epoch s
    valid_to: float | None = None
    start_s: float | None = (
        None  # the schedule's start (epoch s); None: relative to the transaction / receipt
    )
    duration_s: float | None = None
    recurrency: str | None = None  # Daily or Weekly
    transaction_id: str | None = None

    def valid_at(self, now: float) -> bool:
        return (self.valid_from is None or self.valid_from <= now) and (
            self.valid_to is None or now < self.valid_to
        )


def parse_time(text: object, where: str) -> float:
    """An OCPP date-time (RFC 3339, ``Z`` or an offset) as epoch seconds."""
    if not isinstance(text, str):
        raise ProfileError(f"{where}: expected a date-time string, got {text!r}")
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ProfileError(f"{where}: {text!r} is not an RFC 3339 date-time") from exc
    if parsed.tzinfo is None:
        raise ProfileError(f"{where}: {text!r} has no time zone (OCPP times are UTC)")
    return parsed.timestamp()


def _opt_time(data: Mapping[str, Any], key: str, where: str) -> float | None:
    value = data.get(key)
    return None if value is None else parse_time(value, f"{where}.{key}")


def _number(value: object) -> object:
    return float(value) if isinstance(value, Decimal) else value


def _periods(raw: object, where: str) -> tuple[Period, ...]:
    if not isinstance(raw, list) or not raw:
        raise ProfileError(f"{where}.charging_schedule_period: expected a non-empty list")
    periods = []
    for i, item in enumerate(raw):
        here = f"{where}.charging_schedule_period[{i}]"
        if not isinstance(item, Mapping):
            raise ProfileError(f"{here}: expected an object")
        # The library reads OCPP 1.6 numbers as Decimal (for its schema's multipleOf): a number all the same.
        start, limit = _number(item.get("start_period")), _number(item.get("limit"))
        if not isinstance(start, int | float) or start < 0:
            raise ProfileError(f"{here}.start_period: expected seconds >= 0, got {start!r}")
        if not isinstance(limit, int | float) or not math.isfinite(limit) or limit < 0:
            raise ProfileError(f"{here}.limit: expected a number >= 0, got {limit!r}")
        phases = item.get("number_phases")
        periods.append(Period(start_s=float(start), limit=float(limit), phases=phases))
    if periods[0].start_s != 0 or any(b.start_s <= a.start_s for a, b in itertools.pairwise(periods)):
        raise ProfileError(f"{where}.charging_schedule_period: must start at 0 and rise strictly")
    return tuple(periods)


def parse_profile(connector_id: int, raw: Mapping[str, Any]) -> Profile:
    """A 1.6 ``cs_charging_profiles`` or a 2.0.1 ``charging_profile`` (snake_case, as the ``ocpp`` library hands
    it over) for ``connector_id`` (1.6) / ``evse_id`` (2.0.1). Raises ``ProfileError`` naming the bad field."""
    where = "charging_profile"
    purpose_name = raw.get("charging_profile_purpose")
    if purpose_name not in _PURPOSES:
        raise ProfileError(f"{where}.charging_profile_purpose: unknown purpose {purpose_name!r}")
    purpose = _PURPOSES[str(purpose_name)]
    if purpose is Purpose.STATION_MAX and connector_id != 0:
        raise ProfileError(
            f"{where}: a station maximum profile belongs on connector/EVSE 0, not {connector_id}"
        )
    if purpose is Purpose.TX and connector_id == 0:
        raise ProfileError(f"{where}: a TxProfile needs a connector/EVSE, not 0")
    schedule = raw.get("charging_schedule")
    if isinstance(schedule, list):  # 2.0.1: a list of schedules; this simulator uses the first
        schedule = schedule[0] if schedule else None
    if not isinstance(schedule, Mapping):
        raise ProfileError(f"{where}.charging_schedule: expected a schedule")
    unit = schedule.get("charging_rate_unit")
    if unit not in ("A", "W"):
        raise ProfileError(f"{where}.charging_schedule.charging_rate_unit: expected 'A' or 'W', got {unit!r}")
    profile_id = raw.get("charging_profile_id", raw.get("id"))
    if not isinstance(profile_id, int):
        raise ProfileError(f"{where}: missing its id")
    transaction = raw.get("transaction_id")
    duration = schedule.get("duration")
    return Profile(
        id=profile_id,
        connector_id=connector_id,
        purpose=purpose,
        stack_level=int(raw.get("stack_level", 0)),
        kind=str(raw.get("charging_profile_kind", "Absolute")),
        unit=str(unit),
        periods=_periods(schedule.get("charging_schedule_period"), f"{where}.charging_schedule"),
        valid_from=_opt_time(raw, "valid_from", where),
        valid_to=_opt_time(raw, "valid_to", where),
        start_s=_opt_time(schedule, "start_schedule", f"{where}.charging_schedule"),
        duration_s=None if duration is None else float(duration),
        recurrency=raw.get("recurrency_kind"),
        transaction_id=None if transaction is None else str(transaction),
    )


def install_profile(profiles: Sequence[Profile], new: Profile) -> list[Profile]:
    """The installed set after ``new``: it replaces one with the same id, or the same connector, purpose and stack
    level (OCPP 1.6 §5.16.3, 2.0.1 K01.FR.05/06)."""
    kept = [
        p
        for p in profiles
        if p.id != new.id
        and (p.connector_id, p.purpose, p.stack_level) != (new.connector_id, new.purpose, new.stack_level)
    ]
    return [*kept, new]


def clear_profiles(
    profiles: Sequence[Profile],
    *,
    profile_id: int | None = None,
    connector_id: int | None = None,
    purpose: str | None = None,
    stack_level: int | None = None,
) -> tuple[list[Profile], int]:
    """ClearChargingProfile: by id, or by every criterion given (none given: all). Returns (kept, removed)."""
    wanted = None if purpose is None else _PURPOSES.get(purpose, purpose)

    def matches(p: Profile) -> bool:
        if profile_id is not None:
            return p.id == profile_id
        return (
            (connector_id is None or p.connector_id == connector_id)
            and (wanted is None or p.purpose == wanted)
            and (stack_level is None or p.stack_level == stack_level)
        )

    kept = [p for p in profiles if not matches(p)]
    return kept, len(profiles) - len(kept)


def _schedule_offset(p: Profile, now: float, tx_start: float | None) -> float | None:
    """Seconds into the schedule at ``now``, or None when it has not started or is over."""
    if p.kind == "Relative":
        if tx_start is None:
            return None
        start = tx_start
    else:
        start = (
            p.start_s if p.start_s is not None else (p.valid_from if p.valid_from is not None else -math.inf)
        )
    if start == -math.inf:  # no anchor (the station anchors Absolute ones at receipt): the first period holds
        return 0.0
    offset = now - start
    if p.kind == "Recurring" and p.recurrency in ("Daily", "Weekly"):
        offset %= _DAY_S if p.recurrency == "Daily" else _WEEK_S
    if offset < 0 or (p.duration_s is not None and offset >= p.duration_s):
        return None
    return offset


def to_unit(value: float, *, unit: str, phases: int) -> float:
    """W from a limit in ``unit`` ("A" per phase at 230 V or "W")."""
    return value * PHASE_VOLTAGE * phases if unit == "A" else value


def profile_limit_w(p: Profile, now: float, *, phases: int, tx_start: float | None = None) -> float | None:
    """The profile's limit in W at ``now``, or None when it does not apply then (invalid, not started, over)."""
    if not p.valid_at(now):
        return None
    offset = _schedule_offset(p, now, tx_start)
    if offset is None:
        return None
    current = p.periods[0]
    for period in p.periods:
        if period.start_s <= offset:
            current = period
    return to_unit(current.limit, unit=p.unit, phases=current.phases or phases)


def _winner(
    profiles: Iterable[Profile],
    purpose: Purpose,
    connector_id: int,
    now: float,
    phases: int,
    tx_start: float | None,
) -> float | None:
    best: tuple[int, int, float] | None = None
    for p in profiles:
        if p.purpose is not purpose or p.connector_id not in (0, connector_id):
            continue
        limit = profile_limit_w(p, now, phases=phases, tx_start=tx_start)
        if limit is None:
            continue
        rank = (p.stack_level, 1 if p.connector_id == connector_id else 0, limit)
        if best is None or rank[:2] > best[:2]:
            best = rank
    return None if best is None else best[2]


def composite_limit_w(
    profiles: Iterable[Profile],
    connector_id: int,
    now: float,
    *,
    max_power_w: float,
    phases: int = 3,
    tx_start: float | None = None,
    in_transaction: bool = True,
) -> float:
    """The connector's composite limit in W at ``now`` (connector 0: the station maximum alone)."""
    profiles = list(profiles)
    station = _winner(profiles, Purpose.STATION_MAX, 0, now, phases, tx_start)
    limit = max_power_w if station is None else min(max_power_w, station)
    if connector_id == 0:
        return limit
    tx = _winner(profiles, Purpose.TX, connector_id, now, phases, tx_start) if in_transaction else None
    if tx is None:
        tx = _winner(profiles, Purpose.TX_DEFAULT, connector_id, now, phases, tx_start)
    return limit if tx is None else min(limit, tx)


def _breakpoints(
    profiles: Iterable[Profile], start: float, end: float, tx_start: float | None
) -> list[float]:
    points = {start}
    for p in profiles:
        for t in (p.valid_from, p.valid_to):
            if t is not None:
                points.add(t)
        anchor = tx_start if p.kind == "Relative" else (p.start_s if p.start_s is not None else p.valid_from)
        if anchor is None:
            continue
        repeat = _DAY_S if p.recurrency == "Daily" else _WEEK_S if p.recurrency == "Weekly" else None
        bases = [anchor]
        if p.kind == "Recurring" and repeat is not None:
            first = anchor + math.floor((start - anchor) / repeat) * repeat
            bases = [first + k * repeat for k in range(int((end - first) / repeat) + 2)]
        for base in bases:
            points.update(base + period.start_s for period in p.periods)
            if p.duration_s is not None:
                points.add(base + p.duration_s)
    return sorted(t for t in points if start <= t < end)


def composite_schedule(
    profiles: Sequence[Profile],
    connector_id: int,
    start: float,
    duration_s: float,
    *,
    max_power_w: float,
    phases: int = 3,
    tx_start: float | None = None,
    in_transaction: bool = True,
) -> list[tuple[float, float]]:
    """GetCompositeSchedule: ``(start_period_s, limit_w)`` from ``start`` for ``duration_s``, one entry per change,
    from the same computation as ``composite_limit_w``."""
    out: list[tuple[float, float]] = []
    for t in _breakpoints(profiles, start, start + duration_s, tx_start):
        limit = composite_limit_w(
            profiles,
            connector_id,
            t,
            max_power_w=max_power_w,
            phases=phases,
            tx_start=tx_start,
            in_transaction=in_transaction,
        )
        if not out or out[-1][1] != limit:
            out.append((t - start, limit))
    return out
