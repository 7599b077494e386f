"""This quarter hour's energy per connection, as its grid meter counts it: the DSO's own yardstick.

The DSO settles a quarter hour on the meter's energy registers, not on sampled power. So control counts from the
same registers: the counter at the quarter hour's start (interpolated between the two readings on either side of
the boundary, one poll apart) and the latest counter, plus the latest power for the moments since that reading.
Sampled power summed over the cycles drifts from the counters (at 60x a cycle spans a minute of data time); the
counters do not. A connection whose counter is unknown for this quarter hour (no reading yet, a reset, a meter
without energy registers) gets ``None`` and control falls back to its own integration of the meter's power.

All times are on the data clock (``energyhub.domain.clock``): readings carry their device timestamp, and the quarter hour is
the data clock's.
"""

from __future__ import annotations

from dataclasses import dataclass

from energyhub.domain.isp import isp_start_s

__all__ = ["IspEnergy"]

COUNTER_SLACK_WH = 1.0  # float32 kWh registers round by a few Wh on large counters: not a reset


@dataclass
class _Counter:
    ts: float  # data-clock epoch s of the newest reading
    import_wh: float
    export_wh: float
    isp: float | None = None  # the quarter hour whose starting counter is known
    isp_start_wh: float = 0.0  # net counter (import - export) at that quarter hour's start

    @property
    def net_wh(self) -> float:
        return self.import_wh - self.export_wh


class IspEnergy:
    """The counters of every connection's grid meter, fed reading by reading."""

    def __init__(self) -> None:
        self._counters: dict[int, _Counter] = {}
        self.resets: int = 0

    def count(self, connection: int, ts: float, import_wh: float, export_wh: float) -> None:
        """Take one reading of a connection's grid meter (Wh registers, device timestamp ``ts``)."""
        last = self._counters.get(connection)
        if last is None:
            self._counters[connection] = _Counter(ts, import_wh, export_wh)
            return
        if ts <= last.ts:
            return  # a replayed or repeated reading: the newer one stands
        if import_wh < last.import_wh - COUNTER_SLACK_WH or export_wh < last.export_wh - COUNTER_SLACK_WH:
            # A counter that falls was reset (meter replaced, simulator restarted): start again, and count this
            # quarter hour by power until the next boundary.
            self.resets += 1
            self._counters[connection] = _Counter(ts, import_wh, export_wh)
            return
        start = isp_start_s(ts)
        if start > last.ts:
            # A boundary lies between the two readings: the counter there, as the meter would have read it.
            share = (start - last.ts) / (ts - last.ts)
            net = import_wh - export_wh
            last.isp, last.isp_start_wh = start, last.net_wh + (net - last.net_wh) * share
        last.ts, last.import_wh, last.export_wh = ts, import_wh, export_wh

    def so_far_kwh(self, connection: int, now: float, power_kw: float | None) -> float | None:
        """Energy (kWh, + taken) of the quarter hour containing ``now`` up to ``now``; None when unknown."""
        counter = self._counters.get(connection)
        start = isp_start_s(now)
        if counter is None or counter.isp != start:
            return None
        since = max(0.0, now - counter.ts) / 3600.0
        return (counter.net_wh - counter.isp_start_wh) / 1000.0 + (power_kw or 0.0) * since
