"""Policies: how the batteries are planned, and (for greedy) how the whole quarter hour is decided.

All share one interface: ``decide(step) -> DispatchResult`` for one quarter hour, given the frozen state of that
quarter hour (``Step``). ``mpc`` plans the batteries over a horizon of forecasts and lets the dispatch keep every
limit; ``greedy`` is what single-site controllers do, each connection for itself plus a zero-export rule at the
hub; ``oracle`` (``control/oracle.py``) solves the whole period at once with perfect foresight, for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix  # type: ignore[import-untyped]

from control.dispatch import DispatchInput, DispatchResult, dispatch, preferred
from control.lp import LinearProgram, LpError
from control.network import Network

__all__ = ["Greedy", "Mpc", "Policy", "Step"]

Array = npt.NDArray[np.float64]
ISP_H = 0.25


@dataclass
class Step:
    """Everything known when deciding quarter hour ``t``; ``inputs`` hold the forecasts' history."""

    t: int
    d: DispatchInput
    soc_kwh: Array  # per battery
    load_history: Array  # connections x ISPs (only columns < t may be looked at, plus column t: measured now)
    pv_history: Array
    ev_forecast_kw: Array  # connections x horizon: known sessions charging as soon as they can
    imp_plan: Array  # nodes x ISPs, the limits to keep (known ahead: contracts)
    exp_plan: Array


class Policy(Protocol):
    name: str

    def decide(self, step: Step) -> DispatchResult: ...


class Greedy:
    """Each connection on its own: the battery soaks up its own surplus and shaves its own peak, PV is curtailed
    to the connection's feed-in limit, chargers slowed to its offtake limit; then the hub: PV curtailed pro rata
    to kWp while the hub feeds in over its limit, chargers slowed while it takes too much. Loops, micro groups
    and group agreements are not looked at: that is what single-site controllers miss."""

    name = "greedy"

    def __init__(self, network: Network) -> None:
        self.network = network
        self.hub = next(i for i, level in enumerate(network.levels) if level == "hub")
        self.connection_nodes = np.array([network.node_index(c) for c in network.connection_ids])

    def decide(self, step: Step) -> DispatchResult:
        d = step.d
        n_c = d.load_kw.shape[0]
        imp_c, exp_c = d.imp_kw[self.connection_nodes], d.exp_kw[self.connection_nodes]
        ev_c = np.bincount(d.session_connection, d.session_max_kwh / ISP_H, minlength=n_c)
        net = d.load_kw + ev_c - d.pv_kw
        battery = np.zeros(len(d.battery_target_kw))
        for b, c in enumerate(d.battery_connection):
            if net[c] < 0:
                battery[b] = min(-net[c], d.battery_charge_max_kw[b])
            elif net[c] > imp_c[c]:
                battery[b] = -min(net[c] - imp_c[c], d.battery_discharge_max_kw[b])
            net[c] += battery[b]
        curtail = np.clip(-net - exp_c, 0, d.pv_kw)
        net += curtail
        ev_cut = np.clip(net - imp_c, 0, ev_c)
        net -= ev_cut
        hub_over = -net.sum() - d.exp_kw[self.hub]
        if hub_over > 0:
            room = d.pv_kw - curtail
            weight = self.network.kwp * (room > 0)
            if weight.sum() > 0:
                extra = np.minimum(room, hub_over * weight / weight.sum())
                curtail += extra
                net += extra
        hub_over = net.sum() - d.imp_kw[self.hub]
        if hub_over > 0 and (ev_c - ev_cut).sum() > 0:
            left = ev_c - ev_cut
            cut = np.minimum(left, hub_over * left / left.sum())
            ev_cut += cut
        scale = np.divide(ev_c - ev_cut, ev_c, out=np.zeros(n_c), where=ev_c > 0)
        session_kwh = d.session_max_kwh * scale[d.session_connection]
        res = preferred(
            DispatchInput(**{**d.__dict__, "pv_kw": d.pv_kw - curtail, "battery_target_kw": battery})
        )
        res.session_kwh = session_kwh
        connection = d.load_kw - (d.pv_kw - curtail) + (ev_c - ev_cut)
        connection += np.bincount(d.battery_connection, res.battery_kw, minlength=n_c)
        res.connection_kw = connection
        res.node_kw = d.incidence @ connection
        res.pv_used_kw = d.pv_kw - curtail
        over = (res.node_kw > d.imp_kw + 1e-6) | (-res.node_kw > d.exp_kw + 1e-6)
        res.infeasible = bool(over.any())
        return res


