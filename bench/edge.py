"""CPU of the edge agent per 1,000 device polls, against a bare pymodbus read loop measured in the same run.

A child process serves N simulated SDM630 meters (20 per port, as behind RTU-to-TCP gateways). This process runs,
one after the other on the same devices for the same time: (a) the bare loop, which reads each device's planned
blocks once a second with pymodbus and nothing else; (b) the agent, which also decodes, builds the messages,
writes them to its SQLite buffer and publishes them with QoS 1 to a real Mosquitto, and deletes them once they are
confirmed stored. A child process stands in for the ingest: it confirms every measurement it receives, as the
ingest does after its InfluxDB write, so the agent does all its delivery work (with ``--no-confirm`` nothing is
confirmed, and the agent sends its backlog again). CPU is this process's CPU time (the broker, the confirmer and
the simulator run in other processes). Then it runs `energyhub edge` for 20 devices in a child and
reads its resident memory. Prints medians of 5 s windows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from pymodbus.client import AsyncModbusTcpClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from energyhub.cli.services import broker_accounts, free_port, start_broker  # noqa: E402
from energyhub.edge.agent import Agent  # noqa: E402
from energyhub.edge.config import load_agent_config  # noqa: E402
from energyhub.edge.register_map import plan_reads  # noqa: E402
from energyhub.runtime.settings import ServiceSettings  # noqa: E402
from energyhub.runtime.supervisor import Supervisor  # noqa: E402
from energyhub.wire.profile import load_profile  # noqa: E402

PER_PORT = 20
WINDOW_S = 5


def serve(devices: int, ports_file: Path) -> None:
    from energyhub.simulators.devices import MeterDevice
    from energyhub.simulators.modbus_server import GatewayServer
    from energyhub.simulators.sdm630 import MeterState

    async def main() -> None:
        servers, ports = [], []
        for start in range(0, devices, PER_PORT):
            port = free_port()
            meters = [
                MeterDevice(unit_id=u + 1, state=MeterState(power_w=1000.0 + u))
                for u in range(min(PER_PORT, devices - start))
            ]
            server = GatewayServer(host="127.0.0.1", port=port, devices=meters)
            await server.start()
            servers.append(server)
            ports.append(port)
        ports_file.write_text(json.dumps(ports))
        await asyncio.Event().wait()

    asyncio.run(main())


def confirm(port: int, credentials: Path, site: str) -> None:
    """Stand in for the ingest: confirm every measurement received, in batches of 0.2 s, as the ingest does."""
    from datetime import UTC, datetime

    from energyhub.io.mqtt import MqttLink
    from energyhub.wire.messages import confirmations, encode
    from energyhub.wire.topics import Topics

    topics = Topics(site=site)

    async def main() -> None:
        creds = json.loads(credentials.read_text())
        link = await MqttLink.connect(
            "127.0.0.1",
            port,
            client_id="bench-confirmer",
            username=creds["username"],
            password=creds["password"],
        )
        await link.subscribe([(topics.all_measurements(), 1)])
        while True:
            await link.wait_messages(None)
            await asyncio.sleep(0.2)  # the ingest's batch delay: confirmations go out per batch
            seen: dict[tuple[str, int], list[int]] = {}
            for message in link.take(100_000):
                info = topics.parse(message.topic)
                body = json.loads(message.payload)
                seen.setdefault((str(info.gateway), body["session"]), []).append(body["seq"])
            out = []
            for (gateway, session), seqs in seen.items():
                for note in confirmations(session, seqs, datetime.now(UTC)):
                    out.append((topics.confirm(gateway), encode(note)))
            link.publish_batch(out)

    asyncio.run(main())


def device_list(ports: list[int], devices: int) -> list[dict]:
    out = []
    for i in range(devices):
        out.append(
            {
                "id": f"m{i:03d}",
                "profile": "eastron_sdm630",
                "host": "127.0.0.1",
                "port": ports[i // PER_PORT],
                "unit_id": i % PER_PORT + 1,
            }
        )
    return out


async def bare_loop(devices: list[dict], seconds: float) -> tuple[list[float], int]:
    """pymodbus alone: the same block reads, one owner per port, nothing done with the registers."""
    blocks = plan_reads(load_profile("eastron_sdm630"))
    clients = {}
    for d in devices:
        if d["port"] not in clients:
            clients[d["port"]] = AsyncModbusTcpClient("127.0.0.1", port=d["port"], timeout=1, retries=0)
            await clients[d["port"]].connect()
    by_port: dict[int, list[dict]] = {}
    for d in devices:
        by_port.setdefault(d["port"], []).append(d)

    async def one_port(port: int, group: list[dict]) -> None:
        for d in group:
            for b in blocks:
                read = (
                    clients[port].read_input_registers
                    if b.function == "input"
                    else clients[port].read_holding_registers
                )
                await read(b.address, count=b.count, device_id=d["unit_id"])

    windows, polls = [], 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        cpu0 = time.process_time()
        for _ in range(WINDOW_S):
            started = loop.time()
            await asyncio.gather(*(one_port(p, g) for p, g in by_port.items()))
            polls += len(devices)
            await asyncio.sleep(max(0.0, 1.0 - (loop.time() - started)))
        windows.append(time.process_time() - cpu0)
    for client in clients.values():
        client.close()
    return windows, polls


async def agent_loop(config_path: Path, seconds: float) -> tuple[list[float], int, str]:
    agent = Agent(load_agent_config(config_path))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(agent.connected.wait(), 20)
    windows = []
    seq0, loop = agent.seq, asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        cpu0 = time.process_time()
        await asyncio.sleep(WINDOW_S)
        windows.append(time.process_time() - cpu0)
    polls, published = agent.seq - seq0, f"{agent.published} published, {agent.confirmed} confirmed"
    stop.set()
    await task
    return windows, polls, published


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15, help="per side and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-confirm", action="store_true", help="no stand-in ingest confirms anything")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--confirm", nargs=3, metavar=("PORT", "CREDENTIALS", "SITE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.devices, args.serve)
        return
    if args.confirm:
        confirm(int(args.confirm[0]), Path(args.confirm[1]), args.confirm[2])
        return
    with tempfile.TemporaryDirectory() as tmp_name, Supervisor() as supervisor:
        tmp = Path(tmp_name)
        ports_file = tmp / "ports.json"
        sim = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(ports_file), "--devices", str(args.devices)], cwd=REPO
        )
        try:
            deadline = time.monotonic() + 60
            while not ports_file.exists():
                if time.monotonic() > deadline or sim.poll() is not None:
                    raise SystemExit("the simulator did not start")
                time.sleep(0.1)
            ports = json.loads(ports_file.read_text())
            settings = ServiceSettings(state_dir=tmp / "state", mqtt_port=free_port(), mqtt_tls_port=None)
            accounts = broker_accounts(settings)
            accounts.ensure_service_accounts()
            accounts.add_gateway("gw-bench")
            start_broker(supervisor, settings)
            confirmer = None
            if not args.no_confirm:
                confirmer = subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--confirm",
                        str(settings.mqtt_port),
                        str(accounts.credentials_path("ehub-ingest")),
                        settings.site,
                    ],
                    cwd=REPO,
                )
            devices = device_list(ports, args.devices)

            def write_config(path: Path, devs: list[dict]) -> Path:
                path.write_text(
                    yaml.safe_dump(
                        {
                            "gateway": "gw-bench",
                            "site": settings.site,
                            "buffer_path": str(path.with_suffix(".db")),
                            "mqtt": {
                                "host": "127.0.0.1",
                                "port": settings.mqtt_port,
                                "credentials_file": str(accounts.credentials_path("gw-bench")),
                            },
                            "interval_s": 1.0,
                            "timeout_s": 0.4,
                            "retries": 1,
                            "devices": devs,
                        }
                    )
                )
                return path

            config = write_config(tmp / "agent.yaml", devices)
            # Alternating rounds, so drift in this machine's load hits both sides alike; the ratio is taken per
            # round and the median quoted.
            rounds = []
            for _ in range(args.rounds):
                bare_windows, bare_polls = asyncio.run(bare_loop(devices, args.seconds))
                agent_windows, agent_polls, published = asyncio.run(agent_loop(config, args.seconds))
                rounds.append((bare_windows, bare_polls, agent_windows, agent_polls, published))

            small = write_config(tmp / "small.yaml", devices[:20])
            child_log = (tmp / "edge.log").open("w")
            child = subprocess.Popen(
                [sys.executable, "-m", "energyhub", "edge", "--config", str(small)],
                cwd=REPO,
                stdout=child_log,
                stderr=subprocess.STDOUT,
            )
            time.sleep(10)  # let it run its steady state before reading its memory (a measurement span)
            if child.poll() is not None:
                raise SystemExit(f"`energyhub edge` ended early:\n{(tmp / 'edge.log').read_text()[-3000:]}")
            rss = (
                next(
                    int(line.split()[1])
                    for line in Path(f"/proc/{child.pid}/status").read_text().splitlines()
                    if line.startswith("VmRSS:")
                )
                / 1024
            )
            child.terminate()
            child.wait(timeout=20)
        finally:
            sim.terminate()
            sim.wait(timeout=20)
            if confirmer is not None:
                confirmer.terminate()
                confirmer.wait(timeout=20)

    def per_k(windows: list[float], polls: int) -> tuple[float, float, float]:
        cpu = statistics.median(windows) / WINDOW_S
        rate = polls / (len(windows) * WINDOW_S)
        return rate, cpu, cpu / rate * 1000

    print(
        f"{args.devices} SDM630 meters on {len(ports)} ports, polled every second; {args.rounds} rounds of "
        f"{args.seconds:.0f} s bare loop then {args.seconds:.0f} s agent (medians of {WINDOW_S} s windows)"
    )
    ratios, agent_figures = [], []
    for i, (bare_windows, bare_polls, agent_windows, agent_polls, published) in enumerate(rounds, 1):
        bare_rate, _bare_cpu, bare_per_k = per_k(bare_windows, bare_polls)
        agent_rate, _agent_cpu, agent_per_k = per_k(agent_windows, agent_polls)
        ratios.append(agent_per_k / bare_per_k)
        agent_figures.append(agent_per_k)
        print(
            f"  round {i}: bare {bare_rate:5.1f} polls/s {bare_per_k:.3f} CPU s/1,000 polls | agent "
            f"{agent_rate:5.1f} polls/s {agent_per_k:.3f} CPU s/1,000 polls ({published}) | "
            f"ratio {ratios[-1]:.2f}x"
        )
    agent_per_k = statistics.median(agent_figures)
    print(
        f"  ratio agent / bare, median of rounds: {statistics.median(ratios):.2f}x "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}x)"
    )
    print(
        f"  devices at 1 s on one core (extrapolated from the agent's CPU per poll): {1000 / agent_per_k:.0f}"
    )
    print(f"  resident memory of `energyhub edge` with 20 devices: {rss:.0f} MB")


if __name__ == "__main__":
    main()
