"""Run a scenario: every year through the control simulation, and the battery sweep.

Each year is simulated over its own calendar (from ``start`` local time, a whole year or ``days`` days) with the
simulators' weather, loads and EV sessions for that year and the scenario's seed; the year's community is the
base plus the scenario's changes (``energyhub.planning.scenario``). A year's figures: PV on offer and curtailed, limit
violations and the quarter hours in which no action could keep every limit with the margin, self-consumption, battery
equivalent full cycles, EV energy served (and at the charging plaza), the hub's exchange, and headroom of every
connection, micro group, loop and the hub from the simulated flows.

The sweep runs the sweep year once per battery size, with the same inputs, and picks the smallest size whose
curtailment is at or under the target. Runs are independent, so they go to a process pool; progress comes back
over a queue.
"""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing
import queue
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]

from energyhub.control.inputs import Inputs, Session
from energyhub.control.limits import LimitTable
from energyhub.control.oracle import oracle
from energyhub.control.simulate import SimulationResult, make_policy, simulate
from energyhub.domain.community import ConfigIssue, format_path, line_of
from energyhub.domain.network import Network
from energyhub.domain.topology import Community, Level
from energyhub.planning.headroom import node_headroom
from energyhub.planning.meter_data import MeterSeries
from energyhub.planning.scenario import (
    DC_AC_RATIO,
    BatteryPlan,
    Roof,
    Scenario,
    ScenarioError,
    Sweep,
    community_for_year,
    connections_of,
    with_battery,
    with_roof,
)
from energyhub.synthetic.export import ConnectionSeries, QuarterHours, quarter_hour_series, roof_quarter_hours

__all__ = [
    "PlanResult",
    "RunOutcome",
    "best_size",
    "generate_quarter_hours",
    "inputs_from",
    "period",
    "run_plan",
    "simulate_community",
    "sweep_community",
    "sweep_inputs",
]

ISP_H = 0.25
# Days simulated before each period only as history for the policy's forecasts, as a controller that has been
# running has them; without, a plan's first day is blind and batteries start it unprepared.
WARMUP = timedelta(days=7)
PLAZA_PROFILE = "ev_plaza"

Progress = Callable[[str, int], None]  # ("inputs" | "quarter hours", how many more done)


@dataclass
class RunOutcome:
    """One simulated year (or one sweep size): the row of ``years.csv`` or ``sweep.csv``, and the detail."""

    year: int
    label: str
    figures: dict[str, Any]
    headroom: list[dict[str, Any]] = field(default_factory=list)
    monthly_curtailed_kwh: dict[str, float] = field(default_factory=dict)


@dataclass
class PlanResult:
    years: list[RunOutcome]
    sweep: list[RunOutcome] = field(default_factory=list)
    chosen: float | None = None  # the sweep's answer (see ``best_size``); None if no size meets the target
    documents: dict[int, dict[str, Any]] = field(default_factory=dict)  # each year's community document


def period(scenario: Scenario, year: int, timezone: str) -> tuple[datetime, datetime]:
    """The simulated span of ``year`` in UTC: from ``start`` local midnight, a year or ``days`` days."""
    month, day = (int(part) for part in scenario.start.split("-"))
    tz = ZoneInfo(timezone)
    begin = datetime(year, month, day, tzinfo=tz)
    end = (
        begin + timedelta(days=scenario.days) if scenario.days else datetime(year + 1, month, day, tzinfo=tz)
    )
    return begin.astimezone(ZoneInfo("UTC")), end.astimezone(ZoneInfo("UTC"))


def inputs_from(data: QuarterHours, network: Network) -> Inputs:
    """The simulation's inputs for ``network`` from generated quarter hours, by connection id: a connection the
    data does not have (a planned battery's own connection) has no load and no PV."""
    isp_starts = [datetime.fromtimestamp(data.start_s + i * 900, ZoneInfo("UTC")) for i in range(data.isps)]
    by_id = {c.connection: c.series for c in data.connections}
    n_c = len(network.connection_ids)
    load = np.zeros((n_c, data.isps))
    pv = np.zeros_like(load)
    for c, cid in enumerate(network.connection_ids):
        series = by_id.get(cid, {})
        if "load" in series:
            load[c] = series["load"] / ISP_H
        if "pv" in series:
            pv[c] = series["pv"] / ISP_H
    index = {cid: c for c, cid in enumerate(network.connection_ids)}
    chargers = {ch.id for ch in network.chargers}
    sessions = [
        Session(
            index[r.connection], f"{r.connection}/{r.device}", r.arrival, r.departure, r.energy_kwh, r.max_kw
        )
        for r in data.sessions
        if r.connection in index and f"{r.connection}/{r.device}" in chargers
    ]
    return Inputs(isp_starts, load, pv, sessions)


