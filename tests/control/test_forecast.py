"""Load and PV forecasts (src/energyhub/control/forecast.py): calendars, no look-ahead, and better than persistence."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from energyhub.control.forecast import (
    SATURDAY,
    SUNDAY_OR_HOLIDAY,
    WORKING_DAY,
    ErrorSum,
    Forecaster,
    day_ago,
    day_type,
    dutch_public_holidays,
    normalised_mae,
    read_clearness,
    week_ago,
)
from energyhub.domain.community import load_community
from energyhub.synthetic.export import quarter_hour_series
from energyhub.synthetic.loads import dutch_holidays
from tests.conftest import EXAMPLES

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
QH = timedelta(minutes=15)


def calendar(start: datetime, days: float) -> list[datetime]:
    return [start + i * QH for i in range(int(days * 96))]


def local_hours(isps: list[datetime]) -> np.ndarray:
    """Local wall-clock hour (fractional) of each quarter hour, worked out with zoneinfo, not by the forecaster."""
    return np.array([(lambda x: x.hour + x.minute / 60)(t.astimezone(AMSTERDAM)) for t in isps])


def bell(hours: np.ndarray, peak_kw: float = 100.0) -> np.ndarray:
    """A clear day's PV: zero before 06:00 and after 20:00 local, highest at 13:00."""
    return np.where((hours > 6) & (hours < 20), peak_kw * np.sin(np.pi * (hours - 6.0) / 14.0), 0.0)


# --- calendar ---------------------------------------------------------------------------------------------------


def test_dutch_public_holidays_2026():
    assert dutch_public_holidays(2026) == {
        date(2026, 1, 1),
        date(2026, 4, 5),  # Easter
        date(2026, 4, 6),
        date(2026, 4, 27),  # King's Day
        date(2026, 5, 14),  # Ascension
        date(2026, 5, 24),  # Whitsun
        date(2026, 5, 25),
        date(2026, 12, 25),
        date(2026, 12, 26),
    }


@pytest.mark.parametrize(
    ("year", "easter"),
    [
        (1954, date(1954, 4, 18)),  # the 18 April exception
        (1981, date(1981, 4, 19)),  # the 19 April exception
        (2019, date(2019, 4, 21)),
        (2024, date(2024, 3, 31)),
        (2025, date(2025, 4, 20)),
        (2027, date(2027, 3, 28)),
        (2049, date(2049, 4, 18)),
        (2076, date(2076, 4, 19)),
    ],
)
def test_easter_including_the_exceptions(year, easter):
    assert easter in dutch_public_holidays(year)
    assert easter + timedelta(days=1) in dutch_public_holidays(year)
    assert easter + timedelta(days=39) in dutch_public_holidays(year)


def test_kings_day_moves_off_a_sunday_and_liberation_day_every_fifth_year():
    assert date(2025, 4, 26) in dutch_public_holidays(2025)  # the 27th is a Sunday
    assert date(2025, 4, 27) not in dutch_public_holidays(2025)
    assert date(2025, 5, 5) in dutch_public_holidays(2025)
    assert date(2026, 5, 5) not in dutch_public_holidays(2026)


def test_holidays_are_the_simulators():
    """The load simulator runs these days as Sundays; a forecaster that missed one would be wrong that day."""
    for year in range(1990, 2101):
        assert dutch_public_holidays(year) == dutch_holidays(year), year


def test_day_types():
    assert day_type(date(2026, 4, 28)) == WORKING_DAY  # Tuesday
    assert day_type(date(2026, 5, 2)) == SATURDAY
    assert day_type(date(2026, 5, 3)) == SUNDAY_OR_HOLIDAY
    assert day_type(date(2026, 4, 27)) == SUNDAY_OR_HOLIDAY  # King's Day, a Monday
    assert day_type(date(2025, 4, 26)) == SUNDAY_OR_HOLIDAY  # King's Day on a Saturday counts as a Sunday


def test_day_types_follow_the_local_date():
    f = Forecaster(calendar(datetime(2026, 5, 1, 20, tzinfo=UTC), 1))
    # 21:45 UTC is 23:45 on Friday 1 May in Amsterdam, 22:00 UTC already Saturday.
    assert f.day_types[7] == WORKING_DAY
    assert f.day_types[8] == SATURDAY


