"""The demo's and the hardware-in-the-loop run's processes: the simulators, an agent per gateway, the ingest,
control and the API, each a real process as a deployment runs it, all on one data clock (``energyhub.domain.clock``).

``energyhub demo`` builds them here for every company of the community file (the whole estate in the loop) or
those of ``--gateway``; the estate tests and ``bench/estate.py`` run that command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from energyhub.cli.services import broker_accounts, tcp_answers
from energyhub.domain.clock import CLOCK_ENV, Clock
from energyhub.domain.community import only_gateways
from energyhub.domain.topology import Community
from energyhub.edge.gateway_config import gateway_config, ocpp_folder
from energyhub.runtime.settings import ServiceSettings
from energyhub.runtime.supervisor import ProcessSpec

__all__ = ["DemoPlan", "demo_ports", "demo_processes", "gateways_of"]


def gateways_of(community: Community) -> list[str]:
    """Every gateway that polls a device, in file order."""
    seen: dict[str, None] = {}
    for connection, device in community.devices():
        seen.setdefault(community.gateway_of(connection, device), None)
    return list(seen)


@dataclass(frozen=True, kw_only=True)
class DemoPlan:
    """What one run simulates and where."""

    settings: ServiceSettings
    community_path: Path
    gateways: list[str]
    clock: Clock
    seed: int = 1
    agents_per_process: int = 1  # a hardware-in-the-loop host runs many gateways' agents in one process
    control_cycle_s: float = 1.0

    @property
    def state(self) -> Path:
        return self.settings.state_dir.resolve()

    def env(self) -> dict[str, str]:
        """Every process of the run follows the same data clock."""
        import os

        return {**os.environ, CLOCK_ENV: self.clock.to_env()}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "energyhub", *args]


def _process(
    plan: DemoPlan, name: str, argv: list[str], ready: Callable[[], bool], **extra: Any
) -> ProcessSpec:
    """One of the run's processes: its log under the state folder, the run's data clock in its environment."""
    return ProcessSpec(
        name=name,
        argv=argv,
        log_path=plan.state / "log" / f"{name}.log",
        ready=ready,
        env=plan.env(),
        **extra,
    )


def _central(plan: DemoPlan, command: str, account: str, *args: str) -> list[str]:
    """A central service's command line: the site, the broker with the service's own account, the database."""
    s = plan.settings
    credentials = plan.state / "broker" / "credentials" / f"{account}.json"
    return _cli(
        command,
        "--site",
        s.site,
        "--mqtt-port",
        str(s.mqtt_port),
        "--mqtt-credentials-file",
        str(credentials),
        "--influx-url",
        s.influx_url,
        "--influx-db",
        s.influx_db,
        *args,
    )


def demo_ports(plan: DemoPlan, community: Community) -> list[tuple[str, int, str]]:
    """Every TCP port the run will listen on, beside the broker's and the database's: checked before anything
    starts, so a second demo says which port is taken instead of reading the first one's devices."""
    s = plan.settings
    ports = [(s.host, s.api_port, "the API"), (s.host, s.ingest_metrics_port, "the ingest's metrics")]
    chosen = set(plan.gateways)
    modbus = sorted(
        {
            (d.modbus.host, d.modbus.port)
            for c, d in community.devices()
            if community.gateway_of(c, d) in chosen and d.modbus is not None
        }
    )
    ports += [(host, port, "a simulated company's Modbus devices") for host, port in modbus]
    ocpp = sorted(
        {
            (g.ocpp.host, g.ocpp.port)
            for c, d in community.devices()
            if d.ocpp is not None and community.gateway_of(c, d) in chosen
            for g in c.gateways
            if g.ocpp is not None and g.id == community.gateway_of(c, d)
        }
    )
    ports += [(host, port, "a plaza gateway's OCPP server") for host, port in ocpp]
    mbus = sorted(
        {
            (d.mbus.host, d.mbus.port)
            for c, d in community.devices()
            if d.mbus and community.gateway_of(c, d) in chosen
        }
    )
    ports += [(host, port, "a simulated company's M-Bus converter") for host, port in mbus]
    return ports


def _ocpp_chargers(plan: DemoPlan, community: Community) -> Path | None:
    """Each simulated gateway with OCPP chargers gets its server certificate and its chargers' passwords, as
    `energyhub ocpp certs` and `ocpp add-charger` make them on a real gateway; the simulated chargers get the
    passwords and the CA (a file for the simulator, like the configuration a real charger holds)."""
    from energyhub.broker.certs import ensure_certificates
    from energyhub.edge.charger_passwords import add_charger

    accounts = broker_accounts(plan.settings)
    path = plan.state / "sim" / "ocpp-chargers.json"
    known: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    access: dict[str, Any] = {}
    for gateway in plan.gateways:
        points = sorted(
            {
                d.ocpp.charge_point_id
                for c, d in community.devices()
                if d.ocpp and community.gateway_of(c, d) == gateway
            }
        )
        if not points:
            continue
        folder = ocpp_folder(accounts.credentials_path(gateway), gateway)
        certs = ensure_certificates(folder, ["127.0.0.1", "localhost"])
        for point in points:
            password = add_charger(folder / "chargers.json", point, known.get(point, {}).get("password"))
            access[point] = {"password": password, "ca_file": str(certs.ca_cert)}
    if not access:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(access, indent=2) + "\n")
    path.chmod(0o600)
    return path


