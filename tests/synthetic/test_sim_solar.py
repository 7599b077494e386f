"""PV simulator: pvlib clear sky x seeded cloud model for Heerlen (real computation, no mocks)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pvlib
import pytest

from energyhub.synthetic.solar import (
    KC_MAX,
    LINKE_TURBIDITY_MONTHLY,
    OVERCAST,
    SITE,
    SUNNY,
    SolarDay,
    SolarOnline,
    annual_yield_kwh_per_kwp,
    clear_sky_index,
    daily_weather,
    pv_power_kw,
)

YEAR = 2026


def year_times(freq: str = "15min", year: int = YEAR) -> pd.DatetimeIndex:
    start = pd.Timestamp(year=year, month=1, day=1, tz="UTC")
    return pd.date_range(start, start + pd.DateOffset(years=1), freq=freq, inclusive="left")


def epoch_day(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days


@pytest.fixture(scope="module")
def year_seed1() -> pd.Series:
    times = year_times()
    return pd.Series(pv_power_kw(times, 1.0, seed=1), index=times)


@pytest.mark.parametrize("seed", [0, 1, 2, 42])
def test_annual_yield_matches_heerlen(seed: int) -> None:
    # De Koumen: 2.4 GWh from 2.7 MWp is 889 kWh/kWp; the issue asks 850-950 for a simulated year.
    assert 850.0 <= annual_yield_kwh_per_kwp(YEAR, seed) <= 950.0


def test_de_koumen_2_7_mwp_gives_about_2_4_gwh() -> None:
    times = year_times()
    energy_gwh = float(np.sum(pv_power_kw(times, 2700.0, seed=7))) * 0.25 / 1e6
    assert 2.3 <= energy_gwh <= 2.57


def test_orientation_ranks_like_pvgis() -> None:
    south_12 = annual_yield_kwh_per_kwp(YEAR, 3)
    assert (
        annual_yield_kwh_per_kwp(YEAR, 3, tilt=35.0) > south_12 > annual_yield_kwh_per_kwp(YEAR, 3, tilt=0.0)
    )
    east_west = annual_yield_kwh_per_kwp(YEAR, 3, east_west=True)
    assert 0.8 * south_12 < east_west < 0.97 * south_12


def test_zero_output_when_the_sun_is_down(year_seed1: pd.Series) -> None:
    lat, lon = SITE
    solpos = pvlib.solarposition.get_solarposition(year_seed1.index, lat, lon, altitude=100.0)
    # pvlib's fast ephemeris (used by the simulator) is within 0.01 degree of this SPA reference.
    down = solpos["elevation"].to_numpy() < -0.05
    power = year_seed1.to_numpy()
    assert down.sum() > 0.4 * len(power)
    assert np.all(power[down] == 0.0)
    assert np.all(power >= 0.0)
    assert np.mean(power[~down] > 0.0) > 0.95


def test_output_peaks_near_solar_noon() -> None:
    # Heerlen (5.98 E) has solar noon about 11:38-11:42 UTC in June-July.
    times = pd.date_range("2026-06-01", "2026-08-01", freq="1min", tz="UTC", inclusive="left")
    power = pd.Series(pv_power_kw(times, 1.0, seed=5), index=times)
    minute_of_day = power.index.hour * 60 + power.index.minute
    profile = power.groupby(minute_of_day).mean()
    centroid = float(np.sum(profile.index * profile.to_numpy()) / profile.sum())
    assert abs(centroid - (11 * 60 + 40)) <= 10  # the mean day is symmetric around solar noon
    assert profile.loc[11 * 60 : 12 * 60].mean() > 1.5 * profile.loc[7 * 60 : 8 * 60].mean()
    assert profile.loc[11 * 60 : 12 * 60].mean() > 1.5 * profile.loc[15 * 60 : 16 * 60].mean()
    # On a sunny day the peak is sharp and close to noon as well.
    weather = daily_weather(epoch_day(dt.date(2026, 6, 1)), 61, seed=5)
    sunny = weather.epoch_days[weather.day_type == SUNNY]
    assert sunny.size > 5
    day = pd.Timestamp(int(sunny[0]) * 86_400, unit="s", tz="UTC")
    one_day = power[day : day + pd.Timedelta(hours=23, minutes=59)]
    day_minutes = np.arange(len(one_day))
    day_centroid = float(np.sum(day_minutes * one_day.to_numpy()) / one_day.sum())
    assert abs(day_centroid - (11 * 60 + 40)) <= 10
    assert 0.6 <= one_day.max() <= 0.85  # kW per kWp at the peak of a clear summer day
    assert 5.0 <= float(one_day.sum()) / 60.0 <= 7.5  # kWh/kWp on a clear June/July day at 12 degrees


def test_summer_days_far_exceed_winter_days(year_seed1: pd.Series) -> None:
    monthly = year_seed1.resample("MS").sum() * 0.25
    assert monthly.iloc[5] > 4.0 * monthly.iloc[11]  # June vs December
    assert monthly.iloc[5:8].min() > monthly.iloc[[0, 1, 10, 11]].max()
    assert 0.7 < monthly.iloc[3:9].sum() / monthly.sum() < 0.85  # April-September: about 3/4 of the year


def test_same_seed_same_series_other_seed_differs() -> None:
    times = pd.date_range("2026-05-01", "2026-05-08", freq="1min", tz="UTC", inclusive="left")
    a = pv_power_kw(times, 10.0, seed=11)
    np.testing.assert_array_equal(a, pv_power_kw(times, 10.0, seed=11))
    b = pv_power_kw(times, 10.0, seed=12)
    assert np.mean(np.abs(a - b)) > 0.2


def test_june_alone_equals_june_in_the_year(year_seed1: pd.Series) -> None:
    june = year_seed1["2026-06-01":"2026-06-30 23:45"]
    alone = pv_power_kw(june.index, 1.0, seed=1)
    np.testing.assert_allclose(alone, june.to_numpy(), rtol=1e-12, atol=1e-12)
    # The weather itself, at minute resolution, for a window that starts mid-day and crosses months.
    window = pd.date_range("2026-06-29 13:07", "2026-07-02 09:00", freq="1min", tz="UTC")
    wide = pd.date_range("2026-06-01", "2026-07-31", freq="1min", tz="UTC")
    kc_wide = pd.Series(clear_sky_index(wide, seed=1), index=wide)
    np.testing.assert_array_equal(clear_sky_index(window, seed=1), kc_wide[window].to_numpy())


def test_clear_sky_index_bounded_and_varied() -> None:
    kc = clear_sky_index(year_times("1min"), seed=4)
    assert kc.min() >= 0.0
    assert kc.max() <= KC_MAX
    assert kc.max() > 1.0  # cloud-edge enhancement happens
    assert np.mean(kc < 0.4) > 0.1  # and so do dull overcast hours
    assert 0.5 < kc.mean() < 0.75


def test_day_types_follow_dutch_seasons() -> None:
    overcast_dec, overcast_jun, sunny_jun = [], [], []
    for seed in range(5):
        dec = daily_weather(epoch_day(dt.date(2026, 12, 1)), 31, seed)
        jun = daily_weather(epoch_day(dt.date(2026, 6, 1)), 30, seed)
        overcast_dec.append(np.mean(dec.day_type == OVERCAST))
        overcast_jun.append(np.mean(jun.day_type == OVERCAST))
        sunny_jun.append(np.mean(jun.day_type == SUNNY))
    assert np.mean(overcast_dec) > np.mean(overcast_jun) + 0.15
    assert 0.15 < np.mean(sunny_jun) < 0.5
    # Weather persists from one day to the next.
    year = daily_weather(epoch_day(dt.date(2026, 1, 1)), 365, 9).day_type
    assert np.mean(year[1:] == year[:-1]) > 0.45


def test_inverter_clipping() -> None:
    times = pd.date_range("2026-06-01", "2026-07-01", freq="5min", tz="UTC", inclusive="left")
    free = pv_power_kw(times, 1.0, seed=2)
    clipped = pv_power_kw(times, 1.0, seed=2, ac_kw=0.6)
    assert free.max() > 0.7
    assert clipped.max() == pytest.approx(0.6)
    assert np.all(clipped <= 0.6)
    np.testing.assert_allclose(clipped, np.minimum(free, 0.6))


def test_per_roof_arrays_match_single_roofs() -> None:
    times = pd.date_range("2026-04-10", "2026-04-12", freq="10min", tz="UTC")
    kwp = [100.0, 250.0, 40.0]
    tilt = [10.0, 15.0, 12.0]
    azimuth = [180.0, 200.0, 180.0]
    east_west = [False, False, True]
    ac_kw = [80.0, None, 35.0]
    many = pv_power_kw(
        times,
        kwp,
        seed=8,
        tilt=tilt,
        azimuth=azimuth,
        east_west=east_west,
        ac_kw=np.array([80.0, np.nan, 35.0]),
    )
    assert many.shape == (len(times), 3)
    for i in range(3):
        one = pv_power_kw(
            times, kwp[i], seed=8, tilt=tilt[i], azimuth=azimuth[i], east_west=east_west[i], ac_kw=ac_kw[i]
        )
        assert one.shape == (len(times),)
        np.testing.assert_allclose(many[:, i], one, rtol=1e-12)
    # East-west spreads the day: relatively more in the morning than the south roof.
    morning = (times.hour >= 6) & (times.hour < 9)
    assert many[morning, 2].sum() / many[:, 2].sum() > many[morning, 0].sum() / many[:, 0].sum()


def test_online_lookup_equals_vectorised_series() -> None:
    day = dt.date(2026, 7, 14)
    kwp = np.array([50.0, 120.0])
    solar_day = SolarDay(day, kwp, seed=21, tilt=[12.0, 15.0], azimuth=[180.0, 160.0], ac_kw=[45.0, 100.0])
    start = pd.Timestamp(day, tz="UTC")
    # At the table's minutes, the lookup is the series exactly.
    minutes = start + pd.to_timedelta(np.arange(0, 1440, 7), unit="min")
    vec = pv_power_kw(minutes, kwp, seed=21, tilt=[12.0, 15.0], azimuth=[180.0, 160.0], ac_kw=[45.0, 100.0])
    looked_up = np.array([solar_day.power_kw(t) for t in minutes])
    np.testing.assert_allclose(looked_up, vec, rtol=1e-12, atol=1e-12)
    # Between minutes (1 s steps), within a hair of the exact computation.
    rng = np.random.default_rng(0)
    seconds = start + pd.to_timedelta(np.sort(rng.integers(4 * 3600, 20 * 3600, 600)), unit="s")
    vec_s = pv_power_kw(seconds, kwp, seed=21, tilt=[12.0, 15.0], azimuth=[180.0, 160.0], ac_kw=[45.0, 100.0])
    looked_up_s = np.array([solar_day.power_kw(float(t.value) / 1e9) for t in seconds])
    assert np.max(np.abs(looked_up_s - vec_s) / kwp) < 2e-3
    assert vec_s.max() > 10.0
    with pytest.raises(ValueError, match="outside the UTC day"):
        solar_day.power_kw(start - pd.Timedelta(seconds=1))


def test_online_rolls_over_at_midnight() -> None:
    online = SolarOnline(10.0, seed=3, tilt=12.0)
    midnight = pd.Timestamp("2026-03-02", tz="UTC")
    for t in (midnight - pd.Timedelta(hours=12), midnight + pd.Timedelta(hours=12)):
        expected = pv_power_kw(pd.DatetimeIndex([t]), 10.0, seed=3)[0]
        assert float(online.power_kw(t.to_pydatetime())) == pytest.approx(expected, abs=1e-9)
    assert online.day(midnight + pd.Timedelta(hours=1)).day == dt.date(2026, 3, 2)


def test_naive_times_are_utc() -> None:
    aware = pd.date_range("2026-08-01 04:00", periods=50, freq="17min", tz="UTC")
    np.testing.assert_array_equal(
        pv_power_kw(aware.tz_localize(None), 1.0, seed=1), pv_power_kw(aware, 1.0, seed=1)
    )
    local = aware.tz_convert("Europe/Amsterdam")
    np.testing.assert_array_equal(pv_power_kw(local, 1.0, seed=1), pv_power_kw(aware, 1.0, seed=1))


def test_linke_turbidity_table_matches_pvlib_climatology() -> None:
    mid_months = pd.DatetimeIndex([pd.Timestamp(2026, m, 15, tz="UTC") for m in range(1, 13)])
    lat, lon = SITE
    looked_up = pvlib.clearsky.lookup_linke_turbidity(mid_months, lat, lon, interp_turbidity=False)
    np.testing.assert_allclose(LINKE_TURBIDITY_MONTHLY, looked_up.to_numpy(), atol=0.02)


def test_bad_input_is_refused() -> None:
    times = pd.date_range("2026-01-01", periods=3, freq="h", tz="UTC")
    with pytest.raises(ValueError, match="seed"):
        pv_power_kw(times, 1.0, seed=-1)
    with pytest.raises(ValueError, match="tilt"):
        pv_power_kw(times, 1.0, seed=1, tilt=120.0)
    assert pv_power_kw(times[:0], 1.0, seed=1).shape == (0,)


def test_the_sky_kept_for_the_next_roof_is_only_reused_for_the_same_times_and_seed():
    """A plan asks for one year's sky once per roof; the sky kept from the last call must never answer another
    seed or another period."""
    from energyhub.synthetic import solar

    times = pd.date_range("2026-06-01", periods=3 * 96, freq="15min", tz="UTC")
    first = pv_power_kw(times, 100.0, seed=1)
    solar._LAST_SKY = None
    assert np.array_equal(pv_power_kw(times, 100.0, seed=1), first)  # computed afresh: the same
    assert np.array_equal(pv_power_kw(times, 100.0, seed=1), first)  # kept: the same
    assert not np.array_equal(pv_power_kw(times, 100.0, seed=2), first)  # other weather
    later = times + pd.Timedelta(days=1)
    solar._LAST_SKY = None
    fresh = pv_power_kw(later, 100.0, seed=1)
    pv_power_kw(times, 100.0, seed=1)
    assert np.array_equal(pv_power_kw(later, 100.0, seed=1), fresh)  # another period: its own sky
