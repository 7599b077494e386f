"""The data clock: the time that measurements, quarter hours and contracts are counted in.

Two clocks run in every process. **Real time** (``time.monotonic``) paces everything that waits: poll intervals,
control cycles, heartbeat periods and timeouts, setpoint lifetimes, a charger's setpoint validity, staleness and
lag. The **data clock** is the time the data describes: the device timestamp of a measurement, a quarter hour's
boundaries, the contract window in force, what the live page and the dashboards show.

In production the two are the same (UTC wall time). In a simulated run faster than real time the data clock reads
``start + speed x (real - origin)``: at 60x a quarter hour of data passes in 15 real seconds, the meters count 15
minutes of energy in it, and control budgets that quarter hour as the meters count it; while a setpoint that lasts
30 s lasts 30 real seconds, as it would on the real device. Every process of one run gets the same clock through
``EHUB_SIM_CLOCK`` (``energyhub demo`` sets it for all it starts), so their timestamps agree to the millisecond.
A duration between two data-clock times is converted to real seconds with ``real_s`` (for lag, say).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["CLOCK_ENV", "Clock", "ClockError", "clock_from_env"]

CLOCK_ENV = "EHUB_SIM_CLOCK"


class ClockError(ValueError):
    """A clock description that cannot be used."""


@dataclass(frozen=True, kw_only=True)
class Clock:
    """Real time when ``start`` is None; otherwise ``start`` at real epoch second ``origin``, running ``speed``x."""

    start: datetime | None = None
    origin: float = 0.0
    speed: float = 1.0

    def __post_init__(self) -> None:
        if self.start is not None and self.start.tzinfo is None:
            raise ClockError("a simulated clock's start needs a time zone")
        if not self.speed > 0:
            raise ClockError(f"speed must be positive, got {self.speed:g}")

    @classmethod
    def simulated(cls, start: datetime, speed: float, origin: float | None = None) -> Clock:
        """A data clock that reads ``start`` now (or at real epoch second ``origin``) and runs ``speed``x."""
        return cls(start=start.astimezone(UTC), origin=time.time() if origin is None else origin, speed=speed)

    @property
    def is_simulated(self) -> bool:
        return self.start is not None

    def timestamp(self) -> float:
        """Epoch seconds on the data clock."""
        real = time.time()
        if self.start is None:
            return real
        return self.start.timestamp() + (real - self.origin) * self.speed

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp(), UTC)

    def data_s(self, real_s: float) -> float:
        """How much data time passes in ``real_s`` real seconds."""
        return real_s * self.speed

    def real_s(self, data_s: float) -> float:
        """How many real seconds ``data_s`` seconds of data time take."""
        return data_s / self.speed

    def after(self, real_s: float) -> datetime:
        """The data-clock time ``real_s`` real seconds from now (a setpoint's expiry, say)."""
        return self.now() + timedelta(seconds=self.data_s(real_s))

    def describe(self) -> str:
        if self.start is None:
            return "real time (UTC)"
        return f"simulated time from {self.start.isoformat()} at {self.speed:g}x"

    def to_env(self) -> str:
        """The ``EHUB_SIM_CLOCK`` value for this clock: ``START@ORIGINxSPEED``."""
        if self.start is None:
            return ""
        return f"{self.start.isoformat()}@{self.origin!r}x{self.speed!r}"

    @classmethod
    def parse(cls, text: str) -> Clock:
        """Read ``START@ORIGINxSPEED`` (e.g. ``2026-06-01T05:00:00+00:00@1796083200.5x60``); empty: real time."""
        text = text.strip()
        if not text:
            return cls()
        try:
            start_text, rest = text.rsplit("@", 1)
            origin_text, speed_text = rest.split("x", 1)
            start = datetime.fromisoformat(start_text)
            origin, speed = float(origin_text), float(speed_text)
        except ValueError:
            raise ClockError(
                f"{CLOCK_ENV}={text!r} is not START@ORIGINxSPEED, e.g. 2026-06-01T05:00:00+00:00@1796083200x60"
            ) from None
        if start.tzinfo is None:
            raise ClockError(f"{CLOCK_ENV}={text!r}: the start needs a time zone, e.g. +00:00")
        return cls(start=start.astimezone(UTC), origin=origin, speed=speed)


def clock_from_env() -> Clock:
    """The clock this process runs on: ``EHUB_SIM_CLOCK`` if set, real time otherwise."""
    return Clock.parse(os.environ.get(CLOCK_ENV, ""))
