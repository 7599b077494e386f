"""Offline simulation: the same policy code as online, run over quarter-hour data, with the limits checked.

For each quarter hour the simulation freezes the state (load, PV on offer, the sessions plugged in, battery state
of charge), asks the policy, applies the decision, and books every node's import and export against its
contract limits (before the margin: the DSO's view). ``nodes.csv`` holds one row per node (connection, micro
group, loop, hub; group agreements are enforced but not listed) and quarter hour, ``summary.json`` the totals.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]

from energyhub.control.costs import battery_wear
from energyhub.control.dispatch import DispatchInput, DispatchResult, session_urgency
from energyhub.control.inputs import Inputs
from energyhub.control.limits import LimitTable
from energyhub.control.policies import PlannedSessions, Policy, Step
from energyhub.control.shortfall import explain
from energyhub.domain.network import Battery, Network

__all__ = ["SHARE_KEYS", "ShareKeyError", "SimulationResult", "share_key", "simulate", "write_outputs"]

Array = npt.NDArray[np.float64]
ISP_H = 0.25
ISP = timedelta(minutes=15)
LISTED_LEVELS = ("connection", "micro", "loop", "hub")
SHARE_KEYS = ("kwp", "contracted", "priority")


@dataclass
class SimulationResult:
    policy: str
    start: datetime
    end: datetime
    isps: int
    violations: int = 0
    violation_kwh: float = 0.0
    curtailed_kwh: float = 0.0
    pv_available_kwh: float = 0.0
    ev_requested_kwh: float = 0.0
    ev_undelivered_kwh: float = 0.0
    hub_export_kwh: float = 0.0
    hub_import_kwh: float = 0.0
    self_consumption_pct: float = 0.0
    battery_throughput_kwh: float = 0.0
    infeasible_isps: int = 0
    lp_isps: int = 0
    runtime_s: float = 0.0
    binding: Counter[str] = field(default_factory=Counter)
    battery_moved_kwh: dict[str, float] = field(default_factory=dict)  # per battery: charged + discharged
    battery_capacity_kwh: dict[str, float] = field(default_factory=dict)
    shortfalls: list[tuple[int, int, str, float]] = field(default_factory=list)  # (node, isp, direction, kW)
    optimality_gap_kwh: float = 0.0  # oracle: how far from proven optimal, in kWh of curtailment
    simultaneous_isps: int = 0  # battery quarter hours charging and discharging at once (oracle, not exact)
    exact_rounds: int = 0
    exact_binaries: int = 0
    node_kw: Array = field(default_factory=lambda: np.zeros((0, 0)), repr=False)  # nodes x ISPs
    curtailed_kw: Array = field(default_factory=lambda: np.zeros(0), repr=False)  # per ISP, all connections
    ev_delivered_kwh: Array = field(default_factory=lambda: np.zeros(0), repr=False)  # per connection
    battery_kw: Array = field(
        default_factory=lambda: np.zeros((0, 0)), repr=False
    )  # batteries x ISPs, + charge

    def summary(self) -> dict[str, object]:
        arrays = (
            "node_kw",
            "curtailed_kw",
            "ev_delivered_kwh",
            "binding",
            "battery_moved_kwh",
            "battery_kw",
            "battery_capacity_kwh",
            "shortfalls",
        )
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in arrays}
        out["start"], out["end"] = self.start.isoformat(), self.end.isoformat()
        out["binding_top"] = dict(self.binding.most_common(20))
        out["batteries"] = self.battery_summary()
        return out

    def book_batteries(self, batteries: list[Battery], battery_kw: Array, moved_kwh: Array) -> None:
        """What the batteries did: power per quarter hour (+ charge) and kWh moved, charged plus discharged."""
        self.battery_kw = battery_kw
        self.battery_throughput_kwh = float(moved_kwh.sum())
        self.battery_moved_kwh = {b.id: float(m) for b, m in zip(batteries, moved_kwh, strict=True)}
        self.battery_capacity_kwh = {b.id: b.capacity_kwh for b in batteries}

    def battery_summary(self) -> dict[str, dict[str, float]]:
        """Per battery: kWh moved (in and out), equivalent full cycles (moved / twice the capacity), and the same
        per year (scaled from the period simulated)."""
        years = self.isps * ISP_H / 8766.0
        out = {}
        for battery, moved in self.battery_moved_kwh.items():
            cycles = moved / (2 * self.battery_capacity_kwh[battery])
            out[battery] = {
                "throughput_kwh": round(moved, 1),
                "full_cycles": round(cycles, 2),
                "full_cycles_per_year": round(cycles / years, 1) if years else 0.0,
            }
        return out


def make_policy(name: str, network: Network, *, weather: Path | None = None) -> Policy:
    """The registry's ``make_policy`` (``energyhub.control.registry``), under the name planning imports."""
    # Imported here: the registry runs ``simulate`` of this module, so it cannot be imported at the top.
    from energyhub.control.registry import make_policy as build

    return build(name, network, weather=weather)