@pytest.mark.parametrize(
    ("utc", "slot"),
    [
        (datetime(2026, 3, 29, 0, 45, tzinfo=UTC), 7),  # 01:45 winter time
        (datetime(2026, 3, 29, 1, 0, tzinfo=UTC), 12),  # 03:00 summer time: 02:00-02:59 does not exist
        (datetime(2026, 10, 25, 0, 0, tzinfo=UTC), 8),  # 02:00 summer time
        (datetime(2026, 10, 25, 1, 0, tzinfo=UTC), 8),  # 02:00 winter time, the same hour again
        (datetime(2026, 10, 25, 11, 0, tzinfo=UTC), 48),  # 12:00
        (datetime(2026, 10, 24, 10, 0, tzinfo=UTC), 48),  # 12:00 the day before, one UTC hour earlier
    ],
)
def test_local_time_of_day_across_daylight_saving(utc, slot):
    f = Forecaster(calendar(datetime(2026, 3, 20, tzinfo=UTC), 230))
    i = int((utc - datetime(2026, 3, 20, tzinfo=UTC)) / QH)
    assert f.local_slot[i] == slot


@pytest.mark.parametrize("start", [datetime(2026, 3, 16, tzinfo=UTC), datetime(2026, 10, 12, tzinfo=UTC)])
def test_daylight_saving_weeks_map_the_same_local_hour(start):
    """Load and PV that depend on the local hour alone are forecast exactly before, on and after the last
    Sunday of March and of October 2026; persistence by 96 quarter hours is an hour off after the change."""
    isps = calendar(start, 24)
    hours = local_hours(isps)
    load = np.vstack([10 + hours, 50 + 2 * hours])
    pv = np.vstack([bell(hours), bell(hours, 20.0)])
    f = Forecaster(isps)
    change = 13 * 96  # the change is on day 13 (29 March, 25 October)
    for t in range(change - 96, change + 2 * 96, 7):
        h = 96
        expected_load = load[:, t : t + h]
        assert f.load(load, t, h) == pytest.approx(expected_load, abs=1e-9), isps[t]
        assert f.load_high(load, t, h) == pytest.approx(expected_load, abs=1e-9)
        forecast = f.pv(pv, t, h)
        clear = pv[:, t : t + h]
        assert np.abs(forecast - clear).max() < 0.02 * 100, isps[t]  # the smoothing's few per cent at most
        noon = [i for i in range(h) if abs(hours[t + i] - 13.0) < 1e-9]
        assert all(
            forecast[:, i].argmax() == 0 and np.isclose(forecast[0, i], forecast[0].max()) for i in noon
        )
    t = change + 96 + 40  # the day after the change, 10:00 local
    h = 96
    persistence_error = np.abs(week_ago(load, t, h) - load[:, t : t + h]).max()
    assert persistence_error > 1.0  # an hour off: the guard that the test data can tell


# --- no look-ahead ----------------------------------------------------------------------------------------------


