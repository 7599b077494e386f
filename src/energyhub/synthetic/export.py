"""A year (or any span) of the community simulator's inputs as quarter-hour CSV, for offline simulation.

One file per connection and role (``<connection>.<role>.csv``, columns ``isp_start,kwh``; times UTC ISO 8601):
``load`` (use before PV, batteries and EVs), ``pv`` (what the sun offers the inverters, uncurtailed, positive) and
``ev`` (charging as it happens when nothing limits it). ``ev_sessions.csv`` lists every charging session (arrival,
departure, energy wanted, vehicle power), because control plans sessions, not quarter hours. ``manifest.json``
records what was exported with which seed. The same seed gives the same weather, loads and sessions as the live
simulator (``energyhub.simulators.community``): both draw them from (seed, device, day).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]

from energyhub.domain.topology import Community, DeviceRole
from energyhub.synthetic.loads import load_power_w
from energyhub.synthetic.sessions import plan_sessions, vehicle_max_w
from energyhub.synthetic.solar import pv_power_kw

__all__ = [
    "ConnectionSeries",
    "ExportSummary",
    "QuarterHours",
    "SessionRow",
    "export_quarter_hours",
    "quarter_hour_series",
    "roof_quarter_hours",
]

ISP_S = 900
_SAMPLE_S = 60  # load and PV sampled every minute (the cloud model's resolution), averaged per quarter hour


@dataclass(frozen=True)
class ExportSummary:
    files: list[Path]
    isps: int
    load_kwh: float
    pv_kwh: float
    ev_kwh: float
    sessions: int


def _isp_average(power_w: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """kWh per quarter hour from the samples inside it (each the middle of its minute)."""
    per_isp = ISP_S // _SAMPLE_S
    kwh: npt.NDArray[np.float64] = power_w.reshape(-1, per_isp).mean(axis=1) * (ISP_S / 3600.0) / 1000.0
    return kwh


def _write(path: Path, isp_starts: list[str], kwh: npt.NDArray[np.float64]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["isp_start", "kwh"])
        writer.writerows(zip(isp_starts, (f"{v:.4f}" for v in kwh), strict=True))


def _ev_energy(
    sessions: list[tuple[float, float, float, float]], start_s: int, isps: int
) -> npt.NDArray[np.float64]:
    """kWh per quarter hour when every session charges at full power from arrival until done or gone."""
    out = np.zeros(isps)
    for arrival, departure, wanted_wh, power_w in sessions:
        end = min(departure, arrival + wanted_wh / power_w * 3600.0)
        t = arrival
        while t < end:
            index = int((t - start_s) // ISP_S)
            boundary = start_s + (index + 1) * ISP_S
            step = min(end, boundary) - t
            if 0 <= index < isps:
                out[index] += power_w * step / 3600.0 / 1000.0
            t += step
    return out


@dataclass(frozen=True)
class ConnectionSeries:
    """One connection's quarter hours in kWh: ``load`` always, ``pv`` and ``ev`` when it has such devices."""

    connection: str
    series: dict[str, npt.NDArray[np.float64]]


@dataclass(frozen=True)
class SessionRow:
    connection: str
    device: str
    vehicle: str
    arrival: datetime
    departure: datetime
    energy_kwh: float
    max_kw: float


@dataclass(frozen=True)
class QuarterHours:
    """What ``export_quarter_hours`` writes, in memory: for planning, which runs many years without files."""

    start_s: int
    isps: int
    connections: list[ConnectionSeries]
    sessions: list[SessionRow]
    history_isps: int = 0  # the first quarter hours are history for forecasts only, not simulated


def _pv_kwh(
    sample_times: pd.DatetimeIndex, kwp: npt.NDArray[np.float64], ac_kw: npt.NDArray[np.float64], seed: int
) -> npt.NDArray[np.float64]:
    power = pv_power_kw(sample_times, kwp, seed=seed, ac_kw=ac_kw).reshape(len(sample_times), -1).sum(axis=1)
    return _isp_average(power * 1000.0)


def roof_quarter_hours(
    *, start: datetime, end: datetime, kwp: float, ac_kw: float, seed: int
) -> npt.NDArray[np.float64]:
    """kWh per quarter hour of one roof, as ``quarter_hour_series`` computes a connection's PV: for planning,
    which adds roofs to connections it already generated."""
    start_s, end_s = int(start.timestamp()), int(end.timestamp())
    samples = np.arange(start_s, end_s, _SAMPLE_S, dtype=np.int64) + _SAMPLE_S // 2
    return _pv_kwh(pd.to_datetime(samples, unit="s", utc=True), np.array([kwp]), np.array([ac_kw]), seed)


