"""The ingest's drain rate against influxd's own /write rate, measured in the same run, and how it scales with workers.

Starts Mosquitto and influxd (as `energyhub services` does); every ingest worker is an `energyhub ingest` process.

Each run, for each worker count N (``--workers``, default 1,2,3,4):

1. Baseline: this process writes ``--baseline-points`` points of 20 values, line protocol encoded beforehand,
   straight to influxd's /write in batches of 5,000 (the ingest's batch size), plain and gzipped: influxd's own
   rate here, the better of the two.
2. Drain: N workers in one shared-subscription group are started, subscribe, and are then frozen (SIGSTOP). Ten
   gateway accounts publish ``--messages`` measurements of 20 values (QoS 1) into the workers' sessions, which the
   broker holds. The workers are thawed (SIGCONT) and the clock runs until every gateway has a confirmation for
   every one of its sequence numbers (the ingest confirms only what InfluxDB has taken); a count in InfluxDB checks
   that all are there. So the load generator's cost is outside the timed window, and the figure is the ingest's.

Then once: publish-to-queryable latency at the reference community's load (500 messages/s of 20 values plus a
probe every 0.2 s, polled in InfluxDB every 20 ms), one worker.

Figures are printed per run and as medians over ``--runs``; the machine is shared and noisy, so quote medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from energyhub.cli.services import RunningServices, free_port, start_services  # noqa: E402
from energyhub.io.influx import InfluxClient  # noqa: E402
from energyhub.io.line_protocol import FieldValue, encode_point  # noqa: E402
from energyhub.io.mqtt import MqttLink  # noqa: E402
from energyhub.runtime.settings import ServiceSettings  # noqa: E402
from energyhub.runtime.supervisor import Supervisor, wait_for  # noqa: E402
from energyhub.wire.messages import DeliveryConfirmation, Measurement, Quality, decode, encode  # noqa: E402
from energyhub.wire.topics import Topics  # noqa: E402

VALUES = 20
FIELDS = VALUES + 3  # seq, quality, replay
GATEWAYS = [f"gw-b{i:02d}" for i in range(10)]
DEVICES = 50  # per gateway
CHUNK = 500  # messages per gateway per batch of publishes
BATCH = 5000  # the ingest's batch_max_points
PRELOAD_MAX_S = 15.0  # frozen workers send no PINGREQ: Mosquitto drops them after 1.5 keepalives (22.5 s)


def values(seq: int) -> dict[str, float | None]:
    return {f"v{i:02d}": float(seq * 0.5 + i) for i in range(VALUES)}


def message(seq: int, session: int = 1, ts: datetime | None = None) -> bytes:
    return encode(
        Measurement(
            ts=ts or datetime.now(UTC), session=session, seq=seq, quality=Quality.GOOD, values=values(seq)
        )
    )


# -- baseline: influxd alone ------------------------------------------------------------------------------------
async def baseline(settings: ServiceSettings, points: int, *, gzip: bool) -> float:
    """Points per second influxd takes on /write from one client, batches of 5,000 encoded beforehand."""
    now = time.time_ns() - 10**15  # ~12 days back: apart from the drains' points
    batches = []
    for start in range(0, points, BATCH):
        lines = []
        for seq in range(start, start + BATCH):
            tags = {"site": "s", "gateway": GATEWAYS[seq % 10], "device": f"d{seq % DEVICES}"}
            fields: dict[str, FieldValue] = {k: v for k, v in values(seq).items() if v is not None}
            fields.update(seq=seq, quality="good", replay=False)
            lines.append(encode_point("device", tags, fields, now + seq))
        batches.append("\n".join(lines))
    database = "baseline_gzip" if gzip else "baseline"
    async with InfluxClient(
        url=settings.influx_url, database=database, gzip_min_bytes=0 if gzip else 2**63
    ) as client:
        await client.query(f'DROP DATABASE "{database}"')  # the same points again would only overwrite
        await client.create_database()
        start_t = time.perf_counter()
        for body in batches:
            await client.write(body)
        return len(batches) * BATCH / (time.perf_counter() - start_t)


# -- the workers ------------------------------------------------------------------------------------------------
def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def workers(
    running: RunningServices, tmp: Path, names: list[str], group: str, extra_env: dict[str, str]
) -> Iterator[list[int]]:
    """``energyhub ingest`` processes in one shared group, subscribed; yields their pids."""
    settings = running.settings
    env = {
        **os.environ,
        **extra_env,
        "EHUB_INGEST_SHARE_GROUP": group,
        # No session left behind between rows: a left-over member of a group would get (and hold) a share.
        "EHUB_INGEST_SESSION_EXPIRY_S": "0",
        # One worker sees every sequence number; in a group each sees its share (docs/ingest.md).
        "EHUB_INGEST_TRACK_GAPS": "true" if len(names) == 1 else "false",
    }
    processes, logs = [], []
    try:
        for name in names:
            log = (tmp / f"ingest-{name}.log").open("w")
            logs.append(log)
            argv = [sys.executable, "-m", "energyhub.cli.main", "ingest", "--worker", name]
            argv += ["--site", settings.site, "--mqtt-port", str(settings.mqtt_port)]
            argv += ["--mqtt-credentials-file", str(running.accounts.credentials_path("ehub-ingest"))]
            argv += ["--influx-url", settings.influx_url, "--influx-db", settings.influx_db]
            processes.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        for name, process in zip(names, processes, strict=True):
            path = tmp / f"ingest-{name}.log"
            wait_for(
                lambda p=path, w=process: "connected as" in p.read_text() or w.poll() is not None,  # type: ignore[misc]
                timeout_s=60,
                what=f"ingest worker {name}",
            )
            if process.poll() is not None:
                raise SystemExit(f"ingest worker {name} stopped:\n{path.read_text()[-3000:]}")
        yield [p.pid for p in processes]
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.terminate()
        for process in processes:
            process.wait(timeout=20)
        for log in logs:
            log.close()


# -- publishers that are gateways: publish, and hear what the ingest confirms ----------------------------------
async def links(settings: ServiceSettings, accounts_dir: Path) -> list[MqttLink]:
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


async def confirmed(link: MqttLink, session: int, count: int, done: asyncio.Future[float]) -> None:
    """Mark each confirmed seq of ``session``; resolve ``done`` with the time the last one came."""
    seen = bytearray(count)
    left = count
    while left:
        confirmation = decode(DeliveryConfirmation, (await link.next_message()).payload)
        if confirmation.session != session:
            continue
        for first, last in confirmation.ranges:
            for seq in range(first, min(last, count - 1) + 1):
                if not seen[seq]:
                    seen[seq] = 1
                    left -= 1
    done.set_result(time.perf_counter())


@dataclass(frozen=True)
class Drain:
    workers: int
    messages: int
    preload_s: float
    drain_s: float
    cpu: dict[str, float]  # CPU seconds during the drain, by process

    @property
    def rate(self) -> float:
        return self.messages / self.drain_s

    @property
    def cores(self) -> float:
        """CPU busy during the drain, in cores: at the machine's core count it is full."""
        return sum(self.cpu.values()) / self.drain_s