class ShareKeyError(ValueError):
    """Priority weights that name no connection or are not positive."""


def share_key(network: Network, key: str, priority: dict[str, float] | None = None) -> Array:
    """Per connection, what curtailment is shared in proportion to: a connection with twice the key gives up
    twice the share of its PV. ``priority`` weighs kWp: a weight of 2 is curtailed twice as hard, 0.5 half;
    connections not named weigh 1."""
    if key == "kwp":
        return network.kwp.copy()
    if key == "contracted":
        return network.contracted_kw.copy()
    if key == "priority":
        weights = priority or {}
        unknown = sorted(set(weights) - set(network.connection_ids))
        if unknown:
            raise ShareKeyError(f"priority weights for unknown connections: {', '.join(unknown)}")
        bad = sorted(c for c, w in weights.items() if not (isinstance(w, int | float) and w > 0))
        if bad:
            raise ShareKeyError(f"priority weights must be positive numbers: {', '.join(bad)}")
        return np.array([weights.get(c, 1.0) for c in network.connection_ids]) * np.maximum(network.kwp, 1e-9)
    raise ValueError(f"unknown sharing key {key!r}: one of {', '.join(SHARE_KEYS)}")


def simulate(
    network: Network,
    inputs: Inputs,
    limits: LimitTable,
    policy: Policy,
    *,
    margin: float = 0.02,
    key: str = "kwp",
    priority: dict[str, float] | None = None,
    soc_start: float = 0.5,
    progress: Callable[[int], None] | None = None,
    history: Inputs | None = None,
) -> SimulationResult:
    """Run ``policy`` over every quarter hour of ``inputs``. ``history``: the quarter hours just before them, which
    the policy's forecasts may look back on (as a controller that has been running would), never simulated."""
    started = time.perf_counter()
    imp, exp = limits.with_margin(margin)
    T = inputs.isps
    n_s = len(inputs.sessions)
    s_idx, t_idx, hours = inputs.presence_h()
    order = np.argsort(t_idx, kind="stable")
    s_idx, t_idx, hours = s_idx[order], t_idx[order], hours[order]
    bounds = np.searchsorted(t_idx, np.arange(T + 1))
    session_connection = np.array([s.connection for s in inputs.sessions], dtype=np.int64)
    session_max = np.array([s.max_kw for s in inputs.sessions])
    charger_index = {c.id: i for i, c in enumerate(network.chargers)}
    unknown = sorted({s.charger for s in inputs.sessions} - set(charger_index))
    if unknown:
        raise ValueError(f"sessions at chargers the network does not have: {', '.join(unknown)}")
    session_charger = np.array([charger_index[s.charger] for s in inputs.sessions], dtype=np.int64)
    remaining = np.array([s.energy_kwh for s in inputs.sessions])
    last_isp = np.full(n_s, -1)
    for s, t in zip(s_idx, t_idx, strict=True):
        last_isp[s] = max(last_isp[s], t)
    departure_h = np.array(
        [(s.departure - inputs.isp_starts[0]).total_seconds() / 3600 for s in inputs.sessions]
    )
    batteries = network.batteries
    battery_connection = np.array([b.connection for b in batteries], dtype=np.int64)
    power = np.array([b.power_kw for b in batteries])
    capacity = np.array([b.capacity_kwh for b in batteries])
    efficiency = np.array([b.efficiency for b in batteries])
    soc = capacity * soc_start
    keys = share_key(network, key, priority)
    wear = battery_wear(network)
    listed = [i for i, level in enumerate(network.levels) if level in LISTED_LEVELS]
    result = SimulationResult(policy.name, inputs.isp_starts[0], inputs.isp_starts[-1], T)
    moved = np.zeros(len(batteries))
    battery_kw = np.zeros((len(batteries), T))
    result.ev_requested_kwh = float(remaining.sum())
    node_kw = np.zeros((len(network.node_ids), T))
    curtailed_kw = np.zeros(T)
    ev_delivered = np.zeros(len(network.connection_ids))
    hub = network.levels.index("hub")  # type: ignore[arg-type]
    n_c = len(network.connection_ids)
    load_history, pv_history, imp_plan, exp_plan = inputs.load_kw, inputs.pv_kw, imp, exp
    isp_starts, before = inputs.isp_starts, 0
    if history is not None and history.isps:
        if history.isp_starts[-1] + ISP != inputs.isp_starts[0]:
            raise ValueError(
                f"history ends {history.isp_starts[-1] + ISP:%Y-%m-%d %H:%M}, not where the period starts "
                f"({inputs.isp_starts[0]:%Y-%m-%d %H:%M})"
            )
        before = history.isps
        load_history = np.concatenate([history.load_kw, inputs.load_kw], axis=1)
        pv_history = np.concatenate([history.pv_kw, inputs.pv_kw], axis=1)
        # Limits are only looked at ahead, so the history's columns are never read: any values do.
        imp_plan = np.concatenate([np.repeat(imp[:, :1], before, axis=1), imp], axis=1)
        exp_plan = np.concatenate([np.repeat(exp[:, :1], before, axis=1), exp], axis=1)
        isp_starts = history.isp_starts + inputs.isp_starts
    for t in range(T):
        present = s_idx[bounds[t] : bounds[t + 1]]
        present_h = hours[bounds[t] : bounds[t + 1]]
        session_kwh_max = np.minimum(session_max[present] * present_h, remaining[present])
        hours_left = np.maximum(departure_h[present] - t * ISP_H, ISP_H)
        urgency = session_urgency(remaining[present], session_max[present], hours_left)
        d = DispatchInput(
            load_kw=inputs.load_kw[:, t],
            pv_kw=inputs.pv_kw[:, t],
            imp_kw=imp[:, t],
            exp_kw=exp[:, t],
            incidence=network.incidence,
            session_connection=session_connection[present],
            session_max_kwh=session_kwh_max,
            session_urgency=urgency,
            battery_connection=battery_connection,
            battery_charge_max_kw=np.minimum(power, (capacity - soc) / (efficiency * ISP_H)),
            battery_discharge_max_kw=np.minimum(power, soc * efficiency / ISP_H),
            battery_target_kw=np.zeros(len(batteries)),
            share_key=keys,
            battery_wear=wear,
        )
        step = Step(
            t=before + t,
            d=d,
            soc_kwh=soc,
            load_history=load_history,
            pv_history=pv_history,
            imp_plan=imp_plan,
            exp_plan=exp_plan,
            sessions=_planned_sessions(
                s_idx, t_idx, hours, bounds, present, remaining, session_max, session_charger, t
            ),
            isp_starts=isp_starts,
        )
        decision: DispatchResult = policy.decide(step)
        _book(result, decision, d, limits, t, network, hub, listed)
        node_kw[:, t] = decision.node_kw
        curtailed_kw[t] = float((d.pv_kw - decision.pv_used_kw).sum())
        ev_delivered += np.bincount(d.session_connection, decision.session_kwh, minlength=n_c)
        # State for the next quarter hour.
        charge = np.maximum(decision.battery_kw, 0)
        discharge = np.maximum(-decision.battery_kw, 0)
        soc = np.clip(soc + (charge * efficiency - discharge / efficiency) * ISP_H, 0, capacity)
        moved += (charge + discharge) * ISP_H
        battery_kw[:, t] = decision.battery_kw
        result.shortfalls += [(n, t, direction, kw) for n, direction, kw in decision.shortfall]
        remaining[present] = np.maximum(remaining[present] - decision.session_kwh, 0)
        leaving = present[last_isp[present] == t]
        result.ev_undelivered_kwh += float(remaining[leaving].sum())
        remaining[leaving] = 0
        if progress is not None:
            progress(1)
    result.node_kw = node_kw
    result.curtailed_kw = curtailed_kw
    result.ev_delivered_kwh = ev_delivered
    result.book_batteries(batteries, battery_kw, moved)
    used = result.pv_available_kwh - result.curtailed_kwh
    result.self_consumption_pct = (
        100.0 * (used - result.hub_export_kwh) / result.pv_available_kwh if result.pv_available_kwh else 100.0
    )
    result.runtime_s = time.perf_counter() - started
    return result


