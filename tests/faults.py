"""Fault runs for the "nothing lost" promise, counted from outside the system's own bookkeeping.

``FaultRun`` starts its own chain of real processes on free loopback ports, under one ``Supervisor`` (which never
restarts anything by itself): influxd, Mosquitto, ``energyhub ingest`` (the CLI with a settings file, as users run
it), ``energyhub sim`` at real time, and one ``energyhub edge`` process per gateway. The broker and the ingest can
be killed with SIGKILL, stopped with SIGTERM and started again with the same config and state folders, whenever the
caller wants.

What was lost is counted as an outsider counts it, per (gateway, session):

- InfluxDB (InfluxQL over HTTP): every stored ``seq`` of the ``device`` measurement with its ``session`` field,
  grouped by the ``gateway`` tag, then by session here; a seq stored at more than one point is a duplicate (a
  redelivery of the same message overwrites its own point, so only a seq reused for another message shows up as
  one). ``per_session`` has influxd compute aggregates per (gateway, session) instead, for counts while running.
- each agent's SQLite buffer, opened read-only: the seqs it still holds, from the JSON payloads (so the count works
  whatever other columns the table grows).
- made: every seq from 0 up to the highest one seen anywhere (database, buffer, or a buffer read while running).

lost = made - stored - held. The agents are stopped (SIGTERM) before the final count, and the count waits until
nothing is missing or InfluxDB stops changing, so what was only on its way is not counted as lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from energyhub.cli.services import broker_accounts, free_port, start_services, tcp_answers
from energyhub.domain.community import load_community
from energyhub.domain.ean import ean_check_digit
from energyhub.domain.topology import Community
from energyhub.edge.gateway_config import gateway_config
from energyhub.runtime.settings import ServiceSettings
from energyhub.runtime.supervisor import ManagedProcess, ProcessSpec, Supervisor, wait_for

__all__ = [
    "Count",
    "FaultRun",
    "Load",
    "SessionCount",
    "Stored",
    "community_doc",
    "count_losses",
    "fault_run",
    "per_session",
    "read_buffer",
    "stored_newest",
    "stored_seqs",
]

REPO = Path(__file__).resolve().parent.parent
Key = tuple[str, int]  # (gateway, session)


# -- load and community ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Load:
    """How much the gateways make: ``rate_hz`` measurements a second each, from ``rate_hz * interval_s`` devices
    (a grid meter and sub-meters, each on its own Modbus TCP port) polled every ``interval_s``."""

    gateways: int = 4
    rate_hz: float = 50.0
    interval_s: float = 0.2

    @property
    def devices(self) -> int:
        return max(1, round(self.rate_hz * self.interval_s))

    @property
    def per_gateway_hz(self) -> float:
        return self.devices / self.interval_s

    @property
    def total_hz(self) -> float:
        return self.gateways * self.per_gateway_hz

    def describe(self) -> str:
        return (
            f"{self.gateways} gateways x {self.per_gateway_hz:g}/s ({self.devices} devices every "
            f"{self.interval_s:g} s)"
        )


def _ean(n: int) -> str:
    body = f"87160001{n:09d}"
    return body + str(ean_check_digit(body))


def community_doc(site: str, ports: list[list[int]]) -> dict[str, Any]:
    """Community ``site`` with one connection per entry of ``ports``: gateway ``gw-NNN`` with a grid meter and
    sub-meters (role load), one device on each of its ports."""
    connections = []
    for n, device_ports in enumerate(ports, start=1):
        devices = [
            {
                "id": "meter" if i == 0 else f"sub{i:02d}",
                "role": "meter" if i == 0 else "load",
                "profile": "eastron_sdm630",
                "modbus": {"host": "127.0.0.1", "port": port, "unit_id": 1},
            }
            for i, port in enumerate(device_ports)
        ]
        connections.append(
            {
                "id": f"c-{n:03d}",
                "ean": _ean(n),
                "company": f"Bedrijf {n} B.V.",
                "capacity_kva": 173,
                "limits": {"import_kw": 120, "export_kw": 0},
                "gateways": [{"id": f"gw-{n:03d}"}],
                "devices": devices,
            }
        )
    return {
        "version": 1,
        "community": {"id": site, "name": "Fault estate", "timezone": "Europe/Amsterdam"},
        "hub": {"id": "hub", "name": "Substation", "capacity_kva": 10000, "limits": {"import_kw": 5000}},
        "loops": [{"id": "loop-1", "capacity_kva": 6000, "connections": connections}],
    }


# -- counting ---------------------------------------------------------------------------------------------------


def _query(url: str, db: str, q: str) -> list[dict[str, Any]]:
    """The series of one InfluxQL statement; chunked, so no row limit cuts it short."""
    response = httpx.get(
        f"{url}/query",
        params={"db": db, "q": q, "epoch": "ns", "chunked": "true", "chunk_size": "20000"},
        timeout=60,
    )
    response.raise_for_status()
    merged: dict[str, dict[str, Any]] = {}
    for line in response.text.splitlines():
        if not line.strip():
            continue
        for result in json.loads(line).get("results", []):
            if "error" in result:
                raise RuntimeError(f"{q}: {result['error']}")
            for series in result.get("series", []):
                name = json.dumps([series.get("name"), series.get("tags")], sort_keys=True)
                if name in merged:
                    merged[name]["values"].extend(series.get("values", []))
                else:
                    merged[name] = {**series, "values": list(series.get("values", []))}
    return list(merged.values())


def _statements(url: str, db: str, statements: list[str]) -> list[list[dict[str, Any]]]:
    """The series of each statement, all sent in one request (for aggregates: a row or a few per series)."""
    response = httpx.post(
        f"{url}/query", data={"db": db, "q": ";".join(statements), "epoch": "ns"}, timeout=60
    )
    response.raise_for_status()
    out: list[list[dict[str, Any]]] = [[] for _ in statements]
    for result in response.json().get("results", []):
        at = int(result.get("statement_id", 0))
        if "error" in result:
            raise RuntimeError(f"{statements[at]}: {result['error']}")
        out[at] = result.get("series", [])
    return out


def per_session(url: str, db: str, where: str, aggregates: str) -> dict[Key, list[Any]]:
    """The values of ``aggregates`` (an InfluxQL select list, e.g. ``count(seq), max(seq)``) over the ``device``
    points that match ``where``, per (gateway, session), computed by influxd.

    ``session`` is a field, and InfluxQL groups by tags only. One pass groups by gateway and also gives each
    gateway's lowest and highest session: where they agree (a gateway that did not restart) that is the answer.
    For each gateway that did, its distinct sessions are read, then the aggregates of each asked for with
    ``session = N`` within that gateway's series. Nothing is fetched point by point (``bench/series.py`` measures
    this against fetching every seq)."""
    # Only points with the field: a database written before session became one holds points with the tag only.
    where = f"({where}) AND session >= 0"
    first = f"SELECT {aggregates}, min(session), max(session) FROM device WHERE {where} GROUP BY gateway"
    out: dict[Key, list[Any]] = {}
    restarted: list[str] = []
    for series in _statements(url, db, [first])[0]:
        gateway = series["tags"]["gateway"]
        *values, low, high = series["values"][0][1:]
        if low is None:
            # influxd can list a gateway whose points in the range all lack the field (seen while a run starts):
            # nothing of it matches yet.
            continue
        if low == high:
            out[gateway, int(low)] = values
        else:
            restarted.append(gateway)
    if not restarted:
        return out
    # Always quoted with '', and ids never hold one (the community file's ids are checked on load).
    which = " OR ".join(f"gateway = '{gateway}'" for gateway in restarted)
    distinct = f"SELECT DISTINCT(session) FROM device WHERE {where} AND ({which}) GROUP BY gateway"
    keys = [
        (series["tags"]["gateway"], int(row[1]))
        for series in _statements(url, db, [distinct])[0]
        for row in series["values"]
    ]
    statements = [
        f"SELECT {aggregates} FROM device WHERE {where} AND gateway = '{gateway}' AND session = {session}"
        for gateway, session in keys
    ]
    for key, found in zip(keys, _statements(url, db, statements), strict=True):
        if found:
            out[key] = found[0]["values"][0][1:]
    return out


@dataclass
class Stored:
    """What InfluxDB holds per (gateway, session): how often each seq is stored, how many came as replay."""

    seqs: dict[Key, Counter[int]] = field(default_factory=dict)
    replayed: Counter[Key] = field(default_factory=Counter)

    @property
    def points(self) -> int:
        return sum(sum(c.values()) for c in self.seqs.values())


def stored_seqs(url: str, db: str, site: str) -> Stored:
    """Every stored measurement's seq, per gateway and session: each point is needed (a seq stored twice is a
    duplicate), so the rows come here and are grouped by their session field."""
    out = Stored()
    q = f"SELECT seq, session, replay FROM device WHERE site = '{site}' GROUP BY gateway"
    for series in _query(url, db, q):
        gateway = str(series["tags"]["gateway"])
        columns = series["columns"]
        at_seq, at_session = columns.index("seq"), columns.index("session")
        at_replay = columns.index("replay")
        for row in series["values"]:
            if row[at_seq] is None or row[at_session] is None:
                continue
            key = (gateway, int(row[at_session]))
            out.seqs.setdefault(key, Counter())[int(row[at_seq])] += 1
            if row[at_replay] is True:
                out.replayed[key] += 1
    return out


def stored_newest(url: str, db: str, site: str) -> dict[Key, int]:
    """The highest stored seq per (gateway, session): cheap, for progress while running."""
    found = per_session(url, db, f"site = '{site}'", "max(seq)")
    return {key: int(values[0]) for key, values in found.items() if values[0] is not None}


def _session_seq(payload: bytes | str) -> tuple[int, int] | None:
    try:
        message = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(message, dict) or "seq" not in message or "session" not in message:
        return None  # not a measurement
    return int(message["session"]), int(message["seq"])


def read_buffer(path: Path, *, after_id: int = 0) -> tuple[dict[int, set[int]], int, int]:
    """(seqs held per session, rows held, highest row id) of one agent's buffer file, opened read-only.

    With ``after_id`` only the rows above that id are decoded (the row count is of all of them)."""
    if not path.exists():
        return {}, 0, after_id
    held: dict[int, set[int]] = {}
    uri = f"{path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as db:
        rows = db.execute("SELECT id, payload FROM messages WHERE id > ? ORDER BY id", (after_id,)).fetchall()
        depth = int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    newest = after_id
    for row_id, payload in rows:
        newest = max(newest, int(row_id))
        found = _session_seq(payload)
        if found is not None:
            held.setdefault(found[0], set()).add(found[1])
    return held, depth, newest


@dataclass(frozen=True)
class SessionCount:
    gateway: str
    session: int
    made: int  # seqs 0..highest seen anywhere
    stored: int  # distinct seqs in InfluxDB
    held: int  # distinct seqs still in the agent's buffer and not in InfluxDB
    lost: tuple[int, ...]  # in neither
    duplicates: int  # stored points beyond one per seq
    replayed: int  # stored points marked replay

    def describe(self) -> str:
        text = (
            f"{self.gateway} session {self.session}: made {self.made}, stored {self.stored}, held {self.held}, "
            f"lost {len(self.lost)}, duplicates {self.duplicates}, replayed {self.replayed}"
        )
        return text + (f" (lost seqs {_ranges(self.lost)})" if self.lost else "")


def _ranges(seqs: tuple[int, ...], most: int = 8) -> str:
    runs: list[tuple[int, int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:most]]
    return ", ".join(parts) + (f", ... ({len(runs)} runs)" if len(runs) > most else "")


@dataclass(frozen=True)
class Count:
    sessions: tuple[SessionCount, ...]

    @property
    def made(self) -> int:
        return sum(s.made for s in self.sessions)

    @property
    def stored(self) -> int:
        return sum(s.stored for s in self.sessions)

    @property
    def held(self) -> int:
        return sum(s.held for s in self.sessions)

    @property
    def lost(self) -> int:
        return sum(len(s.lost) for s in self.sessions)

    @property
    def duplicates(self) -> int:
        return sum(s.duplicates for s in self.sessions)

    @property
    def replayed(self) -> int:
        return sum(s.replayed for s in self.sessions)

    def describe(self) -> str:
        head = (
            f"made {self.made}, stored {self.stored}, held in buffers {self.held}, lost {self.lost}, "
            f"duplicates {self.duplicates}, replayed {self.replayed}"
        )
        return "\n".join([head, *(f"  {s.describe()}" for s in self.sessions)])


def count_losses(
    url: str, db: str, site: str, buffers: dict[str, Path], seen: dict[Key, int] | None = None
) -> Count:
    """Count per (gateway, session) from InfluxDB and the buffers ``{gateway: file}``; ``seen`` adds the highest
    seqs observed earlier (in a buffer while running), so a message seen once and gone later counts as made."""
    stored = stored_seqs(url, db, site)
    held: dict[Key, set[int]] = {}
    for gateway, path in buffers.items():
        for session, seqs in read_buffer(path)[0].items():
            held.setdefault((gateway, session), set()).update(seqs)
    highest: dict[Key, int] = dict(seen or {})
    for key, counter in stored.seqs.items():
        if counter:
            highest[key] = max(highest.get(key, -1), max(counter))
    for key, seqs in held.items():
        if seqs:
            highest[key] = max(highest.get(key, -1), max(seqs))
    sessions = []
    for key in sorted(highest):
        made = highest[key] + 1
        in_db = stored.seqs.get(key, Counter())
        in_buffer = held.get(key, set())
        sessions.append(
            SessionCount(
                gateway=key[0],
                session=key[1],
                made=made,
                stored=len(in_db),
                held=len(in_buffer - set(in_db)),
                lost=tuple(seq for seq in range(made) if seq not in in_db and seq not in in_buffer),
                duplicates=sum(n - 1 for n in in_db.values()),
                replayed=stored.replayed[key],
            )
        )
    return Count(tuple(sessions))


# -- the run ----------------------------------------------------------------------------------------------------


class _LogMark:
    """Whether a log has said something since the last ``mark``: the ready check of a restarted process."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def says(self, text: str) -> bool:
        if not self.path.exists():
            return False
        with self.path.open("rb") as log:
            log.seek(self.offset)
            return text.encode() in log.read()


