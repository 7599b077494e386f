"""What a gateway carries: the edge-only install on disk and the agent's resident memory with 20 devices, against
the full install (the `server` extra, what the central side runs) measured in the same run.

Two clean virtual environments are made with this Python (`pip install .` and `pip install '.[server]'`, from the
machine's package index), each measured on disk (everything in the venv, and without pip and setuptools, which
Raspberry Pi OS's venv brings anyway). Then `energyhub edge` from each venv polls the same 20 simulated SDM630
meters (one Modbus TCP port, as behind an RTU-to-TCP gateway) and publishes to a real Mosquitto; its VmRSS is
read once a second after a warm-up, and the median is quoted. Both agents run one after the other, twice, in
alternating order, so drift in this machine's load hits both.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from energyhub.cli.services import broker_accounts, free_port, start_broker  # noqa: E402
from energyhub.runtime.settings import ServiceSettings  # noqa: E402
from energyhub.runtime.supervisor import Supervisor  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from simulators import rss_mb  # noqa: E402  (bench/simulators.py: a process's VmRSS)

DEVICES = 20
TOOLING = ("pip", "setuptools", "_distutils_hack", "pkg_resources")


def disk_mb(path: Path, *, skip: tuple[str, ...] = ()) -> float:
    total = 0
    for file in path.rglob("*"):
        if file.is_file() and not file.is_symlink():
            if skip and any(part.split("-")[0] in skip for part in file.relative_to(path).parts):
                continue
            total += file.stat().st_size
    return total / 1e6


def make_venv(target: Path, extra: str) -> float:
    """A clean venv with the project (``extra`` "" or "[server]"); returns the seconds it took."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    source = target.parent / f"src-{target.name}"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".venv*", ".git", "var", "*.egg-info", "__pycache__", "build", "tests"),
    )
    subprocess.run(
        [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{source}{extra}"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.monotonic() - started


def serve(port: int) -> None:
    from energyhub.simulators.devices import MeterDevice
    from energyhub.simulators.modbus_server import GatewayServer
    from energyhub.simulators.sdm630 import MeterState

    async def main() -> None:
        meters = [MeterDevice(unit_id=u + 1, state=MeterState(power_w=1000.0 + u)) for u in range(DEVICES)]
        async with GatewayServer(host="127.0.0.1", port=port, devices=meters):
            await asyncio.Event().wait()

    asyncio.run(main())


def agent_rss(venv: Path, config: Path, seconds: float, log: Path) -> float:
    with log.open("w") as out:
        child = subprocess.Popen(
            [str(venv / "bin" / "energyhub"), "edge", "--config", str(config)],
            cwd=config.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        samples = []
        deadline = time.monotonic() + seconds
        warm = time.monotonic() + min(5.0, seconds / 3)
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise SystemExit(f"`energyhub edge` ended early:\n{log.read_text()[-3000:]}")
            if time.monotonic() > warm:
                samples.append(rss_mb(child.pid))
            time.sleep(1.0)  # the sampling period of a measurement, not a synchronisation
        if "connected" not in log.read_text().lower():
            raise SystemExit(f"the agent never connected:\n{log.read_text()[-3000:]}")
        return statistics.median(samples)
    finally:
        child.terminate()
        child.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20, help="each agent run")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    with tempfile.TemporaryDirectory() as tmp_name, Supervisor() as supervisor:
        tmp = Path(tmp_name)
        edge, full = tmp / "edge", tmp / "full"
        edge_s = make_venv(edge, "")
        full_s = make_venv(full, "[server]")
        modbus_port = free_port()
        sim = subprocess.Popen([sys.executable, __file__, "--serve", str(modbus_port)], cwd=REPO)
        try:
            settings = ServiceSettings(state_dir=tmp / "state", mqtt_port=free_port(), mqtt_tls_port=None)
            accounts = broker_accounts(settings)
            accounts.ensure_service_accounts()
            accounts.add_gateway("gw-bench")
            start_broker(supervisor, settings)
            config = tmp / "gateway.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "gateway": "gw-bench",
                        "site": settings.site,
                        "buffer_path": str(tmp / "buffer.db"),
                        "timeout_s": 0.4,
                        "mqtt": {
                            "host": "127.0.0.1",
                            "port": settings.mqtt_port,
                            "credentials_file": str(accounts.credentials_path("gw-bench")),
                        },
                        "devices": [
                            {
                                "id": f"m{u}",
                                "profile": "eastron_sdm630",
                                "host": "127.0.0.1",
                                "port": modbus_port,
                            }
                            | {"unit_id": u + 1}
                            for u in range(DEVICES)
                        ],
                    }
                )
            )
            runs: dict[str, list[float]] = {"edge": [], "full": []}
            for order in (("edge", "full"), ("full", "edge")):
                for name in order:
                    venv = edge if name == "edge" else full
                    runs[name].append(agent_rss(venv, config, args.seconds, tmp / f"{name}.log"))
        finally:
            sim.terminate()
            sim.wait(timeout=20)
        sizes = {
            name: (disk_mb(venv), disk_mb(venv, skip=TOOLING))
            for name, venv in (("edge", edge), ("full", full))
        }
    print(
        f"edge footprint, Python {sys.version.split()[0]}, {DEVICES} SDM630 meters, agent runs of {args.seconds:g} s"
    )
    print(f"{'install':<28}{'venv MB':>10}{'w/o pip MB':>12}{'install s':>11}{'agent RSS MB':>14}")
    for name, label, took in (
        ("edge", "edge (`pip install .`)", edge_s),
        ("full", "full (`'.[server]'`)", full_s),
    ):
        total, packages = sizes[name]
        print(
            f"{label:<28}{total:>10.1f}{packages:>12.1f}{took:>11.0f}{statistics.median(runs[name]):>14.1f}"
        )
    (e_total, e_pkgs), (f_total, f_pkgs) = sizes["edge"], sizes["full"]
    print(
        f"edge / full: disk {e_total / f_total:.2f} (packages {e_pkgs / f_pkgs:.2f}), agent RSS "
        f"{statistics.median(runs['edge']) / statistics.median(runs['full']):.2f}"
    )


if __name__ == "__main__":
    main()
