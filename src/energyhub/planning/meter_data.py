"""Measured quarter-hour data of a connection, as DSOs and metering companies deliver it, into one shape.

Every reader returns a ``MeterSeries``: offtake and feed-in in kWh per quarter hour, indexed by the quarter hour's
start in UTC over the whole period the file covers; a quarter hour the file does not have is NaN (a gap, listed),
never zero. Formats:

- ``energyhub`` (documented here, what we write ourselves): ``isp_start,import_kwh,export_kwh``, UTC ISO 8601.
- ``nl-local``: how Dutch metering portals export a connection: ``;``-separated, decimal comma, local time
  (Europe/Amsterdam) as ``Datum;Tijd`` (``dd-mm-yyyy;HH:MM``, the quarter hour's start), then ``Afname`` and
  ``Teruglevering`` in kWh. On the autumn DST day the hour 02:00-03:00 comes twice, in order; in spring it is not
  there. So a local day has 92, 96 or 100 rows.
- what energyhub stored in InfluxDB (``read_from_influx``): the aggregator's quarter hours of the connection,
  counted from its grid meter's energy counters, with counter resets found and listed.
- ``long-utc``: a row per quarter hour and channel, as EDI/market-message exports are flattened:
  ``start_utc,end_utc,channel,kwh`` with channel ``offtake`` or ``feed-in``.

Duplicates that agree are dropped (and counted); duplicates that disagree, unparseable lines, times not on a
quarter hour, local times that do not exist (spring DST) and negative energy are errors naming file, line and
problem.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from energyhub.io.influx import InfluxClient
from energyhub.io.schema import NODE_QUARTER, QUARTER_RP

__all__ = ["FORMATS", "MeterDataError", "MeterSeries", "read_from_influx", "read_meter_data"]

Array = npt.NDArray[np.float64]
ISP = timedelta(minutes=15)
FORMATS = ("energyhub", "nl-local", "long-utc")


class MeterDataError(ValueError):
    """A file of meter data that cannot be used; the message names the file, the line and the problem."""


@dataclass
class MeterSeries:
    isp_starts: list[datetime]
    import_kwh: Array
    export_kwh: Array
    gaps: list[datetime] = field(default_factory=list)
    duplicates_dropped: int = 0
    resets: list[datetime] = field(default_factory=list)  # quarter hours in which a meter's counter was reset

    @property
    def net_kwh(self) -> Array:
        result: Array = self.import_kwh - self.export_kwh
        return result


def _number(text: str, where: str, *, comma: bool = False) -> float:
    raw = text.strip()
    if comma:
        raw = raw.replace(".", "").replace(",", ".") if "," in raw else raw
    try:
        value = float(raw)
    except ValueError:
        raise MeterDataError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise MeterDataError(f"{where}: energy {text!r} must be a finite number of kWh, 0 or more")
    return value


def _on_quarter(t: datetime, where: str) -> datetime:
    if t.minute % 15 or t.second or t.microsecond:
        raise MeterDataError(f"{where}: {t.isoformat()} is not the start of a quarter hour")
    return t


def _utc(text: str, where: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise MeterDataError(f"{where}: {text!r} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        raise MeterDataError(f"{where}: {text!r} has no UTC offset (this format is UTC)")
    return _on_quarter(t.astimezone(UTC), where)


def _rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for line, row in enumerate(csv.reader(handle, delimiter=delimiter), start=1):
                if row and any(cell.strip() for cell in row):
                    yield line, row
    except OSError as exc:
        raise MeterDataError(f"{path}: cannot be read: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MeterDataError(f"{path}: not a text CSV file: {exc}") from None


def _header(path: Path, rows: Iterator[tuple[int, list[str]]], expected: list[str]) -> None:
    try:
        line, header = next(rows)
    except StopIteration:
        raise MeterDataError(f"{path}: empty") from None
    # Portals add the unit to the name ("Afname (kWh)"): compare the names alone.
    got = [h.split("(")[0].strip().lower() for h in header]
    if got != [e.lower() for e in expected]:
        raise MeterDataError(
            f"{path}:{line}: the columns must be {','.join(expected)}; found {','.join(header)}"
        )


def _energyhub(path: Path) -> Iterator[tuple[str, datetime, float | None, float | None]]:
    rows = _rows(path, ",")
    _header(path, rows, ["isp_start", "import_kwh", "export_kwh"])
    for line, row in rows:
        where = f"{path}:{line}"
        if len(row) != 3:
            raise MeterDataError(f"{where}: 3 columns expected, found {len(row)}")
        yield where, _utc(row[0], where), _number(row[1], where), _number(row[2], where)


def _nl_local(path: Path, tz: ZoneInfo) -> Iterator[tuple[str, datetime, float | None, float | None]]:
    rows = _rows(path, ";")
    _header(path, rows, ["Datum", "Tijd", "Afname", "Teruglevering"])
    seen_local: set[datetime] = set()
    for line, row in rows:
        where = f"{path}:{line}"
        if len(row) != 4:
            raise MeterDataError(
                f"{where}: 4 columns expected (Datum;Tijd;Afname;Teruglevering), found {len(row)}"
            )
        try:
            local = datetime.strptime(f"{row[0].strip()} {row[1].strip()}", "%d-%m-%Y %H:%M")
        except ValueError:
            raise MeterDataError(
                f"{where}: {row[0]!r} {row[1]!r} is not a date dd-mm-yyyy and a time HH:MM"
            ) from None
        # The second time a local time comes (the repeated autumn hour) is the later of the two instants.
        fold = 1 if local in seen_local else 0
        seen_local.add(local)
        aware = local.replace(tzinfo=tz, fold=fold)
        utc = aware.astimezone(UTC)
        if utc.astimezone(tz).replace(tzinfo=None) != local:
            raise MeterDataError(
                f"{where}: {local:%d-%m-%Y %H:%M} does not exist in {tz.key} (the clock skips it)"
            )
        yield (
            where,
            _on_quarter(utc, where),
            _number(row[2], where, comma=True),
            _number(row[3], where, comma=True),
        )


def _long_utc(path: Path) -> Iterator[tuple[str, datetime, float | None, float | None]]:
    rows = _rows(path, ",")
    _header(path, rows, ["start_utc", "end_utc", "channel", "kwh"])
    for line, row in rows:
        where = f"{path}:{line}"
        if len(row) != 4:
            raise MeterDataError(f"{where}: 4 columns expected, found {len(row)}")
        start, end = _utc(row[0], where), _utc(row[1], where)
        if end - start != ISP:
            raise MeterDataError(f"{where}: {row[0]} to {row[1]} is not one quarter hour")
        value = _number(row[3], where)
        channel = row[2].strip().lower()
        if channel == "offtake":
            yield where, start, value, None
        elif channel == "feed-in":
            yield where, start, None, value
        else:
            raise MeterDataError(f"{where}: channel {row[2]!r} is neither offtake nor feed-in")


def read_meter_data(path: Path, fmt: str = "energyhub", *, timezone: str = "Europe/Amsterdam") -> MeterSeries:
    """Read one connection's quarter-hour data in ``fmt`` (one of ``FORMATS``)."""
    if fmt == "energyhub":
        records = _energyhub(path)
    elif fmt == "nl-local":
        records = _nl_local(path, ZoneInfo(timezone))
    elif fmt == "long-utc":
        records = _long_utc(path)
    else:
        raise MeterDataError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    offtake: dict[datetime, tuple[float, str]] = {}
    feed_in: dict[datetime, tuple[float, str]] = {}
    dropped = 0
    for where, start, imp, exp in records:
        for store, value, what in ((offtake, imp, "offtake"), (feed_in, exp, "feed-in")):
            if value is None:
                continue
            if start in store:
                earlier, at = store[start]
                if abs(earlier - value) > 1e-9:
                    raise MeterDataError(
                        f"{where}: {what} for {start.isoformat()} is {value:g} kWh, but {at} said {earlier:g} kWh"
                    )
                dropped += 1
                continue
            store[start] = (value, where)
    if not offtake and not feed_in:
        raise MeterDataError(f"{path}: no quarter hours in it")
    first = min([*offtake, *feed_in])
    last = max([*offtake, *feed_in])
    starts = [first + i * ISP for i in range(int((last - first) / ISP) + 1)]
    imp_arr = np.array([offtake[t][0] if t in offtake else np.nan for t in starts])
    exp_arr = np.array([feed_in[t][0] if t in feed_in else np.nan for t in starts])
    gaps = [t for t, a, b in zip(starts, imp_arr, exp_arr, strict=True) if np.isnan(a) or np.isnan(b)]
    return MeterSeries(starts, imp_arr, exp_arr, gaps, dropped)


