"""limit_at composes every contract part, at quarter-hour boundaries, including the daylight-saving days."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from energyhub.domain.isp import ISP, isp_range, local_day_bounds
from energyhub.domain.limits import LimitBook, UnknownNode, limit_at
from energyhub.domain.topology import Level
from tests.communities import base, dump

UTC_ = UTC


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def book_with(limits: dict, node: int = 0) -> LimitBook:
    doc = base()
    doc["loops"][0]["connections"][node]["limits"] = limits
    from energyhub.domain.community import parse_community

    return LimitBook(parse_community(dump(doc)))


def kw(book: LimitBook, t: datetime, node: str = "c-001", direction: str = "import") -> float:
    return getattr(book.limit_at(node, t), f"{direction}_w") / 1000


def test_firm_and_physical():
    book = book_with({"import_kw": 120, "export_kw": 30})
    limit = book.limit_at("c-001", at(2026, 6, 1, 12, 7))
    assert (limit.import_w, limit.export_w, limit.physical_w) == (120_000, 30_000, 173_000)
    assert (limit.import_source, limit.export_source) == ("firm", "firm")
    assert limit.isp_start == at(2026, 6, 1, 12, 0)
    assert limit.level is Level.CONNECTION


def test_levels_and_nodes_without_limits():
    book = book_with({"import_kw": 120, "export_kw": 0})
    hub = book.limit_at("hub", at(2026, 6, 1))
    assert (hub.level, hub.import_w, hub.export_w, hub.export_source) == (Level.HUB, 5_000_000, 0, "firm")
    micro = book.limit_at("micro-1", at(2026, 6, 1))
    assert micro.level is Level.MICRO
    assert micro.import_w == 300_000
    assert math.isinf(micro.export_w)
    assert micro.export_source == "none"
    assert math.isinf(micro.physical_w)
    loop = book.limit_at("loop-1", at(2026, 6, 1))
    assert (loop.level, loop.import_w, loop.export_w, loop.physical_w) == (Level.LOOP, 3e6, 5e5, 6e6)
    group = book.limit_at("group-1", at(2026, 6, 1))
    assert (group.level, group.import_w, group.export_w) == (Level.GROUP, 200_000, 0)
    assert book.nodes["group-1"].children == ("c-001", "c-002")
    assert book.nodes["c-003"].parent == "micro-1"
    assert book.nodes["loop-2"].children == ("micro-1", "c-005")


def test_time_block_on_quarter_hour_boundaries():
    # Tuesday 2 June 2026, CEST (UTC+2): the block runs 22:00 local Tue to 06:00 local Wed.
    book = book_with(
        {
            "import_kw": 20,
            "export_kw": 0,
            "time_blocks": [{"days": ["tue"], "start": "22:00", "end": "06:00", "import_kw": 100}],
        }
    )
    assert kw(book, at(2026, 6, 2, 19, 59, 59)) == 20  # 21:59:59 local, ISP 21:45
    limit = book.limit_at("c-001", at(2026, 6, 2, 20, 0))  # 22:00 local
    assert (limit.import_w, limit.import_source) == (120_000, "firm+time_blocks[0]")
    assert limit.export_w == 0
    assert limit.export_source == "firm"
    assert kw(book, at(2026, 6, 3, 3, 45)) == 120  # 05:45 local Wednesday: still inside
    assert kw(book, at(2026, 6, 3, 4, 0)) == 20  # 06:00 local: block over
    assert kw(book, at(2026, 6, 9, 20, 0)) == 120  # next Tuesday again
    assert kw(book, at(2026, 6, 3, 20, 0)) == 20  # Wednesday 22:00: not a block day


@pytest.mark.parametrize(
    ("day", "expected_isps"),
    [(datetime(2026, 3, 29), 12), (datetime(2026, 10, 25), 20), (datetime(2026, 6, 7), 16)],
)
def test_time_block_follows_the_wall_clock_on_dst_days(day, expected_isps):
    # 00:00-04:00 local on a Sunday: 3 hours when clocks go forward, 5 when they go back, 4 otherwise.
    book = book_with(
        {
            "import_kw": 0,
            "export_kw": 0,
            "time_blocks": [{"days": ["sun"], "start": "00:00", "end": "04:00", "import_kw": 100}],
        }
    )
    from zoneinfo import ZoneInfo

    start, end = local_day_bounds(day.date(), ZoneInfo("Europe/Amsterdam"))
    inside = [t for t in isp_range(start, end) if kw(book, t) == 100]
    assert len(inside) == expected_isps
    assert inside[0] == start  # from local midnight
    assert inside[-1] + ISP == inside[0] + expected_isps * ISP  # contiguous


def test_day_ahead_profile_on_the_long_dst_day():
    values = [float(i) for i in range(100)]
    book = book_with(
        {
            "import_kw": 10,
            "export_kw": 0,
            "day_ahead": {"import_kw": 200, "profiles": [{"date": "2026-10-25", "import_kw": values}]},
        }
    )
    day_start = at(2026, 10, 24, 22, 0)  # local midnight, CEST
    for i in (0, 1, 8, 11, 12, 99):  # 8 = first 02:00 (CEST), 12 = second 02:00 (CET), 99 = last ISP
        t = day_start + i * ISP
        limit = book.limit_at("c-001", t + timedelta(minutes=14))
        assert limit.import_w == (10 + i) * 1000, i
        assert limit.import_source == ("firm+day_ahead" if i else "firm")
    # The next day has no announcement: the full non-firm capacity (unannounced: full).
    assert kw(book, at(2026, 10, 25, 23, 0)) == 210


def test_day_ahead_profile_on_the_short_dst_day_and_unannounced_none():
    values = [float(i) for i in range(92)]
    book = book_with(
        {
            "import_kw": 0,
            "export_kw": 0,
            "day_ahead": {
                "import_kw": 100,
                "export_kw": 50,
                "unannounced": "none",
                "profiles": [{"date": "2026-03-29", "import_kw": values}],
            },
        }
    )
    assert kw(book, at(2026, 3, 28, 23, 0)) == 0  # index 0
    assert kw(book, at(2026, 3, 29, 1, 0)) == 8  # 03:00 CEST is the 9th quarter hour of the short day
    assert kw(book, at(2026, 3, 29, 21, 45)) == 91  # last
    assert kw(book, at(2026, 3, 29, 22, 0)) == 0  # unannounced day: none
    # The profile gives only import values: export on that day counts as unannounced too.
    assert kw(book, at(2026, 3, 29, 12, 0), direction="export") == 0


def test_capacity_limitation_window_in_season():
    book = book_with(
        {
            "import_kw": 120,
            "export_kw": 0,
            "capacity_limitation": {
                "windows": [
                    {
                        "months": [11, 12, 1, 2],
                        "days": ["mon", "tue", "wed", "thu", "fri"],
                        "start": "17:00",
                        "end": "20:00",
                        "import_kw": 50,
                    }
                ]
            },
        }
    )
    # Tuesday 1 December 2026, CET (UTC+1)
    assert kw(book, at(2026, 12, 1, 15, 59)) == 120  # 16:59 local
    limit = book.limit_at("c-001", at(2026, 12, 1, 16, 0))  # 17:00 local
    assert (limit.import_w, limit.import_source) == (50_000, "capacity_limitation.windows[0]")
    assert kw(book, at(2026, 12, 1, 18, 45)) == 50  # 19:45 local
    assert kw(book, at(2026, 12, 1, 19, 0)) == 120  # 20:00 local
    assert kw(book, at(2026, 12, 5, 16, 0)) == 120  # Saturday
    assert kw(book, at(2026, 6, 2, 15, 0)) == 120  # June, 17:00 CEST: out of season


def test_capacity_limitation_call_and_caps_only_lower():
    book = book_with(
        {
            "import_kw": 120,
            "export_kw": 0,
            "capacity_limitation": {
                "calls": [
                    {"start": "2026-06-01T10:00:00Z", "end": "2026-06-01T11:00:00Z", "import_kw": 30},
                    {"start": "2026-06-02T10:00:00Z", "end": "2026-06-02T11:00:00Z", "import_kw": 500},
                ]
            },
        }
    )
    assert kw(book, at(2026, 6, 1, 9, 59)) == 120
    limit = book.limit_at("c-001", at(2026, 6, 1, 10, 0))
    assert (limit.import_w, limit.import_source) == (30_000, "capacity_limitation.calls[0]")
    assert kw(book, at(2026, 6, 1, 10, 59, 59)) == 30
    assert kw(book, at(2026, 6, 1, 11, 0)) == 120
    assert book.limit_at("c-001", at(2026, 6, 2, 10, 30)).import_source == "firm"  # a cap above the limit


def test_all_parts_together():
    book = book_with(
        {
            "import_kw": 50,
            "export_kw": 10,
            "time_blocks": [
                {"days": ["mon"], "start": "00:00", "end": "24:00", "import_kw": 30, "export_kw": 5}
            ],
            "day_ahead": {"import_kw": 40, "export_kw": 0},
            "capacity_limitation": {
                "windows": [{"days": ["mon"], "start": "12:00", "end": "13:00", "import_kw": 100}]
            },
        }
    )
    # Monday 1 June 2026 10:00 UTC = 12:00 CEST: 50 + 30 + 40 = 120, capped to 100 by the window.
    limit = book.limit_at("c-001", at(2026, 6, 1, 10, 0))
    assert (limit.import_w, limit.import_source) == (100_000, "capacity_limitation.windows[0]")
    assert (limit.export_w, limit.export_source) == (15_000, "firm+time_blocks[0]")
    limit = book.limit_at("c-001", at(2026, 6, 1, 9, 45))
    assert (limit.import_w, limit.import_source) == (120_000, "firm+time_blocks[0]+day_ahead")


def test_unknown_node_and_naive_time():
    book = book_with({"import_kw": 120, "export_kw": 0})
    with pytest.raises(UnknownNode, match="unknown node 'c-999'"):
        book.limit_at("c-999", at(2026, 6, 1))
    with pytest.raises(ValueError, match="naive datetime"):
        book.limit_at("c-001", datetime(2026, 6, 1))


def test_limit_at_function():
    from energyhub.domain.community import parse_community

    community = parse_community(dump(base()))
    assert limit_at(community, "c-001", at(2026, 6, 1)).import_w == 120_000
