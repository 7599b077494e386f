"""The aggregator: every quarter hour of every device and node into ``forever``, every minute into ``year``, as the
quarter hour closes, and again when late data arrives for one already done.

Each pass (``catch_up``) first does again the quarter hours the ingest marked late (replayed measurements, or
ones stored long after their time: ``aggregate_late``), then every quarter hour that has closed since the last
pass, ``chunk_s`` of data at a time. How far it has come is kept in InfluxDB (``aggregate_progress``), so a
restarted aggregator goes on where it stopped, and one that was away for a day catches up. Doing a quarter hour
again overwrites its points (same series, same time): repairs and a pass that crashed half way are both safe.

One aggregator per site. All times are on the data clock (``energyhub.domain.clock``); closing waits real seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from energyhub.aggregates.quarter import DeviceKey, device_quarters, node_quarters
from energyhub.aggregates.settings import AggregateSettings
from energyhub.aggregates.store import (
    LateMark,
    Progress,
    device_lines,
    downsample_minutes,
    first_raw_s,
    node_lines,
    progress_line,
    read_late,
    read_progress,
    read_span,
)
from energyhub.domain.clock import Clock, clock_from_env
from energyhub.domain.community import load_community
from energyhub.domain.isp import isp_start_s
from energyhub.domain.limits import LimitBook
from energyhub.domain.network import Network
from energyhub.domain.topology import DeviceRole
from energyhub.io.influx import InfluxError
from energyhub.io.retention import ensure_retention, keep_trying, raw_keep_for
from energyhub.io.schema import QUARTER_RP

__all__ = ["Aggregator"]

log = logging.getLogger(__name__)
ISP_S = 900.0
NS = 1_000_000_000
MARKS_REMEMBERED = 10_000


class Aggregator:
    def __init__(self, settings: AggregateSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or clock_from_env()
        community = load_community(settings.community)
        self.site = settings.site or community.community.id
        self.network = Network.from_community(community)
        self.limits = LimitBook(community)
        self.meters: dict[str, list[DeviceKey]] = {}
        self.tags: dict[DeviceKey, dict[str, str]] = {}
        for connection, device in community.devices():
            key = DeviceKey(community.gateway_of(connection, device), device.id)
            self.tags[key] = {"connection": connection.id, "role": device.role.value}
            if device.role is DeviceRole.METER:
                self.meters.setdefault(connection.id, []).append(key)
        self.raw = settings.influx()
        self.quarters = settings.influx(retention_policy=QUARTER_RP)
        self._marks_done: dict[tuple[int, str], None] = {}  # late marks done this run (insertion-ordered)
        self._minutes_warned = False

    async def setup(self) -> None:
        await ensure_retention(self.raw, self._raw_keep_s())

    def _raw_keep_s(self) -> float:
        return raw_keep_for(self.settings.raw_retention_days, self.clock)

    async def aclose(self) -> None:
        await self.raw.aclose()
        await self.quarters.aclose()

    async def aggregate(self, start_s: float, end_s: float) -> int:
        """Do the quarter hours in ``[start_s, end_s)`` (whole ones); return how many (0: no data in them)."""
        reads = await read_span(self.raw, self.site, start_s, end_s, self.settings.margin_s)
        starts = [start_s + i * ISP_S for i in range(round((end_s - start_s) / ISP_S))]
        devices = device_quarters(starts, reads.counters, reads.power, reads.minutes)
        nodes = node_quarters(self.network, self.meters, devices, reads.minutes, self.limits, starts)
        lines = device_lines(self.site, devices, self.tags) + node_lines(self.site, nodes)
        for reset in sorted({(k, q.start) for k, per in devices.items() for q in per.values() if q.resets}):
            log.warning(
                "energy counter of %s/%s fell in the quarter hour from %s: counted from zero after it "
                "(stored in counter_reset)",
                reset[0].gateway,
                reset[0].device,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reset[1])),
            )
        if lines:
            await self.quarters.write(lines)
        try:
            await downsample_minutes(self.raw, self.site, start_s, end_s)
        except InfluxError as exc:
            if exc.retryable:
                raise
            # InfluxDB 2.x's v1 API has no SELECT ... INTO: the quarter hours go on, the minutes need a task there.
            if not self._minutes_warned:
                log.warning("one-minute data not made (%s): see docs/data.md", exc)
                self._minutes_warned = True
        return len(starts) if devices else 0

    async def _repair(self, marks: list[LateMark], done_to_s: float) -> int:
        """Do again the quarter hours (already done) that late data fell into, in runs of consecutive ones."""
        margin = self.settings.margin_s
        todo: set[float] = set()
        for mark in marks:
            first, last = isp_start_s(mark.from_s - margin), isp_start_s(mark.to_s + margin)
            todo.update(first + i * ISP_S for i in range(int((last - first) / ISP_S) + 1))
        runs: list[list[float]] = []
        for start in sorted(t for t in todo if t < done_to_s):
            if runs and start == runs[-1][-1] + ISP_S and len(runs[-1]) * ISP_S < self.settings.chunk_s:
                runs[-1].append(start)
            else:
                runs.append([start])
        done = 0
        for run in runs:
            done += await self.aggregate(run[0], run[-1] + ISP_S)
        if done:
            log.info("did %d quarter hour(s) again for late data", done)
        return done

    async def catch_up(self) -> int:
        """One pass: late quarter hours again, then every closed one not yet done; return how many were done."""
        progress = await read_progress(self.quarters, self.site)
        if progress is None:
            first = await first_raw_s(self.raw, self.site)
            if first is None:
                return 0  # nothing stored yet
            progress = Progress(isp_start_s(first), 0)
        done = 0
        marks = [
            m
            for m in await read_late(self.raw, self.site, progress.late_seen_ns)
            if (m.at_ns, m.worker) not in self._marks_done
        ]
        if marks:
            done += await self._repair(marks, progress.done_to_s)
            for m in marks:
                self._marks_done[m.at_ns, m.worker] = None
            while len(self._marks_done) > MARKS_REMEMBERED:
                del self._marks_done[next(iter(self._marks_done))]
            # Marks are read again a little before the newest one: a worker's batch stamped earlier may be
            # stored later. The ones done this run are skipped.
            overlap_ns = int(self.clock.data_s(60.0) * NS)
            progress = Progress(
                progress.done_to_s, max(progress.late_seen_ns, max(m.at_ns for m in marks) - overlap_ns)
            )
        closed = isp_start_s(self.clock.timestamp() - self.clock.data_s(self.settings.close_after_s))
        start = progress.done_to_s
        while start < closed:
            end = min(closed, start + max(ISP_S, isp_start_s(self.settings.chunk_s)))
            found = await self.aggregate(start, end)
            done += found
            start = end
            if not found:  # no data here: on to the next (a gateway away for a week costs one query, not 672)
                after = await first_raw_s(self.raw, self.site, start)
                start = closed if after is None else max(start, min(closed, isp_start_s(after)))
            await self.quarters.write([progress_line(self.site, Progress(start, progress.late_seen_ns))])
        if marks and start == progress.done_to_s:
            await self.quarters.write([progress_line(self.site, Progress(start, progress.late_seen_ns))])
        return done

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        log.info(
            "aggregator for site %s: InfluxDB %s/%s, data clock %s",
            self.site,
            s.influx_url,
            s.influx_db,
            self.clock.describe(),
        )
        try:
            await keep_trying(self.raw, self._raw_keep_s(), stop, s.interval_s)
            while not stop.is_set():
                try:
                    await self.catch_up()
                except InfluxError as exc:
                    log.warning("aggregating failed (%s): trying again next pass", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), s.interval_s)
        finally:
            await self.aclose()