def quarter_hour_series(
    community: Community,
    *,
    start: datetime,
    end: datetime,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> QuarterHours:
    """Every connection's load, PV on offer and uncontrolled EV charging from ``start`` to ``end`` (UTC)."""
    start_s, end_s = int(start.timestamp()), int(end.timestamp())
    if start_s % ISP_S or end_s % ISP_S or end_s <= start_s:
        raise ValueError("start and end must be quarter hours with end after start")
    isps = (end_s - start_s) // ISP_S
    samples = np.arange(start_s, end_s, _SAMPLE_S, dtype=np.int64) + _SAMPLE_S // 2
    sample_times = pd.to_datetime(samples, unit="s", utc=True)
    out: list[ConnectionSeries] = []
    session_rows: list[SessionRow] = []
    connections = [c for _l, _m, c in community.connections()]
    for done, connection in enumerate(connections, 1):
        load = _isp_average(
            load_power_w(
                samples,
                profile=connection.load_profile,
                annual_kwh=connection.annual_use_kwh or 0.0,
                seed=seed,
                key=connection.id,
            )
        )
        series = {"load": load}
        roofs = [d for d in connection.devices if d.role is DeviceRole.PV]
        if roofs:
            kwp = np.array([d.kwp or 0.0 for d in roofs])
            ac = np.array([d.ac_kw or d.kwp or 0.0 for d in roofs])
            series["pv"] = _pv_kwh(sample_times, kwp, ac, seed)
        chargers = [d for d in connection.devices if d.role is DeviceRole.EV]
        if chargers:
            sessions: list[tuple[float, float, float, float]] = []
            for device in chargers:
                key = f"{connection.id}/{device.id}"
                vehicle = device.vehicle or "car"
                rating = (device.power_kw or 0.0) * 1000.0
                day = datetime.fromtimestamp(start_s - start_s % 86_400, UTC)
                while day.timestamp() < end_s:
                    for arrival, departure, wanted in plan_sessions(seed, key, vehicle, day):
                        if start_s <= arrival < end_s:
                            power = vehicle_max_w(vehicle, rating)
                            sessions.append((arrival, departure, wanted, power))
                            session_rows.append(
                                SessionRow(
                                    connection.id,
                                    device.id,
                                    vehicle,
                                    datetime.fromtimestamp(arrival, UTC),
                                    datetime.fromtimestamp(departure, UTC),
                                    round(wanted / 1000, 3),
                                    round(power / 1000, 1),
                                )
                            )
                    day += timedelta(days=1)
            series["ev"] = _ev_energy(sessions, start_s, isps)
        out.append(ConnectionSeries(connection.id, series))
        if progress is not None:
            progress(done, len(connections))
    return QuarterHours(start_s, isps, out, session_rows)


def export_quarter_hours(
    community: Community,
    *,
    start: datetime,
    end: datetime,
    seed: int,
    out_dir: Path,
    progress: Callable[[int, int], None] | None = None,
) -> ExportSummary:
    """Write the quarter-hour inputs of every connection from ``start`` to ``end`` (UTC, on quarter hours)."""
    data = quarter_hour_series(community, start=start, end=end, seed=seed, progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [
        datetime.fromtimestamp(data.start_s + i * ISP_S, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for i in range(data.isps)
    ]
    files: list[Path] = []
    totals = {"load": 0.0, "pv": 0.0, "ev": 0.0}
    for connection in data.connections:
        for role, kwh in connection.series.items():
            path = out_dir / f"{connection.connection}.{role}.csv"
            _write(path, labels, kwh)
            files.append(path)
            totals[role] += float(kwh.sum())
    sessions_path = out_dir / "ev_sessions.csv"
    with sessions_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["connection", "device", "vehicle", "arrival", "departure", "energy_kwh", "max_kw"])
        writer.writerows(
            [
                r.connection,
                r.device,
                r.vehicle,
                r.arrival.isoformat(),
                r.departure.isoformat(),
                f"{r.energy_kwh:.3f}",
                f"{r.max_kw:.1f}",
            ]
            for r in data.sessions
        )
    files.append(sessions_path)
    manifest = {
        "community": community.community.id,
        "seed": seed,
        "start": labels[0],
        "end": datetime.fromtimestamp(data.start_s + data.isps * ISP_S, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "isps": data.isps,
        "totals_kwh": totals,
        "files": [f.name for f in files],
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return ExportSummary(files, data.isps, totals["load"], totals["pv"], totals["ev"], len(data.sessions))
