"""Control's count of a quarter hour from the meters' energy registers, as the DSO counts it."""

from __future__ import annotations

import pytest

from energyhub.domain.isp_energy import IspEnergy

T0 = 1_800_000_000.0 // 900 * 900  # a quarter hour's start


def test_the_boundary_counter_is_interpolated_and_the_rest_extrapolated_by_power():
    energy = IspEnergy()
    energy.count(0, T0 - 30, import_wh=10_000, export_wh=0)
    # Nothing known for this quarter hour until a reading after its start.
    assert energy.so_far_kwh(0, T0 + 10, power_kw=60) is None
    energy.count(0, T0 + 30, import_wh=11_000, export_wh=0)  # 1 kWh in the minute: 500 Wh before the boundary
    assert energy.so_far_kwh(0, T0 + 30, power_kw=60) == pytest.approx(0.5)
    # 60 s after the last reading at 60 kW: one more kWh.
    assert energy.so_far_kwh(0, T0 + 90, power_kw=60) == pytest.approx(1.5)
    energy.count(0, T0 + 300, import_wh=11_000, export_wh=2_000)  # feeding in since
    assert energy.so_far_kwh(0, T0 + 300, power_kw=-10) == pytest.approx(-1.5)
    # The next quarter hour is unknown again until its first reading.
    assert energy.so_far_kwh(0, T0 + 905, power_kw=0) is None


def test_a_replayed_reading_changes_nothing_and_a_falling_counter_is_a_reset():
    energy = IspEnergy()
    energy.count(0, T0 - 10, import_wh=5_000, export_wh=100)
    energy.count(0, T0 + 10, import_wh=5_200, export_wh=100)
    energy.count(0, T0 - 60, import_wh=1, export_wh=1)  # an old reading, replayed from a buffer
    assert energy.so_far_kwh(0, T0 + 10, power_kw=0) == pytest.approx(0.1)
    energy.count(0, T0 + 20, import_wh=3, export_wh=0)  # the meter was replaced
    assert energy.resets == 1
    assert energy.so_far_kwh(0, T0 + 20, power_kw=0) is None  # counted by power until the next boundary
