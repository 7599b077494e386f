"""Which measurements off the broker are readings: shared by control, the API's live view and the ingest.

A measurement is never retained: a retained one (a gateway's bug, which the broker would hand every new
subscriber, for ever) is not a reading; consumers subscribe retain-as-published, so it shows as retained live too.
Nor is one dated more than ``MAX_AHEAD_S`` real seconds ahead of the data clock (a clock error in real seconds
shows ``speed`` times as much on a simulation's data clock), or one dated before 2000 (a gateway clock that was
never set). The ingest sends those to its dead letters; control and the API ignore them, count them and log at
most once a minute.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from energyhub.domain.clock import Clock
from energyhub.wire.messages import Measurement, decode

__all__ = ["EARLIEST", "MAX_AHEAD_S", "MeasurementGate", "not_a_reading"]

log = logging.getLogger(__name__)
MAX_AHEAD_S = 60.0  # real seconds: NTP keeps a gateway within milliseconds; a minute is a broken clock
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
IGNORED_LOG_S = 60.0  # ignored measurements are logged at most this often


def not_a_reading(measurement: Measurement, clock: Clock, max_ahead_s: float = MAX_AHEAD_S) -> str | None:
    """Why this measurement cannot be a reading of now or the past, or None when it can."""
    ahead_s = clock.real_s((measurement.ts - clock.now()).total_seconds())
    if ahead_s > max_ahead_s:
        return (
            f"timestamp {measurement.ts.isoformat()} is {ahead_s:.0f} s ahead of this service's clock "
            f"(at most {max_ahead_s:g} s allowed): check the gateway's clock"
        )
    if measurement.ts < EARLIEST:
        return f"timestamp {measurement.ts.isoformat()} is before 2000: the gateway's clock was not set"
    return None


@dataclass
class MeasurementGate:
    """Admits readings, counts and (once a minute) logs what it turns away."""

    clock: Clock
    max_ahead_s: float = MAX_AHEAD_S
    retained: int = field(default=0, init=False)
    misdated: int = field(default=0, init=False)
    _logged: float = field(default=-math.inf, init=False, repr=False)

    def admit(self, topic: str, payload: bytes, *, retained: bool) -> Measurement | None:
        """The measurement if it is a reading, else None. Raises ``MessageError`` if it is no measurement."""
        if retained:
            self.retained += 1
            self._log(topic, "retained")
            return None
        measurement = decode(Measurement, payload)
        why = not_a_reading(measurement, self.clock, self.max_ahead_s)
        if why is not None:
            self.misdated += 1
            self._log(topic, why)
            return None
        return measurement

    def _log(self, topic: str, why: str) -> None:
        if time.monotonic() - self._logged < IGNORED_LOG_S:
            return
        self._logged = time.monotonic()
        log.warning(
            "ignoring measurements that are not readings (%d retained, %d misdated so far); latest: %s, %s",
            self.retained,
            self.misdated,
            topic,
            why,
        )
