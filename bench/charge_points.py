"""How many OCPP charge points one gateway process serves at one meter value per second, against a bare central
system on the same library measured in the same run.

Child processes run N simulated 2.0.1 DC charge points (``simulators/ocpp_station.py``), each in a charging
session, sending a TransactionEvent with its meter values every second. This process serves them, in alternating
rounds on the same load: (a) the baseline, the ``ocpp`` library's ChargePoint over websockets answering every
TransactionEvent at once and storing nothing; (b) the gateway agent's OCPP server (``edge/ocpp_server.py``): Basic
auth, the same library, every meter value stored in the agent's SQLite buffer as a measurement before it is
answered. Per round: meter values answered per second (from the stations' side: counted here as stored rows, or
as answered calls for the baseline), and this process's CPU time per meter value. Prints medians over the rounds
and the charge points one core would serve (1 s / CPU per meter value), for each N.

    .venv/bin/python bench/charge_points.py                       # N = 100, 200, 400; 3 rounds of 10 s each; ~5 min
    .venv/bin/python bench/charge_points.py --points 50 --rounds 1 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from energyhub.cli.services import free_port  # noqa: E402

PASSWORD = "bench-charger-password-0"
PER_CHILD = 100


def run_stations(url: str, first: int, count: int, seconds: float) -> None:
    """A child: ``count`` charge points, each charging and reporting once a second."""
    from energyhub.simulators.ocpp_station import ChargePointSim, ConnectorSpec

    logging.basicConfig(level=logging.ERROR)

    async def main() -> None:
        stop = asyncio.Event()
        sims = [
            ChargePointSim(
                f"CP-{first + i:05d}",
                url,
                version="2.0.1",
                connectors=[ConnectorSpec(connector_id=1, kind="dc", max_power_w=150_000)],
                password=PASSWORD,
                meter_interval_s=1.0,
                response_timeout_s=30.0,
            )
            for i in range(count)
        ]
        for sim in sims:
            sim.plug_in(1, energy_wanted_wh=10_000_000, departure_ts=time.time() + 86_400)
        tasks = [asyncio.create_task(sim.run(stop)) for sim in sims]
        await asyncio.sleep(seconds)  # the child's lifetime: it is stopped by its parent anyway
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def start_children(url: str, points: int, seconds: float) -> list[subprocess.Popen[bytes]]:
    children = []
    for first in range(0, points, PER_CHILD):
        count = min(PER_CHILD, points - first)
        argv = [sys.executable, __file__, "--child", url, str(first), str(count), str(seconds)]
        children.append(
            subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    return children


def stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        child.kill()
    for child in children:
        child.wait(10)


async def baseline_server(port: int, counter: list[int]) -> Any:
    """The library's own central system, answering every meter value at once, storing nothing."""
    from ocpp.routing import on
    from ocpp.v201 import ChargePoint
    from ocpp.v201 import call_result as result
    from websockets.asyncio.server import serve

    class Bare(ChargePoint):  # type: ignore[misc]
        @on("BootNotification")  # type: ignore[misc]
        def boot(self, **_: Any) -> Any:
            return result.BootNotification(
                current_time=datetime.now(UTC).isoformat(), interval=300, status="Accepted"
            )

        @on("Heartbeat")  # type: ignore[misc]
        def beat(self) -> Any:
            return result.Heartbeat(current_time=datetime.now(UTC).isoformat())

        @on("StatusNotification")  # type: ignore[misc]
        def status(self, **_: Any) -> Any:
            return result.StatusNotification()

        @on("TransactionEvent")  # type: ignore[misc]
        def event(self, **kw: Any) -> Any:
            counter[0] += len(kw.get("meter_value") or [])
            return result.TransactionEvent()

        @on("NotifyEVChargingNeeds")  # type: ignore[misc]
        def needs(self, **_: Any) -> Any:
            return result.NotifyEVChargingNeeds(status="Accepted")

    async def session(connection: Any) -> None:
        station = Bare(connection.request.path.strip("/"), connection)
        with contextlib.suppress(Exception):  # a station gone is the end of its session
            await station.start()

    return await serve(session, "127.0.0.1", port, subprotocols=["ocpp2.0.1"], ping_interval=None)  # type: ignore[list-item]


