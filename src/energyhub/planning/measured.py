"""Measured quarter hours of a whole community: a folder of files, one per connection, or what the ingest stored.

A folder holds one file per connection, named by its id (``c-001.csv``) or its EAN (``871...csv``, as metering
companies name their exports), all in one layout (``energyhub.planning.meter_data.FORMATS``). A CSV whose name is neither is
an error that names it, rather than data silently left out. Connections without a file are simply not measured.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from energyhub.domain.topology import Community
from energyhub.io.influx import InfluxClient
from energyhub.planning.meter_data import ISP, MeterDataError, MeterSeries, read_from_influx, read_meter_data

__all__ = ["aligned_wh", "read_folder", "read_influx"]


def read_folder(folder: Path, community: Community, fmt: str) -> dict[str, MeterSeries]:
    if not folder.is_dir():
        raise MeterDataError(f"{folder}: not a folder of meter data")
    by_name: dict[str, str] = {}
    for _l, _m, connection in community.connections():
        by_name[connection.id] = connection.id
        by_name[connection.ean] = connection.id
    out: dict[str, MeterSeries] = {}
    for path in sorted(folder.glob("*.csv")):
        connection_id = by_name.get(path.stem)
        if connection_id is None:
            raise MeterDataError(
                f"{path}: the name is neither a connection id nor an EAN of {community.community.id}"
            )
        if connection_id in out:
            raise MeterDataError(f"{path}: a second file for connection {connection_id}")
        out[connection_id] = read_meter_data(path, fmt, timezone=community.community.timezone)
    if not out:
        raise MeterDataError(f"{folder}: no .csv files in it")
    return out


def read_influx(
    client: InfluxClient, community: Community, start: datetime, end: datetime
) -> dict[str, MeterSeries]:
    """Every connection's quarter hours from InfluxDB; a connection without any reading is left out."""

    async def read_all() -> dict[str, MeterSeries]:
        out = {}
        for _l, _m, connection in community.connections():
            series = await read_from_influx(client, connection.id, start, end, site=community.community.id)
            if len(series.gaps) < len(series.isp_starts):
                out[connection.id] = series
        return out

    return asyncio.run(read_all())


def aligned_wh(
    members: list[str], measured: dict[str, MeterSeries]
) -> tuple[list[datetime], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Offtake and feed-in in whole Wh (members x quarter hours) over the span all series cover together, and
    which quarter hours every member has (only those can be shared)."""
    first = min(measured[m].isp_starts[0] for m in members)
    last = max(measured[m].isp_starts[-1] for m in members)
    starts = [first + i * ISP for i in range(int((last - first) / ISP) + 1)]
    imp = np.full((len(members), len(starts)), np.nan)
    exp = np.full_like(imp, np.nan)
    for i, member in enumerate(members):
        series = measured[member]
        offset = int((series.isp_starts[0] - first) / ISP)
        imp[i, offset : offset + len(series.isp_starts)] = series.import_kwh
        exp[i, offset : offset + len(series.isp_starts)] = series.export_kwh
    complete = ~(np.isnan(imp).any(axis=0) | np.isnan(exp).any(axis=0))
    offtake = np.rint(np.nan_to_num(imp) * 1000).astype(np.int64)
    feed_in = np.rint(np.nan_to_num(exp) * 1000).astype(np.int64)
    return starts, offtake, feed_in, complete