# 0: nothing measured before; 13 * 96 + 8: 29 March 03:00, just after the change; the last two: the horizon runs
# past the calendar's end.
@pytest.mark.parametrize(
    "t", [0, 1, 50, 95, 96, 300, 7 * 96 + 3, 13 * 96 + 8, 20 * 96 + 60, 33 * 96 - 1, 34 * 96 - 10]
)
def test_future_columns_never_change_a_forecast(t):
    rng = np.random.default_rng(t)
    isps = calendar(datetime(2026, 3, 10, tzinfo=UTC), 34)
    load = rng.uniform(0, 100, (5, len(isps)))
    pv = np.maximum(rng.normal(20, 30, (5, len(isps))), 0.0)
    f = Forecaster(isps, clearness=np.where(np.arange(len(isps)) % 3 == 0, 0.6, np.nan))
    before = [f.load(load, t, 96), f.load_high(load, t, 96), f.pv(pv, t, 96), week_ago(load, t, 96)]
    before.append(day_ago(pv, t, 96))
    load2, pv2 = load.copy(), pv.copy()
    load2[:, t + 1 :] = rng.uniform(-1e6, 1e6, load2[:, t + 1 :].shape)
    pv2[:, t + 1 :] = rng.uniform(0, 1e6, pv2[:, t + 1 :].shape)
    after = [f.load(load2, t, 96), f.load_high(load2, t, 96), f.pv(pv2, t, 96), week_ago(load2, t, 96)]
    after.append(day_ago(pv2, t, 96))
    for b, a in zip(before, after, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(before[0][:, 0], load[:, t])
    assert np.array_equal(before[2][:, 0], pv[:, t])
    # A history that ends at t (as online has it) gives the same.
    assert np.array_equal(f.load(load[:, : t + 1], t, 96), before[0])
    assert np.array_equal(f.pv(pv[:, : t + 1], t, 96), before[2])


def test_a_rolling_window_forecasts_as_the_whole_history():
    rng = np.random.default_rng(7)
    isps = calendar(datetime(2026, 2, 2, tzinfo=UTC), 70)
    load = rng.uniform(0, 100, (3, len(isps)))
    pv = np.maximum(rng.normal(20, 30, (3, len(isps))), 0.0)
    f = Forecaster(isps)
    window = 30 * 96  # four weeks of same-type days and the PV's two weeks fit
    for now in (40 * 96 + 5, 55 * 96 + 70, 69 * 96 - 97):
        part = slice(now - window + 1, now + 1)
        t = window - 1
        assert np.allclose(f.load(load[:, part], t, 96, isp=now), f.load(load, now, 96))
        assert np.allclose(f.load_high(load[:, part], t, 96, isp=now), f.load_high(load, now, 96))
        assert np.allclose(f.pv(pv[:, part], t, 96, isp=now), f.pv(pv, now, 96))


def test_the_quick_envelope_is_the_general_one():
    """Away from daylight saving the envelope is read from whole days of consecutive columns; it must agree
    with the lookup by local time of day that the days around a change need."""
    rng = np.random.default_rng(3)
    isps = calendar(datetime(2026, 3, 1, tzinfo=UTC), 60)
    pv = np.maximum(rng.normal(20, 30, (4, len(isps))), 0.0)
    f = Forecaster(isps)
    for t in range(0, len(isps), 41):
        quick, general = f._envelope(pv, t, t), f._envelope(pv, t, t, general=True)
        assert np.allclose(quick[0], general[0]), isps[t]
        assert np.allclose(quick[1], general[1]), isps[t]


# --- load -------------------------------------------------------------------------------------------------------


def test_load_is_the_mean_of_the_same_day_type_and_high_their_maximum():
    # Monday 6 April 2026 is Easter Monday; start on Monday 30 March.
    isps = calendar(datetime(2026, 3, 29, 22, tzinfo=UTC), 35)  # 00:00 local, Monday 30 March
    days = np.arange(len(isps)) // 96
    load = (1000.0 + days)[None, :] * np.ones((2, 1))
    f = Forecaster(isps, load_days=3)
    t = 29 * 96 + 40  # Tuesday 28 April 10:00
    forecast, high = f.load(load, t, 96), f.load_high(load, t, 96)
    # Today's rest: the last three working days before today (27 April is King's Day): 24, 23, 22 April.
    assert forecast[0, 10] == pytest.approx(1000 + (25 + 24 + 23) / 3)
    assert high[0, 10] == pytest.approx(1000 + 25)
    assert forecast[0, 0] == load[0, t]
    # Sunday 3 May: the Sundays and holidays before it within four weeks.
    t = 33 * 96 + 40  # Saturday 2 May 10:00
    ahead = f.load(load, t, 192)
    sunday_noon = 96 + 8  # 12:00 on Sunday 3 May
    assert ahead[0, sunday_noon] == pytest.approx(1000 + (28 + 27 + 20) / 3)  # 27 April, 26 April, 19 April
    assert ahead[0, 20] == pytest.approx(1000 + (26 + 19 + 12) / 3)  # Saturday: 25, 18, 11 April


def test_load_falls_back_to_the_last_days_then_to_now():
    isps = calendar(datetime(2026, 6, 7, 22, tzinfo=UTC), 8)  # Monday 8 June 00:00 local
    days = np.arange(len(isps)) // 96
    load = (100.0 + days)[None, :].astype(float)
    f = Forecaster(isps, load_days=2)
    first = f.load(load, 40, 40)  # the first morning: nothing earlier at all
    assert np.all(first == load[0, 40])
    saturday = f.load(load, 5 * 96 + 40, 20)  # the first Saturday: no Saturday before it
    assert saturday[0, 5] == pytest.approx(100 + (4 + 3) / 2)  # the last two days of any type


# --- PV ---------------------------------------------------------------------------------------------------------


def pv_days(clearness: list[float], start: datetime) -> tuple[list[datetime], np.ndarray, np.ndarray]:
    isps = calendar(start, len(clearness))
    hours = local_hours(isps)
    clear = bell(hours)
    return isps, clear, clear * np.repeat(clearness, 96)


def test_a_clear_day_after_cloudy_days_is_forecast_near_the_envelope_once_the_morning_is_clear():
    start = datetime(2026, 6, 7, 22, tzinfo=UTC)  # local midnight
    isps, clear, pv = pv_days([1.0] * 5 + [0.3] * 9 + [1.0], start)
    history = pv[None, :]
    f = Forecaster(isps)
    t = 14 * 96 + 40  # 10:00 local on the clear day
    forecast = f.pv(history, t, 96)[0]
    noon = slice(8, 17)  # 12:00-14:00
    assert np.all(forecast[noon] > 0.85 * clear[t + 8 : t + 17])
    assert np.all(day_ago(history, t, 96)[0, noon] < 0.35 * clear[t + 8 : t + 17])  # yesterday was dull
    assert np.all(forecast[41:80] == 0)  # the night: 20:15 to 05:45
    assert np.all(forecast[:40] > 0)


def test_a_cloudy_morning_predicts_a_cloudy_noon_only_partly():
    start = datetime(2026, 6, 7, 22, tzinfo=UTC)
    isps, clear, pv = pv_days([1.0] * 14 + [0.3], start)
    f = Forecaster(isps)
    t = 14 * 96 + 40
    ratio = f.pv(pv[None, :], t, 96)[0, 8:17] / clear[t + 8 : t + 17]
    assert np.all((ratio > 0.35) & (ratio < 0.8))


def test_a_weather_forecast_file_sets_tomorrow(tmp_path):
    start = datetime(2026, 6, 7, 22, tzinfo=UTC)
    isps, clear, pv = pv_days([1.0] * 3 + [0.3] * 13, start)  # two clear days still in the envelope
    path = tmp_path / "weather.csv"
    tomorrow = [t for t in isps if t >= start + timedelta(days=15)]
    path.write_text(
        "isp_start,clear_sky_index\n" + "".join(f"{t:%Y-%m-%dT%H:%M:%SZ},0.9\n" for t in tomorrow)
    )
    clearness = read_clearness(path, isps)
    assert np.isnan(clearness[: 15 * 96]).all()
    assert (clearness[15 * 96 :] == 0.9).all()
    t = 14 * 96 + 80  # 20:00 local, the evening before
    without = Forecaster(isps).pv(pv[None, :], t, 96)[0]
    with_file = Forecaster(isps, clearness=clearness).pv(pv[None, :], t, 96)[0]
    tomorrow_noon = slice(16 + 48, 16 + 56)  # 12:00-14:00 tomorrow
    expected = clear[t + 64 : t + 72]
    assert np.all(without[tomorrow_noon] < 0.45 * expected)
    assert with_file[tomorrow_noon] == pytest.approx(0.9 * expected, rel=0.05)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,kc\n", "columns must be isp_start,clear_sky_index"),
        ("isp_start,clear_sky_index\n2026-06-08T10:00:00Z,abc\n", ":2: not a time and an index"),
        ("isp_start,clear_sky_index\n2026-06-08T10:00:00,0.5\n", ":2: 2026-06-08T10:00:00 has no time zone"),
        ("isp_start,clear_sky_index\n2026-06-08T10:00:00Z,0.5\n2026-06-08T10:15:00Z,3\n", ":3: a clear-sky"),
    ],
)
def test_a_bad_weather_file_names_the_line(tmp_path, text, message):
    path = tmp_path / "weather.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_clearness(path, calendar(datetime(2026, 6, 8, tzinfo=UTC), 1))


