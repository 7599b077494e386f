"""An estate of estates (issue 17): estate brokers bridged to a core broker, ingest workers sharing one group there.

Real processes on loopback ports, configs written by the project's own code (``energyhub.broker``): influxd and
the core Mosquitto; per estate a Mosquitto whose mosquitto.conf carries the bridge to the core (MQTT 5, written
from ``bridge.json`` by ``write_mosquitto_conf``) and two ``energyhub edge`` agents on it; one ``energyhub sim``
serving every device; three ``energyhub ingest`` workers on the core in one shared group reading both sites. The
two estates use the same gateway ids, so a confirmation that went to the wrong site would leave the right gateway
resending forever and the count below would find it.

Then in turn, with SIGKILL: a worker (started again after the outage), an estate broker (restarted), the core
broker (restarted). At the end the agents are stopped and the count is made from InfluxDB (``SELECT seq, session``,
grouped in Python, so it works whether ``session`` is a tag or a field) and the agents' buffer files: every seq of
every session of every gateway of both estates from 0 to the highest made must be stored, and what is not yet
stored may only be the last few polls still held in the buffer when the agent stopped.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from energyhub.broker.bridge import BridgeSettings
from energyhub.cli.services import broker_accounts, free_port, start_broker, start_services, tcp_answers
from energyhub.domain.community import load_community
from energyhub.edge.gateway_config import gateway_config
from energyhub.runtime.settings import ServiceSettings
from energyhub.runtime.supervisor import ManagedProcess, ProcessSpec, Supervisor
from tests.estate_run import wait_until
from tests.faults import community_doc, read_buffer

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parents[2]
ESTATES = ("estate-a", "estate-b")
GATEWAYS = ("gw-001", "gw-002")  # the same ids on both estates: only the site tells them apart
DEVICES = 2
INTERVAL_S = 0.2  # 10 measurements a second per gateway
WORKERS = 3
OUTAGE = 30  # measurements per gateway made while a part is down (3 s at this rate)
CONFIRM_TIMEOUT_S = 5.0  # the agents resend what the ingest has not confirmed after this
TAIL = int(2 * DEVICES / INTERVAL_S)  # the last 2 s of polls may still be on their way when an agent stops
Key = tuple[str, str, str]  # (site, gateway, session)


def _env() -> dict[str, str]:
    # Nothing of a demo's or another run's EHUB_* settings (a data clock, ports) may reach these processes.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHUB_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _buffer(path: Path) -> tuple[dict[str, set[int]], int]:
    """(seqs per session, rows) of an agent's buffer, read-only; again if the agent holds it locked a moment."""
    deadline = time.monotonic() + 10
    while True:
        try:
            held, depth, _ = read_buffer(path)
            return {str(session): seqs for session, seqs in held.items()}, depth
        except sqlite3.OperationalError:  # locked by the agent's write, or its table not made yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # retry interval of a busy read


def _settings(folder: Path, site: str) -> ServiceSettings:
    """A broker's (and, for the core, the database's) settings; an estate's influxd ports are never used."""
    return ServiceSettings(
        state_dir=folder,
        host="127.0.0.1",
        mqtt_port=free_port(),
        mqtt_tls_port=None,
        influx_port=free_port(),
        influx_rpc_port=free_port(),
        influx_db="estates",
        site=site,
    )


