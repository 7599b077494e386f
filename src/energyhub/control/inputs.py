"""Quarter-hour inputs of an offline simulation: the simulators' export, or measured CSVs in the same layout.

A folder holds ``<connection>.load.csv`` (use before PV, batteries and EVs), ``<connection>.pv.csv`` (what the sun
offers, uncurtailed) and ``<connection>.ev.csv`` (uncontrolled charging; for reference), each ``isp_start,kwh``
with UTC ISO 8601 times, plus ``ev_sessions.csv`` (``connection,device,vehicle,arrival,departure,energy_kwh,max_kw``).
A connection without a pv file has no PV; one without a load file is an error. Bad files get errors that name the
file, the line and the problem.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]

from energyhub.domain.isp import ensure_utc
from energyhub.domain.network import Network

__all__ = ["InputError", "Inputs", "Session"]

Array = npt.NDArray[np.float64]
ISP = timedelta(minutes=15)
ISP_H = 0.25


class InputError(ValueError):
    """A file of quarter-hour data that cannot be used; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class Session:
    connection: int
    charger: str
    arrival: datetime
    departure: datetime
    energy_kwh: float
    max_kw: float


@dataclass
class Inputs:
    isp_starts: list[datetime]
    load_kw: Array  # connections x ISPs, quarter-hour average
    pv_kw: Array  # connections x ISPs, available (uncurtailed)
    sessions: list[Session]

    @property
    def isps(self) -> int:
        return len(self.isp_starts)

    def window(self, first: int, end: int) -> Inputs:
        """Quarter hours ``first`` to ``end`` (exclusive), with the sessions that overlap them."""
        if end <= first:
            return Inputs([], self.load_kw[:, :0], self.pv_kw[:, :0], [])
        start = self.isp_starts[first]
        stop = self.isp_starts[end - 1] + ISP
        return Inputs(
            self.isp_starts[first:end],
            self.load_kw[:, first:end],
            self.pv_kw[:, first:end],
            [s for s in self.sessions if s.departure > start and s.arrival < stop],
        )

    def presence_h(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], Array]:
        """(session, isp, hours present) for every quarter hour a session overlaps."""
        start = self.isp_starts[0]
        rows: list[tuple[int, int, float]] = []
        for s, session in enumerate(self.sessions):
            first = max(0, int((session.arrival - start) / ISP))
            last = min(self.isps - 1, int((session.departure - start) / ISP))
            for t in range(first, last + 1):
                begin = max(session.arrival, start + t * ISP)
                end = min(session.departure, start + (t + 1) * ISP)
                hours = (end - begin).total_seconds() / 3600.0
                if hours > 0:
                    rows.append((s, t, hours))
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        table = np.array(rows)
        return table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2]

    @classmethod
    def from_folder(cls, folder: Path, network: Network, start: datetime, end: datetime) -> Inputs:
        start, end = ensure_utc(start), ensure_utc(end)
        if end <= start:
            raise InputError(
                f"the period ends ({end:%Y-%m-%d %H:%M}) before it starts ({start:%Y-%m-%d %H:%M})"
            )
        isp_starts = []
        t = start
        while t < end:
            isp_starts.append(t)
            t += ISP
        expected = pd.DatetimeIndex(isp_starts)
        n_c = len(network.connection_ids)
        load = np.zeros((n_c, len(isp_starts)))
        pv = np.zeros_like(load)
        for c, connection in enumerate(network.connection_ids):
            load_file = folder / f"{connection}.load.csv"
            if not load_file.exists():
                raise InputError(f"{load_file}: missing (every connection needs its load)")
            load[c] = _read_series(load_file, expected) / ISP_H
            pv_file = folder / f"{connection}.pv.csv"
            if pv_file.exists():
                pv[c] = _read_series(pv_file, expected) / ISP_H
            elif network.kwp[c] > 0:
                raise InputError(f"{pv_file}: missing, but {connection} has {network.kwp[c]:g} kWp of PV")
        sessions = _read_sessions(folder / "ev_sessions.csv", network, start, end)
        return cls(isp_starts, load, pv, sessions)


def _read_series(path: Path, expected: pd.DatetimeIndex) -> Array:
    try:
        frame = pd.read_csv(path, dtype={"isp_start": str, "kwh": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read: {exc}") from None
    if list(frame.columns) != ["isp_start", "kwh"]:
        raise InputError(
            f"{path}:1: columns must be isp_start,kwh, found {','.join(map(str, frame.columns))}"
        )
    times = pd.to_datetime(frame["isp_start"], utc=True, errors="coerce", format="ISO8601")
    values = pd.to_numeric(frame["kwh"], errors="coerce")
    for what, bad in (("time", times.isna()), ("kwh value", values.isna() | ~np.isfinite(values))):
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            raw = frame.iloc[row].tolist()
            raise InputError(f"{path}:{row + 2}: not a {what}: {raw}")
    series = pd.Series(values.to_numpy(dtype=float), index=pd.DatetimeIndex(times))
    if series.index.has_duplicates:
        dup = series.index[series.index.duplicated()][0]
        raise InputError(f"{path}: quarter hour {dup.isoformat()} appears twice")
    missing = expected.difference(series.index)
    if len(missing):
        raise InputError(
            f"{path}: {len(missing)} quarter hour(s) of the period missing, the first {missing[0].isoformat()}"
        )
    result: Array = series.reindex(expected).to_numpy(dtype=float)
    return result


def _read_sessions(path: Path, network: Network, start: datetime, end: datetime) -> list[Session]:
    if not path.exists():
        return []
    chargers = {ch.id: ch for ch in network.chargers}
    index = {c: i for i, c in enumerate(network.connection_ids)}
    sessions = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        for line, row in enumerate(reader, start=2):
            try:
                arrival = ensure_utc(datetime.fromisoformat(row["arrival"]))
                departure = ensure_utc(datetime.fromisoformat(row["departure"]))
                energy, max_kw = float(row["energy_kwh"]), float(row["max_kw"])
                connection = index[row["connection"]]
            except KeyError as exc:
                raise InputError(f"{path}:{line}: unknown connection or missing column {exc}") from None
            except (TypeError, ValueError) as exc:
                raise InputError(f"{path}:{line}: {exc}") from None
            if not (math.isfinite(energy) and energy >= 0 and max_kw > 0 and departure > arrival):
                raise InputError(
                    f"{path}:{line}: a session needs energy >= 0, max_kw > 0 and departure > arrival"
                )
            if departure <= start or arrival >= end:
                continue
            charger = f"{row['connection']}/{row['device']}"
            if charger not in chargers:
                raise InputError(f"{path}:{line}: no charger {charger} in the community file")
            sessions.append(Session(connection, charger, arrival, departure, energy, max_kw))
    return sessions