# --- error measure and the interface's edges --------------------------------------------------------------------


def test_normalised_mae_and_its_sum():
    assert normalised_mae(np.array([[1.0, 3.0]]), np.array([[2.0, 2.0]])) == pytest.approx(0.5)
    assert np.isnan(normalised_mae(np.zeros((1, 2)), np.zeros((1, 2))))
    total = ErrorSum()
    total.add(np.array([[1.0, 3.0]]), np.array([[2.0, 2.0]]))
    total.add(np.array([[0.0]]), np.array([[4.0]]))
    assert total.normalised_mae == pytest.approx((1 + 1 + 4) / 8)


def test_bad_calendars_and_calls_are_refused():
    with pytest.raises(ValueError, match="consecutive"):
        Forecaster([datetime(2026, 6, 8, tzinfo=UTC), datetime(2026, 6, 8, 0, 30, tzinfo=UTC)])
    with pytest.raises(ValueError, match="naive"):
        Forecaster([datetime(2026, 6, 8)])
    f = Forecaster(calendar(datetime(2026, 6, 8, tzinfo=UTC), 2), max_horizon=96)
    with pytest.raises(ValueError, match="max_horizon"):
        f.load(np.zeros((1, 192)), 10, 97)
    with pytest.raises(ValueError, match="not a column"):
        f.pv(np.zeros((1, 10)), 10, 4)


