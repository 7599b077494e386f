"""Business load profiles: hourly shapes per day type, a season, Dutch public holidays, seeded noise, scaled so a
year sums to the connection's annual use.

Each hour of a shape has one level. A change of level takes half an hour and lies inside the hour with the higher
level (a rise over the first half hour of the higher hour, a fall over its last half hour), so a load never rises
before its hours begin nor stays high after they end: a company whose time-block right opens at 22:00 starts
ramping up at 22:00, not before.

Written here rather than taken from demandlib: demandlib 0.2.2 (the BDEW profiles) fails on pandas 3. The shapes
follow the BDEW/NEDU business profiles qualitatively (working hours, Saturday half day, Sunday and holiday base
load, a winter peak) and are named as the community file names them.
"""

from __future__ import annotations

import zlib
from datetime import UTC, date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

__all__ = ["PROFILES", "WEEKLY_CALENDAR", "dutch_holidays", "load_power_w"]

FloatArray = npt.NDArray[np.float64]
AMSTERDAM = ZoneInfo("Europe/Amsterdam")


def _hours(base: float, spans: list[tuple[int, int, float]]) -> list[float]:
    shape = [base] * 24
    for start, end, level in spans:
        for hour in range(start, end):
            shape[hour] = level
    return shape


# Relative power per local hour for (working day, Saturday, Sunday/holiday).
PROFILES: dict[str, tuple[list[float], list[float], list[float]]] = {
    "business": (
        _hours(0.25, [(6, 7, 0.6), (7, 17, 1.0), (17, 19, 0.55)]),
        _hours(0.25, [(8, 13, 0.5)]),
        _hours(0.22, []),
    ),
    "business_evening": (
        _hours(0.25, [(7, 9, 0.6), (9, 21, 1.0), (21, 23, 0.5)]),
        _hours(0.25, [(9, 18, 0.7)]),
        _hours(0.22, [(11, 17, 0.4)]),
    ),
    "retail": (
        _hours(0.2, [(8, 9, 0.6), (9, 18, 1.0), (18, 21, 0.8)]),
        _hours(0.2, [(8, 9, 0.6), (9, 18, 1.05)]),
        _hours(0.2, [(12, 17, 0.6)]),
    ),
    "logistics_24h": (
        _hours(0.7, [(6, 22, 1.0)]),
        _hours(0.6, [(6, 14, 0.85)]),
        _hours(0.5, []),
    ),
    "night_weekend": (  # runs when its time-block right allows: nights, weekends
        _hours(1.0, [(6, 22, 0.25)]),
        _hours(0.9, []),
        _hours(0.9, []),
    ),
    "ev_plaza": (_hours(0.3, [(18, 24, 1.0), (0, 7, 1.0)]),) * 3,  # lighting and auxiliaries only
    "none": ([0.0] * 24,) * 3,
}

# Profiles whose days follow the week alone: a public holiday on a working day runs as a working day. The
# time-block company runs when its contract allows, and time blocks are weekly (energyhub.domain.limits): a holiday opens no
# block, so running as on a Sunday would take it over its firm contract all day.
WEEKLY_CALENDAR = frozenset({"night_weekend"})


def _easter(year: int) -> date:
    # Anonymous Gregorian algorithm (Meeus/Jones/Butcher).
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month, day = divmod(h + l_ - 7 * m + 114, 31)
    return date(year, month, day + 1)


@cache
def dutch_holidays(year: int) -> frozenset[date]:
    """Public holidays on which businesses run as on a Sunday."""
    easter = _easter(year)
    kings_day = date(year, 4, 27) if date(year, 4, 27).weekday() != 6 else date(year, 4, 26)
    return frozenset(
        {
            date(year, 1, 1),
            easter,
            easter + timedelta(days=1),
            kings_day,
            easter + timedelta(days=39),
            easter + timedelta(days=49),
            easter + timedelta(days=50),
            date(year, 12, 25),
            date(year, 12, 26),
        }
        | ({date(year, 5, 5)} if year % 5 == 0 else set())
    )


