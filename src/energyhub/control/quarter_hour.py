"""This quarter hour's energy per node so far, and the quarter-hour averages behind it: what the decision budgets on.

The grid meters count it (their energy registers, ``domain/isp_energy.py``); where a meter's counter is not known for this
quarter hour, the meter's power is integrated over the data clock since the last cycle instead. The averages of the
quarter hours gone by are the MPC's history (a week and a day of them).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import numpy.typing as npt

from energyhub.control.snapshot import Snapshot
from energyhub.domain.isp import isp_start
from energyhub.domain.isp_energy import IspEnergy
from energyhub.domain.network import Network

__all__ = ["HISTORY", "ISP_H", "QuarterHourBook"]

Array = npt.NDArray[np.float64]
ISP_H = 0.25
HISTORY = 672 + 96  # a week and a day of quarter-hour averages: what the MPC's forecasts look back on


class QuarterHourBook:
    def __init__(self, network: Network) -> None:
        self.network = network
        n_c, n_n = len(network.connection_ids), len(network.node_ids)
        self.load_history = np.zeros((n_c, HISTORY))
        self.pv_history = np.zeros((n_c, HISTORY))
        self.isp: datetime | None = None
        self.energy_kwh = np.zeros(n_n)  # per node, + taken
        self.metered_connections = 0
        self.node_metered = np.zeros(n_n, dtype=bool)  # counted from the meters' energy registers
        self._power_kwh = np.zeros(n_c)  # per connection: the meter's power integrated, where no counter
        self._load_kwh = np.zeros(n_c)
        self._pv_kwh = np.zeros(n_c)
        self._last_t: float | None = None

    def account(self, now: datetime, snap: Snapshot, counters: IspEnergy, max_gap_s: float) -> None:
        """Book the time since the last cycle (``snap`` as measured now) and roll the quarter hour when it ends.
        ``max_gap_s``: at most this much data time is integrated at once, so that after a pause an old reading
        does not fill a whole quarter hour."""
        start = isp_start(now)
        if self.isp is not None and start != self.isp:
            self._roll()
        self.isp = start
        t = now.timestamp()
        if self._last_t is not None:
            since = t - max(self._last_t, start.timestamp())  # only the part in this quarter hour
            hours = min(max(since, 0.0), max_gap_s) / 3600
            self._power_kwh += snap.grid_kw * hours
            self._load_kwh += snap.load_kw * hours
            self._pv_kwh += snap.pv_available_kw * hours
        self._last_t = t
        metered = [counters.so_far_kwh(c, t, float(snap.grid_kw[c])) for c in range(len(snap.grid_kw))]
        self.metered_connections = sum(m is not None for m in metered)
        unmetered = np.array([m is None for m in metered], dtype=float)
        # A node is counted from the registers when all its connections are (else partly by integrated power).
        self.node_metered = (self.network.incidence @ unmetered) == 0
        connection_kwh = np.array(
            [m if m is not None else float(self._power_kwh[c]) for c, m in enumerate(metered)]
        )
        self.energy_kwh = self.network.flows(connection_kwh)

    def _roll(self) -> None:
        self.load_history = np.roll(self.load_history, -1, axis=1)
        self.pv_history = np.roll(self.pv_history, -1, axis=1)
        self.load_history[:, -1] = self._load_kwh / ISP_H
        self.pv_history[:, -1] = self._pv_kwh / ISP_H
        self._power_kwh[:] = 0
        self._load_kwh[:] = 0
        self._pv_kwh[:] = 0