async def drain(running: RunningServices, pids: list[int], session: int, count: int, base: datetime) -> Drain:
    """Preload ``count`` measurements while the workers are frozen, thaw them, time until all are confirmed."""
    settings = running.settings
    topics = Topics(site=settings.site)
    gateways = await links(settings, running.accounts.directory)
    per_gateway = count // len(gateways)
    loop = asyncio.get_running_loop()
    finished = [loop.create_future() for _ in gateways]
    for gateway, link in zip(GATEWAYS, gateways, strict=True):
        granted = await link.subscribe([(topics.confirm(gateway), 1)])
        assert granted == [1], f"confirm subscription of {gateway} refused: {granted}"
    listeners = [
        asyncio.create_task(confirmed(link, session, per_gateway, done))
        for link, done in zip(gateways, finished, strict=True)
    ]
    device_topics = [[topics.measurement(gw, f"d{d}") for d in range(DEVICES)] for gw in GATEWAYS]
    # Each gateway its own sequence; distinct timestamps, so no point overwrites another.
    payloads = [
        [
            (device_topics[g][seq % DEVICES], message(seq, session, base + timedelta(microseconds=seq)))
            for seq in range(per_gateway)
        ]
        for g in range(len(gateways))
    ]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    start = time.perf_counter()
    for offset in range(0, per_gateway, CHUNK):
        batches = [
            link.publish_batch(p[offset : offset + CHUNK]) for link, p in zip(gateways, payloads, strict=True)
        ]
        for link, batch in zip(gateways, batches, strict=True):
            await link.wait(batch.done)
            assert not batch.refused, f"the broker refused {len(batch.refused)} publishes"
    preload_s = time.perf_counter() - start
    if preload_s > PRELOAD_MAX_S:
        raise SystemExit(f"preloading took {preload_s:.1f} s: the frozen workers may have been dropped")
    procs = {
        f"ingest x{len(pids)}": pids,
        "mosquitto": [running.broker.pid or 0],
        "influxd": [running.influxd.pid or 0],
    }
    procs["bench (this process)"] = [os.getpid()]
    cpu0 = {name: sum(cpu_s(p) for p in ps) for name, ps in procs.items()}
    start = time.perf_counter()
    for pid in pids:
        os.kill(pid, signal.SIGCONT)
    try:
        async with asyncio.timeout(120):
            ends = await asyncio.gather(*finished)
    except TimeoutError:
        raise SystemExit("not every measurement was confirmed within 120 s: see the workers' logs") from None
    cpu = {name: sum(cpu_s(p) for p in ps) - cpu0[name] for name, ps in procs.items()}
    for task in listeners:
        task.cancel()
    for link in gateways:
        await link.disconnect()
    total = per_gateway * len(gateways)
    async with InfluxClient(url=settings.influx_url, database=settings.influx_db) as client:
        end = base + timedelta(microseconds=per_gateway)
        series = await client.query(
            f"SELECT count(v00) FROM device WHERE time >= '{base.isoformat()}' AND time <= '{end.isoformat()}'"
        )
    stored = int(series[0].values[0][1]) if series else 0
    if stored != total:
        raise SystemExit(f"confirmed {total} measurements but InfluxDB holds {stored}")
    return Drain(len(pids), total, preload_s, max(ends) - start, cpu)


