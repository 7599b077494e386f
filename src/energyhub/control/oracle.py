"""The oracle: one optimisation over the whole period with perfect foresight, for evaluation only.

It knows every quarter hour's load, sun and charging session in advance and decides them all at once, with the same
costs as the dispatch (a kW over a limit, then a kWh curtailed, then a kWh undelivered, then battery wear). No real
controller can do this: it is the yardstick that ``mpc`` and ``greedy`` are measured against. The result is booked
by the same code as the simulation, so the figures compare like for like.

A battery cannot charge and discharge in the same quarter hour. A linear program with separate charge and
discharge columns can, and profits from it where PV would be curtailed: both at once burn the surplus in
conversion losses. The oracle is therefore exact: each battery has a mode per quarter hour (``ch <= P y``,
``dis <= P (1 - y)``), relaxed to ``0 <= y <= 1`` first. Where the answer still charges and discharges at once,
those modes are made binary and the problem solved again, until no quarter hour does both. Each round's problem
is a relaxation of the exact one, so its optimum is a lower bound; the last round's answer is feasible for the
exact one, so it is optimal (within the MIP's gap, reported as ``optimality_gap_kwh``).
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
from scipy.sparse import csc_matrix, csr_matrix  # type: ignore[import-untyped]

from energyhub.control.costs import COST_CURTAIL, COST_EV, COST_VIOLATION, battery_wear
from energyhub.control.dispatch import DispatchInput, DispatchResult
from energyhub.control.inputs import Inputs
from energyhub.control.limits import LimitTable
from energyhub.control.lp import LinearProgram
from energyhub.control.simulate import LISTED_LEVELS, SimulationResult, _book, share_key
from energyhub.domain.network import Network

__all__ = ["oracle"]

Array = npt.NDArray[np.float64]
ISP_H = 0.25
BOTH_KW = 1e-6  # charging and discharging at once by more than this is not physical
MAX_ROUNDS = 30


def oracle(
    network: Network,
    inputs: Inputs,
    limits: LimitTable,
    *,
    margin: float = 0.02,
    key: str = "kwp",
    priority: dict[str, float] | None = None,
    soc_start: float = 0.5,
    time_limit_s: float = 120.0,
    exclusive: bool = True,
    curtailed_at_most_kwh: float | None = None,
) -> SimulationResult:
    """``exclusive=False`` solves the plain linear program, which may charge and discharge at once: only to show
    what the exact formulation prevents. ``curtailed_at_most_kwh`` asks instead for the least battery throughput
    that curtails no more than that: the yardstick for how much a policy cycles its batteries."""
    started = time.perf_counter()
    imp, exp = limits.with_margin(margin)
    T, n_c = inputs.isps, len(network.connection_ids)
    A = network.incidence
    load, pv = inputs.load_kw, inputs.pv_kw
    s_idx, t_idx, hours = inputs.presence_h()
    sessions = inputs.sessions
    session_conn = np.array([s.connection for s in sessions], dtype=np.int64)
    session_max = np.array([s.max_kw for s in sessions])
    energy = np.array([s.energy_kwh for s in sessions])
    batteries = network.batteries
    n_b = len(batteries)
    flex = np.zeros(n_c, bool)
    flex[[b.connection for b in batteries]] = True
    flex[session_conn] = True
    # PV used: where there is sun. A connection with nothing to steer but its PV can feed in at most its limit.
    pv_c, pv_t = np.nonzero(pv > 1e-9)
    exp_conn = exp[[network.node_index(c) for c in network.connection_ids]]
    u_upper = pv[pv_c, pv_t].copy()
    fixed = ~flex[pv_c]
    u_upper[fixed] = np.clip(
        np.minimum(u_upper[fixed], load[pv_c[fixed], pv_t[fixed]] + exp_conn[pv_c[fixed], pv_t[fixed]]),
        0,
        None,
    )
    n_u, n_e = len(pv_c), len(s_idx)
    # Column blocks.
    u0, e0, und0 = 0, n_u, n_u + n_e
    ch0 = und0 + len(sessions)
    dis0, soc0 = ch0 + n_b * T, ch0 + 2 * n_b * T
    mode0 = soc0 + n_b * T
    core = mode0 + n_b * T
    bt = np.arange(n_b)[:, None] * T + np.arange(T)[None, :]  # battery-major index within a block
    # Effect of each flow-moving action on its connection at its quarter hour: (connection, isp, column, coef).
    b_conn = np.array([b.connection for b in batteries], dtype=np.int64)
    eff_conn = np.concatenate([pv_c, session_conn[s_idx], np.repeat(b_conn, T), np.repeat(b_conn, T)])
    eff_t = np.concatenate([pv_t, t_idx, np.tile(np.arange(T), n_b), np.tile(np.arange(T), n_b)])
    eff_col = np.concatenate([u0 + np.arange(n_u), e0 + np.arange(n_e), ch0 + bt.ravel(), dis0 + bt.ravel()])
    eff_coef = np.concatenate([-np.ones(n_u), np.full(n_e, 1 / ISP_H), np.ones(n_b * T), -np.ones(n_b * T)])
    eff_upper = np.concatenate(
        [
            u_upper,
            session_max[s_idx] * hours,
            np.repeat([b.power_kw for b in batteries], T),
            np.repeat([b.power_kw for b in batteries], T),
        ]
    )
    # Which node rows could be pushed over their limit at all.
    base = A @ load
    up = np.zeros((n_c, T))
    down = np.zeros((n_c, T))
    np.add.at(up, (eff_conn, eff_t), np.maximum(eff_coef, 0) * eff_upper)
    np.add.at(down, (eff_conn, eff_t), np.minimum(eff_coef, 0) * eff_upper)
    hi, lo = base + A @ up, base + A @ down
    imp_n, imp_t = np.nonzero(np.isfinite(imp) & (hi > imp - 1e-9))
    exp_n, exp_t = np.nonzero(np.isfinite(exp) & (-lo > exp - 1e-9))
    rows_n = np.concatenate([imp_n, exp_n])
    rows_t = np.concatenate([imp_t, exp_t])
    sign = np.concatenate([np.ones(len(imp_n)), -np.ones(len(exp_n))])
    n_rows = len(rows_n)
    slack0 = core
    n_var = core + n_rows
    # Limit rows: sign * (node's actions) - slack <= limit -/+ base. Join actions to rows by (node, isp).
    row_of: dict[tuple[int, int], list[int]] = {}
    for r, (n, t) in enumerate(zip(rows_n.tolist(), rows_t.tolist(), strict=True)):
        row_of.setdefault((n, t), []).append(r)
    by_isp: dict[int, list[int]] = {}
    for r, t in enumerate(rows_t.tolist()):
        by_isp.setdefault(t, []).append(r)
    ri, ci, vi = [], [], []
    nodes_of_conn = [np.flatnonzero(A[:, c]) for c in range(n_c)]
    for k in range(len(eff_col)):
        c, t = int(eff_conn[k]), int(eff_t[k])
        for n in nodes_of_conn[c]:
            for r in row_of.get((int(n), t), ()):
                ri.append(r)
                ci.append(int(eff_col[k]))
                vi.append(sign[r] * eff_coef[k])
    ri += list(range(n_rows))
    ci += list(range(slack0, slack0 + n_rows))
    vi += [-1.0] * n_rows
    limit_upper = np.where(
        sign > 0, imp[rows_n, rows_t] - base[rows_n, rows_t], exp[rows_n, rows_t] + base[rows_n, rows_t]
    )
    # Session rows: sum of its kWh + undelivered = wanted.
    r0 = n_rows
    ri += (r0 + s_idx).tolist() + (r0 + np.arange(len(sessions))).tolist()
    ci += (e0 + np.arange(n_e)).tolist() + (und0 + np.arange(len(sessions))).tolist()
    vi += [1.0] * (n_e + len(sessions))
    # Battery rows: soc_t - soc_{t-1} - eff ch dt + dis dt / eff = soc_start at t = 0, else 0.
    r1 = r0 + len(sessions)
    eff = np.array([b.efficiency for b in batteries])
    rows_b = r1 + bt
    ri += rows_b.ravel().tolist() * 3 + rows_b[:, 1:].ravel().tolist()
    ci += (soc0 + bt).ravel().tolist() + (ch0 + bt).ravel().tolist() + (dis0 + bt).ravel().tolist()
    ci += (soc0 + bt[:, :-1]).ravel().tolist()
    vi += [1.0] * (n_b * T) + np.repeat(-eff * ISP_H, T).tolist() + np.repeat(ISP_H / eff, T).tolist()
    vi += [-1.0] * (n_b * (T - 1))
    # Mode rows: ch - P y <= 0 and dis + P y <= P, y the charging mode of the quarter hour.
    r2 = r1 + n_b * T
    power_bt = np.repeat([b.power_kw for b in batteries], T)
    ri += (r2 + bt).ravel().tolist() * 2 + (r2 + n_b * T + bt).ravel().tolist() * 2
    ci += (ch0 + bt).ravel().tolist() + (mode0 + bt).ravel().tolist()
    ci += (dis0 + bt).ravel().tolist() + (mode0 + bt).ravel().tolist()
    vi += [1.0] * (n_b * T) + (-power_bt).tolist() + [1.0] * (n_b * T) + power_bt.tolist()
    n_all_rows = r2 + 2 * n_b * T
    if curtailed_at_most_kwh is not None:
        # The least throughput for a given curtailment: PV used at least what that leaves.
        ri += [n_all_rows] * n_u
        ci += list(range(u0, u0 + n_u))
        vi += [1.0] * n_u
        n_all_rows += 1
    matrix = csc_matrix(csr_matrix((vi, (ri, ci)), shape=(n_all_rows, n_var)))
    capacity = np.array([b.capacity_kwh for b in batteries])
    soc_first = np.zeros((n_b, T))
    soc_first[:, 0] = capacity * soc_start
    mode_lower = np.full(2 * n_b * T, -np.inf)
    mode_upper = np.concatenate([np.zeros(n_b * T), power_bt])
    if not exclusive:
        mode_upper[:] = np.inf
    row_lower = np.concatenate([np.full(n_rows, -np.inf), energy, soc_first.ravel(), mode_lower])
    row_upper = np.concatenate([limit_upper, energy, soc_first.ravel(), mode_upper])
    if curtailed_at_most_kwh is not None:
        row_lower = np.append(row_lower, pv.sum() - curtailed_at_most_kwh / ISP_H)
        row_upper = np.append(row_upper, np.inf)
    cost = np.zeros(n_var)
    cost[u0 : u0 + n_u] = -COST_CURTAIL * ISP_H
    cost[und0 : und0 + len(sessions)] = (
        COST_EV * 5
    )  # the dispatch's highest urgency: undelivered at departure
    # Wear per kWh moved, in and out; a battery with no wear cost still gets a trace, so it never cycles for
    # nothing at all.
    wear = battery_wear(network)
    cost[ch0:soc0] = np.tile(np.repeat(wear, T) * ISP_H, 2)
    if curtailed_at_most_kwh is not None:
        cost[u0 : u0 + n_u] = 0.0  # curtailment is fixed by its row: only kWh moved (and what is over) count
        cost[ch0:soc0] = ISP_H
    cost[slack0:] = COST_VIOLATION
    col_upper = np.concatenate(
        [
            u_upper,
            session_max[s_idx] * hours,
            energy,
            eff_upper[n_u + n_e :],
            np.repeat(capacity, T),
            np.ones(n_b * T),
            np.full(n_rows, np.inf),
        ]
    )
    integer = np.zeros(n_var, bool)
    rounds, binaries = 0, 0
    while True:
        rounds += 1
        program = LinearProgram(
            cost,
            matrix,
            row_lower,
            row_upper,
            np.zeros(n_var),
            col_upper,
            integer=integer,
            time_limit_s=time_limit_s,
        )
        x = program.solve()
        both = np.flatnonzero(np.minimum(x[ch0:dis0], x[dis0:soc0]) > BOTH_KW)
        fresh = both[~integer[mode0 + both]]
        if not exclusive or len(fresh) == 0 or rounds >= MAX_ROUNDS:
            break
        integer[mode0 + fresh] = True
        binaries += len(fresh)
    gap = max(program.objective - program.bound, 0.0)
    # Book the plan quarter hour by quarter hour, as the simulation books its decisions.
    pv_used = pv.copy()
    pv_used[pv_c, pv_t] = x[u0 : u0 + n_u]
    session_kwh = np.zeros((len(sessions), T))
    session_kwh[s_idx, t_idx] = x[e0 : e0 + n_e]
    charge, discharge = x[ch0:dis0].reshape(n_b, T), x[dis0:soc0].reshape(n_b, T)
    battery = charge - discharge
    slack = x[slack0:]
    infeasible = np.zeros(T, bool)
    infeasible[rows_t[slack > 1e-4]] = True
    result = SimulationResult("oracle", inputs.isp_starts[0], inputs.isp_starts[-1], T)
    result.ev_requested_kwh = float(energy.sum())
    result.ev_undelivered_kwh = float(x[und0 : und0 + len(sessions)].sum())
    # What the batteries really move: charge and discharge both, not their net.
    moved = (charge + discharge).sum(axis=1) * ISP_H
    result.book_batteries(batteries, battery, moved)
    result.simultaneous_isps = int((np.minimum(charge, discharge) > BOTH_KW).sum())
    result.optimality_gap_kwh = gap / COST_CURTAIL
    result.exact_rounds, result.exact_binaries = rounds, binaries
    over = slack > 1e-4
    result.shortfalls = [
        (int(n), int(t), "import" if sgn > 0 else "export", float(kw))
        for n, t, sgn, kw in zip(rows_n[over], rows_t[over], sign[over], slack[over], strict=True)
    ]
    hub = network.levels.index("hub")  # type: ignore[arg-type]
    listed = [i for i, level in enumerate(network.levels) if level in LISTED_LEVELS]
    node_kw = np.zeros((len(network.node_ids), T))
    keys = share_key(network, key, priority)
    for t in range(T):
        present = s_idx[t_idx == t]
        connection = load[:, t] - pv_used[:, t]
        connection += np.bincount(session_conn[present], session_kwh[present, t] / ISP_H, minlength=n_c)
        connection += np.bincount(b_conn, battery[:, t], minlength=n_c)
        node = A @ connection
        d = DispatchInput(
            load_kw=load[:, t],
            pv_kw=pv[:, t],
            imp_kw=imp[:, t],
            exp_kw=exp[:, t],
            incidence=A,
            session_connection=session_conn[present],
            session_max_kwh=session_kwh[present, t],
            session_urgency=np.ones(len(present)),
            battery_connection=b_conn,
            battery_charge_max_kw=np.zeros(n_b),
            battery_discharge_max_kw=np.zeros(n_b),
            battery_target_kw=battery[:, t],
            share_key=keys,
        )
        decision = DispatchResult(pv_used[:, t], session_kwh[present, t], battery[:, t], connection, node)
        decision.infeasible = bool(infeasible[t])
        decision.solved = True
        _book(result, decision, d, limits, t, network, hub, listed)
        node_kw[:, t] = node
    result.node_kw = node_kw
    result.curtailed_kw = (pv - pv_used).sum(axis=0)
    result.ev_delivered_kwh = np.bincount(session_conn, session_kwh.sum(axis=1), minlength=n_c).astype(
        np.float64
    )
    used = result.pv_available_kwh - result.curtailed_kwh
    result.self_consumption_pct = (
        100.0 * (used - result.hub_export_kwh) / result.pv_available_kwh if result.pv_available_kwh else 100.0
    )
    result.runtime_s = time.perf_counter() - started
    return result
