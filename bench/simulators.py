"""How many simulated devices one simulator process serves at 1 s updates, and its CPU per 1,000 register reads.

Runs `energyhub sim` for a community in a child process, polls every device once a second from this process (one
Modbus TCP client per gateway port, one block read per device), and reads the child's CPU time and memory from
/proc. The baseline, measured in the same run with the same reads: bare pymodbus servers with the same ports, unit ids
and block sizes but static registers and no physics. Prints medians over the measuring windows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")

# What one poll reads per device: (function, address, count), the main block of each profile.
READS = {
    "meter": ("input", 0x0000, 0x4C),
    "load": ("input", 0x0000, 0x4C),
    "pv": ("holding", 40070, 50),
    "battery": ("holding", 40070, 50),
    "ev": ("holding", 300, 78),
}


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve_baseline(endpoints_path: Path) -> None:
    """Child mode: bare pymodbus servers, static registers, same addresses as the simulator."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    endpoints = json.loads(endpoints_path.read_text())
    by_port: dict[int, list[dict]] = {}
    for e in endpoints:
        by_port.setdefault(e["port"], []).append(e)

    async def main() -> None:
        servers = []
        for port, devices in by_port.items():
            sims = []
            for e in devices:
                _kind, address, count = READS[e["role"]]
                base = 40000 if address >= 40000 else 0
                size = address - base + count + 8
                sims.append(
                    SimDevice(e["unit_id"], simdata=[SimData(base, count=size, datatype=DataType.REGISTERS)])
                )
            server = ModbusTcpServer(sims, address=("127.0.0.1", port))
            servers.append(asyncio.create_task(server.serve_forever()))
        print("ready", flush=True)
        await asyncio.gather(*servers)

    asyncio.run(main())


async def poll(endpoints: list[dict], seconds: float, pid: int) -> tuple[list[float], int, int]:
    """Read every device once a second; return the child's CPU seconds per window and the read counts."""
    clients: dict[int, AsyncModbusTcpClient] = {}
    for e in endpoints:
        if e["port"] not in clients:
            client = AsyncModbusTcpClient("127.0.0.1", port=e["port"], timeout=2, retries=0)
            await client.connect()
            clients[e["port"]] = client
    reads = errors = 0
    windows: list[float] = []

    async def read_gateway(port: int, devices: list[dict]) -> tuple[int, int]:
        ok = bad = 0
        for e in devices:  # one owner per connection: requests on one port never overlap
            kind, address, count = READS[e["role"]]
            method = (
                clients[port].read_input_registers
                if kind == "input"
                else clients[port].read_holding_registers
            )
            r = await method(address, count=count, device_id=e["unit_id"])
            if r.isError():
                bad += 1
            else:
                ok += 1
        return ok, bad

    by_port: dict[int, list[dict]] = {}
    for e in endpoints:
        by_port.setdefault(e["port"], []).append(e)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    # CPU time in /proc moves in 10 ms ticks, too coarse for one second: measure 5 s windows, report per second.
    window_s = 5
    while loop.time() < deadline:
        cpu0 = cpu_s(pid)
        for _ in range(window_s):
            started = loop.time()
            results = await asyncio.gather(*(read_gateway(p, d) for p, d in by_port.items()))
            reads += sum(r[0] for r in results)
            errors += sum(r[1] for r in results)
            await asyncio.sleep(max(0.0, 1.0 - (loop.time() - started)))
        windows.append((cpu_s(pid) - cpu0) / window_s)
    for client in clients.values():
        client.close()
    return windows, reads, errors


def measure(cmd: list[str], ready_word: str, endpoints: list[dict], seconds: float) -> dict:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if ready_word in line:
                break
        idle0 = cpu_s(proc.pid)
        time.sleep(5)  # idle window: physics only, no reads
        idle = (cpu_s(proc.pid) - idle0) / 5
        windows, reads, errors = asyncio.run(poll(endpoints, seconds, proc.pid))
        return {
            "cpu_per_s": statistics.median(windows),
            "idle_cpu_per_s": idle,
            "reads": reads,
            "errors": errors,
            "seconds": len(windows) * 5,
            "rss_mb": rss_mb(proc.pid),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--community", type=Path, default=REPO / "examples" / "de-koumen-2026.yaml")
    parser.add_argument("--seconds", type=float, default=30, help="polling time, in 5 s windows")
    parser.add_argument("--serve-baseline", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(args.serve_baseline)
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "endpoints.json"
        sim_cmd = [
            sys.executable,
            "-m",
            "energyhub.cli.main",
            "sim",
            "--community",
            str(args.community),
            "--speed",
            "1",
            "--start",
            "2026-06-01T10:00Z",
            "--endpoints-json",
            str(path),
        ]
        proc = subprocess.Popen(
            sim_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
        )
        for line in proc.stdout:  # type: ignore[union-attr]
            if "Modbus TCP ports" in line:
                break
        endpoints = json.loads(path.read_text())
        proc.terminate()
        proc.wait(timeout=20)
        ours = measure(sim_cmd, "Modbus TCP ports", endpoints, args.seconds)
        base = measure(
            [sys.executable, __file__, "--serve-baseline", str(path)], "ready", endpoints, args.seconds
        )

    devices = len(endpoints)
    per_s = ours["reads"] / max(ours["seconds"], 1)
    print(
        f"community: {args.community.name}, {devices} devices on {len({e['port'] for e in endpoints})} ports, "
        f"{args.seconds:.0f} s of 1 s polling (medians per second)"
    )
    for name, r in (("simulator", ours), ("bare pymodbus", base)):
        rate = r["reads"] / max(r["seconds"], 1)
        print(
            f"{name:>14}: {rate:6.0f} reads/s, {r['errors']} errors, CPU {r['cpu_per_s']:.3f} core "
            f"({r['idle_cpu_per_s']:.3f} idle), {r['cpu_per_s'] / rate * 1000:.3f} CPU s per 1,000 reads, "
            f"RSS {r['rss_mb']:.0f} MB"
        )
    ratio = (ours["cpu_per_s"] / per_s) / (base["cpu_per_s"] / (base["reads"] / max(base["seconds"], 1)))
    print(f"CPU per read, simulator / bare pymodbus: {ratio:.2f}x")
    print(f"devices at 1 s updates on one core (extrapolated): {devices / ours['cpu_per_s']:.0f}")


if __name__ == "__main__":
    main()
