"""The front of the chain for tests: a community's simulated devices and one edge agent per gateway, as real
processes on the session's broker."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import yaml

from energyhub.cli.services import RunningServices
from energyhub.domain.topology import Community
from energyhub.edge.gateway_config import gateway_config

REPO = Path(__file__).resolve().parent.parent


class Estate:
    """``energyhub sim`` for ``path`` plus ``energyhub edge`` for each of its gateways; logs in ``folder``."""

    def __init__(self, services: RunningServices, community: Community, path: Path, folder: Path) -> None:
        self.services, self.community, self.path, self.folder = services, community, path, folder
        self.processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[str]] = []

    def _start(self, name: str, argv: list[str]) -> None:
        log = (self.folder / f"{name}.log").open("w")
        self._logs.append(log)
        self.processes.append(subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))

    def start(self, *, speed: float, start: str, seed: int, **agent: Any) -> None:
        """Start the simulator, then an agent per gateway with ``agent`` overriding its config's top level."""
        self._start(
            "sim",
            [
                sys.executable,
                "-m",
                "energyhub.cli.main",
                "sim",
                "--community",
                str(self.path),
                "--speed",
                str(speed),
                "--start",
                start,
                "--seed",
                str(seed),
            ],
        )
        gateways = [connection.gateways[0].id for _l, _m, connection in self.community.connections()]
        known = self.services.accounts.accounts()
        for gateway in gateways:
            if gateway not in known:
                self.services.accounts.add_gateway(gateway)
        self.services.accounts.reload_broker()
        for gateway in gateways:
            config = gateway_config(
                self.community,
                gateway,
                mqtt_host="127.0.0.1",
                mqtt_port=self.services.settings.mqtt_port,
                credentials_file=self.services.accounts.credentials_path(gateway),
                buffer_path=self.folder / f"{gateway}.db",
            )
            config.update(agent)
            config_path = self.folder / f"{gateway}.yaml"
            config_path.write_text(yaml.safe_dump(config))
            self._start(gateway, [sys.executable, "-m", "energyhub", "edge", "--config", str(config_path)])

    def restart_simulator(self, *args: str) -> None:
        """Stop the simulator (the first process) and start it again with ``args``: its meters count from zero
        again, as a meter that lost power does. The new one is stopped with the rest."""
        sim = self.processes[0]
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=15)
        argv = [sys.executable, "-m", "energyhub.cli.main", "sim", "--community", str(self.path), *args]
        self._start("sim-restarted", argv)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.folder.glob("*.log")))

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in self._logs:
            log.close()