def simulate_community(
    community: Community, data: QuarterHours, scenario: Scenario, tick: Callable[[int], None]
) -> tuple[Network, Inputs, SimulationResult]:
    network = Network.from_community(community)
    everything = inputs_from(data, network)
    k = data.history_isps
    history = everything.window(0, k) if k else None
    inputs = everything.window(k, everything.isps)
    limits = LimitTable.build(community, network.node_ids, inputs.isp_starts)
    if scenario.policy == "oracle":
        result = oracle(
            network, inputs, limits, margin=scenario.margin, key=scenario.key, priority=scenario.priority
        )
        tick(inputs.isps)
    else:
        pending = [0]

        def progress(n: int) -> None:
            pending[0] += n
            if pending[0] >= 96:
                tick(pending[0])
                pending[0] = 0

        result = simulate(
            network,
            inputs,
            limits,
            make_policy(scenario.policy, network),
            margin=scenario.margin,
            key=scenario.key,
            priority=scenario.priority,
            progress=progress,
            history=history,
        )
        tick(pending[0])
    return network, inputs, result


def _figures(
    community: Community, network: Network, inputs: Inputs, result: SimulationResult
) -> dict[str, Any]:
    connections = [c for _l, _m, c in community.connections()]
    plaza = [c for c, conn in enumerate(connections) if conn.load_profile == PLAZA_PROFILE]
    capacity = sum(b.capacity_kwh for b in network.batteries)
    requested = np.zeros(len(connections))
    for session in inputs.sessions:
        requested[session.connection] += session.energy_kwh
    hub = network.levels.index(Level.HUB)
    pv = result.pv_available_kwh
    return {
        "pv_kwp": round(float(network.kwp.sum()), 1),
        "battery_kw": round(sum(b.power_kw for b in network.batteries), 1),
        "battery_kwh": round(capacity, 1),
        "chargers": len(network.chargers),
        "use_kwh": round(float(inputs.load_kw.sum() * ISP_H), 1),
        "pv_offered_kwh": round(pv, 1),
        "curtailed_kwh": round(result.curtailed_kwh, 1),
        "curtailed_pct": round(100.0 * result.curtailed_kwh / pv, 3) if pv else 0.0,
        "self_consumption_pct": round(result.self_consumption_pct, 2),
        "violations": result.violations,
        "violation_kwh": round(result.violation_kwh, 1),
        "infeasible_isps": result.infeasible_isps,
        "battery_throughput_kwh": round(result.battery_throughput_kwh, 1),
        # Equivalent full cycles: a full charge and discharge moves twice the capacity.
        "battery_cycles": round(result.battery_throughput_kwh / (2 * capacity), 1) if capacity else 0.0,
        "ev_requested_kwh": round(result.ev_requested_kwh, 1),
        "ev_served_kwh": round(float(result.ev_delivered_kwh.sum()), 1),
        "plaza_requested_kwh": round(float(requested[plaza].sum()), 1),
        "plaza_served_kwh": round(float(result.ev_delivered_kwh[plaza].sum()), 1),
        "hub_import_kwh": round(result.hub_import_kwh, 1),
        "hub_export_kwh": round(result.hub_export_kwh, 1),
        "hub_peak_import_kw": round(float(result.node_kw[hub].max()), 1),
        "runtime_s": round(result.runtime_s, 1),
    }


def _headroom(
    community: Community, network: Network, inputs: Inputs, result: SimulationResult
) -> list[dict[str, Any]]:
    nodes = community.nodes()
    rows = []
    for n, node_id in enumerate(network.node_ids):
        ref = nodes[node_id]
        if ref.level is Level.GROUP:
            continue
        flow = result.node_kw[n]
        series = MeterSeries(inputs.isp_starts, np.maximum(flow, 0) * ISP_H, np.maximum(-flow, 0) * ISP_H)
        found = node_headroom(
            node_id,
            ref.level.value,
            series,
            capacity_kva=ref.capacity_kva,
            import_kw=ref.limits.import_kw,
            export_kw=ref.limits.export_kw,
            timezone=community.community.timezone,
        )
        rows.append(found.row())
    return rows


def _monthly(community: Community, inputs: Inputs, result: SimulationResult) -> dict[str, float]:
    local = pd.DatetimeIndex(inputs.isp_starts).tz_convert(ZoneInfo(community.community.timezone))
    monthly = pd.Series(result.curtailed_kw * ISP_H, index=local.strftime("%Y-%m")).groupby(level=0).sum()
    return {str(month): round(float(kwh), 1) for month, kwh in monthly.items()}


