"""The record phase of an online cycle: the cycle's books (counts, cycle times, infeasible episodes) and its points.

``control_node`` gets per node the measured flow (the sum of its grid meters, as a dashboard next to the meters
must show), the flow the decision planned, the contract limits, what control aims at and the energy so far this
quarter hour; ``control_cycle`` the cycle itself, with the setpoint acknowledgements counted since start
(``setpoints_applied``, ``setpoints_rejected``). A database that is away costs a warning, never a cycle.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from datetime import datetime

import numpy as np

from energyhub.control.acks import AckCounts
from energyhub.control.cycle import Decision
from energyhub.control.quarter_hour import QuarterHourBook
from energyhub.control.snapshot import Snapshot
from energyhub.domain.network import Network
from energyhub.io.influx import InfluxClient, InfluxError
from energyhub.io.line_protocol import FieldValue, encode_point

__all__ = ["CYCLES_KEPT", "INFEASIBLE_LOG_S", "Recorder", "cycle_lines", "over_aim"]

log = logging.getLogger(__name__)
INFEASIBLE_LOG_S = 60.0
CYCLES_KEPT = 3600  # cycle times kept in memory (an hour at 1 s), for a test or a look in a debugger


def _finite(name: str, value: float) -> dict[str, FieldValue]:
    return {name: float(value)} if np.isfinite(value) else {}  # no limit: no field


def cycle_lines(
    site: str,
    policy: str,
    network: Network,
    decision: Decision,
    snap: Snapshot,
    quarter: QuarterHourBook,
    fields: dict[str, FieldValue],
    ts: int,
) -> list[str]:
    """The points of one cycle: one ``control_node`` per node, then ``control_cycle`` with ``fields`` added."""
    result, aims = decision.result, decision.aims
    measured = network.flows(snap.grid_kw)
    lines = [
        encode_point(
            "control_node",
            {"site": site, "node": node, "level": str(network.levels[n])},
            {
                "flow_kw": float(measured[n]),
                "planned_kw": float(result.node_kw[n]),
                **_finite("limit_import_kw", aims.contract_imp[n]),
                **_finite("limit_export_kw", aims.contract_exp[n]),
                # What control aims at: the limits less the margin (a zero feed-in aims at a small import).
                **_finite("aim_import_kw", aims.imp[n]),
                **_finite("aim_export_kw", aims.exp[n]),
                "isp_energy_kwh": float(quarter.energy_kwh[n]),
                "metered": int(quarter.node_metered[n]),  # 1: counted from the meters' energy registers
            },
            ts,
        )
        for n, node in enumerate(network.node_ids)
    ]
    binding = ";".join(f"{network.node_ids[n]}:{d}" for n, d in result.binding)
    lines.append(
        encode_point(
            "control_cycle",
            {"site": site, "policy": policy},
            {
                # 0/1 integers rather than booleans: a dashboard sums them per interval.
                "lp": int(result.solved),
                "infeasible": int(result.infeasible),
                "curtailed_kw": float((snap.pv_available_kw - result.pv_used_kw).sum()),
                "binding": binding or "none",
                "stale_devices": len(snap.stale),
                "metered_connections": quarter.metered_connections,
                **fields,
            },
            ts,
        )
    )
    return lines


def over_aim(network: Network, decision: Decision) -> list[str]:
    """The nodes whose planned flow passes what control aims at (where an infeasible decision does harm)."""
    node_kw, aims = decision.result.node_kw, decision.aims
    over = (node_kw > aims.imp + 1e-6) | (-node_kw > aims.exp + 1e-6)
    return [network.node_ids[n] for n in np.flatnonzero(over)]


class Recorder:
    def __init__(self, influx: InfluxClient, network: Network, site: str, policy: str) -> None:
        self.influx = influx
        self.network = network
        self.site = site
        self.policy = policy
        self.cycles = 0
        self.infeasible_cycles = 0
        self.cycle_ms: deque[float] = deque(maxlen=CYCLES_KEPT)
        self._infeasible_logged = -math.inf

    def book(self, decision: Decision, ms: float, mono: float) -> None:
        """Count the cycle; an infeasible one is logged at most once a minute."""
        self.cycle_ms.append(ms)
        self.cycles += 1
        if not decision.result.infeasible:
            return
        self.infeasible_cycles += 1
        if mono - self._infeasible_logged > INFEASIBLE_LOG_S:
            self._infeasible_logged = mono
            log.warning(
                "no action keeps every limit (%d cycles so far): over at %s; doing the least harm",
                self.infeasible_cycles,
                ", ".join(over_aim(self.network, decision)) or "the rest-of-quarter-hour budget",
            )

    async def write(
        self,
        now: datetime,
        decision: Decision,
        snap: Snapshot,
        quarter: QuarterHourBook,
        *,
        ms: float,
        sent: int,
        acks: AckCounts,
    ) -> None:
        fields: dict[str, FieldValue] = {
            "cycle_ms": ms,
            "setpoints": sent,
            # Cumulative since control started: a dashboard takes the difference per interval.
            "setpoints_applied": acks.applied,
            "setpoints_rejected": acks.rejected,
        }
        lines = cycle_lines(
            self.site, self.policy, self.network, decision, snap, quarter, fields, int(now.timestamp() * 1e9)
        )
        try:
            await self.influx.write(lines)
        except InfluxError as exc:
            log.warning("could not write control figures: %s", exc)