class Mpc:
    """Plans the batteries over ``horizon`` quarter hours of forecasts, again every quarter hour, and keeps the
    plan's first step as the battery target of the dispatch, which keeps every limit with the real values.

    Forecasts: load as a week ago (a day ago in the first week), PV as yesterday, EV as the sessions already
    plugged in charging as soon as they can. The plan covers the nodes above the batteries; what the other
    connections will do is their forecast flow, with feed-in cut at their own limit as the dispatch would cut it.
    Costs: energy over an export limit (it will be curtailed), far more for an import limit, a little for taking
    from the grid at all (so a battery empties into the estate's own use and has room for tomorrow's sun).

    The plan's steps: the first ``fine`` quarter hours one by one, then blocks of ``block`` quarter hours to the
    horizon's end (96 quarter hours in 36 steps by default). What is decided now needs the near future in detail
    and tomorrow only as energy; the plan is made again every quarter hour, so a block is looked at in quarter
    hours by the time it comes. A block keeps the room under a limit of its tightest quarter hour (conservative:
    a battery is readied for more than the peak, never less) and the grid energy of its average.
    """

    name = "mpc"

    def __init__(self, network: Network, horizon: int = 96, fine: int = 16, block: int = 4) -> None:
        if not 1 <= fine <= horizon or block < 1:
            raise ValueError(
                f"mpc steps: fine {fine} must lie in 1..horizon {horizon}, block {block} at least 1"
            )
        self.network = network
        self.horizon = horizon
        rest = horizon - fine
        self.lengths = np.array(
            [1] * fine + [block] * (rest // block) + ([rest % block] if rest % block else [])
        )
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.batteries = network.batteries
        self.hub = next(i for i, level in enumerate(network.levels) if level == "hub")
        rows = set()
        for battery in self.batteries:
            rows |= set(np.flatnonzero(network.incidence[:, battery.connection]).tolist())
        self.nodes = np.array(sorted(rows | {self.hub}), dtype=np.int64)
        self.connection_nodes = np.array([network.node_index(c) for c in network.connection_ids])
        self._hub_pos = int(np.flatnonzero(self.nodes == self.hub)[0])
        self._has_battery = np.zeros(len(network.connection_ids), bool)
        self._has_battery[[b.connection for b in self.batteries]] = True
        self._lp: LinearProgram | None = None

    def _forecast(self, step: Step) -> tuple[Array, Array, npt.NDArray[np.int64]]:
        t, T, h = step.t, step.load_history.shape[1], self.horizon
        ahead = np.minimum(np.arange(t, t + h), T - 1)  # past the data's end: its last quarter hour again
        week_ago = np.where(ahead - 672 >= 0, ahead - 672, ahead - 96)
        day_ago = ahead - 96
        load = np.where(
            day_ago >= 0, step.load_history[:, np.clip(week_ago, 0, T - 1)], step.load_history[:, [t]]
        )
        pv = np.where(day_ago >= 0, step.pv_history[:, np.clip(day_ago, 0, T - 1)], step.pv_history[:, [t]])
        load[:, 0], pv[:, 0] = step.d.load_kw, step.d.pv_kw  # the current quarter hour is measured
        return load, pv, ahead

    def _build(self) -> None:
        """The plan's structure, the same every quarter hour: only the right-hand sides change."""
        net, h = self.network, len(self.lengths)  # h: the plan's steps
        dt = ISP_H * self.lengths  # hours per step
        n_b, n_n = len(self.batteries), len(self.nodes)
        per = 3 * n_b + 2 * n_n + 1
        k = np.arange(h)[:, None]
        ch = k * per + np.arange(n_b)[None, :]  # h x n_b column indices
        dis, soc = ch + n_b, ch + 2 * n_b
        over_exp = k * per + 3 * n_b + np.arange(n_n)[None, :]
        over_imp = over_exp + n_n
        grid = (np.arange(h) * per + per - 1)[:, None]
        battery_connections = np.array([b.connection for b in self.batteries], dtype=np.int64)
        under = net.incidence[np.ix_(self.nodes, battery_connections)]  # n_n x n_b
        rows, cols, vals = [], [], []
        r = 0
        # Import rows (k, j): sum_b under (ch - dis) - over_imp <= imp - F; export rows: -(...) - over_exp <= exp + F
        for sign, over in ((1.0, over_imp), (-1.0, over_exp)):
            jj, bb = np.nonzero(under)
            row_ids = r + k * n_n + jj[None, :]  # h x entries
            for cols_of, coef in ((ch, sign), (dis, -sign)):
                rows.append(row_ids.ravel())
                cols.append(cols_of[:, bb].ravel())
                vals.append(np.full(row_ids.size, coef))
            rows.append((r + k * n_n + np.arange(n_n)[None, :]).ravel())
            cols.append(over.ravel())
            vals.append(np.full(h * n_n, -1.0))
            r += h * n_n
        # Grid rows k: sum_b (ch - dis) - grid <= -F_hub
        for cols_of, coef in ((ch, 1.0), (dis, -1.0)):
            rows.append(np.repeat(r + np.arange(h), n_b))
            cols.append(cols_of.ravel())
            vals.append(np.full(h * n_b, coef))
        rows.append(r + np.arange(h))
        cols.append(grid.ravel())
        vals.append(np.full(h, -1.0))
        r += h
        # State of charge rows (k, b): soc_k - soc_{k-1} - eff ch dt + dis dt / eff = (soc0 at k = 0, else 0)
        eff = np.array([b.efficiency for b in self.batteries])
        soc_rows = r + k * n_b + np.arange(n_b)[None, :]
        rows += [soc_rows.ravel(), soc_rows.ravel(), soc_rows.ravel(), soc_rows[1:].ravel()]
        cols += [soc.ravel(), ch.ravel(), dis.ravel(), soc[:-1].ravel()]
        vals += [
            np.ones(h * n_b),
            (-dt[:, None] * eff[None, :]).ravel(),
            (dt[:, None] / eff[None, :]).ravel(),
            -np.ones((h - 1) * n_b),
        ]
        self._soc_rows = soc_rows[0]
        r += h * n_b
        n_var = per * h
        matrix = csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r, n_var)
        ).tocsc()
        cost = np.zeros(n_var)
        # Per kW of a step, so in proportion to its length: the costs are of energy.
        cost[ch.ravel()] = cost[dis.ravel()] = np.repeat(0.01 * self.lengths, n_b)  # no pointless cycling
        cost[over_exp.ravel()] = np.repeat(100.0 * dt, n_n)
        cost[over_imp.ravel()] = np.repeat(1e4 * dt, n_n)
        cost[grid.ravel()] = 1.0 * dt
        upper = np.full(n_var, np.inf)
        power = np.array([b.power_kw for b in self.batteries])
        upper[ch] = power[None, :]
        upper[dis] = power[None, :]
        upper[soc] = np.array([b.capacity_kwh for b in self.batteries])[None, :]
        self._rows = r
        self._first = (ch[0], dis[0])
        self._lp = LinearProgram(
            cost, matrix, np.full(r, -np.inf), np.full(r, np.inf), np.zeros(n_var), upper
        )

    def _per_step(self, per_quarter_hour: Array, *, tightest: bool = False) -> Array:
        """Rows x quarter hours of the horizon -> rows x plan steps: a block's average, or with ``tightest`` its
        least value. A limit's room is the tightest: averaged, a block half in a peak hides half the peak's energy
        (what is over a limit is convex), and a battery charged for that half is short when the peak comes."""
        if tightest:
            least: Array = np.minimum.reduceat(per_quarter_hour, self.starts, axis=1)
            return least
        mean: Array = np.add.reduceat(per_quarter_hour, self.starts, axis=1) / self.lengths
        return mean

    def plan(self, step: Step) -> Array:
        if not self.batteries:
            return np.zeros(0)
        if self._lp is None:
            self._build()
        assert self._lp is not None
        net, h, n_n = self.network, self.horizon, len(self.nodes)
        load, pv, ahead = self._forecast(step)
        flow = load - pv + step.ev_forecast_kw[:, :h]
        # np.ix_: only the horizon's columns are copied, not the whole period's rows (a year is 35,040 columns).
        exp_c = step.exp_plan[np.ix_(self.connection_nodes, ahead)]
        # Connections without a battery cut their own feed-in at their limit (the dispatch would).
        flow = np.where(self._has_battery[:, None], flow, np.maximum(flow, -exp_c))
        node_flow = net.incidence[self.nodes] @ flow  # n_n x quarter hours
        imp = step.imp_plan[np.ix_(self.nodes, ahead)]
        exp = step.exp_plan[np.ix_(self.nodes, ahead)]
        lower = np.full(self._rows, -np.inf)
        upper = np.concatenate(
            [
                self._per_step(imp - node_flow, tightest=True).T.ravel(),
                self._per_step(exp + node_flow, tightest=True).T.ravel(),
                self._per_step(-node_flow[self._hub_pos][None, :])[0],
                np.zeros(len(self.lengths) * len(self.batteries)),
            ]
        )
        soc_rows = self._soc_rows
        lower[soc_rows[0] :] = 0.0
        lower[soc_rows] = step.soc_kwh
        upper[soc_rows] = step.soc_kwh
        del n_n
        try:
            x = self._lp.solve(row_lower=lower, row_upper=upper)
        except LpError:
            return np.zeros(len(self.batteries))
        ch, dis = self._first
        result: Array = x[ch] - x[dis]
        return result

    def decide(self, step: Step) -> DispatchResult:
        target = self.plan(step)
        d = DispatchInput(**{**step.d.__dict__, "battery_target_kw": target})
        return dispatch(d)
