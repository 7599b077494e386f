"""Simultaneity ("gelijktijdigheid"): how much PV is used at once on the same connection, inside the loop, inside
the hub, and how much is left over, which a battery must store or control must curtail.

Per quarter hour, with PV and use as the simulators export them (or as measured):

1. on the connection: ``min(pv, use)`` of each connection;
2. inside the loop: what surplus connections could give to short connections of the same loop at the same time,
   ``min(sum of surpluses, sum of shortfalls)`` per loop;
3. inside the hub: the same between loops, with what each loop has left;
4. left over: the surplus nobody in the hub uses at that moment.

The four add up to the PV on offer. Results are summed by month and by local hour of day, for every loop and for
the hub. This is the physics of sharing only: contracts (a connection's feed-in limit) can forbid what the cables
allow, which is what control's simulation then shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]

from energyhub.control.inputs import Inputs
from energyhub.domain.network import Network
from energyhub.domain.topology import Level

__all__ = ["Simultaneity", "simultaneity"]

Array = npt.NDArray[np.float64]
ISP_H = 0.25


@dataclass(frozen=True)
class Simultaneity:
    """kWh per quarter hour in each category; ``table`` sums them by loop (and ``hub``), month and hour."""

    isp_starts: pd.DatetimeIndex
    pv_kwh: Array  # per quarter hour, the hub's total
    on_connection_kwh: Array
    in_loop_kwh: Array
    in_hub_kwh: Array
    left_over_kwh: Array
    table: pd.DataFrame


def simultaneity(network: Network, inputs: Inputs, *, timezone: str = "Europe/Amsterdam") -> Simultaneity:
    pv = inputs.pv_kw * ISP_H  # connections x ISPs, kWh
    use = inputs.load_kw * ISP_H
    on_connection = np.minimum(pv, use)
    surplus = pv - on_connection
    shortfall = use - on_connection
    loops = [i for i, level in enumerate(network.levels) if level == Level.LOOP]
    loop_members = network.incidence[loops]  # loops x connections
    loop_surplus = loop_members @ surplus
    loop_shortfall = loop_members @ shortfall
    in_loop = np.minimum(loop_surplus, loop_shortfall)  # loops x ISPs
    loop_left_surplus = loop_surplus - in_loop
    loop_left_shortfall = loop_shortfall - in_loop
    in_hub_total = np.minimum(loop_left_surplus.sum(axis=0), loop_left_shortfall.sum(axis=0))
    # A loop's share of what the hub shares is in proportion to its leftover surplus.
    total_left = loop_left_surplus.sum(axis=0)
    share = np.divide(
        loop_left_surplus, total_left, out=np.zeros_like(loop_left_surplus), where=total_left > 0
    )
    in_hub = share * in_hub_total
    left_over = loop_left_surplus - in_hub
    local = pd.DatetimeIndex(inputs.isp_starts).tz_convert(ZoneInfo(timezone))
    frames = []
    for j, n in enumerate(loops):
        frames.append(
            pd.DataFrame(
                {
                    "node": network.node_ids[n],
                    "month": local.month,
                    "hour": local.hour,
                    "pv_kwh": loop_members[j] @ pv,
                    "on_connection_kwh": loop_members[j] @ on_connection,
                    "in_loop_kwh": in_loop[j],
                    "in_hub_kwh": in_hub[j],
                    "left_over_kwh": left_over[j],
                }
            )
        )
    per_loop = pd.concat(frames)
    hub = per_loop.drop(columns="node").groupby(["month", "hour"], as_index=False).sum()
    hub.insert(0, "node", next(network.node_ids[i] for i, lv in enumerate(network.levels) if lv == Level.HUB))
    table = pd.concat(
        [per_loop.groupby(["node", "month", "hour"], as_index=False).sum(), hub], ignore_index=True
    )
    return Simultaneity(
        isp_starts=pd.DatetimeIndex(inputs.isp_starts),
        pv_kwh=pv.sum(axis=0),
        on_connection_kwh=on_connection.sum(axis=0),
        in_loop_kwh=in_loop.sum(axis=0),
        in_hub_kwh=in_hub.sum(axis=0),
        left_over_kwh=left_over.sum(axis=0),
        table=table,
    )