def generate_quarter_hours(
    community: Community, scenario: Scenario, year: int, tick: Callable[[int], None]
) -> QuarterHours:
    start, end = period(scenario, year, community.community.timezone)
    data = quarter_hour_series(
        community, start=start - WARMUP, end=end, seed=scenario.seed, progress=lambda *_: tick(1)
    )
    return dataclasses.replace(data, history_isps=int(WARMUP / timedelta(minutes=15)))


def _year_job(
    community: Community, scenario: Scenario, year: int, keep_inputs: bool, updates: Any
) -> tuple[RunOutcome, QuarterHours | None]:
    data = generate_quarter_hours(community, scenario, year, lambda n: updates.put(("inputs", n)))
    network, inputs, result = simulate_community(
        community, data, scenario, lambda n: updates.put(("quarter hours", n))
    )
    outcome = RunOutcome(
        year,
        str(year),
        {"year": year, **_figures(community, network, inputs, result)},
        _headroom(community, network, inputs, result),
        _monthly(community, inputs, result),
    )
    return outcome, (data if keep_inputs else None)


def _sweep_job(
    community: Community, scenario: Scenario, year: int, size: float, data: QuarterHours, updates: Any
) -> RunOutcome:
    assert scenario.sweep is not None
    unit = scenario.sweep.unit
    network, inputs, result = simulate_community(
        community, data, scenario, lambda n: updates.put(("quarter hours", n))
    )
    figures = {"size": size, "unit": unit, **_figures(community, network, inputs, result)}
    return RunOutcome(year, f"{size:g} {unit}", figures, [], _monthly(community, inputs, result))


SWEPT_ID = "sweep"  # the swept battery's or roof's id


def sweep_community(doc: dict[str, Any], scenario: Scenario, size: float, timezone: str) -> Community:
    """The sweep year's community with the swept battery or PV roof at ``size`` (none at size 0)."""
    sweep = scenario.sweep
    assert sweep is not None
    doc = copy.deepcopy(doc)
    if size > 0 and sweep.kind == "battery":
        with_battery(
            doc,
            BatteryPlan(
                id=f"{SWEPT_ID}-battery", at=sweep.at, power_kw=size * sweep.c_rate, capacity_kwh=size
            ),
        )
    elif size > 0:
        roof = Roof(connection=sweep.at, kwp=size, id=f"{SWEPT_ID}-pv")
        with_roof(doc, connections_of(doc)[sweep.at], roof, default_id=SWEPT_ID)
    return Community.model_validate(doc, context={"timezone": timezone})


def sweep_inputs(
    data: QuarterHours, sweep: Sweep, size: float, roof_kwh_per_kwp: npt.NDArray[np.float64]
) -> QuarterHours:
    """The sweep year's inputs at ``size``: a battery changes none, a roof adds its PV to its connection's. A
    roof's output is its kWp times one kWp's (the inverter is sized with the kWp), so it is computed once."""
    if sweep.kind == "battery" or size == 0:
        return data
    connections = []
    for found in data.connections:
        if found.connection == sweep.at:
            pv = found.series.get("pv", np.zeros(data.isps)) + roof_kwh_per_kwp * size
            found = ConnectionSeries(found.connection, {**found.series, "pv": pv})
        connections.append(found)
    return dataclasses.replace(data, connections=connections)


def best_size(outcomes: list[RunOutcome], sweep: Sweep) -> float | None:
    """A battery: the smallest size whose curtailment is at or under the target. PV: the largest such size
    (curtailment grows with PV)."""
    meeting = [
        float(o.figures["size"])
        for o in outcomes
        if o.figures["curtailed_pct"] <= sweep.target_curtailed_pct + 1e-9
    ]
    if not meeting:
        return None
    return min(meeting) if sweep.kind == "battery" else max(meeting)


