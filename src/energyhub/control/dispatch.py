"""One quarter hour of dispatch: PV limits, charging power and battery power that keep every node's limits.

The state of the quarter hour is given (load, PV on offer, sessions present, battery room). If the preferred
action (all PV, every car at full power, each battery at its planned power) keeps every limit, that is the answer.
Otherwise one small linear program (HiGHS) decides, with costs in this order:

1. violating a limit (the least kW over, when no action can keep it: the case is counted as infeasible);
2. curtailing PV (per kWh), then spreading what must be curtailed evenly by the sharing key (the largest share
   curtailed, per kWp or contracted kW or priority weight, is as small as it can be);
3. leaving EV energy undelivered (a session with less slack before its departure weighs more);
4. moving a battery away from its plan.

Every decision records the nodes whose limit is binding, which is why PV was curtailed or a charger slowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.sparse import csc_matrix  # type: ignore[import-untyped]

from energyhub.control.costs import (
    COST_CURTAIL,
    COST_DEVIATION,
    COST_EV,
    COST_EV_EXTRA,
    COST_FAIRNESS,
    COST_VIOLATION,
)
from energyhub.control.lp import solve_once

__all__ = ["DispatchInput", "DispatchResult", "dispatch", "preferred", "session_urgency"]

Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
ISP_H = 0.25
TOL = 1e-6


def session_urgency(remaining_kwh: Array, max_kw: Array, hours_left: Array) -> Array:
    """1..5: how much a kWh for this session is worth now. The less slack a session has (hours left beyond what
    it needs at full power), the more; a session that cannot finish any more gets the most."""
    slack_h = hours_left - remaining_kwh / np.maximum(max_kw, 1e-9)
    result: Array = 1.0 + 4.0 / (1.0 + np.maximum(slack_h, 0.0))
    return result


@dataclass
class DispatchInput:
    load_kw: Array  # per connection
    pv_kw: Array  # per connection, on offer
    imp_kw: Array  # per node, the limits to keep (margin applied)
    exp_kw: Array
    incidence: Array  # nodes x connections
    session_connection: IntArray  # per present session
    session_max_kwh: Array  # what it can take this quarter hour
    session_urgency: Array  # 1..5
    battery_connection: IntArray
    battery_charge_max_kw: Array  # within power and room, this quarter hour
    battery_discharge_max_kw: Array
    battery_target_kw: Array  # + charge, - discharge: the policy's plan
    share_key: Array  # per connection: curtailment is shared in proportion to this
    # The policy's plan per present session (kWh this quarter hour); None: every car at what it can take. Above
    # the plan a car charges only where that saves curtailment.
    session_target_kwh: Array | None = None
    battery_wear: Array | None = (
        None  # per battery: the weight of a kWh moved in or out (energyhub.control.costs)
    )


@dataclass
class DispatchResult:
    pv_used_kw: Array
    session_kwh: Array
    battery_kw: Array  # + charge, - discharge
    connection_kw: Array
    node_kw: Array
    binding: list[tuple[int, str]] = field(default_factory=list)  # (node, "import"/"export")
    infeasible: bool = False
    solved: bool = False  # an LP was needed
    # (node, direction, kW over): the least by which no action could keep a limit
    shortfall: list[tuple[int, str, float]] = field(default_factory=list)


def _flows(d: DispatchInput, pv_used: Array, session_kwh: Array, battery_kw: Array) -> tuple[Array, Array]:
    n_c = d.load_kw.shape[0]
    connection = d.load_kw - pv_used
    connection = connection + np.bincount(d.session_connection, session_kwh / ISP_H, minlength=n_c)
    connection = connection + np.bincount(d.battery_connection, battery_kw, minlength=n_c)
    return connection, d.incidence @ connection


def _binding(d: DispatchInput, node_kw: Array) -> list[tuple[int, str]]:
    out = [(int(n), "import") for n in np.flatnonzero(node_kw >= d.imp_kw - 1e-3)]
    out += [(int(n), "export") for n in np.flatnonzero(-node_kw >= d.exp_kw - 1e-3)]
    return out


def _session_target(d: DispatchInput) -> Array:
    if d.session_target_kwh is None:
        return d.session_max_kwh.copy()
    target: Array = np.clip(d.session_target_kwh, 0, d.session_max_kwh)
    return target


def preferred(d: DispatchInput) -> DispatchResult:
    battery = np.clip(d.battery_target_kw, -d.battery_discharge_max_kw, d.battery_charge_max_kw)
    sessions = _session_target(d)
    connection, node = _flows(d, d.pv_kw.copy(), sessions, battery)
    return DispatchResult(d.pv_kw.copy(), sessions.copy(), battery, connection, node)


def dispatch(d: DispatchInput) -> DispatchResult:
    first = preferred(d)
    if np.all(first.node_kw <= d.imp_kw + TOL) and np.all(-first.node_kw <= d.exp_kw + TOL):
        first.binding = _binding(d, first.node_kw)
        return first
    return _solve(d)


def _solve(d: DispatchInput) -> DispatchResult:
    pv_idx = np.flatnonzero(d.pv_kw > TOL)
    n_u, n_b = len(pv_idx), len(d.battery_target_kw)
    n_s = 2 * len(d.session_max_kwh)  # each session's kWh up to the plan, and above it
    # Columns: u (PV used where there is PV) | e (session kWh: planned, extra) | ch | dis | dev+ | dev- | slacks | z.
    # Every action moves one connection's flow: which one, and by how much per unit.
    conn = np.concatenate(
        [pv_idx, d.session_connection, d.session_connection, d.battery_connection, d.battery_connection]
    )
    coef = np.concatenate([-np.ones(n_u), np.full(n_s, 1 / ISP_H), np.ones(n_b), -np.ones(n_b)])
    upper = _upper(d, pv_idx)[: len(conn)]
    node_effect = d.incidence[:, conn] * coef  # nodes x actions
    base = d.incidence @ d.load_kw
    # Only the rows that some action could push over their limit.
    lo = base + np.minimum(node_effect, 0) @ upper
    hi = base + np.maximum(node_effect, 0) @ upper
    imp_rows = np.flatnonzero(np.isfinite(d.imp_kw) & (hi > d.imp_kw - TOL))
    exp_rows = np.flatnonzero(np.isfinite(d.exp_kw) & (-lo > d.exp_kw - TOL))
    n_act = len(conn)
    n_slack = len(imp_rows) + len(exp_rows)
    n_core = n_act + 2 * n_b
    n_var = n_core + n_slack + 1
    limit_rows = np.zeros((n_slack, n_var))
    limit_rows[:, :n_act] = np.vstack([node_effect[imp_rows], -node_effect[exp_rows]])
    limit_rows[:, n_core : n_core + n_slack] = -np.eye(n_slack)
    limit_upper = np.concatenate([d.imp_kw[imp_rows] - base[imp_rows], d.exp_kw[exp_rows] + base[exp_rows]])
    # Fairness: the curtailed share of each PV connection, by the sharing key, is at most z.
    key = np.maximum(d.share_key[pv_idx], 1e-9)
    fair_rows = np.zeros((n_u, n_var))
    fair_rows[np.arange(n_u), np.arange(n_u)] = -1 / key
    fair_rows[:, -1] = -1.0
    fair_upper = -d.pv_kw[pv_idx] / key
    # The battery plan: ch - dis - dev+ + dev- = target.
    plan_rows = np.zeros((n_b, n_var))
    b = np.arange(n_b)
    start = n_u + n_s
    plan_rows[b, start + b] = 1.0
    plan_rows[b, start + n_b + b] = -1.0
    plan_rows[b, start + 2 * n_b + b] = -1.0
    plan_rows[b, start + 3 * n_b + b] = 1.0
    matrix = csc_matrix(np.vstack([limit_rows, fair_rows, plan_rows]))
    row_lower = np.concatenate([np.full(n_slack + n_u, -np.inf), d.battery_target_kw])
    row_upper = np.concatenate([limit_upper, fair_upper, d.battery_target_kw])
    # Wear per kW over the quarter hour: a battery takes surplus beyond its plan only where that is worth it.
    wear = ISP_H * (np.zeros(n_b) if d.battery_wear is None else d.battery_wear)
    cost = np.concatenate(
        [
            np.full(n_u, -COST_CURTAIL * ISP_H),
            -COST_EV * d.session_urgency,
            np.full(len(d.session_urgency), COST_EV_EXTRA),
            np.tile(wear, 2),
            # Away from the plan costs more than the wear it saves, so the plan is followed where it can be.
            np.tile(wear + COST_DEVIATION, 2),
            np.full(n_slack, COST_VIOLATION),
            [COST_FAIRNESS],
        ]
    )
    col_upper = np.concatenate([upper, np.full(2 * n_b + n_slack + 1, np.inf)])
    x = solve_once(cost, matrix, row_lower, row_upper, np.zeros(n_var), col_upper)
    pv_used = d.pv_kw.copy()
    pv_used[pv_idx] = x[:n_u]
    session_kwh = x[n_u : n_u + n_s // 2] + x[n_u + n_s // 2 : n_u + n_s]
    battery = x[start : start + n_b] - x[start + n_b : start + 2 * n_b]
    connection, node = _flows(d, pv_used, session_kwh, battery)
    res = DispatchResult(pv_used, session_kwh, battery, connection, node, solved=True)
    slack = x[n_core : n_core + n_slack]
    res.infeasible = bool(np.any(slack > 1e-4))
    rows = np.concatenate([imp_rows, exp_rows])
    directions = ["import"] * len(imp_rows) + ["export"] * len(exp_rows)
    res.shortfall = [(int(rows[i]), directions[i], float(slack[i])) for i in np.flatnonzero(slack > 1e-4)]
    res.binding = _binding(d, node)
    return res


def _upper(d: DispatchInput, pv_idx: IntArray) -> Array:
    """Upper bound of every core action (lower bounds are all 0)."""
    n_b = len(d.battery_target_kw)
    target = _session_target(d)
    return np.concatenate(
        [
            d.pv_kw[pv_idx],
            target,
            d.session_max_kwh - target,
            d.battery_charge_max_kw,
            d.battery_discharge_max_kw,
            np.zeros(2 * n_b),
        ]
    )
