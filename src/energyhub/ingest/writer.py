"""Writing a batch of lines to InfluxDB: retry outages, isolate bad points, never drop the good ones.

A 5xx, a 429 or an unreachable database is an outage: the batch is retried with back-off until it is stored
(the caller holds the messages unacknowledged meanwhile). A 4xx is about the data: InfluxDB 1.x stores the good
points of a batch with a type conflict ("partial write") but none of a batch with a parse error, and names only
the first bad line either way, so the batch is split in halves until each bad line stands alone. The good points
are written again on the way, which does no harm: same series and timestamp overwrite.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

from energyhub.io.influx import InfluxClient, InfluxError

__all__ = ["write_batch"]

log = logging.getLogger(__name__)


async def _write_isolating(client: InfluxClient, lines: Sequence[str], offset: int) -> list[tuple[int, str]]:
    """Write ``lines``; return (index, reason) of each line InfluxDB refused. Outages raise InfluxError."""
    try:
        await client.write(lines)
        return []
    except InfluxError as exc:
        if exc.retryable:
            raise
        if len(lines) == 1:
            return [(offset, str(exc))]
    middle = len(lines) // 2
    return await _write_isolating(client, lines[:middle], offset) + await _write_isolating(
        client, lines[middle:], offset + middle
    )


async def write_batch(
    client: InfluxClient,
    lines: Sequence[str],
    *,
    retry_max_s: float = 30.0,
    on_retry: Callable[[InfluxError], None] | None = None,
) -> list[tuple[int, str]]:
    """Store ``lines``, waiting out outages however long they last; return the refused lines with reasons."""
    delay = 0.2
    down_since: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        try:
            refused = await _write_isolating(client, lines, 0)
        except InfluxError as exc:
            if on_retry is not None:
                on_retry(exc)
            if down_since is None:
                down_since = loop.time()
                log.warning("InfluxDB write failed (%s): holding %d points and retrying", exc, len(lines))
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, retry_max_s)
            continue
        if down_since is not None:
            log.info("InfluxDB writes work again after %.0f s", loop.time() - down_since)
        return refused
