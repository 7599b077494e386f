"""What the aggregator costs: the reference estate's devices for a stretch of data at 1 Hz, aggregated into
quarter hours and minutes, against writing that same data raw to influxd in the same run.

Starts influxd (as `energyhub services` does). Each run, with a fresh site:

1. Baseline: this process writes ``--hours`` of 1 Hz readings of every meter (power and both counters) and every
   PV inverter (power) of the reference community (examples/de-koumen.yaml) to influxd's /write in batches of
   5,000 lines, timed.
2. The aggregator (`Aggregator.catch_up`, the code `energyhub aggregate` runs) does every quarter hour of it,
   timed; then a repair of one replayed hour (a late mark as the ingest writes it) is timed.

Printed per run and as medians over ``--runs``: the aggregator's time against the raw write's, and how many data
hours of the whole estate it does per real hour (how far ahead of the live estate it is, and how fast it catches up
after being away). The machine is shared and noisy: quote medians.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from energyhub.aggregates.service import Aggregator  # noqa: E402
from energyhub.aggregates.settings import AggregateSettings  # noqa: E402
from energyhub.cli.services import free_port, start_services  # noqa: E402
from energyhub.domain.community import load_community  # noqa: E402
from energyhub.domain.topology import DeviceRole  # noqa: E402
from energyhub.io.influx import InfluxClient  # noqa: E402
from energyhub.io.line_protocol import encode_point  # noqa: E402
from energyhub.runtime.settings import ServiceSettings  # noqa: E402
from energyhub.runtime.supervisor import Supervisor  # noqa: E402

COMMUNITY = REPO / "examples" / "de-koumen.yaml"
BATCH = 5000


def _lines(site: str, start: float, hours: float) -> list[str]:
    community = load_community(COMMUNITY)
    lines = []
    steps = int(hours * 3600)
    for n, (connection, device) in enumerate(community.devices()):
        gateway = community.gateway_of(connection, device)
        tags = {"site": site, "gateway": gateway, "device": device.id, "connection": connection.id}
        tags["role"] = device.role.value
        if device.role is DeviceRole.METER:
            imp, exp = 1e6 + n, 1e4 + n
            for k in range(steps):
                power = 30_000 + 20_000 * math.sin(k / 600 + n)
                imp += max(power, 0) / 3600
                exp += max(-power, 0) / 3600
                fields = {"power_w": power, "energy_import_wh": imp, "energy_export_wh": exp, "seq": k}
                lines.append(encode_point("device", tags, fields, int((start + k) * 1e9)))
        elif device.role is DeviceRole.PV:
            for k in range(steps):
                fields = {"power_w": 40_000 * abs(math.sin(k / 3000 + n)), "seq": k}
                lines.append(encode_point("device", tags, fields, int((start + k) * 1e9)))
    return lines


async def one_run(settings: ServiceSettings, run: int, hours: float) -> tuple[float, float, float, int, int]:
    site = f"bench-agg-{run}"
    start = math.floor((time.time() - 3 * 86400) / 900) * 900.0  # three days back: every quarter hour closed
    lines = _lines(site, start, hours)
    async with InfluxClient(url=settings.influx_url, database=settings.influx_db) as client:
        t0 = time.perf_counter()
        for i in range(0, len(lines), BATCH):
            await client.write(lines[i : i + BATCH])
        write_s = time.perf_counter() - t0
        aggregator = Aggregator(
            AggregateSettings(
                community=COMMUNITY, site=site, influx_url=settings.influx_url, influx_db=settings.influx_db
            )
        )
        await aggregator.setup()
        t0 = time.perf_counter()
        await aggregator.catch_up()
        aggregate_s = time.perf_counter() - t0
        # One hour replayed: the ingest's late mark, then the repair it asks for.
        await client.write(
            encode_point(
                "aggregate_late",
                {"site": site, "worker": "bench"},
                {"from_ns": int(start * 1e9), "to_ns": int((start + 3600) * 1e9), "count": 3600},
                time.time_ns(),
            )
        )
        t0 = time.perf_counter()
        await aggregator.catch_up()
        repair_s = time.perf_counter() - t0
        quarters = await client.query(f"SELECT count(samples) FROM forever.device_qh WHERE site = '{site}'")
        n_quarters = sum(int(row["count"]) for s in quarters for row in s.rows())
        await aggregator.aclose()
    return write_s, aggregate_s, repair_s, len(lines), n_quarters


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hours", type=float, default=1.0, help="Data hours per run (1 Hz).")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state, Supervisor() as supervisor:
        settings = ServiceSettings(
            state_dir=Path(state),
            mqtt_port=free_port(),
            mqtt_tls_port=free_port(),
            influx_port=free_port(),
            influx_rpc_port=free_port(),
            influx_db="bench_agg",
        )
        start_services(supervisor, settings)
        rows = []
        for run in range(args.runs):
            write_s, aggregate_s, repair_s, points, quarters = asyncio.run(one_run(settings, run, args.hours))
            rows.append((write_s, aggregate_s, repair_s))
            print(
                f"run {run + 1}: {points:,} raw points ({args.hours:g} h at 1 Hz); raw /write {write_s:.2f} s "
                f"(baseline); aggregate {aggregate_s:.2f} s -> {quarters:,} device quarter hours; "
                f"repair of a replayed hour {repair_s:.2f} s",
                flush=True,
            )
        write_s, aggregate_s, repair_s = (statistics.median(c) for c in zip(*rows, strict=True))
        print(
            f"median over {args.runs}: raw /write {write_s:.2f} s, aggregate {aggregate_s:.2f} s "
            f"({aggregate_s / write_s:.2f} x the raw write), repair {repair_s:.2f} s; "
            f"{args.hours / aggregate_s * 3600:,.0f} data hours of the estate per real hour"
        )


if __name__ == "__main__":
    main()
