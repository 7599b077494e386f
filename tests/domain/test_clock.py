"""The data clock: real time in production, a simulation's time at its speed, the same in every process."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from energyhub.domain.clock import CLOCK_ENV, Clock, ClockError, clock_from_env

START = datetime(2026, 6, 1, 5, 0, tzinfo=UTC)


def test_a_simulated_clock_runs_at_its_speed_from_its_start():
    origin = 1_800_000_000.0
    clock = Clock(start=START, origin=origin, speed=60)
    # Frozen real time: what the clock reads is start + speed x (real - origin).
    real = origin + 15.0
    assert START.timestamp() + (real - origin) * 60 == (START + timedelta(minutes=15)).timestamp()
    assert clock.data_s(15.0) == 900.0
    assert clock.real_s(900.0) == 15.0
    now = Clock.simulated(START, 60).now()
    assert abs((now - START).total_seconds()) < 60  # read at once: within a second of real time, 60 of data


def test_the_environment_carries_one_clock_to_every_process():
    clock = Clock.simulated(START, 30)
    assert Clock.parse(clock.to_env()) == clock
    env = {**os.environ, CLOCK_ENV: clock.to_env()}
    code = "from energyhub.domain.clock import clock_from_env; print(clock_from_env().timestamp())"
    child = float(
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    here = clock.timestamp()
    # Two processes read the same clock: apart by the child's start-up only (under 2 real s, so 60 data s).
    assert abs(child - here) < 60


def test_without_the_variable_the_clock_is_real_time(monkeypatch):
    monkeypatch.delenv(CLOCK_ENV, raising=False)
    clock = clock_from_env()
    assert not clock.is_simulated
    assert abs(clock.now() - datetime.now(UTC)) < timedelta(seconds=1)
    assert clock.describe() == "real time (UTC)"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("2026-06-01T05:00:00@1800000000x60", "time zone"),
        ("2026-06-01T05:00:00+00:00", "START@ORIGINxSPEED"),
        ("2026-06-01T05:00:00+00:00@abcx60", "START@ORIGINxSPEED"),
        ("2026-06-01T05:00:00+00:00@1800000000x0", "positive"),
    ],
)
def test_a_bad_clock_is_refused_with_what_to_write(text, says):
    with pytest.raises(ClockError, match=says):
        Clock.parse(text)