def test_a_forecast_takes_well_under_a_millisecond():
    isps = calendar(datetime(2026, 1, 1, tzinfo=UTC), 365)
    rng = np.random.default_rng(0)
    history = rng.uniform(0, 100, (100, len(isps)))
    f = Forecaster(isps)
    times = []
    for t in range(100 * 96, 100 * 96 + 300):
        started = time.perf_counter()
        f.load(history, t, 96)
        f.pv(history, t, 96)
        times.append(time.perf_counter() - started)
    assert np.median(times) < 3e-3  # about 0.5 ms on the reference machine; generous for a busy one


# --- on the simulators' data ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated():
    """Seven weeks of the 2026 reference community from the simulators (seed 0), Easter to Whitsun."""
    community = load_community(EXAMPLES / "de-koumen-2026.yaml")
    start = datetime(2026, 4, 5, 22, tzinfo=UTC)
    data = quarter_hour_series(community, start=start, end=start + timedelta(days=49), seed=0)
    load = np.array([c.series["load"] for c in data.connections]) / 0.25
    pv = np.array([c.series["pv"] for c in data.connections if "pv" in c.series]) / 0.25
    return calendar(start, 49), load, pv


def test_on_the_simulators_data_the_forecasts_beat_persistence(simulated):
    isps, load, pv = simulated
    f = Forecaster(isps)
    horizons = {"1 h": 4, "6 h": 24, "24 h": 96}
    sums = {(k, h): ErrorSum() for k in ("blend", "week ago", "day ago", "pv", "yesterday") for h in horizons}
    for t in range(28 * 96, len(isps) - 97, 8):  # every two hours after four weeks
        blend, pv_forecast = f.load(load, t, 97), f.pv(pv, t, 97)
        weekly, daily, yesterday = week_ago(load, t, 97), day_ago(load, t, 97), day_ago(pv, t, 97)
        for name, n in horizons.items():
            actual_load, actual_pv = load[:, t + 1 : t + 1 + n], pv[:, t + 1 : t + 1 + n]
            sums["blend", name].add(blend[:, 1 : 1 + n], actual_load)
            sums["week ago", name].add(weekly[:, 1 : 1 + n], actual_load)
            sums["day ago", name].add(daily[:, 1 : 1 + n], actual_load)
            sums["pv", name].add(pv_forecast[:, 1 : 1 + n], actual_pv)
            sums["yesterday", name].add(yesterday[:, 1 : 1 + n], actual_pv)
    error = {key: s.normalised_mae for key, s in sums.items()}
    for name in horizons:
        assert error["blend", name] < 0.9 * min(error["week ago", name], error["day ago", name]), error
        assert error["pv", name] < 0.95 * error["yesterday", name], error
    assert error["pv", "1 h"] < 0.6 * error["yesterday", "1 h"], error