async def read_from_influx(
    client: InfluxClient, connection: str, start: datetime, end: datetime, *, site: str | None = None
) -> MeterSeries:
    """A connection's quarter hours as the aggregator stored them (``node_qh``, from the grid meter's energy
    counters, ``docs/data.md``). A quarter hour it has not stored is a gap, never zero; one in which a counter
    was reset is listed in ``resets`` (its energy counts from the reset on)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    where = f"\"node\" = '{connection}' AND time >= '{start.isoformat()}' AND time < '{end.isoformat()}'"
    if site is not None:
        where += f" AND \"site\" = '{site}'"
    series = await client.query(
        f'SELECT "import_wh", "export_wh", "resets" FROM "{QUARTER_RP}"."{NODE_QUARTER}" WHERE {where}',
        epoch="s",
    )
    stored = {datetime.fromtimestamp(row["time"], UTC): row for s in series for row in s.rows()}
    starts = [start + i * ISP for i in range(int((end - start) / ISP))]
    imp = np.full(len(starts), np.nan)
    exp = np.full(len(starts), np.nan)
    resets = []
    for i, t in enumerate(starts):
        row = stored.get(t)
        if row is None:
            continue
        if row["import_wh"] is not None:
            imp[i] = row["import_wh"] / 1000.0
        if row["export_wh"] is not None:
            exp[i] = row["export_wh"] / 1000.0
        if row.get("resets"):
            resets.append(t)
    gaps = [t for t, a, b in zip(starts, imp, exp, strict=True) if np.isnan(a) or np.isnan(b)]
    return MeterSeries(starts, imp, exp, gaps, resets=resets)