def demo_processes(plan: DemoPlan, community: Community) -> list[ProcessSpec]:
    """The run's processes in start order (after the broker and the database)."""
    control_community = _control_community(plan, community)
    chargers = _ocpp_chargers(plan, community)
    return [
        _simulator(plan, chargers),
        _ingest(plan),
        *_agents(plan, community),
        _control(plan, control_community),
        _aggregator(plan),
        _api(plan, control_community),
    ]


def _control_community(plan: DemoPlan, community: Community) -> Path:
    # Control sees the simulated companies only: the others would count as missing, that is as worst case.
    path = plan.state / "control" / "community.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    subset = only_gateways(community, set(plan.gateways))
    path.write_text(yaml.safe_dump(subset.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return path


def _simulator(plan: DemoPlan, ocpp_chargers: Path | None) -> ProcessSpec:
    endpoints = plan.state / "sim" / "endpoints.json"
    endpoints.parent.mkdir(parents=True, exist_ok=True)
    endpoints.unlink(missing_ok=True)
    assert plan.clock.start is not None  # a demo always runs on a simulation's clock
    argv = _cli(
        "sim",
        "--community",
        str(plan.community_path),
        "--speed",
        f"{plan.clock.speed:g}",
        "--start",
        plan.clock.start.isoformat(),
        "--seed",
        str(plan.seed),
        "--endpoints-json",
        str(endpoints),
    )
    for gateway in plan.gateways:
        argv += ["--only", gateway]
    if ocpp_chargers is not None:
        argv += ["--ocpp-chargers", str(ocpp_chargers)]
    return _process(
        plan,
        "simulator",
        argv,
        lambda: _simulator_answers(endpoints),
        ready_timeout_s=120.0,  # the whole estate builds 450 devices and its sky first
    )


def _simulator_answers(endpoints: Path) -> bool:
    """Ready when the endpoints file (removed before start) lists ports that all accept connections; the log is
    appended across runs, so a line in it could be an old run's."""
    try:
        listed = json.loads(endpoints.read_text())
    except (OSError, ValueError):
        return False
    return all(tcp_answers(host, port) for host, port in {(e["host"], e["port"]) for e in listed})


def _ingest(plan: DemoPlan) -> ProcessSpec:
    s = plan.settings
    argv = _central(
        plan,
        "ingest",
        "ehub-ingest",
        "--community",
        str(plan.community_path),
        "--metrics-port",
        str(s.ingest_metrics_port),
    )
    return _process(plan, "ingest", argv, lambda: tcp_answers(s.host, s.ingest_metrics_port))


def _agents(plan: DemoPlan, community: Community) -> list[ProcessSpec]:
    """An account and a config per simulated gateway, as a deployment would have them; their agents one per
    process, or ``agents_per_process`` to a process for a whole estate on one host."""
    s, state = plan.settings, plan.state
    accounts = broker_accounts(s)
    known = accounts.accounts()
    missing = [g for g in plan.gateways if g not in known or not accounts.credentials_path(g).exists()]
    if missing:
        accounts.add_gateways(missing, rotate={g for g in missing if g in known})
    configs: list[tuple[str, Path]] = []
    for gateway in plan.gateways:
        config = gateway_config(
            community,
            gateway,
            mqtt_host=s.host,
            mqtt_port=s.mqtt_port,
            credentials_file=accounts.credentials_path(gateway),
            buffer_path=state / "edge" / f"{gateway}.db",
        )
        path = state / "edge" / f"{gateway}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        configs.append((gateway, path))
    per = max(1, plan.agents_per_process)
    specs = []
    for i in range(0, len(configs), per):
        group = configs[i : i + per]
        name = f"edge-{group[0][0]}" if per == 1 else f"edge-{i // per + 1:02d}"
        argv = _cli("edge")
        for _gateway, path in group:
            argv += ["--config", str(path)]
        # An agent waits for its broker and devices itself and buffers meanwhile: nothing to wait for.
        specs.append(_process(plan, name, argv, lambda: True))
    return specs


def _control(plan: DemoPlan, control_community: Path) -> ProcessSpec:
    argv = _central(
        plan,
        "control",
        "ehub-control",
        "--community",
        str(control_community),
        "--day-ahead-dir",
        str(plan.state / "api" / "day_ahead"),
        "--bookings-dir",
        str(plan.state / "api" / "bookings"),
        "--cycle-s",
        f"{plan.control_cycle_s:g}",
    )
    # It connects and keeps its heartbeat on its own; nothing to wait for before the next part starts.
    return _process(plan, "control", argv, lambda: True)


def _aggregator(plan: DemoPlan) -> ProcessSpec:
    s = plan.settings
    argv = _cli(
        "aggregate",
        "--site",
        s.site,
        "--community",
        str(plan.community_path),
        "--influx-url",
        s.influx_url,
        "--influx-db",
        s.influx_db,
        "--raw-retention-days",
        f"{s.raw_retention_days:g}",
    )
    # It waits for the database and the first data itself.
    return _process(plan, "aggregator", argv, lambda: True)


def _api(plan: DemoPlan, control_community: Path) -> ProcessSpec:
    s = plan.settings
    argv = _central(
        plan,
        "api",
        "ehub-api",
        "--community",
        str(control_community),
        "--port",
        str(s.api_port),
        "--state-dir",
        str(plan.state / "api"),
    )
    return _process(plan, "api", argv, lambda: tcp_answers(s.host, s.api_port))
