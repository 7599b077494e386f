"""A quarter hour's energy from a meter's energy counter: the readings differenced, a reset found, never a zero.

Between two consecutive readings the counter rose by their difference; that energy is spread evenly over the time
between them, so a quarter hour gets the share of each interval that lies inside it (a boundary between two
readings one poll apart is interpolated; a gap is bridged by the counter itself, which kept counting). A counter
that falls by more than ``slack_wh`` was reset (meter replaced, restarted, a simulator restarted): it restarted from
zero, so the interval counts the reading after the reset (the energy since the restart; what came between the last
reading before and the restart is not known) and the reset is reported. A fall within ``slack_wh`` is rounding of
a float32 register, not a reset, and counts as nothing.
A quarter hour bridged across a gap so gets its energy from the counter, and is done again when the gap's
readings arrive (replayed from the gateway's buffer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["COUNTER_SLACK_WH", "CounterEnergy", "Reset", "counter_energy"]

COUNTER_SLACK_WH = 1.0  # float32 kWh registers round by a few Wh on large counters: not a reset


@dataclass(frozen=True, slots=True)
class Reset:
    """A counter that fell between the reading at ``before_t`` and the one at ``t``."""

    t: float  # epoch s of the first reading after the reset
    before: float
    after: float


@dataclass
class CounterEnergy:
    wh: float = 0.0
    readings: int = 0  # readings inside the quarter hour
    resets: list[Reset] = field(default_factory=list)


def counter_energy(
    readings: Sequence[tuple[float, float]],
    start: float,
    end: float,
    *,
    slack_wh: float = COUNTER_SLACK_WH,
) -> CounterEnergy | None:
    """The energy counted in ``[start, end)`` from ``(epoch s, counter)`` readings sorted by time.

    None when no interval between two readings overlaps the quarter hour (nothing known: not zero)."""
    out = CounterEnergy()
    known = False
    previous: tuple[float, float] | None = None
    for t, value in readings:
        if start <= t < end:
            out.readings += 1
        if previous is not None and t > previous[0]:
            t0, v0 = previous
            overlap = min(t, end) - max(t0, start)
            rise = value - v0
            if rise < -slack_wh:
                rise = value
                if start <= t < end:
                    out.resets.append(Reset(t, v0, value))
            elif rise < 0:
                rise = 0.0
            if overlap > 0:
                known = True
                out.wh += rise * overlap / (t - t0)
        if previous is None or t > previous[0]:
            previous = (t, value)
        if t >= end:
            break
    return out if known else None
