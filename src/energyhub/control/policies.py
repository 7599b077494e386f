"""Policies: how the batteries are planned, and (for greedy) how the whole quarter hour is decided.

All share one interface: ``decide(step) -> DispatchResult`` for one quarter hour, given the frozen state of that
quarter hour (``Step``). ``mpc`` plans the batteries over a horizon of forecasts and lets the dispatch keep every
limit; ``greedy`` is what single-site controllers do, each connection for itself plus a zero-export rule at the
hub; ``oracle`` (``src/energyhub/control/oracle.py``) solves the whole period at once with perfect foresight, for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix  # type: ignore[import-untyped]

from energyhub.control.costs import (
    COST_CURTAIL,
    COST_EV,
    COST_EV_WAIT,
    COST_GRID,
    COST_OVER_IMPORT,
    battery_wear,
)
from energyhub.control.dispatch import DispatchInput, DispatchResult, dispatch, preferred
from energyhub.control.forecast import Forecaster, read_clearness
from energyhub.control.lp import LinearProgram, LpError
from energyhub.domain.network import Network

__all__ = ["Greedy", "Mpc", "PlannedSessions", "Policy", "Step"]

Array = npt.NDArray[np.float64]
ISP_H = 0.25
# blend: energyhub.control.forecast; persistence: load a week ago, PV yesterday; perfect: the data's own future, for
# evaluation only (it tells how much of a gap to the oracle is the plan's and how much the forecasts').
FORECASTS = ("blend", "persistence", "perfect")
EV_FINE = 16  # a car's plan in quarter hours for the first four hours, then in hours


@dataclass
class Step:
    """Everything known when deciding quarter hour ``t``; ``inputs`` hold the forecasts' history."""

    t: int
    d: DispatchInput
    soc_kwh: Array  # per battery
    # connections x ISPs: only columns < t may be looked at, plus column t (measured now); ``perfect`` forecasts
    # look further, for evaluation only
    load_history: Array
    pv_history: Array
    imp_plan: Array  # nodes x ISPs, the limits to keep (known ahead: contracts)
    exp_plan: Array
    sessions: PlannedSessions | None = None  # the cars plugged in, for a plan that knows them
    isp_starts: list[datetime] | None = None  # every column's quarter hour, for forecasts by time of day


@dataclass
class PlannedSessions:
    """What is known of the cars plugged in now, in the order of ``Step.d``'s sessions."""

    charger: npt.NDArray[np.int64]  # index into ``Network.chargers``
    remaining_kwh: Array  # what each still wants
    # sessions x horizon: what each can take in each quarter hour ahead (0 once it has left)
    available_kwh: Array


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


