"""The decide phase of an online cycle: from the frozen snapshot and control's state to a decision and setpoints.

A pure function: no MQTT, no InfluxDB, no clock read (``now`` is handed in, on the data clock). So it runs the same
in a test with a snapshot built by hand as in the loop. The contract limits become what may still flow on average
for the rest of the quarter hour (the DSO measures the quarter-hour average: energy so far plus the plan for the
rest), the same policy as the offline simulation decides, and the decision becomes one setpoint per steered device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from energyhub.control.costs import battery_wear
from energyhub.control.dispatch import DispatchInput, DispatchResult, session_urgency
from energyhub.control.policies import Policy, Step
from energyhub.control.quarter_hour import HISTORY, ISP_H, QuarterHourBook
from energyhub.control.snapshot import DeviceRef, Snapshot
from energyhub.domain.isp import isp_start
from energyhub.domain.limits import LimitBook
from energyhub.domain.network import Network
from energyhub.domain.topology import DeviceRole
from energyhub.wire.roles import (
    CHARGE_RATE_PCT,
    CHARGER_W_PER_A,
    DISCHARGE_RATE_PCT,
    MAX_CURRENT_A,
    PV_LIMIT_PCT,
)

__all__ = ["Aims", "ControlState", "Decision", "SetpointOut", "decide", "rest_of_quarter_hour", "setpoints"]

Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
ISP_S = 900.0
MIN_CURRENT_A = 6.0  # IEC 61851's lowest charging current: below it a car stops
PHASE_KW_PER_A = CHARGER_W_PER_A / 1000  # kW per ampere


class SetpointOut(NamedTuple):
    gateway: str
    device: str
    name: str
    value: float
    unit_kw: float  # the kW that one unit of the value moves (for the send threshold)
    why: str


@dataclass(frozen=True)
class Aims:
    """Per node: what may still flow on average for the rest of the quarter hour, the limits with the margin
    (what control aims inside), and the contract limits as agreed (for the record). Inf: no limit."""

    imp_rest: Array
    exp_rest: Array
    imp: Array
    exp: Array
    contract_imp: Array
    contract_exp: Array


@dataclass(frozen=True)
class Decision:
    result: DispatchResult
    aims: Aims
    setpoints: list[SetpointOut]


@dataclass
class ControlState:
    """What a decision depends on besides the snapshot; only the orchestrator changes it between cycles."""

    network: Network
    devices: list[DeviceRef]
    battery_index: dict[str, int]
    charger_index: dict[str, int]
    policy: Policy
    keys: Array  # the share key per connection
    book: LimitBook  # the contracts, day-ahead announcements merged in
    quarter: QuarterHourBook  # energy so far this quarter hour, and the history of quarter hours
    margin: float
    margin_kw: float

    def __post_init__(self) -> None:
        n_c = len(self.network.connection_ids)
        self.pv_rating_kw = np.zeros(n_c)  # per connection, all its inverters
        for ref in self.devices:
            if ref.role is DeviceRole.PV:
                self.pv_rating_kw[ref.connection] += ref.rating_kw


def decide(state: ControlState, snap: Snapshot, now: datetime) -> Decision:
    aims = rest_of_quarter_hour(
        state.book, state.network, now, state.quarter.energy_kwh, snap.load_kw, state.margin, state.margin_kw
    )
    result = state.policy.decide(_step(state, snap, aims, now))
    return Decision(result, aims, setpoints(state, result, snap))


def rest_of_quarter_hour(
    book: LimitBook,
    network: Network,
    now: datetime,
    energy_kwh: Array,
    load_kw: Array | None,
    margin: float,
    margin_kw: float,
) -> Aims:
    """Contract limits with the margin, turned into the average allowed for the rest of the quarter hour."""
    found = [book.limit_at(n, now) for n in network.node_ids]
    contract_imp = np.array([f.import_w / 1000 for f in found])
    contract_exp = np.array([f.export_w / 1000 for f in found])
    imp = np.maximum(np.minimum(contract_imp * (1 - margin), contract_imp - margin_kw), 0.0)
    # A zero feed-in limit needs its reserve too: aimed at exactly 0, the flow between two cycles lands below
    # it as often as above, and the quarter hour ends a few hundred watts fed in. So such a node aims at a
    # small import, but only as much as half its own load: with all its PV curtailed it can do no more, and a
    # PV roof without load must not be told to import.
    reach = network.flows(load_kw) if load_kw is not None else np.zeros(len(contract_exp))
    exp = np.maximum(
        np.minimum(contract_exp * (1 - margin), contract_exp - margin_kw),
        np.minimum(contract_exp * (1 - margin), -0.5 * reach),
    )
    physical = np.array([f.physical_w / 1000 for f in found])
    left_h = max((isp_start(now) + timedelta(seconds=ISP_S) - now).total_seconds(), 1.0) / 3600
    imported = np.maximum(energy_kwh, 0)
    exported = np.maximum(-energy_kwh, 0)
    # (limit x 15 min - energy so far) / time left: less than the limit after an overshoot, to bring the
    # average back; never more than the limit itself (a budget saved early is not spent as a peak later, which
    # would make the loop swing), nor the physical capacity.
    imp_rest = np.minimum(np.minimum((imp * ISP_H - imported + exported) / left_h, imp), physical)
    exp_rest = np.minimum(np.minimum((exp * ISP_H - exported + imported) / left_h, exp), physical)
    return Aims(imp_rest, exp_rest, imp, exp, contract_imp, contract_exp)


def online_urgency(snap: Snapshot, plugged: IntArray, now: datetime) -> Array:
    """Per plugged-in charger, 1..5 as the planner counts it: from the energy its session still wants and its
    departure where the session says them (an ISO 15118 vehicle, a booking), else 1 (no hurry known)."""
    urgency = np.ones(len(plugged))
    if snap.charger_wanted_kwh is None or snap.charger_departure_ts is None or not len(plugged):
        return urgency
    wanted = snap.charger_wanted_kwh[plugged]
    hours_left = (snap.charger_departure_ts[plugged] - now.timestamp()) / 3600.0
    known = np.isfinite(wanted) & np.isfinite(hours_left)
    if known.any():
        urgency[known] = session_urgency(
            wanted[known], snap.charger_max_kw[plugged][known], np.maximum(hours_left[known], 0.0)
        )
    return urgency


def _step(state: ControlState, snap: Snapshot, aims: Aims, now: datetime) -> Step:
    net = state.network
    chargers, batteries = net.chargers, net.batteries
    plugged = np.flatnonzero(snap.charger_connected)
    power = np.array([b.power_kw for b in batteries])
    capacity = np.array([b.capacity_kwh for b in batteries])
    eff = np.array([b.efficiency for b in batteries])
    d = DispatchInput(
        load_kw=snap.load_kw,
        pv_kw=snap.pv_available_kw,
        imp_kw=aims.imp_rest,
        exp_kw=aims.exp_rest,
        incidence=net.incidence,
        session_connection=np.array([chargers[c].connection for c in plugged], dtype=np.int64),
        session_max_kwh=np.array([snap.charger_max_kw[c] * ISP_H for c in plugged]),
        session_urgency=online_urgency(snap, plugged, now),
        battery_connection=np.array([b.connection for b in batteries], dtype=np.int64),
        battery_charge_max_kw=np.minimum(power, (capacity - snap.battery_soc_kwh) / (eff * ISP_H)),
        battery_discharge_max_kw=np.minimum(power, snap.battery_soc_kwh * eff / ISP_H),
        battery_target_kw=np.zeros(len(batteries)),
        share_key=state.keys,
        battery_wear=battery_wear(net),
    )
    # The quarter hour in progress is the history's last column, as measured now.
    t = HISTORY - 1
    load_hist, pv_hist = state.quarter.load_history.copy(), state.quarter.pv_history.copy()
    load_hist[:, t], pv_hist[:, t] = snap.load_kw, snap.pv_available_kw
    return Step(
        t=t,
        d=d,
        soc_kwh=snap.battery_soc_kwh,
        load_history=load_hist,
        pv_history=pv_hist,
        imp_plan=np.repeat(aims.imp[:, None], HISTORY, axis=1),
        exp_plan=np.repeat(aims.exp[:, None], HISTORY, axis=1),
    )


def setpoints(state: ControlState, result: DispatchResult, snap: Snapshot) -> list[SetpointOut]:
    """Every setpoint the decision steers, with the kW one unit of it moves."""
    net = state.network
    binding = ", ".join(f"{net.node_ids[n]} {d}" for n, d in result.binding) or "no limit binding"
    plugged = [int(p) for p in np.flatnonzero(snap.charger_connected)]
    out = []
    for ref in state.devices:
        key = f"{net.connection_ids[ref.connection]}/{ref.device}"
        if ref.role is DeviceRole.PV and ref.rating_kw > 0:
            pct = _pv_limit_pct(result, snap, ref.connection, float(state.pv_rating_kw[ref.connection]))
            out.append(SetpointOut(ref.gateway, ref.device, PV_LIMIT_PCT, pct, ref.rating_kw / 100, binding))
        elif ref.role is DeviceRole.BATTERY and (b := state.battery_index.get(key)) is not None:
            kw, rated = float(result.battery_kw[b]), net.batteries[b].power_kw
            name = CHARGE_RATE_PCT if kw >= 0 else DISCHARGE_RATE_PCT
            rate = round(100 * abs(kw) / rated, 1)
            out.append(SetpointOut(ref.gateway, ref.device, name, rate, rated / 100, binding))
        elif ref.role is DeviceRole.EV and (i := state.charger_index.get(key)) is not None and i in plugged:
            amps = float(result.session_kwh[plugged.index(i)]) / ISP_H / PHASE_KW_PER_A
            amps = round(max(amps, MIN_CURRENT_A), 1)
            out.append(SetpointOut(ref.gateway, ref.device, MAX_CURRENT_A, amps, PHASE_KW_PER_A, binding))
    return out


def _pv_limit_pct(result: DispatchResult, snap: Snapshot, connection: int, rating_kw: float) -> float:
    available = float(snap.pv_available_kw[connection])
    share = float(result.pv_used_kw[connection]) / available if available > 1e-9 else 1.0
    if share >= 0.999:
        return 100.0
    # Down to the inverter's 0.1 % step, never up: rounded up, every inverter of a node let a little more out
    # than planned, and at a zero limit the quarter hour ended fed in.
    return math.floor(max(0.0, min(1.0, share * available / rating_kw)) * 1000) / 10