def _day_kinds(profile: str, local_days: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Day type (0 working day, 1 Saturday, 2 Sunday or public holiday) of each local day number."""
    kinds = np.empty(len(local_days), dtype=np.int64)
    for i, d in enumerate(local_days):
        dd = date(1970, 1, 1) + timedelta(days=int(d))
        holiday = profile not in WEEKLY_CALENDAR and dd in dutch_holidays(dd.year)
        kinds[i] = 2 if holiday or dd.weekday() == 6 else (1 if dd.weekday() == 5 else 0)
    return kinds


def _shape_values(profile: str, epoch_s: npt.NDArray[np.int64]) -> FloatArray:
    """Relative power at each UTC epoch second, from the local hour and day type.

    Each hour has its level; a change of level takes half an hour and lies inside the hour with the higher level: a
    rise ramps up over the first half hour of the higher hour, a fall ramps down over its last half hour. So a load
    never rises before the hour its level starts (a time block that opens at 22:00) nor stays high after the hour
    it ends, and never exceeds the higher of the two levels.
    """
    try:
        shapes = PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown load profile {profile!r}; known: {', '.join(sorted(PROFILES))}") from None
    table = np.array(shapes, dtype=np.float64)  # (3 day types, 24 hours)
    if len(epoch_s) == 0:
        return np.zeros(0)
    # Local offsets change only at DST: one offset per distinct UTC day (its noon), cheap for a year.
    utc_days, day_index = np.unique(epoch_s // 86_400, return_inverse=True)
    noons = (datetime.fromtimestamp(int(d) * 86_400 + 43_200, UTC).astimezone(AMSTERDAM) for d in utc_days)
    offsets = np.array([int(n.utcoffset().total_seconds()) for n in noons], dtype=np.int64)  # type: ignore[union-attr]
    local = epoch_s + offsets[day_index]
    hour = local // 3600  # local hours since 1970; the neighbours' day types are their own days'
    first_day = int(hour.min() - 1) // 24
    kinds = _day_kinds(profile, np.arange(first_day, int(hour.max() + 1) // 24 + 1, dtype=np.int64))

    def level(h: npt.NDArray[np.int64]) -> FloatArray:
        values: FloatArray = table[kinds[h // 24 - first_day], h % 24]
        return values

    here, before, after = level(hour), level(hour - 1), level(hour + 1)
    frac = (local % 3600) / 3600.0
    rising = np.clip(frac / 0.5, 0.0, 1.0)  # 0 -> 1 over the first half hour
    falling = np.clip((frac - 0.5) / 0.5, 0.0, 1.0)  # 0 -> 1 over the last half hour
    out = here.copy()
    up = before < here
    out[up] = before[up] + (here[up] - before[up]) * rising[up]
    down = after < here
    out[down] = out[down] - (here[down] - after[down]) * falling[down]
    return out


def _season(epoch_s: npt.NDArray[np.int64]) -> FloatArray:
    day_of_year = (epoch_s / 86_400.0) % 365.25
    return 1.0 + 0.1 * np.cos(2 * np.pi * (day_of_year - 15) / 365.25)  # +10 % mid January, -10 % mid July


def _noise(epoch_s: npt.NDArray[np.int64], seed: int, key: str) -> FloatArray:
    """Seeded multiplicative noise, smooth over a quarter hour, the same whatever window is asked for: each UTC day
    draws its 96 quarter-hour values from its own stream (seed, key, day)."""
    slot = epoch_s // 900
    first_day, last_day = int(slot.min()) // 96, (int(slot.max()) + 1) // 96
    key_crc = zlib.crc32(key.encode())
    days = [
        np.random.default_rng([seed, key_crc, d]).normal(0.0, 0.06, 96)
        for d in range(first_day, last_day + 1)
    ]
    values = np.concatenate(days)
    frac = (epoch_s % 900) / 900.0
    idx = slot - first_day * 96
    return 1.0 + np.clip(values[idx] * (1 - frac) + values[idx + 1] * frac, -0.25, 0.25)


@cache
def _annual_mean_shape(profile: str, year: int) -> float:
    start = int(np.datetime64(f"{year}-01-01T00:00:00", "s").astype(np.int64))
    end = int(np.datetime64(f"{year + 1}-01-01T00:00:00", "s").astype(np.int64))
    grid = np.arange(start, end, 900, dtype=np.int64) + 450
    return float(np.mean(_shape_values(profile, grid) * _season(grid)))


def load_power_w(
    epoch_s: npt.NDArray[np.int64], *, profile: str, annual_kwh: float, seed: int, key: str
) -> FloatArray:
    """Load in W at each UTC epoch second, scaled so that a whole year averages ``annual_kwh / 8766 h``."""
    epoch_s = np.asarray(epoch_s, dtype=np.int64)
    if profile == "none" or annual_kwh <= 0 or len(epoch_s) == 0:
        return np.zeros(len(epoch_s))
    year = int(np.datetime64(int(epoch_s[0]), "s").astype("datetime64[Y]").astype(int) + 1970)
    mean_w = annual_kwh * 1000.0 / (365.25 * 24)
    scale = mean_w / _annual_mean_shape(profile, year)
    return scale * _shape_values(profile, epoch_s) * _season(epoch_s) * _noise(epoch_s, seed, key)
