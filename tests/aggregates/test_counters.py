"""A quarter hour's energy from a counter's readings: interpolated at the boundaries, resets counted from zero."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from energyhub.aggregates.counters import counter_energy


def test_readings_across_the_boundaries_are_shared_by_time():
    # 100 Wh between 890 and 910 s: half of it before the quarter hour's end at 900 s.
    readings = [(0.0, 1000.0), (890.0, 1890.0), (910.0, 1990.0)]
    first = counter_energy(readings, 0.0, 900.0)
    second = counter_energy(readings, 900.0, 1800.0)
    assert first is not None
    assert second is not None
    assert first.wh == pytest.approx(890.0 + 50.0)
    assert second.wh == pytest.approx(50.0)  # known as far as the readings go: a later reading adds the rest
    assert first.readings == 2
    assert second.readings == 1


def test_a_reset_counts_the_reading_after_it_and_is_reported():
    readings = [(0.0, 5000.0), (10.0, 5010.0), (20.0, 7.0), (30.0, 17.0)]
    energy = counter_energy(readings, 0.0, 900.0)
    assert energy is not None
    assert energy.wh == pytest.approx(10.0 + 7.0 + 10.0)
    assert [(r.t, r.before, r.after) for r in energy.resets] == [(20.0, 5010.0, 7.0)]


def test_a_float32_wobble_is_no_reset_and_no_energy():
    energy = counter_energy([(0.0, 1e6), (10.0, 1e6 - 0.5), (20.0, 1e6 + 1.5)], 0.0, 900.0)
    assert energy is not None
    assert energy.resets == []
    assert energy.wh == pytest.approx(2.0)


def test_nothing_known_is_none_not_zero():
    assert counter_energy([], 0.0, 900.0) is None
    assert counter_energy([(950.0, 1.0), (960.0, 2.0)], 0.0, 900.0) is None
    # One reading only: no interval, so no energy known either.
    assert counter_energy([(100.0, 1.0)], 0.0, 900.0) is None


def test_a_gap_is_bridged_by_the_counter():
    # Readings an hour apart: the counter's rise is spread evenly over the hour's four quarter hours.
    readings = [(0.0, 0.0), (3600.0, 400.0)]
    parts = [counter_energy(readings, q * 900.0, (q + 1) * 900.0) for q in range(4)]
    assert [p.wh if p else None for p in parts] == pytest.approx([100.0] * 4)


@given(
    st.lists(st.tuples(st.floats(1, 60), st.floats(0, 500)), min_size=2, max_size=200),
    st.floats(0, 1e6),
)
def test_quarter_hours_add_up_to_the_counter(steps, first):
    """Without resets, the quarter hours over the readings' span sum to the last reading less the first."""
    t, v, readings = 0.0, first, [(0.0, first)]
    for dt, rise in steps:
        t, v = t + dt, v + rise
        readings.append((t, v))
    quarters = [counter_energy(readings, q * 900.0, (q + 1) * 900.0) for q in range(int(t // 900) + 1)]
    total = sum(q.wh for q in quarters if q is not None)
    assert total == pytest.approx(v - first, rel=1e-9, abs=1e-6)