def _planned_sessions(
    s_idx: npt.NDArray[np.int64],
    t_idx: npt.NDArray[np.int64],
    hours: Array,
    bounds: npt.NDArray[np.int64],
    present: npt.NDArray[np.int64],
    remaining: Array,
    session_max: Array,
    charger: npt.NDArray[np.int64],
    t: int,
    horizon: int = 96,
) -> PlannedSessions:
    """What a planner knows of the sessions plugged in now: energy still wanted, and what each can take in each
    quarter hour until it leaves (its departure, as the driver gave it). Future arrivals are not known.

    ``s_idx``/``t_idx``/``hours`` are sorted by quarter hour and ``bounds[t]`` is where quarter hour ``t`` starts,
    so only the horizon's entries are looked at."""
    available = np.zeros((len(present), horizon))
    if len(present):
        row = np.full(int(s_idx.max()) + 1, -1)
        row[present] = np.arange(len(present))
        end = bounds[min(t + horizon, len(bounds) - 1)]
        s, k, h = s_idx[bounds[t] : end], t_idx[bounds[t] : end], hours[bounds[t] : end]
        mine = row[s] >= 0
        available[row[s[mine]], k[mine] - t] = session_max[s[mine]] * h[mine]
    return PlannedSessions(charger[present], remaining[present].copy(), available)