@dataclass
class Estates:
    """The whole chain in ``folder``; faults on demand; the count at the end."""

    folder: Path
    supervisor: Supervisor = field(default_factory=Supervisor)
    ports: dict[str, list[list[int]]] = field(default_factory=dict)
    brokers: dict[str, ManagedProcess] = field(default_factory=dict)  # "core" and each estate
    workers: list[ManagedProcess] = field(default_factory=list)
    agents: dict[tuple[str, str], ManagedProcess] = field(default_factory=dict)
    others: list[ManagedProcess] = field(default_factory=list)
    seen: dict[Key, int] = field(default_factory=dict)  # highest seq seen anywhere so far

    def __post_init__(self) -> None:
        self.core = _settings(self.folder / "core", "core")
        self.estate = {site: _settings(self.folder / site, site) for site in ESTATES}
        self.ports = {site: [[free_port() for _ in range(DEVICES)] for _ in GATEWAYS] for site in ESTATES}

    @property
    def influx(self) -> str:
        return self.core.influx_url

    def buffer(self, site: str, gateway: str) -> Path:
        return self.folder / site / "edge" / f"{gateway}.db"

    # -- start --------------------------------------------------------------------------------------------------
    def start(self) -> None:
        core_accounts = broker_accounts(self.core)
        core_accounts.ensure_service_accounts()
        for site in ESTATES:
            bridge = core_accounts.add_bridge(site)  # the core learns the bridge's account before it starts
            accounts = broker_accounts(self.estate[site])
            accounts.ensure_service_accounts()
            for gateway in GATEWAYS:
                accounts.add_gateway(gateway)
            accounts.set_bridge(
                BridgeSettings(
                    core_host="127.0.0.1",
                    core_port=self.core.mqtt_port,
                    credentials_file=core_accounts.credentials_path(bridge.username),
                )
            )
        running = start_services(self.supervisor, self.core)
        self.brokers["core"] = running.broker
        for site in ESTATES:
            self.brokers[site] = start_broker(self.supervisor, self.estate[site])
        self.workers = [self._worker(n) for n in range(1, WORKERS + 1)]
        self._start_together([*self.workers, self._sim()])
        self._start_together([self._agent(site, gateway) for site in ESTATES for gateway in GATEWAYS])

    def _start_together(self, processes: list[ManagedProcess]) -> None:
        for process in processes:
            process.start()
        for process in processes:
            process.wait_ready()

    def _log(self, name: str) -> Path:
        return self.folder / "log" / f"{name}.log"

    def _worker(self, n: int) -> ManagedProcess:
        config = self.folder / f"ingest-{n}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "site": "core",
                    "sites": list(ESTATES),
                    "worker": f"w{n}",
                    "mqtt_host": "127.0.0.1",
                    "mqtt_port": self.core.mqtt_port,
                    "mqtt_credentials_file": str(broker_accounts(self.core).credentials_path("ehub-ingest")),
                    "influx_url": self.influx,
                    "influx_db": self.core.influx_db,
                }
            ),
            encoding="utf-8",
        )
        log = self._log(f"ingest-{n}")
        return ManagedProcess(
            ProcessSpec(
                name=f"ingest w{n}",
                argv=[sys.executable, "-m", "energyhub", "ingest", "--config", str(config)],
                log_path=log,
                ready=lambda: log.exists() and log.read_text(errors="replace").count("connected as") >= 1,
                ready_timeout_s=60.0,
                env=_env(),
                cwd=REPO,
            )
        )

    def _sim(self) -> ManagedProcess:
        every = [ports for site in ESTATES for ports in self.ports[site]]
        path = self.folder / "sim.yaml"
        path.write_text(yaml.safe_dump(community_doc("sim", every), sort_keys=False), encoding="utf-8")
        process = ManagedProcess(
            ProcessSpec(
                name="sim",
                argv=[sys.executable, "-m", "energyhub", "sim", "--community", str(path), "--speed", "1"],
                log_path=self._log("sim"),
                ready=lambda: all(tcp_answers("127.0.0.1", p) for ports in every for p in ports),
                ready_timeout_s=60.0,
                env=_env(),
                cwd=REPO,
            )
        )
        self.others.append(process)
        return process

    def _agent(self, site: str, gateway: str) -> ManagedProcess:
        path = self.folder / site / "community.yaml"
        path.write_text(
            yaml.safe_dump(community_doc(site, self.ports[site]), sort_keys=False), encoding="utf-8"
        )
        config = gateway_config(
            load_community(path),
            gateway,
            mqtt_host="127.0.0.1",
            mqtt_port=self.estate[site].mqtt_port,
            credentials_file=broker_accounts(self.estate[site]).credentials_path(gateway),
            buffer_path=self.buffer(site, gateway),
        )
        config.update(interval_s=INTERVAL_S, timeout_s=0.08, retries=1, confirm_timeout_s=CONFIRM_TIMEOUT_S)
        config_path = self.folder / site / "edge" / f"{gateway}.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        process = ManagedProcess(
            ProcessSpec(
                name=f"agent {site}/{gateway}",
                argv=[sys.executable, "-m", "energyhub", "edge", "--config", str(config_path)],
                log_path=self._log(f"{site}-{gateway}"),
                ready=self.buffer(site, gateway).exists,
                ready_timeout_s=60.0,
                stop_timeout_s=20.0,
                env=_env(),
                cwd=REPO,
            )
        )
        self.agents[site, gateway] = process
        return process

    def close(self) -> None:
        for process in [*self.agents.values(), *self.workers, *self.others]:
            process.stop()
        for process in self.brokers.values():
            process.stop()
        self.supervisor.stop_all()

    # -- faults -------------------------------------------------------------------------------------------------
    @staticmethod
    def kill(process: ManagedProcess) -> None:
        assert process.popen is not None
        assert process.running, f"{process.spec.name} does not run"
        process.signal(signal.SIGKILL)
        process.popen.wait(timeout=10)

    @staticmethod
    def start_again(process: ManagedProcess) -> None:
        assert not process.running, f"{process.spec.name} still runs"
        process.start()
        process.wait_ready()

    # -- watching -----------------------------------------------------------------------------------------------
    def stored(self) -> dict[Key, set[int]]:
        """Every stored measurement's seq per (site, gateway, session), from InfluxDB."""
        out: dict[Key, set[int]] = defaultdict(set)
        for site in ESTATES:
            q = f"SELECT seq, session FROM device WHERE site = '{site}' GROUP BY gateway"
            response = httpx.get(
                f"{self.influx}/query",
                params={"db": self.core.influx_db, "q": q, "chunked": "true", "chunk_size": "20000"},
                timeout=60,
            )
            response.raise_for_status()
            for line in response.text.splitlines():
                for result in json.loads(line).get("results", []) if line.strip() else []:
                    assert "error" not in result, f"{q}: {result['error']}"
                    for series in result.get("series", []):
                        gateway = series["tags"]["gateway"]
                        at_seq, at_session = (
                            series["columns"].index("seq"),
                            series["columns"].index("session"),
                        )
                        for row in series["values"]:
                            if row[at_seq] is not None and row[at_session] is not None:
                                out[site, gateway, str(row[at_session])].add(int(row[at_seq]))
        return out

    def replayed(self) -> int:
        """Stored points whose last write was a resend (replay): the faults made the agents send them again."""
        total = 0
        for site in ESTATES:
            q = f"SELECT count(seq) FROM device WHERE site = '{site}' AND replay = true"
            response = httpx.get(
                f"{self.influx}/query", params={"db": self.core.influx_db, "q": q}, timeout=60
            )
            response.raise_for_status()
            for result in response.json().get("results", []):
                for series in result.get("series", []):
                    total += int(series["values"][0][1])
        return total

    def depth(self) -> dict[tuple[str, str], int]:
        """Rows in each agent's buffer: sent and not yet confirmed, or not yet sent."""
        return {(s, g): _buffer(self.buffer(s, g))[1] for s in ESTATES for g in GATEWAYS}

    def held(self) -> dict[Key, set[int]]:
        """The seqs each agent's buffer still holds."""
        out: dict[Key, set[int]] = {}
        for site in ESTATES:
            for gateway in GATEWAYS:
                for session, seqs in _buffer(self.buffer(site, gateway))[0].items():
                    out[site, gateway, session] = seqs
        return out

    def observe(self) -> dict[tuple[str, str], int]:
        """Note the highest seq seen per session (buffers and database); return what each gateway made so far."""
        for source in (self.held(), self.stored()):
            for key, seqs in source.items():
                if seqs:
                    self.seen[key] = max(self.seen.get(key, -1), max(seqs))
        made: dict[tuple[str, str], int] = defaultdict(int)
        for (site, gateway, _session), seq in self.seen.items():
            made[site, gateway] += seq + 1
        return made

    def wait_made(self, more: int, timeout_s: float = 60.0) -> None:
        """Until every gateway made ``more`` measurements more than now: an outage measured in what was made."""
        start = self.observe()
        wait_until(
            lambda: all(
                self.observe().get((s, g), 0) >= start.get((s, g), 0) + more
                for s in ESTATES
                for g in GATEWAYS
            ),
            timeout_s,
            f"every gateway to make {more} more measurements",
            self.logs,
        )

    def missing(self) -> dict[Key, list[int]]:
        """Per session, the seqs from 0 to the highest seen that InfluxDB lacks."""
        self.observe()
        stored = self.stored()
        return {
            key: gaps
            for key, top in self.seen.items()
            if (gaps := [seq for seq in range(top + 1) if seq not in stored.get(key, set())])
        }

    def logs(self, tail: int = 1500) -> str:
        paths = sorted((self.folder / "log").glob("*.log"))
        paths += sorted(self.folder.glob("*/log/mosquitto.log"))
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-tail:]}" for p in paths)


