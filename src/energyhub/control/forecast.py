"""Load and PV forecasts for the planning policies, better than persistence where that pays, and their error.

- **Load**: for every quarter hour ahead, the mean of the same local time of day on the last ``load_days`` earlier
  days of the same day type (working day, Saturday, Sunday or Dutch public holiday) within the last four weeks;
  where there is no such day, the last days of any type; where there is none at all, the value measured now.
  ``load_high`` is the maximum of the same days: a cautious forecast for keeping reserves under an import limit.
- **PV**: an empirical clear-sky envelope per connection (the highest value of the same local time of day over the
  last ``pv_days`` days, smoothed over neighbouring quarter hours: it knows the roofs' orientation and the
  inverters' clipping without being told) times a clearness index. The index starts at the ratio of the last two
  hours' PV to the envelope, relaxes towards the ratio of the last eight hours (time constant 3 h) and that in turn
  towards the recent days' mean (24 h: a day ahead, today's clearness still weighs e^-1 = 0.37). A cloudy morning
  predicts a cloudy noon only partly; a clear morning after dull days predicts a largely clear noon. Where a
  weather forecast gives the clear-sky index of a quarter hour (``read_clearness``), that index takes the place
  of the recent ratios beyond the first hours. (The time constants were chosen on the simulators' first half of
  2026: longer ones trade a little of the next hour for the next day; the maximum beat the second highest.)
- **Persistence** (``week_ago``, ``day_ago``): load as a week ago (a day ago in the first week), PV as a day ago,
  as ``energyhub.control.policies.Mpc`` has forecast them: the baselines the bench compares with.

Every forecast returns connections x horizon in the history's unit; column 0 is the quarter hour measured now.
Only ``history[:, :t + 1]`` is read: column ``t`` is now, later columns (the simulation passes the whole period)
never change the result. Day types and "the same local time of day" come from the calendar given once
(``isp_starts`` and the community's time zone), so across a change of daylight saving 12:00 maps to 12:00, not to
the quarter hour 96 steps back.

The error measure is ``normalised_mae``: the mean absolute error over the mean actual value (``ErrorSum`` sums it
over many forecasts, as the bench does).
"""

from __future__ import annotations

import csv
import math
import weakref
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

__all__ = [
    "SATURDAY",
    "SUNDAY_OR_HOLIDAY",
    "WORKING_DAY",
    "ErrorSum",
    "Forecaster",
    "day_ago",
    "day_type",
    "dutch_public_holidays",
    "normalised_mae",
    "read_clearness",
    "week_ago",
]

Array = npt.NDArray[np.float64]
Index = npt.NDArray[np.int64]

WORKING_DAY, SATURDAY, SUNDAY_OR_HOLIDAY = 0, 1, 2
ISP = timedelta(minutes=15)
_PER_DAY = 96
_PAD = 40  # calendar positions before the first quarter hour: PV looks back eight hours
_RECENT_DAYS = 28  # load: days of the same type are looked for within four weeks
_NOW_ISPS = 8  # PV: "now" is the last two hours
_DAY_ISPS = 32  # PV: "today" is the last eight hours
_TAU_NOW_H = 3.0  # PV: how fast the last two hours' clearness gives way to the last eight hours'
_TAU_DAY_H = 24.0  # PV: how fast the last eight hours' clearness gives way to the recent days' mean
_KAPPA_MAX = 1.2  # a clearness above the envelope's by more than this is a measurement, not a forecast