# -- latency at the reference load (unchanged method) -----------------------------------------------------------
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
                "SELECT max(seq) FROM device WHERE device = 'probe' "
                f"AND gateway = '{GATEWAYS[0]}' AND time > now() - 5m"
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the runs ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    run: int
    raw_plain: float
    raw_gzip: float
    drain: Drain

    @property
    def raw(self) -> float:
        return max(self.raw_plain, self.raw_gzip)

    @property
    def ratio(self) -> float:
        return self.drain.rate / self.raw


def one_row(running: RunningServices, tmp: Path, args: argparse.Namespace, run: int, n: int) -> Row:
    settings = running.settings
    raw_plain = asyncio.run(baseline(settings, args.baseline_points, gzip=False))
    raw_gzip = asyncio.run(baseline(settings, args.baseline_points, gzip=True))
    names = [f"r{run}n{n}w{i}" for i in range(n)]
    session = 100 * run + n
    # Now: stored within seconds, as live data is (an old backlog would also be marked late for the aggregator).
    base = datetime.now(UTC)
    with workers(running, tmp, names, f"bench-r{run}n{n}", args.ingest_env) as pids:
        result = asyncio.run(drain(running, pids, session, args.messages, base))
    row = Row(run, raw_plain, raw_gzip, result)
    print(
        f"  run {run} N={n}: influxd alone {raw_plain:8,.0f} plain {raw_gzip:8,.0f} gzip points/s; "
        f"ingest {result.rate:8,.0f} messages/s (drain {result.drain_s:.2f} s, preload {result.preload_s:.1f} s); "
        f"ratio {row.ratio:.2f}; {result.cores:.2f} cores busy; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return row


def report(rows: list[Row], counts: list[int], messages: int) -> None:
    print(
        f"\ningest: {VALUES} values per message ({FIELDS} fields), {messages:,} messages per drain; "
        f"Mosquitto, influxd and the workers on this machine ({os.cpu_count()} cores, shared); medians of "
        f"{len(rows) // len(counts)} run(s); ratio = ingest messages/s / influxd-alone points/s of the same run"
    )
    print(
        f"  {'N':>2} {'influxd alone pts/s':>20} {'ingest msg/s':>13} {'fields/s':>11} {'ratio':>6} {'cores':>5}  "
        f"{'ratios per run':<22} CPU ms per 1,000 messages"
    )
    for n in counts:
        mine = [r for r in rows if r.drain.workers == n]
        raw = statistics.median(r.raw for r in mine)
        rate = statistics.median(r.drain.rate for r in mine)
        ratios = [r.ratio for r in mine]
        cores = statistics.median(r.drain.cores for r in mine)
        cpu = {name: statistics.median(r.drain.cpu[name] for r in mine) for name in mine[0].drain.cpu}
        shown = ", ".join(f"{name.split(' ')[0]} {s / messages * 1e6:.0f}" for name, s in cpu.items())
        print(
            f"  {n:>2} {raw:>20,.0f} {rate:>13,.0f} {rate * FIELDS:>11,.0f} {statistics.median(ratios):>6.2f} "
            f"{cores:>5.2f}  {', '.join(f'{x:.2f}' for x in ratios):<22} {shown}"
        )
    one = [r for r in rows if r.drain.workers == counts[0]]
    print(
        f"  influxd alone, median: plain {statistics.median(r.raw_plain for r in one):,.0f}, "
        f"gzip {statistics.median(r.raw_gzip for r in one):,.0f} points/s; cores = CPU of all processes "
        "during the drain / its time"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--messages", type=int, default=80_000, help="per drain (the broker queues 100,000 per session)"
    )
    parser.add_argument("--baseline-points", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", default="1,2,3,4", help="worker counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=20, help="for the latency run (0: none)")
    parser.add_argument("--rate", type=float, default=500, help="messages/s of load during the latency run")
    parser.add_argument(
        "--ingest-env",
        action="append",
        default=[],
        metavar="EHUB_INGEST_X=VALUE",
        help="a setting for every worker, e.g. EHUB_INGEST_BATCH_MAX_POINTS=10000 (repeatable)",
    )
    args = parser.parse_args()
    try:
        args.ingest_env = dict(item.split("=", 1) for item in args.ingest_env)
    except ValueError:
        parser.error(f"--ingest-env takes NAME=VALUE, got {args.ingest_env}")
    counts = [int(n) for n in args.workers.split(",")]
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
        rows = [one_row(running, tmp, args, run, n) for run in range(1, args.runs + 1) for n in counts]
        report(rows, counts, args.messages)
        if args.seconds > 0:
            with workers(running, tmp, ["latency"], "bench-latency", args.ingest_env):
                lags = asyncio.run(latency(settings, running.accounts.directory, args.seconds, args.rate))
            if lags:
                print(
                    f"  publish to queryable at {args.rate:.0f} messages/s for {args.seconds:.0f} s, one worker: "
                    f"p50 {statistics.median(lags) * 1000:.0f} ms, p99 {percentile(lags, 0.99) * 1000:.0f} ms "
                    f"({len(lags)} probes)"
                )
            else:
                print("  publish to queryable: no probe arrived")


if __name__ == "__main__":
    main()