@pytest.fixture
def estates(tmp_path: Path) -> Iterator[Estates]:
    run = Estates(tmp_path)
    try:
        run.start()
        yield run
    finally:
        run.close()


def _tail(estates: Estates, key: Key, gaps: list[int]) -> bool:
    return all(seq > estates.seen[key] - TAIL for seq in gaps)


def _ranges(seqs: list[int]) -> str:
    runs: list[list[int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][1] + 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs[:10])


@pytest.mark.timeout(300)
def test_estates_bridged_to_a_core_lose_nothing_when_a_worker_an_estate_broker_and_the_core_die(
    estates: Estates,
) -> None:
    t0 = time.monotonic()
    estates.wait_made(50)
    wait_until(
        lambda: {(s, g) for s, g, _ in estates.stored()} == {(s, g) for s in ESTATES for g in GATEWAYS},
        60,
        "every gateway of both estates stored",
        estates.logs,
    )

    worker = estates.workers[0]
    estates.kill(worker)  # its persistent session on the core keeps taking its share of the group meanwhile
    estates.wait_made(OUTAGE)
    estates.start_again(worker)

    estate = estates.brokers[ESTATES[0]]
    estates.kill(estate)  # what it had acknowledged to the gateways and not yet forwarded is gone with it
    estates.wait_made(OUTAGE)
    estates.start_again(estate)

    estates.kill(estates.brokers["core"])  # the bridges queue on the estates; the workers lose their broker
    estates.wait_made(OUTAGE)
    estates.start_again(estates.brokers["core"])
    faults_done = time.monotonic()

    # Nothing missing below what the agents hold: everything made reaches InfluxDB (resent after the confirm
    # timeout where a dead part had it), or the wait times out with what is still missing.
    def complete() -> bool:
        held = estates.held()
        return all(
            set(gaps) <= held.get(key, set()) and _tail(estates, key, gaps)
            for key, gaps in estates.missing().items()
        )

    wait_until(
        complete, 120, "every made measurement in InfluxDB", lambda: f"{estates.missing()}\n{estates.logs()}"
    )
    drained = time.monotonic() - faults_done
    for agent in estates.agents.values():
        agent.signal(signal.SIGTERM)
    for agent in estates.agents.values():
        agent.stop()

    missing, held, stored, depth = estates.missing(), estates.held(), estates.stored(), estates.depth()
    made = sum(top + 1 for top in estates.seen.values())
    lost = {key: gaps for key, gaps in missing.items() if not set(gaps) <= held.get(key, set())}
    print(
        f"{len(ESTATES)} estates x {len(GATEWAYS)} gateways x {DEVICES / INTERVAL_S:g}/s, {WORKERS} workers: made "
        f"{made}, stored {sum(len(s) for s in stored.values())}, held at the end "
        f"{sum(len(g) for g in missing.values())}, lost {sum(len(g) for g in lost.values())}, stored from a resend "
        f"{estates.replayed()}, left in buffers {sum(depth.values())}; "
        f"recovered {drained:.1f} s after the core came back; whole run {time.monotonic() - t0:.0f} s"
    )
    assert made >= len(ESTATES) * len(GATEWAYS) * (50 + 3 * OUTAGE), f"only {made} made\n{estates.logs()}"
    assert {(s, g) for s, g, _ in estates.seen} == {(s, g) for s in ESTATES for g in GATEWAYS}
    assert not lost, (
        "lost: " + "; ".join(f"{k}: {_ranges(g)}" for k, g in lost.items()) + f"\n{estates.logs()}"
    )
    # The confirmations came back through the core, the bridge and the right estate to the right gateway:
    # otherwise a buffer keeps everything its gateway ever sent.
    assert all(rows <= TAIL for rows in depth.values()), f"buffers not confirmed empty: {depth}"
    # Only the last polls before the agent stopped may still wait in its buffer, never a hole further back.
    for key, gaps in missing.items():
        assert _tail(estates, key, gaps), f"{key}: unstored at the end, not only the tail: {_ranges(gaps)}"