def _easter_sunday(year: int) -> date:
    """Gregorian Easter (Gauss's rule with its two exceptions)."""
    k = year // 100
    m = (15 + k - (13 + 8 * k) // 25 - k // 4) % 30
    n = (4 + k - k // 4) % 7
    d = (19 * (year % 19) + m) % 30
    e = (2 * (year % 4) + 4 * (year % 7) + 6 * d + n) % 7
    if d == 29 and e == 6:
        return date(year, 4, 19)
    if d == 28 and e == 6 and (11 * m + 11) % 30 < 19:
        return date(year, 4, 18)
    return date(year, 3, 22) + timedelta(days=d + e)


@cache
def dutch_public_holidays(year: int) -> frozenset[date]:
    """The days Dutch businesses keep as a Sunday: New Year, Easter Sunday and Monday, King's Day (26 April when
    the 27th is a Sunday), Ascension, Whit Sunday and Monday, both Christmas days, and Liberation Day (5 May) in
    the years it is a day off for most (every fifth year)."""
    easter = _easter_sunday(year)
    kings = date(year, 4, 27)
    if kings.weekday() == 6:
        kings = date(year, 4, 26)
    days = {date(year, 1, 1), kings, date(year, 12, 25), date(year, 12, 26)}
    days |= {easter + timedelta(days=n) for n in (0, 1, 39, 49, 50)}
    if year % 5 == 0:
        days.add(date(year, 5, 5))
    return frozenset(days)


def day_type(day: date) -> int:
    """``WORKING_DAY``, ``SATURDAY`` or ``SUNDAY_OR_HOLIDAY`` (a holiday on a Saturday counts as a Sunday)."""
    if day.weekday() == 6 or day in dutch_public_holidays(day.year):
        return SUNDAY_OR_HOLIDAY
    return SATURDAY if day.weekday() == 5 else WORKING_DAY


def normalised_mae(forecast: Array, actual: Array) -> float:
    """Mean absolute error over the mean actual value, pooled over every connection and quarter hour given
    (0 is perfect, 1 as bad as forecasting nothing). NaN when the actual values sum to nothing."""
    total = float(np.abs(actual).sum())
    return float(np.abs(forecast - actual).sum()) / total if total > 0 else math.nan


@dataclass
class ErrorSum:
    """``normalised_mae`` over many forecasts, summed as they come: the error of all of them pooled."""

    absolute_error: float = 0.0
    actual: float = 0.0

    def add(self, forecast: Array, actual: Array) -> None:
        self.absolute_error += float(np.abs(forecast - actual).sum())
        self.actual += float(np.abs(actual).sum())

    @property
    def normalised_mae(self) -> float:
        return self.absolute_error / self.actual if self.actual > 0 else math.nan


def _check(history: Array, t: int, horizon: int) -> None:
    if history.ndim != 2:
        raise ValueError(f"history must be connections x quarter hours, got shape {history.shape}")
    if not 0 <= t < history.shape[1]:
        raise ValueError(f"quarter hour {t} is not a column of the history ({history.shape[1]} columns)")
    if horizon < 1:
        raise ValueError(f"the horizon must be at least one quarter hour, got {horizon}")


def _lagged(history: Array, t: int, horizon: int, lags: list[int]) -> Array:
    """Each quarter hour ahead as the first of ``lags`` that reaches a measured column, else as now."""
    _check(history, t, horizon)
    ahead = np.arange(t, t + horizon)
    source = np.full(horizon, t)
    for lag in reversed(lags):
        source = np.where((ahead - lag >= 0) & (ahead - lag <= t), ahead - lag, source)
    out: Array = history[:, source]
    out[:, 0] = history[:, t]
    return out


def week_ago(history: Array, t: int, horizon: int) -> Array:
    """Persistence: as a week ago, a day ago in the first week, as now before that (UTC steps, as ``Mpc`` has
    forecast load)."""
    return _lagged(history, t, horizon, [7 * _PER_DAY, _PER_DAY])


def day_ago(history: Array, t: int, horizon: int) -> Array:
    """Persistence: as a day ago, as now in the first day (UTC steps, as ``Mpc`` has forecast PV)."""
    return _lagged(history, t, horizon, [_PER_DAY])


def read_clearness(path: Path, isp_starts: list[datetime]) -> Array:
    """A weather forecast's clear-sky index per quarter hour (CSV ``isp_start,clear_sky_index``, UTC ISO 8601,
    the index 0..1.5: 1 a clear sky) on ``isp_starts``; NaN where the file says nothing. Errors name the line."""
    where = {t: i for i, t in enumerate(isp_starts)}
    out = np.full(len(isp_starts), np.nan)
    try:
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            if [h.strip() for h in header] != ["isp_start", "clear_sky_index"]:
                raise ValueError(
                    f"{path}:1: columns must be isp_start,clear_sky_index, found {','.join(header)}"
                )
            for line, row in enumerate(reader, start=2):
                try:
                    t, value = datetime.fromisoformat(row[0].strip()), float(row[1])
                except (IndexError, ValueError) as exc:
                    raise ValueError(f"{path}:{line}: not a time and an index: {row} ({exc})") from None
                if t.tzinfo is None:
                    raise ValueError(f"{path}:{line}: {row[0]} has no time zone (write it in UTC, with Z)")
                if not (math.isfinite(value) and 0 <= value <= 1.5):
                    raise ValueError(f"{path}:{line}: a clear-sky index lies in 0..1.5, got {value}")
                i = where.get(t.astimezone(UTC))
                if i is not None:
                    out[i] = value
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read: {exc}") from None
    return out


class Forecaster:
    """Load and PV forecasts on one calendar of quarter hours (``isp_starts``: consecutive UTC quarter hours, the
    columns of the history). Everything that depends on the calendar alone (local day types, which earlier
    quarter hours are "the same local time" of which earlier days) is worked out here once, so a forecast is a
    few lookups: under a millisecond for 100 connections and a day ahead.

    ``history`` is connections x quarter hours in kW; ``t`` its column measured now. ``isp`` says which quarter
    hour of the calendar column ``t`` is, for a history that is a rolling window (default ``t``: the history
    starts with the calendar). Forecasts may reach ``max_horizon`` quarter hours past the calendar's end.
    ``clearness`` is a weather forecast's clear-sky index per quarter hour of the calendar (NaN: none).
    ``day_types`` and ``local_slot`` (the local quarter hour of the day, 0..95 on the wall clock) are per quarter
    hour of the calendar. A forecaster keeps nothing of the histories it is given: ``load`` and ``load_high``
    share one lookup of which columns to read when called for the same quarter hour.
    """

    def __init__(
        self,
        isp_starts: list[datetime],
        timezone: str = "Europe/Amsterdam",
        *,
        load_days: int = 3,
        pv_days: int = 14,
        max_horizon: int = 192,
        clearness: Array | None = None,
    ) -> None:
        if not isp_starts:
            raise ValueError("the calendar needs at least one quarter hour")
        if load_days < 1 or pv_days < 1 or max_horizon < 1:
            raise ValueError(
                f"load_days ({load_days}), pv_days ({pv_days}) and max_horizon ({max_horizon}) must be >= 1"
            )
        start = isp_starts[0]
        if start.tzinfo is None:
            raise ValueError(f"the calendar starts with a naive time {start.isoformat()}: give it in UTC")
        epoch = start.timestamp()
        if epoch % 900:
            raise ValueError(f"the calendar must start on a quarter hour, not {start.isoformat()}")
        gaps = np.diff(np.array([t.timestamp() for t in isp_starts]))
        if gaps.size and np.any(gaps != 900):
            bad = int(np.flatnonzero(gaps != 900)[0])
            raise ValueError(
                f"the calendar must be consecutive quarter hours: {isp_starts[bad + 1]} follows {isp_starts[bad]}"
            )
        if clearness is not None and clearness.shape != (len(isp_starts),):
            raise ValueError(
                f"clearness needs one value per quarter hour ({len(isp_starts)}), got {clearness.shape}"
            )
        self.isps = len(isp_starts)
        self.load_days, self.pv_days, self.max_horizon = load_days, pv_days, max_horizon
        self.timezone = timezone
        zone = ZoneInfo(timezone)
        # Calendar positions: quarter hour i of the calendar is position i + _PAD.
        positions = _PAD + self.isps + max_horizon + 1
        utc = datetime.fromtimestamp(epoch, UTC) - _PAD * ISP
        local_s = np.empty(positions, dtype=np.int64)
        for p in range(positions):
            moment = utc + p * ISP
            offset = moment.astimezone(zone).utcoffset()
            local_s[p] = int(moment.timestamp()) + int(offset.total_seconds() if offset is not None else 0)
        local_day = local_s // 86_400
        self._slot: Index = (local_s % 86_400) // 900  # the local quarter hour of the day, 0..95 (wall clock)
        self.local_slot: Index = self._slot[_PAD : _PAD + self.isps]  # per quarter hour of the calendar
        day = local_day - local_day[0]
        n_days = int(day[-1]) + 1
        dates = [date(1970, 1, 1) + timedelta(days=int(local_day[0]) + d) for d in range(n_days)]
        kinds = np.array([day_type(d) for d in dates], dtype=np.int64)
        self.day_types: Index = kinds[day][_PAD : _PAD + self.isps]  # per quarter hour of the calendar
        # grid[day, slot]: the calendar column of that local time on that day (-1: none, as 02:00-02:59 on the
        # day summer time starts; the day it ends has that hour twice and keeps the first).
        grid = np.full((n_days, _PER_DAY), -1, dtype=np.int64)
        _, first = np.unique(day * _PER_DAY + self._slot, return_index=True)
        grid[day[first], self._slot[first]] = first - _PAD
        # Earlier days that a forecast for a day may look at, newest first. A forecast up to max_horizon ahead
        # finds its earliest `extra` candidates possibly still in the future; the rest are measured.
        extra = math.ceil((max_horizon + 1) / _PER_DAY) + 1
        width_load = load_days + extra
        same = np.full((n_days, width_load), -1, dtype=np.int64)
        for d in range(n_days):
            earlier = [e for e in range(d - 1, max(d - _RECENT_DAYS, 0) - 1, -1) if kinds[e] == kinds[d]]
            same[d, : min(len(earlier), width_load)] = earlier[:width_load]
        back = day[:, None] - 1 - np.arange(width_load)[None, :]
        self._same = self._lookup(grid, same[day], self._slot)  # positions x width_load: calendar columns
        self._any = self._lookup(grid, back, self._slot)  # positions x width_load: any type
        self._grid, self._day = grid, day
        # Where the UTC offset last changed, per position: a window without a change is whole local days.
        offset_s = local_s - (utc.timestamp() + 900 * np.arange(positions)).astype(np.int64)
        change = np.flatnonzero(np.diff(offset_s)) + 1
        self._steady_since: Index = np.zeros(positions, dtype=np.int64)
        for c in change:
            self._steady_since[c:] = c
        lead_h = 0.25 * np.arange(max_horizon)
        self._near, self._far = np.exp(-lead_h / _TAU_NOW_H), np.exp(-lead_h / _TAU_DAY_H)
        self._has_clearness = clearness is not None and bool(np.isfinite(clearness).any())
        self._envelope_cache: (
            tuple[weakref.ref[Array], tuple[int, int, tuple[int, ...]], int, tuple[Array, Array]] | None
        ) = None
        self._clearness = np.full(positions, np.nan)
        if clearness is not None:
            self._clearness[_PAD : _PAD + self.isps] = clearness
        self._cache: tuple[tuple[int, int, int], Index, Array] | None = None

    @staticmethod
    def _lookup(grid: Index, days: Index, slot: Index) -> Index:
        ok = days >= 0
        out: Index = np.where(ok, grid[np.where(ok, days, 0), slot[:, None]], -1)
        return out

    def _where(self, history: Array, t: int, horizon: int, isp: int | None) -> int:
        _check(history, t, horizon)
        now = t if isp is None else isp
        if not 0 <= now < self.isps:
            raise ValueError(f"quarter hour {now} is not in the calendar ({self.isps} quarter hours)")
        if horizon > self.max_horizon:
            raise ValueError(
                f"horizon {horizon} is longer than the forecaster's max_horizon {self.max_horizon}"
            )
        return now

    def _load_sources(self, t: int, now: int, horizon: int) -> tuple[Index, Array]:
        """History columns (horizon x load_days) and their weights for the load forecast."""
        key = (t, now, horizon)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        rows = slice(now + _PAD, now + _PAD + horizon)
        same, anyday = self._same[rows], self._any[rows]
        oldest = now - t  # the calendar column of the history's column 0
        ok_same = (same >= oldest) & (same <= now)
        ok_any = (anyday >= oldest) & (anyday <= now)
        by_type = ok_same.any(axis=1, keepdims=True)
        source = np.where(by_type, same, anyday)
        ok = np.where(by_type, ok_same, ok_any)
        ok &= np.cumsum(ok, axis=1) <= self.load_days
        order = np.argsort(~ok, axis=1, kind="stable")[:, : self.load_days]
        chosen = np.take_along_axis(source, order, axis=1) - oldest
        used = np.take_along_axis(ok, order, axis=1)
        nothing = ~used.any(axis=1)  # no earlier day measured at all: as now
        chosen[nothing, 0], used[nothing, 0] = t, True
        chosen = np.where(used, chosen, chosen[:, :1])  # unused: the first day again (the maximum stays)
        weight: Array = used / used.sum(axis=1, keepdims=True)
        self._cache = (key, chosen, weight)
        return chosen, weight

    def load(self, history: Array, t: int, horizon: int, *, isp: int | None = None) -> Array:
        """Connections x horizon: the mean of the same local time on recent days of the same day type."""
        return self.load_both(history, t, horizon, isp=isp)[0]

    def load_high(self, history: Array, t: int, horizon: int, *, isp: int | None = None) -> Array:
        """Connections x horizon: the highest of the days ``load`` averages (a cautious forecast)."""
        return self.load_both(history, t, horizon, isp=isp)[1]

    def load_both(
        self, history: Array, t: int, horizon: int, *, isp: int | None = None
    ) -> tuple[Array, Array]:
        """``load`` and ``load_high`` from one lookup of the days they read."""
        now = self._where(history, t, horizon, isp)
        chosen, weight = self._load_sources(t, now, horizon)
        values = np.take(history, chosen.T, axis=1)  # connections x load_days x horizon
        mean: Array = np.einsum("cdh,hd->ch", values, weight)
        high: Array = values.max(axis=1)
        mean[:, 0] = high[:, 0] = history[:, t]
        return mean, high

    def _envelope(self, history: Array, t: int, now: int, *, general: bool = False) -> tuple[Array, Array]:
        """Per connection and local quarter hour of the day (connections x 96): the clear-sky envelope (the
        highest of the last ``pv_days`` measured values at that time, smoothed over its neighbours) and the mean
        of the same values."""
        oldest, span = now - t, self.pv_days * _PER_DAY
        first = now - span + 1
        if not general and first >= oldest and self._steady_since[now + _PAD] <= first + _PAD:
            # No change of daylight saving in the last pv_days days: they are pv_days x 96 consecutive columns.
            window = history[:, t - span + 1 : t + 1].reshape(history.shape[0], self.pv_days, _PER_DAY)
            order = np.argsort(self._slot[first + _PAD : first + _PAD + _PER_DAY])
            top = np.maximum(window.max(axis=1)[:, order], 0.0)
            days = np.full(_PER_DAY, self.pv_days)
            total = window.sum(axis=1)[:, order]
        else:
            top, total, days = self._by_slot(history, t, now)
        padded = np.concatenate([top[:, -1:], top, top[:, :1]], axis=1)  # the day wraps round at midnight
        envelope: Array = 0.5 * top + 0.25 * (padded[:, :-2] + padded[:, 2:])
        mean: Array = np.maximum(total, 0.0) / np.maximum(days, 1)
        return envelope, mean

    def _by_slot(self, history: Array, t: int, now: int) -> tuple[Array, Array, Index]:
        """The highest and the sum of the last ``pv_days`` values at each local time of day, and how many."""
        oldest = now - t
        rows = self._day[now + _PAD] - np.arange(self.pv_days + 2)  # today and the days before, newest first
        source = np.where(rows[:, None] >= 0, self._grid[np.maximum(rows, 0)], -1)  # days x 96
        ok = (source >= oldest) & (source <= now)
        order = np.argsort(~ok, axis=0, kind="stable")[: self.pv_days]  # per time of day its newest days
        ok = np.take_along_axis(ok, order, axis=0)
        source = np.where(ok, np.take_along_axis(source, order, axis=0) - oldest, t)
        values = np.take(history, source, axis=1)  # connections x pv_days x 96
        if not ok.all():  # the first days of the history, or a history shorter than pv_days
            values = values * ok
        days: Index = ok.sum(axis=0)
        return np.maximum(values.max(axis=1), 0.0), values.sum(axis=1), days

    def pv(self, history: Array, t: int, horizon: int, *, isp: int | None = None) -> Array:
        """Connections x horizon: the clear-sky envelope times a clearness index relaxing from the last two
        hours' towards the last eight hours' and the recent days'; 0 where the envelope is (at night)."""
        return self.pv_both(history, t, horizon, isp=isp)[0]

    def pv_high(self, history: Array, t: int, horizon: int, *, isp: int | None = None) -> Array:
        """A cautious forecast for keeping room under a feed-in limit: the same, but relaxing from the last two
        hours' clearness towards a clear sky (the envelope itself) instead of the recent days'."""
        return self.pv_both(history, t, horizon, isp=isp)[1]

    def pv_both(self, history: Array, t: int, horizon: int, *, isp: int | None = None) -> tuple[Array, Array]:
        """``pv`` and ``pv_high`` from one envelope."""
        now = self._where(history, t, horizon, isp)
        # The envelope is a maximum over two weeks: it is made once an hour of the calendar (a planner calls every
        # quarter hour), from the quarter hours up to the first call of the hour, so never from later ones.
        cached = self._envelope_cache
        if (
            cached is not None
            and cached[0]() is history
            and cached[1] == (now // 4, now - t, history.shape)
            and cached[2] <= t
        ):
            envelope, mean = cached[3]
        else:
            envelope, mean = self._envelope(history, t, now)
            self._envelope_cache = (
                weakref.ref(history),
                (now // 4, now - t, history.shape),
                t,
                (envelope, mean),
            )
        # The envelope at the last eight hours (the last column is now) and then the horizon.
        slots = self._slot[now + _PAD - _DAY_ISPS + 1 : now + _PAD + horizon]
        sky = np.take(envelope, slots, axis=1)
        past = sky[:, :_DAY_ISPS]
        lo = max(t - _DAY_ISPS + 1, 0)
        actual = np.zeros_like(past)
        actual[:, _DAY_ISPS - (t + 1 - lo) :] = np.maximum(history[:, lo : t + 1], 0.0)
        peak = np.maximum(envelope.max(axis=1), 1e-9)  # one quarter hour at the peak: the weight of a prior
        daily = envelope.sum(axis=1)
        k_mean = np.where(daily > 1e-9, mean.sum(axis=1) / np.maximum(daily, 1e-9), 1.0)
        k_day = (actual.sum(axis=1) + k_mean * peak) / (past.sum(axis=1) + peak)
        w_now = 0.5 * peak
        k_now = (actual[:, -_NOW_ISPS:].sum(axis=1) + k_day * w_now) / (
            past[:, -_NOW_ISPS:].sum(axis=1) + w_now
        )
        near, far = self._near[:horizon], self._far[:horizon]
        base = k_mean[:, None] + (k_day - k_mean)[:, None] * far[None, :]
        clear = np.maximum(base, 1.0)
        if self._has_clearness:
            forecast = self._clearness[now + _PAD : now + _PAD + horizon]
            base = np.where(np.isnan(forecast)[None, :], base, forecast[None, :])
        ahead = sky[:, _DAY_ISPS - 1 :]
        out = []
        for b in (base, clear):
            kappa = b + (k_now[:, None] - b) * near[None, :]
            forecast_kw: Array = ahead * np.clip(kappa, 0.0, _KAPPA_MAX)
            forecast_kw[:, 0] = history[:, t]
            out.append(forecast_kw)
        return out[0], out[1]