def _steps(horizon: int, fine: int, block: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A plan's steps over ``horizon`` quarter hours: ``fine`` of one, then blocks of ``block``; lengths and
    starts."""
    rest = horizon - fine
    lengths = np.array([1] * fine + [block] * (rest // block) + ([rest % block] if rest % block else []))
    return lengths, np.concatenate([[0], np.cumsum(lengths)[:-1]])


class Mpc:
    """Plans the batteries and the plugged-in cars over ``horizon`` quarter hours of forecasts, again every quarter
    hour, and gives the plan's first step to the dispatch as the battery targets and each car's kWh, which keeps
    every limit with the real values.

    Forecasts (``energyhub.control.forecast``) when the quarter hours' times are known: load as the same time on recent days
    of the same day type, PV as a clear-sky envelope times the recent clearness; otherwise (online, for now) load as
    a week ago (a day ago in the first week) and PV as yesterday. Import limits are planned against the cautious
    forecast (the highest load of those days), so a battery is charged for a CBC window or a time-block edge it
    knows is coming even when yesterday's evening was quiet; feed-in limits and grid energy against the expected
    one. A car plugged in is planned with its energy and departure: as soon as it can, unless waiting for the sun
    saves curtailment. Connections and nodes with nothing to steer below them cut their own feed-in at their
    limits, as the dispatch would; PV curtailed at a planned node lowers the feed-in of every node above it.

    Costs (``energyhub.control.costs``): a kWh curtailed, far more for one over an import limit, a car's energy left
    undelivered at departure, each battery's wear per kWh moved, a little for taking from the grid at all, and
    less for a car waiting.

    The plan's steps: the first ``fine`` quarter hours one by one, then blocks of ``block`` quarter hours to the
    horizon's end. By default every quarter hour is a step (96 over the day ahead): a battery's power held over
    an hour block charges in the block's quarter hours without surplus too, so the plan needs more room than the
    surplus and empties a battery the day before for nothing (twice the throughput the exact oracle needs, on the
    sharing reference, for the same curtailment). A block's decision holds over its quarter hours, and each of
    them keeps its own limits, so the energy a peak needs is counted as it is.
    """

    name = "mpc"

    def __init__(
        self,
        network: Network,
        horizon: int = 96,
        fine: int | None = None,
        block: int = 4,
        *,
        forecasts: str = "blend",
        caution: float = 0.0,
        weather: Path | None = None,
    ) -> None:
        fine = horizon if fine is None else fine
        if not 1 <= fine <= horizon or block < 1:
            raise ValueError(
                f"mpc steps: fine {fine} must lie in 1..horizon {horizon}, block {block} at least 1"
            )
        if forecasts not in FORECASTS:
            raise ValueError(f"mpc forecasts {forecasts!r}: one of {', '.join(FORECASTS)}")
        self.forecasts = forecasts
        # How far feed-in limits are planned toward a clear sky (0: the expected PV, 1: the envelope). Over the
        # sharing reference's eight weeks 0.5 curtailed 4 % less and moved 23 % more through the batteries, which
        # at the configured wear costs more than the curtailment it saves: 0 by default.
        self.caution = caution
        self.weather = weather  # a forecast's clear-sky index per quarter hour (energyhub.control.forecast.read_clearness)
        self.network = network
        self.horizon = horizon
        self.lengths, self.starts = _steps(horizon, fine, block)
        self.ev_lengths, self.ev_starts = _steps(horizon, min(EV_FINE, horizon), 4)
        self.batteries = network.batteries
        self.chargers = network.chargers
        self.hub = next(i for i, level in enumerate(network.levels) if level == "hub")
        steered = [b.connection for b in self.batteries] + [c.connection for c in self.chargers]
        rows = set()
        for connection in steered:
            rows |= set(np.flatnonzero(network.incidence[:, connection]).tolist())
        # Nodes over the same connections (a group agreement of the whole estate and the hub) are one row with the
        # tighter limit of the two.
        same: dict[bytes, list[int]] = {}
        for n in sorted(rows | {self.hub}):
            same.setdefault(network.incidence[n].tobytes(), []).append(n)
        groups = sorted(same.values(), key=lambda g: g[0] if self.hub not in g else -1)
        self.nodes = np.array([self.hub if self.hub in g else g[0] for g in groups], dtype=np.int64)
        self._same = np.array([n for g in groups for n in g], dtype=np.int64)
        self._same_starts = np.cumsum([0] + [len(g) for g in groups[:-1]])
        self.connection_nodes = np.array([network.node_index(c) for c in network.connection_ids])
        self._hub_pos = int(np.flatnonzero(self.nodes == self.hub)[0])
        self._steered = np.zeros(len(network.connection_ids), bool)
        self._steered[steered] = True
        # Nodes above connections (micro groups, loops, group agreements) with nothing to steer below them: what
        # they feed in over their limit is curtailed there and never reaches the nodes the plan looks at. Smallest
        # first, so a micro group is capped before its loop.
        size = network.incidence.sum(axis=1)
        self._capped = [
            (n, network.incidence[n] > 0)
            for n in np.argsort(size, kind="stable").tolist()
            if size[n] > 1 and n != self.hub and not (network.incidence[n] * self._steered).any()
        ]
        self._lp: LinearProgram | None = None
        self._slots = 1  # cars planned per charger at once; more when more are plugged in (then rebuilt)
        self._forecaster: Forecaster | None = None
        self._forecast_times: list[datetime] | None = None

    def _forecast(self, step: Step) -> tuple[Array, Array, Array, Array, npt.NDArray[np.int64]]:
        """For the horizon, connections x quarter hours: load expected and cautious (for import limits), PV
        expected and cautious (for feed-in limits)."""
        t, T, h = step.t, step.load_history.shape[1], self.horizon
        ahead = np.minimum(np.arange(t, t + h), T - 1)  # past the data's end: its last quarter hour again
        if self.forecasts == "perfect":
            load, pv = step.load_history[:, ahead].copy(), step.pv_history[:, ahead].copy()
            load_high, pv_high = load.copy(), pv.copy()
        elif step.isp_starts is not None and self.forecasts == "blend":
            if self._forecast_times is not step.isp_starts:
                clearness = None if self.weather is None else read_clearness(self.weather, step.isp_starts)
                self._forecaster = Forecaster(step.isp_starts, clearness=clearness)
                self._forecast_times = step.isp_starts
            assert self._forecaster is not None
            load, load_high = self._forecaster.load_both(step.load_history, t, h)
            pv, clear = self._forecaster.pv_both(step.pv_history, t, h)
            pv_high = pv + self.caution * np.maximum(clear - pv, 0)
        else:
            week_ago = np.where(ahead - 672 >= 0, ahead - 672, ahead - 96)
            day_ago = ahead - 96
            load = np.where(
                day_ago >= 0, step.load_history[:, np.clip(week_ago, 0, T - 1)], step.load_history[:, [t]]
            )
            pv = np.where(
                day_ago >= 0, step.pv_history[:, np.clip(day_ago, 0, T - 1)], step.pv_history[:, [t]]
            )
            load_high, pv_high = load.copy(), pv.copy()
        # The current quarter hour is measured.
        load[:, 0] = load_high[:, 0] = step.d.load_kw
        pv[:, 0] = pv_high[:, 0] = step.d.pv_kw
        return load, load_high, pv, pv_high, ahead

    def _build(self) -> None:
        """The plan's structure, the same every quarter hour: only the bounds change.

        Decisions are per plan step (a battery's power and a car's kWh hold over a step), limits and grid energy
        per quarter hour: a block's row at its tightest quarter hour would ready a battery for four times the peak,
        its average for half of it; one row per quarter hour is exact for a decision that holds over the block.
        A car's steps are quarter hours for the first four hours and hours after (what a car takes late in the
        day needs no finer plan, and those columns are a third of the program)."""
        net, h, H = self.network, len(self.lengths), self.horizon  # h: battery steps, H: quarter hours
        h_e = len(self.ev_lengths)
        dt, dt_e = ISP_H * self.lengths, ISP_H * self.ev_lengths  # hours per step
        step_of = np.repeat(np.arange(h), self.lengths)  # H: the battery step each quarter hour lies in
        ev_step_of = np.repeat(np.arange(h_e), self.ev_lengths)
        # A car's columns per plugged-in session: ``self._slots`` per charger (car e at charger e % chargers), so
        # each car is planned with its own energy and departure.
        n_b, n_e, n_n = len(self.batteries), self._slots * len(self.chargers), len(self.nodes)
        k = np.arange(h)[:, None]
        ch = k * 3 * n_b + np.arange(n_b)[None, :]  # h x n_b column indices
        dis, soc = ch + n_b, ch + 2 * n_b
        ev = (
            3 * n_b * h + np.arange(h_e)[:, None] * n_e + np.arange(n_e)[None, :]
        )  # kWh a car takes in a step
        q = np.arange(H)[:, None]
        grid = 3 * n_b * h + n_e * h_e + q  # H x 1
        # Over an import limit in a quarter hour (where the forecast load alone is); over a feed-in limit needs no
        # such column, since curtailing all PV keeps any.
        over_imp = 3 * n_b * h + n_e * h_e + H + q * 2 * n_n + np.arange(n_n)[None, :]  # H x n_n
        # PV curtailed at a node in a quarter hour: it lowers the feed-in of that node and of every node above.
        curtail = over_imp + n_n
        undelivered = 3 * n_b * h + n_e * h_e + H + 2 * n_n * H + np.arange(n_e)
        # The chargers' kW per connection and quarter hour: node rows see one column per charging connection, not
        # one per charger (a plaza of 18 chargers was most of the program's entries).
        charger_connections = np.tile(
            np.array([c.connection for c in self.chargers], dtype=np.int64), self._slots
        )
        sites = np.unique(charger_connections)
        site_of = np.searchsorted(sites, charger_connections)
        first_site = 3 * n_b * h + n_e * h_e + H + 2 * n_n * H + n_e
        site_kw = first_site + q * len(sites) + np.arange(len(sites))[None, :]  # H x sites
        n_var = first_site + H * len(sites)
        members = net.incidence[self.nodes] > 0
        # within[i, j]: node j lies inside node i (its connections are among i's)
        within = (members[None, :, :] <= members[:, None, :]).all(axis=2).astype(float)
        battery_connections = np.array([b.connection for b in self.batteries], dtype=np.int64)
        under = net.incidence[np.ix_(self.nodes, battery_connections)]  # n_n x n_b
        under_ev = net.incidence[np.ix_(self.nodes, sites)]  # n_n x sites
        ev_kw = np.repeat(1 / dt_e, n_e).reshape(h_e, n_e)[ev_step_of]  # H x n_e: kW per kWh of its step
        ev_q = ev[ev_step_of]  # H x n_e: the car's column in each quarter hour
        rows, cols, vals = [], [], []
        r = 0
        # Import rows (q, j): sum_b under (ch - dis) + sum_e under e / dt + curtailed within - over_imp <= imp - F;
        # export rows: -(...) <= exp + F. The actions are those of the quarter hour's step.
        for sign, over in ((1.0, over_imp), (-1.0, None)):
            jj, bb = np.nonzero(under)
            row_ids = r + q * n_n + jj[None, :]  # H x entries
            for cols_of, coef in ((ch, sign), (dis, -sign)):
                rows.append(row_ids.ravel())
                cols.append(cols_of[step_of][:, bb].ravel())
                vals.append(np.full(row_ids.size, coef))
            jj, ee = np.nonzero(under_ev)
            rows.append((r + q * n_n + jj[None, :]).ravel())
            cols.append(site_kw[:, ee].ravel())
            vals.append(np.full(H * len(ee), sign))
            if over is not None:
                rows.append((r + q * n_n + np.arange(n_n)[None, :]).ravel())
                cols.append(over.ravel())
                vals.append(np.full(H * n_n, -1.0))
            ii, jj = np.nonzero(within)
            rows.append((r + q * n_n + ii[None, :]).ravel())
            cols.append(curtail[:, jj].ravel())
            vals.append(np.full(H * len(ii), sign))
            r += H * n_n
        # Grid rows q: sum_b (ch - dis) + sum_e e / dt - grid <= -F_hub
        for cols_of, coef in ((ch, 1.0), (dis, -1.0)):
            rows.append(np.repeat(r + np.arange(H), n_b))
            cols.append(cols_of[step_of].ravel())
            vals.append(np.full(H * n_b, coef))
        rows.append(np.repeat(r + np.arange(H), len(sites)))
        cols.append(site_kw.ravel())
        vals.append(np.ones(site_kw.size))
        rows.append(r + np.arange(H))
        cols.append(grid.ravel())
        vals.append(np.full(H, -1.0))
        r += H
        # Site rows (q, site): sum_e at the site e / dt - site_kw = 0
        site_rows = r + q * len(sites) + site_of[None, :]  # H x n_e
        rows += [site_rows.ravel(), (r + q * len(sites) + np.arange(len(sites))[None, :]).ravel()]
        cols += [ev_q.ravel(), site_kw.ravel()]
        vals += [ev_kw.ravel(), np.full(site_kw.size, -1.0)]
        self._site_rows = np.arange(r, r + H * len(sites))
        r += H * len(sites)
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
        self._soc_all = np.arange(r, r + h * n_b)
        r += h * n_b
        # Session rows e: sum_k e_k + undelivered = the energy its car still wants (0 when no car is plugged in).
        self._session_rows = r + np.arange(n_e)
        rows += [np.tile(self._session_rows, h_e), self._session_rows]
        cols += [ev.ravel(), undelivered]
        vals += [np.ones(h_e * n_e), np.ones(n_e)]
        r += n_e
        matrix = csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r, n_var)
        ).tocsc()
        cost = np.zeros(n_var)
        # Per kW of a step or quarter hour, so in proportion to its length: the costs are of energy.
        cost[ch] = cost[dis] = battery_wear(net)[None, :] * dt[:, None]
        cost[curtail.ravel()] = COST_CURTAIL * ISP_H
        cost[over_imp.ravel()] = COST_OVER_IMPORT * ISP_H
        cost[grid.ravel()] = COST_GRID * ISP_H
        cost[undelivered] = COST_EV * 5  # the dispatch's highest urgency: undelivered at departure
        # A car charges as soon as it can unless waiting saves something: the cars that arrive later (not known
        # yet) will want the same room under the limits.
        cost[ev] = COST_EV_WAIT * (ISP_H * (self.ev_starts + (self.ev_lengths - 1) / 2))[:, None]
        upper = np.full(n_var, np.inf)
        power = np.array([b.power_kw for b in self.batteries])
        upper[ch] = power[None, :]
        upper[dis] = power[None, :]
        upper[soc] = np.array([b.capacity_kwh for b in self.batteries])[None, :]
        upper[ev] = 0.0
        upper[curtail] = 0.0  # up to the PV forecast under the node, set each plan
        self._changing = np.concatenate([curtail.ravel(), ev.ravel()]).astype(np.int32)
        self._rows = r
        self._first = (ch[0], dis[0])
        self._ev = ev
        self._lp = LinearProgram(
            cost, matrix, np.full(r, -np.inf), np.full(r, np.inf), np.zeros(n_var), upper
        )

    def _uncontrolled(self, flow: Array, exp_plan: Array, ahead: npt.NDArray[np.int64]) -> Array:
        """Connection flows as the dispatch will leave them where the plan has nothing to steer: feed-in cut at
        each connection's limit, then at each node's over them (shared by what each feeds in)."""
        exp_c = exp_plan[np.ix_(self.connection_nodes, ahead)]
        out: Array = np.where(self._steered[:, None], flow, np.maximum(flow, -exp_c))
        for n, members in self._capped:
            over = -out[members].sum(axis=0) - exp_plan[n, ahead]
            if not (over > 1e-9).any():
                continue
            feed_in = np.maximum(-out[members], 0)
            total = feed_in.sum(axis=0)
            cut = np.divide(np.maximum(over, 0), total, out=np.zeros_like(total), where=total > 1e-9)
            out[members] += feed_in * np.minimum(cut, 1)
        return out

    def plan(self, step: Step) -> tuple[Array, Array]:
        """The first step's battery power (kW, + charge) and, per present session, its kWh this quarter hour."""
        n_sessions = len(step.d.session_connection)
        if not self.batteries and not self.chargers:
            return np.zeros(0), step.d.session_max_kwh.copy()
        sessions = step.sessions
        car = np.zeros(0, np.int64)
        if sessions is not None and len(sessions.charger) and self.chargers:
            car = self._cars(sessions.charger)
        if self._lp is None:
            self._build()
        assert self._lp is not None
        net, h = self.network, self.horizon
        load, load_high, pv, pv_high, ahead = self._forecast(step)
        # Import limits against the cautious load, feed-in limits against the cautious PV (with what the nodes
        # the plan does not steer will curtail themselves), grid energy expected.
        below = net.incidence[self.nodes]
        node_flow, node_high = below @ (load - pv), below @ (load_high - pv)
        node_low = below @ self._uncontrolled(load - pv_high, step.exp_plan, ahead)
        imp = np.minimum.reduceat(step.imp_plan[np.ix_(self._same, ahead)], self._same_starts, axis=0)
        exp = np.minimum.reduceat(step.exp_plan[np.ix_(self._same, ahead)], self._same_starts, axis=0)
        lower = np.full(self._rows, -np.inf)
        n_e = self._slots * len(self.chargers)
        hub_flow = node_flow[self._hub_pos]
        upper = np.concatenate(
            [
                (imp - node_high).T.ravel(),
                (exp + node_low).T.ravel(),
                -hub_flow,
                np.zeros(len(self._site_rows)),
                np.zeros(len(self.lengths) * len(self.batteries)),
                np.zeros(n_e),
            ]
        )
        soc_rows = self._soc_rows
        lower[self._site_rows] = 0.0
        lower[self._soc_all] = 0.0
        lower[soc_rows] = step.soc_kwh
        upper[soc_rows] = step.soc_kwh
        # Only these columns' bounds change from plan to plan: PV that can be curtailed, what a car can take.
        curtailable = (below @ pv_high).T
        room = np.zeros((n_e, h))
        if sessions is not None and len(car):
            wanted = np.zeros(n_e)
            wanted[car] = sessions.remaining_kwh
            lower[self._session_rows] = upper[self._session_rows] = wanted
            room[car] = sessions.available_kwh[:, :h]
        else:
            lower[self._session_rows] = upper[self._session_rows] = 0.0
        col_upper = np.concatenate(
            [curtailable.ravel(), np.add.reduceat(room, self.ev_starts, axis=1).T.ravel()]
        )
        try:
            x = self._lp.solve(row_lower=lower, row_upper=upper, col_upper=col_upper, cols=self._changing)
        except LpError:
            return np.zeros(len(self.batteries)), step.d.session_max_kwh.copy()
        ch, dis = self._first
        battery: Array = x[ch] - x[dis]
        if sessions is None or not n_sessions:
            return battery, step.d.session_max_kwh.copy()
        # Each car's kWh of the first step: its own column, planned with its own energy and departure.
        target: Array = x[self._ev[0]][car]
        return battery, np.minimum(target, step.d.session_max_kwh)

    def _cars(self, charger: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Each present session's car columns: the n-th session at a charger takes that charger's n-th slot.
        Planning a charger's sessions as one (their energy summed, their room summed) let the plan deliver a car's
        energy after it had left, in the room of the car beside it, and split the charger's kWh between the two by
        what each could take, not by what each still needed before leaving: the car leaving first went short, and
        a finished car took half of every plan for the other one. More sessions at a charger than slots: the
        program is built again with more."""
        n_c = len(self.chargers)
        order = np.argsort(charger, kind="stable")
        ranked = charger[order]
        rank = np.empty(len(charger), np.int64)
        rank[order] = np.arange(len(charger)) - np.searchsorted(ranked, ranked)
        needed = int(rank.max()) + 1
        if needed > self._slots:
            self._slots = needed
            self._lp = None
        cars: npt.NDArray[np.int64] = rank * n_c + charger
        return cars

    def decide(self, step: Step) -> DispatchResult:
        battery, sessions = self.plan(step)
        target = sessions if step.sessions is not None else None
        d = DispatchInput(**{**step.d.__dict__, "battery_target_kw": battery, "session_target_kwh": target})
        return dispatch(d)