class _Runner:
    """Runs jobs inline (one worker) or in a process pool, passing progress updates on."""

    def __init__(self, workers: int, progress: Progress | None) -> None:
        self.workers = workers
        self.progress = progress
        self.pool: ProcessPoolExecutor | None = None
        self.updates: Any
        if workers > 1:
            context = multiprocessing.get_context("fork")
            self.manager = context.Manager()
            self.updates = self.manager.Queue()
            self.pool = ProcessPoolExecutor(workers, mp_context=context)
        else:
            self.updates = queue.SimpleQueue()

    def run(self, jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
        if self.pool is None:
            results = []
            for fn, args in jobs:
                results.append(fn(*args, self.updates))
                self._drain()
            return results
        futures: list[Future[Any]] = [self.pool.submit(fn, *args, self.updates) for fn, args in jobs]
        while not all(f.done() for f in futures):
            self._drain(wait_s=0.2)
        self._drain()
        return [f.result() for f in futures]

    def _drain(self, wait_s: float = 0.0) -> None:
        try:
            kind, n = self.updates.get(timeout=wait_s) if wait_s else self.updates.get_nowait()
            while True:
                if self.progress is not None:
                    self.progress(kind, n)
                kind, n = self.updates.get_nowait()
        except (queue.Empty, EOFError):
            return

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.manager.shutdown()


def run_plan(
    base: Community,
    scenario: Scenario,
    *,
    workers: int = 1,
    progress: Progress | None = None,
    file: str = "<scenario>",
    lines: dict[tuple[str | int, ...], int] | None = None,
    sweep_only: bool = False,
    totals: Callable[[dict[str, int]], None] | None = None,
) -> PlanResult:
    """Every year of ``scenario``, then its sweep. Raises ``ScenarioError`` before any simulation if a year's
    community cannot be built. ``totals`` hears how many connections will be generated and quarter hours
    simulated, before the work starts; ``progress`` hears as they are done."""
    timezone = base.community.timezone
    built = {
        year: community_for_year(base, scenario, year, file=file, lines=lines) for year in scenario.years
    }
    sweep = scenario.sweep
    if totals is not None:
        totals(_work(built, scenario, timezone, sweep_only))
    runner = _Runner(workers, progress)
    try:
        result = PlanResult(years=[], documents={year: doc for year, (_c, doc) in built.items()})
        sweep_data: QuarterHours | None = None
        sweep_doc = built[scenario.sweep_year][1]
        if sweep is not None:
            _check_sweep_place(sweep, built[scenario.sweep_year][0], file, lines or {})
        if not sweep_only:
            jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
                (_year_job, (community, scenario, year, year == scenario.sweep_year and sweep is not None))
                for year, (community, _doc) in built.items()
            ]
            for outcome, data in runner.run(jobs):
                result.years.append(outcome)
                sweep_data = data if data is not None else sweep_data
        if sweep is not None:
            if sweep_data is None:
                sweep_data = generate_quarter_hours(
                    built[scenario.sweep_year][0],
                    scenario,
                    scenario.sweep_year,
                    lambda n: _report(progress, "inputs", n),
                )
            start, end = period(scenario, scenario.sweep_year, timezone)
            one_kwp = (
                roof_quarter_hours(
                    start=start - WARMUP, end=end, kwp=1.0, ac_kw=1.0 / DC_AC_RATIO, seed=scenario.seed
                )
                if sweep.kind == "pv"
                else np.zeros(0)
            )
            sizes = sorted(set(sweep.sizes))
            sweep_jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
                (
                    _sweep_job,
                    (
                        sweep_community(sweep_doc, scenario, size, timezone),
                        scenario,
                        scenario.sweep_year,
                        size,
                        sweep_inputs(sweep_data, sweep, size, one_kwp),
                    ),
                )
                for size in sizes
            ]
            result.sweep = runner.run(sweep_jobs)
            result.chosen = best_size(result.sweep, sweep)
        return result
    finally:
        runner.close()


def _check_sweep_place(
    sweep: Sweep, community: Community, file: str, lines: dict[tuple[str | int, ...], int]
) -> None:
    connections = {c.id for _l, _m, c in community.connections()}
    places = connections | {loop.id for loop in community.loops} | {community.hub.id}
    places |= {m.id for loop in community.loops for m in loop.micro_groups}
    if sweep.at in (connections if sweep.kind == "pv" else places):
        return
    wanted = "a connection" if sweep.kind == "pv" else "a connection, loop, micro group or the hub"
    path = ("sweep", "at")
    raise ScenarioError(
        file, [ConfigIssue(line_of(path, lines), format_path(path), f"{sweep.at!r} is not {wanted}")]
    )


def _report(progress: Progress | None, kind: str, n: int) -> None:
    if progress is not None:
        progress(kind, n)


def _work(
    built: dict[int, tuple[Community, dict[str, Any]]], scenario: Scenario, timezone: str, sweep_only: bool
) -> dict[str, int]:
    def isps(year: int) -> int:
        start, end = period(scenario, year, timezone)
        return int((end - start).total_seconds() // 900)

    years = [] if sweep_only else scenario.years
    work = {
        "inputs": sum(sum(1 for _ in built[y][0].connections()) for y in years),
        "quarter hours": sum(isps(y) for y in years),
    }
    if scenario.sweep is not None:
        work["quarter hours"] += isps(scenario.sweep_year) * len(set(scenario.sweep.sizes))
        if sweep_only:
            work["inputs"] += sum(1 for _ in built[scenario.sweep_year][0].connections())
    return work
