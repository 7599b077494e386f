"""Load shapes (src/energyhub/synthetic/loads.py): a change of level takes half an hour inside the hour with the higher level,
holidays, and a year that sums to the connection's yearly use."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from energyhub.synthetic.loads import PROFILES, WEEKLY_CALENDAR, _shape_values, dutch_holidays, load_power_w

AMS = ZoneInfo("Europe/Amsterdam")
YEAR_START = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
YEAR_END = int(datetime(2027, 1, 1, tzinfo=UTC).timestamp())


def shape_at(profile: str, local: str) -> float:
    when = datetime.fromisoformat(local).replace(tzinfo=AMS)
    return float(_shape_values(profile, np.array([int(when.timestamp())]))[0])


# (profile, local time, relative power). night_weekend on Wednesday 2026-03-11: 0.25 by day, 1.0 from 22:00 to 06:00.
@pytest.mark.parametrize(
    ("profile", "local", "expected"),
    [
        ("night_weekend", "2026-03-11T21:00", 0.25),
        ("night_weekend", "2026-03-11T21:45", 0.25),  # nothing before the block opens
        ("night_weekend", "2026-03-11T21:59:59", 0.25),
        ("night_weekend", "2026-03-11T22:00", 0.25),  # the rise starts at 22:00 ...
        ("night_weekend", "2026-03-11T22:15", 0.625),
        ("night_weekend", "2026-03-11T22:30", 1.0),  # ... and is done half an hour later
        ("night_weekend", "2026-03-11T23:59", 1.0),
        ("night_weekend", "2026-03-12T05:00", 1.0),
        (
            "night_weekend",
            "2026-03-12T05:30",
            1.0,
        ),  # the fall starts half an hour before the block closes ...
        ("night_weekend", "2026-03-12T05:45", 0.625),
        ("night_weekend", "2026-03-12T06:00", 0.25),  # ... and is done when it closes
        ("night_weekend", "2026-03-12T06:30", 0.25),
        ("business", "2026-03-11T06:00", 0.25),  # 05:00 0.25, 06:00 0.6, 07:00 1.0: two rises
        ("business", "2026-03-11T06:15", 0.425),
        ("business", "2026-03-11T06:45", 0.6),
        ("business", "2026-03-11T07:15", 0.8),
        ("business", "2026-03-11T16:45", 0.775),  # 1.0 until 17:00, then 0.55: the fall ends at 17:00
        ("business", "2026-03-11T17:00", 0.55),
        ("business", "2026-03-14T12:00", 0.5),  # Saturday
        ("business", "2026-04-06T12:00", 0.22),  # Easter Monday runs as a Sunday
        ("night_weekend", "2026-04-06T12:00", 0.25),  # but not for the time-block company: no block opens
        ("night_weekend", "2026-04-06T23:00", 1.0),
    ],
)
def test_shape(profile: str, local: str, expected: float) -> None:
    assert shape_at(profile, local) == pytest.approx(expected)


def hour_levels(profile: str, epoch_s: np.ndarray) -> np.ndarray:
    """Each instant's own hour level, from the tables, without the ramps."""
    out = np.empty(len(epoch_s))
    for i, t in enumerate(epoch_s):
        local = datetime.fromtimestamp(int(t), UTC).astimezone(AMS)
        day = local.date()
        holiday = profile not in WEEKLY_CALENDAR and day in dutch_holidays(day.year)
        kind = 2 if holiday or day.weekday() == 6 else (1 if day.weekday() == 5 else 0)
        out[i] = PROFILES[profile][kind][local.hour]
    return out


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_a_load_stays_within_its_own_hour_level_and_reaches_it_at_half_past(profile: str) -> None:
    # Every 5 minutes over two weeks in March, with the switch to summer time, and Easter Monday in April.
    spans = [(datetime(2026, 3, 23), 14), (datetime(2026, 4, 5), 2)]
    times = np.concatenate(
        [
            np.arange(
                int(start.replace(tzinfo=AMS).timestamp()),
                int((start + timedelta(days=days)).replace(tzinfo=AMS).timestamp()),
                300,
                dtype=np.int64,
            )
            for start, days in spans
        ]
    )
    shape = _shape_values(profile, times)
    level = hour_levels(profile, times)
    assert np.all(shape <= level + 1e-12), "a ramp lies inside the hour with the higher level"
    # A rise is done and a fall not yet begun at half past: every hour reaches its own level.
    local_minute = np.array([datetime.fromtimestamp(int(t), UTC).astimezone(AMS).minute for t in times])
    at_half = local_minute == 30
    assert np.allclose(shape[at_half], level[at_half])


def test_a_year_sums_to_the_yearly_use() -> None:
    times = np.arange(YEAR_START, YEAR_END, 60, dtype=np.int64) + 30
    for profile in ("business", "night_weekend", "logistics_24h", "ev_plaza"):
        power_w = load_power_w(times, profile=profile, annual_kwh=500_000, seed=3, key="c-001")
        kwh = power_w.mean() * 8760 / 1000  # 2026 has 365 days; the scale is per 365.25
        assert kwh == pytest.approx(500_000 * 365 / 365.25, rel=0.01), profile


def test_holidays() -> None:
    assert date(2026, 4, 6) in dutch_holidays(2026)  # Easter Monday
    assert date(2026, 4, 27) in dutch_holidays(2026)  # King's Day
    assert date(2026, 5, 5) not in dutch_holidays(2026)  # Liberation Day only every five years
    assert date(2025, 5, 5) in dutch_holidays(2025)