class _Settling:
    """Settled: nothing lost, or the stored count unchanged for ``quiet_s``."""

    def __init__(self, quiet_s: float) -> None:
        self.quiet_s = quiet_s
        self.last: Count | None = None
        self.since = time.monotonic()

    def settled(self, count: Count) -> bool:
        now = time.monotonic()
        if self.last is None or count.stored != self.last.stored:
            self.since = now
        self.last = count
        return count.lost == 0 or now - self.since >= self.quiet_s


def _env() -> dict[str, str]:
    # Nothing of a demo's or another run's EHUB_* settings (a data clock, ports) may reach these processes.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHUB_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class FaultRun:
    """Own broker, database, ingest, simulator and agents in ``folder``; faults on demand; the count at the end."""

    def __init__(
        self,
        folder: Path,
        load: Load | None = None,
        *,
        site: str = "faults",
        agent: dict[str, Any] | None = None,
    ) -> None:
        """``agent``: top-level keys of every agent's config over what ``gateway_config`` writes."""
        self.folder = folder.resolve()
        self.load = load or Load()
        self.site = site
        self.agent_overrides = dict(agent or {})
        self.settings = ServiceSettings(
            state_dir=self.folder / "state",
            host="127.0.0.1",
            mqtt_port=free_port(),
            mqtt_tls_port=None,
            influx_port=free_port(),
            influx_rpc_port=free_port(),
            influx_db="faults",
            site=site,
        )
        self.gateways = [f"gw-{n:03d}" for n in range(1, self.load.gateways + 1)]
        self.ports = [[free_port() for _ in range(self.load.devices)] for _ in self.gateways]
        self.buffers = {gw: self.folder / "edge" / f"{gw}.db" for gw in self.gateways}
        self.supervisor = Supervisor()
        self.broker: ManagedProcess | None = None
        self.influxd: ManagedProcess | None = None
        self.ingest: ManagedProcess | None = None
        self.sim: ManagedProcess | None = None
        self.agents: dict[str, ManagedProcess] = {}
        self._processes: list[ManagedProcess] = []  # started here rather than by the supervisor, in order
        self._ingest_log = _LogMark(self.folder / "log" / "ingest.log")
        self._broker_log = _LogMark(self.settings.state_dir / "log" / "mosquitto.log")
        self._ingest_held = False
        self._seen: dict[Key, int] = {}  # highest seq seen anywhere so far
        self._read_up_to: dict[str, int] = dict.fromkeys(self.gateways, 0)  # buffer row ids already decoded
        self._depth: dict[str, int] = dict.fromkeys(self.gateways, 0)

    # -- start and stop -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """influxd and Mosquitto; the ingest (subscribed before anyone publishes) and the simulator; the agents."""
        (self.folder / "log").mkdir(parents=True, exist_ok=True)
        (self.folder / "edge").mkdir(parents=True, exist_ok=True)
        community_path = self.folder / "community.yaml"
        community_path.write_text(
            yaml.safe_dump(community_doc(self.site, self.ports), sort_keys=False), encoding="utf-8"
        )
        community = load_community(community_path)
        accounts = broker_accounts(self.settings)
        accounts.ensure_service_accounts()
        for gateway in self.gateways:
            # Before the broker starts: it reads them at start, no reload needed.
            accounts.add_gateway(gateway)
        running = start_services(self.supervisor, self.settings)
        self.broker, self.influxd = running.broker, running.influxd
        self.ingest = ManagedProcess(self._ingest_spec(community_path))
        sim_argv = ["sim", "--community", str(community_path), "--speed", "1", "--seed", "7"]
        self.sim = ManagedProcess(
            ProcessSpec(
                name="sim",
                argv=[sys.executable, "-m", "energyhub", *sim_argv],
                log_path=self.folder / "log" / "sim.log",
                ready=lambda: all(tcp_answers("127.0.0.1", p) for ports in self.ports for p in ports),
                ready_timeout_s=60.0,
                env=_env(),
                cwd=REPO,
            )
        )
        self._ingest_log.mark()
        self._start_together([self.ingest, self.sim])
        for gateway in self.gateways:
            self.agents[gateway] = ManagedProcess(self._agent_spec(community, gateway))
        self._start_together(list(self.agents.values()))

    def _start_together(self, processes: list[ManagedProcess]) -> None:
        """Start all, then wait for each to answer: Python's start-up time is paid once, not once per process."""
        for process in processes:
            process.start()
            self._processes.append(process)
        for process in processes:
            process.wait_ready()

    def _agent_spec(self, community: Community, gateway: str) -> ProcessSpec:
        config = gateway_config(
            community,
            gateway,
            mqtt_host="127.0.0.1",
            mqtt_port=self.settings.mqtt_port,
            credentials_file=broker_accounts(self.settings).credentials_path(gateway),
            buffer_path=self.buffers[gateway],
        )
        interval = self.load.interval_s
        # Two tries must fit in a poll interval (the agent refuses the config otherwise).
        config.update(interval_s=interval, timeout_s=round(interval * 0.4, 3), retries=1)
        config.update(self.agent_overrides)
        path = self.folder / "edge" / f"{gateway}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return ProcessSpec(
            name=f"agent {gateway}",
            argv=[sys.executable, "-m", "energyhub", "edge", "--config", str(path)],
            log_path=self.folder / "log" / f"{gateway}.log",
            ready=self.buffers[gateway].exists,  # the agent opens its buffer (and its session) first thing
            ready_timeout_s=60.0,
            stop_timeout_s=20.0,
            env=_env(),
            cwd=REPO,
        )

    def _ingest_spec(self, community_path: Path) -> ProcessSpec:
        s = self.settings
        config = self.folder / "ingest.yaml"
        # What a user writes: everything else (share group, session expiry, batching) is the ingest's default.
        config.write_text(
            yaml.safe_dump(
                {
                    "site": self.site,
                    "worker": "faults",
                    "mqtt_host": s.host,
                    "mqtt_port": s.mqtt_port,
                    "mqtt_credentials_file": str(broker_accounts(s).credentials_path("ehub-ingest")),
                    "influx_url": s.influx_url,
                    "influx_db": s.influx_db,
                    "community": str(community_path),
                }
            ),
            encoding="utf-8",
        )
        return ProcessSpec(
            name="ingest",
            argv=[sys.executable, "-m", "energyhub", "ingest", "--config", str(config)],
            log_path=self._ingest_log.path,
            # Subscribed only once it says so: what is published before that reaches nobody.
            ready=lambda: self._ingest_log.says("connected as"),
            ready_timeout_s=60.0,
            env=_env(),
            cwd=REPO,
        )

    def close(self) -> None:
        """Stop everything this run started: agents, simulator and ingest, then the broker and the database."""
        if self._ingest_held:
            self.release_ingest()  # a stopped process would take SIGTERM only after its stop timeout
        try:
            while self._processes:
                self._processes.pop().stop()
        finally:
            self.supervisor.stop_all()

    def __enter__(self) -> FaultRun:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- faults -------------------------------------------------------------------------------------------------
    @staticmethod
    def _kill(process: ManagedProcess | None) -> None:
        assert process is not None
        assert process.popen is not None
        process.signal(signal.SIGKILL)
        process.popen.wait(timeout=10)

    @staticmethod
    def _start_again(process: ManagedProcess | None) -> None:
        assert process is not None
        assert not process.running, f"{process.spec.name} still runs"
        process.start()
        process.wait_ready()

    def kill_broker(self) -> None:
        """SIGKILL Mosquitto: whatever it held only in memory is gone."""
        self._kill(self.broker)

    def stop_broker(self) -> None:
        """SIGTERM Mosquitto: it writes its persistence file and exits."""
        assert self.broker is not None
        self.broker.stop()

    def start_broker(self) -> None:
        """Mosquitto again with the same config and persistence folder; returns once its port answers."""
        self._broker_log.mark()
        self._start_again(self.broker)

    def wait_agents_connected(self, timeout_s: float = 60.0) -> None:
        """Until the broker's log says every gateway's account has logged in since the last ``start_broker``."""
        self._wait(
            lambda: all(self._broker_log.says(f"u'{gateway}')") for gateway in self.gateways),
            timeout_s,
            "every agent to connect to the restarted broker",
        )

    def hold_ingest(self) -> None:
        """SIGSTOP the ingest: it stays as it is (in its back-off between reconnects, say) until released."""
        assert self.ingest is not None
        self.ingest.signal(signal.SIGSTOP)
        self._ingest_held = True

    def release_ingest(self) -> None:
        assert self.ingest is not None
        self.ingest.signal(signal.SIGCONT)
        self._ingest_held = False

    def kill_ingest(self) -> None:
        """SIGKILL the ingest: whatever it held unacknowledged and unwritten is gone from it."""
        self._kill(self.ingest)

    def start_ingest(self, *, wait_subscribed: bool = True) -> None:
        """The same ``energyhub ingest`` command again; by default returns once it has subscribed."""
        assert self.ingest is not None
        self._ingest_log.mark()
        if wait_subscribed:
            self._start_again(self.ingest)
        else:
            self.ingest.start()

    # -- watching -----------------------------------------------------------------------------------------------
    def observe(self, *, database: bool = True) -> dict[str, int]:
        """Read what is new in each buffer (and, with ``database``, the newest stored seqs); return what each
        gateway made so far: over its sessions, the sum of (highest seq seen + 1)."""
        for gateway, path in self.buffers.items():
            try:
                held, depth, newest = read_buffer(path, after_id=self._read_up_to[gateway])
            except sqlite3.OperationalError:
                continue  # busy for a moment: the next look sees it
            self._read_up_to[gateway], self._depth[gateway] = newest, depth
            for session, seqs in held.items():
                key = (gateway, session)
                self._seen[key] = max(self._seen.get(key, -1), max(seqs))
        if database:
            for key, seq in stored_newest(
                self.settings.influx_url, self.settings.influx_db, self.site
            ).items():
                self._seen[key] = max(self._seen.get(key, -1), seq)
        return self.made()

    def made(self) -> dict[str, int]:
        out = dict.fromkeys(self.gateways, 0)
        for (gateway, _session), seq in self._seen.items():
            out[gateway] = out.get(gateway, 0) + seq + 1
        return out

    def buffered(self) -> dict[str, int]:
        """Rows in each agent's buffer at the last look."""
        return dict(self._depth)

    def _wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        try:
            wait_for(condition, timeout_s=timeout_s, interval_s=0.2, what=what)
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}\nmade so far {self.made()}, buffers {self._depth}\n{self.logs()}"
            ) from None

    def wait_flowing(self, stored_per_gateway: int, timeout_s: float = 60.0) -> None:
        """Until InfluxDB holds measurements of every gateway up to seq ``stored_per_gateway`` at least."""

        def flowing() -> bool:
            newest = stored_newest(self.settings.influx_url, self.settings.influx_db, self.site)
            self.observe(database=False)
            got = {gw: sum(seq + 1 for (g, _s), seq in newest.items() if g == gw) for gw in self.gateways}
            return all(n >= stored_per_gateway for n in got.values())

        self._wait(flowing, timeout_s, f"{stored_per_gateway} stored measurements of every gateway")

    def wait_made(self, more: int, timeout_s: float, *, database: bool = True) -> None:
        """Until every gateway has made ``more`` measurements more than now: the length of an outage counted in
        what the agents had to keep meanwhile, not in seconds, so a slow machine gets the same fault."""
        start = self.observe(database=database)
        self._wait(
            lambda: all(n >= start[gw] + more for gw, n in self.observe(database=database).items()),
            timeout_s,
            f"every gateway to make {more} more measurements",
        )

    def drained(self) -> bool:
        """Every buffer back to a few seconds' worth, and InfluxDB's newest seq of each session within that of
        the newest seen anywhere: the backlog is through (or gone)."""
        self.observe(database=False)
        newest = stored_newest(self.settings.influx_url, self.settings.influx_db, self.site)
        slack = max(20, int(self.load.per_gateway_hz * 3))
        if any(depth > slack for depth in self._depth.values()):
            return False
        return all(newest.get(key, -1) >= seq - slack for key, seq in self._seen.items())

    def wait_drained(self, timeout_s: float = 120.0) -> float:
        """Until ``drained``; returns the seconds it took."""
        t0 = time.monotonic()
        self._wait(self.drained, timeout_s, "the buffers to drain into InfluxDB")
        return time.monotonic() - t0

    # -- the count ----------------------------------------------------------------------------------------------
    def stop_agents(self) -> None:
        """SIGTERM every agent (they stop polling and close their buffers), then wait for each to exit."""
        for agent in self.agents.values():
            agent.signal(signal.SIGTERM)
        for agent in self.agents.values():
            agent.stop()  # exited already, or SIGKILL after its stop timeout

    def count(self) -> Count:
        return count_losses(
            self.settings.influx_url, self.settings.influx_db, self.site, self.buffers, self._seen
        )

    def finish(self, *, quiet_s: float = 3.0, timeout_s: float = 60.0) -> Count:
        """Stop the agents, then count once nothing is missing or InfluxDB has not changed for ``quiet_s``."""
        self.observe()
        self.stop_agents()
        settling = _Settling(quiet_s)
        wait_for(
            lambda: settling.settled(self.count()),
            timeout_s=timeout_s,
            interval_s=0.5,
            what="InfluxDB to stop changing",
        )
        assert settling.last is not None
        return settling.last

    # -- diagnosis ----------------------------------------------------------------------------------------------
    def logs(self, tail: int = 1500) -> str:
        parts = []
        logs = [*(self.folder / "log").glob("*.log"), *(self.folder / "state" / "log").glob("*.log")]
        for path in sorted(logs):
            if path.name == "influxd.log":
                continue  # start-up chatter; it says nothing about deliveries
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)


@contextlib.contextmanager
def fault_run(
    folder: Path, load: Load | None = None, *, agent: dict[str, Any] | None = None
) -> Iterator[FaultRun]:
    """A started ``FaultRun`` that stops every process it started on the way out (its logs stay in ``folder``)."""
    run = FaultRun(folder, load, agent=agent)
    try:
        run.start()
        yield run
    finally:
        run.close()