async def measure(kind: str, points: int, seconds: float, folder: Path) -> dict[str, float]:
    """One round: start the server, the stations, wait for all to be in session, count over ``seconds``."""
    from energyhub.edge.agent import Agent
    from energyhub.edge.config import load_agent_config

    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    counter = [0]
    agent = None
    if kind == "baseline":
        server = await baseline_server(port, counter)
    else:
        config = {
            "gateway": "gw-bench",
            "site": "bench",
            "buffer_path": str(folder / f"buffer-{points}-{time.monotonic_ns()}.db"),
            "buffer_max_messages": 50_000_000,
            "mqtt": {"port": free_port()},  # no broker: the buffer is the work measured
            "ocpp": {
                "port": port,
                "security_profile": 1,
                "credentials_file": str(folder / "chargers.json"),
                "heartbeat_interval_s": 300,
            },
            "devices": [
                {
                    "id": f"cp-{i:05d}",
                    "profile": "ocpp",
                    "ocpp": {"charge_point_id": f"CP-{i:05d}", "version": "2.0.1"},
                }
                for i in range(points)
            ],
        }
        path = folder / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        agent = Agent(load_agent_config(path))
        assert agent.ocpp is not None
        server = await agent.ocpp.start()

    def count() -> int:
        return agent.seq if agent is not None else counter[0]

    children = start_children(url, points, seconds + 60)
    try:
        # Warm up: every station connected and what they queued while connecting sent: two windows in a row at
        # one value per station per second.
        deadline = time.monotonic() + 90
        last, last_at, steady = count(), time.monotonic(), 0
        while time.monotonic() < deadline and steady < 2:
            await asyncio.sleep(2.0)  # the rate is judged over two seconds
            now = count()
            rate = (now - last) / (time.monotonic() - last_at)
            last, last_at = now, time.monotonic()
            steady = steady + 1 if 0.95 * points <= rate <= 1.05 * points else 0
        cpu0, wall0, n0 = time.process_time(), time.monotonic(), count()
        await asyncio.sleep(seconds)  # the measured window
        cpu, wall, n = time.process_time() - cpu0, time.monotonic() - wall0, count() - n0
    finally:
        stop_children(children)
        server.close()
        await server.wait_closed()
        if agent is not None:
            agent.buffer.close()
    return {"rate": n / wall, "cpu_us": cpu / max(n, 1) * 1e6, "busy": cpu / wall}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, action="append", help="charge points (repeat); 100, 200, 400")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, first, count, seconds = args.child
        run_stations(url, int(first), int(count), float(seconds))
        return
    logging.basicConfig(level=logging.ERROR)
    from energyhub.edge.charger_passwords import add_charger

    points_list = args.points or [100, 200, 400]
    print(
        f"{os.cpu_count()} CPUs; {args.rounds} rounds of {args.seconds:g} s; one meter value per station per second"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(max(points_list)):
            add_charger(folder / "chargers.json", f"CP-{i:05d}", PASSWORD)
        print(
            "| stations | server | values/s | CPU µs/value | cores busy | stations per core | ratio CPU to baseline |"
        )
        print("|---|---|---|---|---|---|---|")
        for points in points_list:
            runs: dict[str, list[dict[str, float]]] = {"baseline": [], "gateway": []}
            for r in range(args.rounds):
                order = ("baseline", "gateway") if r % 2 == 0 else ("gateway", "baseline")
                for kind in order:
                    runs[kind].append(asyncio.run(measure(kind, points, args.seconds, folder)))
            base_us = statistics.median(x["cpu_us"] for x in runs["baseline"])
            for kind in ("baseline", "gateway"):
                rate = statistics.median(x["rate"] for x in runs[kind])
                us = statistics.median(x["cpu_us"] for x in runs[kind])
                busy = statistics.median(x["busy"] for x in runs[kind])
                ratios = ", ".join(
                    f"{x['cpu_us'] / b['cpu_us']:.2f}"
                    for x, b in zip(runs[kind], runs["baseline"], strict=True)
                )
                print(
                    f"| {points} | {kind} | {rate:,.0f} | {us:,.0f} | {busy:.2f} | {1e6 / us:,.0f} | "
                    f"{us / base_us:.2f} ({ratios}) |"
                )


if __name__ == "__main__":
    main()