def _book(
    result: SimulationResult,
    decision: DispatchResult,
    d: DispatchInput,
    limits: LimitTable,
    t: int,
    network: Network,
    hub: int,
    listed: list[int],
) -> None:
    flow = decision.node_kw
    over_imp = np.maximum(flow - limits.import_kw[:, t], 0)
    over_exp = np.maximum(-flow - limits.export_kw[:, t], 0)
    over = (over_imp > 1e-6) | (over_exp > 1e-6)
    # Group agreements are nodes too: a violation there counts.
    result.violations += int(over.sum())
    result.violation_kwh += float((over_imp + over_exp)[over].sum() * ISP_H)
    result.curtailed_kwh += float((d.pv_kw - decision.pv_used_kw).sum() * ISP_H)
    result.pv_available_kwh += float(d.pv_kw.sum() * ISP_H)
    result.hub_export_kwh += float(max(-flow[hub], 0) * ISP_H)
    result.hub_import_kwh += float(max(flow[hub], 0) * ISP_H)
    result.infeasible_isps += int(decision.infeasible)
    result.lp_isps += int(decision.solved)
    if (d.pv_kw - decision.pv_used_kw).sum() > 1e-6:
        for node, direction in decision.binding:
            if direction == "export":
                result.binding[f"{network.node_ids[node]}:{direction}"] += 1


def write_outputs(
    out: Path, network: Network, inputs: Inputs, limits: LimitTable, result: SimulationResult
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    listed = [i for i, level in enumerate(network.levels) if level in LISTED_LEVELS]
    T = inputs.isps
    times = pd.DatetimeIndex(inputs.isp_starts).strftime("%Y-%m-%dT%H:%M:%SZ")
    flows = result.node_kw[listed]
    frame = pd.DataFrame(
        {
            "node": np.repeat([network.node_ids[i] for i in listed], T),
            "level": np.repeat([str(network.levels[i]) for i in listed], T),
            "isp_start": np.tile(times, len(listed)),
            "import_kwh": np.round(np.maximum(flows, 0) * ISP_H, 4).ravel(),
            "export_kwh": np.round(np.maximum(-flows, 0) * ISP_H, 4).ravel(),
            "limit_import_kw": limits.import_kw[listed].ravel(),
            "limit_export_kw": limits.export_kw[listed].ravel(),
        }
    )
    # No limit is an empty cell, not "inf".
    for column in ("limit_import_kw", "limit_export_kw"):
        frame[column] = frame[column].where(np.isfinite(frame[column]), None)
    frame.to_csv(out / "nodes.csv", index=False)
    summary = result.summary()
    summary["shortfalls"] = [
        s.as_dict() for s in explain(result.shortfalls, network.node_ids, inputs.isp_starts)
    ]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
