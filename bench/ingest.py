"""End-to-end ingest rate and publish-to-queryable latency, against influxd's own /write rate in the same run.

Starts Mosquitto and influxd (as `energyhub services` does) and one `energyhub ingest` worker in a child process.

1. Baseline: this process writes 200,000 measurement points of 20 values, encoded beforehand, straight to
   influxd's /write in batches of 5,000 (the ingest's batch size): influxd's own rate here.
2. Throughput: 10 gateway accounts publish N measurements of 20 values with QoS 1 as fast as the broker takes
   them; the time from the first publish until InfluxDB holds all N gives messages/s and fields/s end to end.
3. Latency at the reference community's load: 500 messages/s of 20 values for a while, plus a probe message every
   0.2 s whose arrival in InfluxDB is polled every 20 ms: publish to queryable, p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from energyhub.cli.services import free_port, start_services  # noqa: E402
from energyhub.io.influx import InfluxClient  # noqa: E402
from energyhub.io.line_protocol import FieldValue, encode_point  # noqa: E402
from energyhub.io.mqtt import MqttLink  # noqa: E402
from energyhub.runtime.settings import ServiceSettings  # noqa: E402
from energyhub.runtime.supervisor import Supervisor, wait_for  # noqa: E402
from energyhub.wire.messages import Measurement, Quality, encode  # noqa: E402
from energyhub.wire.topics import Topics  # noqa: E402

VALUES = 20
GATEWAYS = [f"gw-b{i:02d}" for i in range(10)]
CHUNK = 500  # messages per gateway per batch of publishes


def values(seq: int) -> dict[str, float | None]:
    return {f"v{i:02d}": float(seq * 0.5 + i) for i in range(VALUES)}


def message(seq: int, session: int = 1, ts: datetime | None = None) -> bytes:
    return encode(
        Measurement(
            ts=ts or datetime.now(UTC), session=session, seq=seq, quality=Quality.GOOD, values=values(seq)
        )
    )


async def baseline(settings: ServiceSettings, points: int) -> float:
    """Points per second influxd takes on /write from one client, batches of 5,000 encoded beforehand."""
    now = time.time_ns()
    batches = []
    for start in range(0, points, 5000):
        lines = []
        for seq in range(start, start + 5000):
            tags = {"site": "s", "gateway": GATEWAYS[seq % 10], "device": f"d{seq % 50}", "session": "1"}
            fields: dict[str, FieldValue] = {k: v for k, v in values(seq).items() if v is not None}
            fields.update(seq=seq, quality="good", replay=False)
            lines.append(encode_point("device", tags, fields, now + seq))
        batches.append("\n".join(lines))
    async with InfluxClient(url=settings.influx_url, database="baseline") as client:
        await client.create_database()
        start_t = time.perf_counter()
        for body in batches:
            await client.write(body)
        return len(batches) * 5000 / (time.perf_counter() - start_t)


async def links(settings: ServiceSettings, accounts_dir: Path) -> list[MqttLink]:
    import json

    out = []
    for gateway in GATEWAYS:
        creds = json.loads((accounts_dir / "credentials" / f"{gateway}.json").read_text())
        out.append(
            await MqttLink.connect(
                settings.host,
                settings.mqtt_port,
                client_id=f"{gateway}-agent",  # the broker binds a gateway account to this client id
                username=creds["username"],
                password=creds["password"],
            )
        )
    return out


async def stored(client: InfluxClient, measurement_filter: str) -> int:
    series = await client.query(f"SELECT count(v00) FROM device WHERE {measurement_filter}")
    return int(series[0].values[0][1]) if series else 0


async def throughput(settings: ServiceSettings, accounts_dir: Path, count: int) -> float:
    topics = Topics(site=settings.site)
    gateways = await links(settings, accounts_dir)
    # Each gateway its own sequence, as an agent numbers them; distinct timestamps, so no point overwrites another.
    base = datetime.now(UTC)
    per_gateway = count // len(gateways)
    payloads = [
        [message(seq, session=2, ts=base + timedelta(microseconds=seq)) for seq in range(per_gateway)]
        for _ in gateways
    ]
    count = per_gateway * len(gateways)
    # Topics and payloads made before the clock starts: the publishers stand in for gateways, whose CPU is not
    # this machine's; what they cost here is still counted below.
    device_topics = [[topics.measurement(gw, f"d{d}") for d in range(50)] for gw in GATEWAYS]
    chunks = [
        [
            [
                (device_topics[g][seq % 50], payloads[g][seq])
                for seq in range(offset, min(offset + CHUNK, per_gateway))
            ]
            for g in range(len(gateways))
        ]
        for offset in range(0, per_gateway, CHUNK)
    ]
    async with InfluxClient(url=settings.influx_url, database=settings.influx_db) as client:
        start = time.perf_counter()
        for per_link in chunks:
            batches = []
            for link, chunk in zip(gateways, per_link, strict=True):
                batches.append(link.publish_batch(chunk))
            for link, batch in zip(gateways, batches, strict=True):
                await link.wait(batch.done)
        # Polled gently: a count over the growing data costs influxd CPU that the run itself needs.
        while await stored(client, "session = '2'") < count:
            await asyncio.sleep(0.25)
        elapsed = time.perf_counter() - start
    for link in gateways:
        await link.disconnect()
    return count / elapsed


async def latency(settings: ServiceSettings, accounts_dir: Path, seconds: float, rate: float) -> list[float]:
    topics = Topics(site=settings.site)
    gateways = await links(settings, accounts_dir)
    probe = gateways[0]
    sent_at: dict[int, float] = {}
    seen: list[float] = []

    async def load() -> None:
        seq, tick = 0, 0.1  # per gateway
        next_at = time.perf_counter()
        previous: list[tuple[MqttLink, asyncio.Future[None]]] = []
        while True:
            # A link keeps at most one tick in flight, within the broker's Receive Maximum.
            for link, done in previous:
                await link.wait(done)
            previous = []
            per_gateway = int(rate * tick) // (len(gateways) - 1)
            for g, link in enumerate(gateways[1:], 1):
                chunk = [
                    (topics.measurement(GATEWAYS[g], f"d{(seq + k) % 50}"), message(seq + k, session=3))
                    for k in range(per_gateway)
                ]
                previous.append((link, link.publish_batch(chunk).done))
            seq += per_gateway
            next_at += tick
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    async def probes() -> None:
        seq = 0
        while True:
            sent_at[seq] = time.perf_counter()
            await probe.wait(
                probe.publish_batch(
                    [(topics.measurement(GATEWAYS[0], "probe"), message(seq, session=4))]
                ).done
            )
            seq += 1
            await asyncio.sleep(0.2)

    async def watch(client: InfluxClient) -> None:
        known = -1
        while True:
            series = await client.query(
                f"SELECT max(seq) FROM device WHERE session = '4' AND gateway = '{GATEWAYS[0]}' AND time > now() - 5m"
            )
            now = time.perf_counter()
            newest = int(series[0].values[0][1]) if series else -1
            for seq in range(known + 1, newest + 1):
                if seq in sent_at:
                    seen.append(now - sent_at[seq])
            known = max(known, newest)
            await asyncio.sleep(0.02)

    async with InfluxClient(url=settings.influx_url, database=settings.influx_db) as client:
        tasks = [asyncio.create_task(t) for t in (load(), probes(), watch(client))]
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for link in gateways:
        await link.disconnect()
    return seen


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--messages",
        type=int,
        default=200_000,
        help="for the throughput run (long enough that start and end do not count)",
    )
    parser.add_argument("--seconds", type=float, default=30, help="for the latency run")
    parser.add_argument("--rate", type=float, default=500, help="messages/s of load during the latency run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name, Supervisor() as supervisor:
        tmp = Path(tmp_name)
        settings = ServiceSettings(
            state_dir=tmp,
            mqtt_port=free_port(),
            mqtt_tls_port=None,
            influx_port=free_port(),
            influx_rpc_port=free_port(),
            influx_db="bench",
        )
        running = start_services(supervisor, settings)
        for gateway in GATEWAYS:
            running.accounts.add_gateway(gateway)
        running.accounts.reload_broker()
        raw = asyncio.run(baseline(settings, 200_000))
        log = (tmp / "ingest.log").open("w")
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "energyhub.cli.main",
                "ingest",
                "--mqtt-port",
                str(settings.mqtt_port),
                "--mqtt-credentials-file",
                str(running.accounts.credentials_path("ehub-ingest")),
                "--influx-url",
                settings.influx_url,
                "--influx-db",
                settings.influx_db,
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: "connected as" in (tmp / "ingest.log").read_text(), timeout_s=30, what="ingest")
            pids = {
                "ingest": worker.pid,
                "mosquitto": running.broker.pid or 0,
                "influxd": running.influxd.pid or 0,
                "publishers (this process)": os.getpid(),
            }
            cpu0 = {name: cpu_s(pid) for name, pid in pids.items()}
            rate = asyncio.run(throughput(settings, running.accounts.directory, args.messages))
            cpu = {name: cpu_s(pid) - cpu0[name] for name, pid in pids.items()}
            lags = asyncio.run(latency(settings, running.accounts.directory, args.seconds, args.rate))
        finally:
            worker.terminate()
            worker.wait(timeout=20)
            log.close()
    print(f"ingest: {VALUES} values per message, one worker, Mosquitto and influxd on this machine")
    print(f"  influxd /write alone:        {raw:9,.0f} points/s   {raw * (VALUES + 3):11,.0f} fields/s")
    print(
        f"  end to end (publish->stored): {rate:8,.0f} messages/s {rate * (VALUES + 3):11,.0f} fields/s "
        f"({args.messages:,} messages)"
    )
    print(f"  ratio end to end / influxd alone: {rate / raw:.2f}")
    print("  CPU per 1,000 messages in the end-to-end run (2 cores shared by all four):")
    for name, seconds in cpu.items():
        print(f"    {name:<26} {seconds / args.messages * 1000 * 1000:6.1f} ms")
    if lags:
        print(
            f"  publish to queryable at {args.rate:.0f} messages/s for {args.seconds:.0f} s: "
            f"p50 {statistics.median(lags) * 1000:.0f} ms, p99 {percentile(lags, 0.99) * 1000:.0f} ms "
            f"({len(lags)} probes)"
        )
    else:
        print("  publish to queryable: no probe arrived")


if __name__ == "__main__":
    main()
