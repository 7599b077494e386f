from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from energyhub.domain.isp import (
    ISP,
    isp_end,
    isp_index_in_local_day,
    isp_range,
    isp_start,
    isps_in_local_day,
    local_day_bounds,
)

AMS = ZoneInfo("Europe/Amsterdam")


@pytest.mark.parametrize(
    ("t", "start"),
    [
        (datetime(2026, 6, 1, 12, 0, tzinfo=UTC), datetime(2026, 6, 1, 12, 0, tzinfo=UTC)),
        (datetime(2026, 6, 1, 12, 14, 59, 999999, tzinfo=UTC), datetime(2026, 6, 1, 12, 0, tzinfo=UTC)),
        (datetime(2026, 6, 1, 12, 15, tzinfo=UTC), datetime(2026, 6, 1, 12, 15, tzinfo=UTC)),
        (
            datetime(2026, 6, 1, 14, 59, tzinfo=timezone(timedelta(hours=2))),
            datetime(2026, 6, 1, 12, 45, tzinfo=UTC),
        ),
    ],
)
def test_isp_start(t, start):
    assert isp_start(t) == start
    assert isp_start(t).tzinfo == UTC
    assert isp_end(t) == start + ISP


def test_naive_time_is_refused():
    with pytest.raises(ValueError, match="naive datetime"):
        isp_start(datetime(2026, 6, 1, 12, 0))


@pytest.mark.parametrize(
    ("day", "count"), [(date(2026, 3, 29), 92), (date(2026, 6, 1), 96), (date(2026, 10, 25), 100)]
)
def test_quarter_hours_per_local_day(day, count):
    assert isps_in_local_day(day, AMS) == count
    start, end = local_day_bounds(day, AMS)
    assert len(list(isp_range(start, end))) == count


def test_local_day_bounds_across_dst():
    start, end = local_day_bounds(date(2026, 10, 25), AMS)
    assert start == datetime(2026, 10, 24, 22, 0, tzinfo=UTC)  # midnight CEST
    assert end == datetime(2026, 10, 25, 23, 0, tzinfo=UTC)  # midnight CET


def test_index_in_local_day_on_the_long_day():
    # 2026-10-25: 02:00-03:00 local happens twice; the index keeps counting through both.
    assert isp_index_in_local_day(datetime(2026, 10, 24, 22, 0, tzinfo=UTC), AMS) == (date(2026, 10, 25), 0)
    assert isp_index_in_local_day(datetime(2026, 10, 25, 0, 0, tzinfo=UTC), AMS) == (date(2026, 10, 25), 8)
    assert isp_index_in_local_day(datetime(2026, 10, 25, 1, 0, tzinfo=UTC), AMS) == (date(2026, 10, 25), 12)
    assert isp_index_in_local_day(datetime(2026, 10, 25, 22, 59, tzinfo=UTC), AMS) == (date(2026, 10, 25), 99)
    assert isp_index_in_local_day(datetime(2026, 10, 25, 23, 0, tzinfo=UTC), AMS) == (date(2026, 10, 26), 0)


def test_index_in_local_day_on_the_short_day():
    assert isp_index_in_local_day(datetime(2026, 3, 29, 0, 45, tzinfo=UTC), AMS) == (date(2026, 3, 29), 7)
    assert isp_index_in_local_day(datetime(2026, 3, 29, 1, 0, tzinfo=UTC), AMS) == (
        date(2026, 3, 29),
        8,
    )  # 03:00 CEST
    assert isp_index_in_local_day(datetime(2026, 3, 29, 21, 45, tzinfo=UTC), AMS) == (date(2026, 3, 29), 91)
