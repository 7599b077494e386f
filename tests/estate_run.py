"""Run ``energyhub demo`` as a user runs it, on free loopback ports in a folder of its own, and look at it from
outside: its processes' CPU and memory from /proc, its API over HTTP, its database with InfluxQL.

Shared by the live-estate tests and ``bench/estate.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from energyhub.cli.services import free_port

REPO = Path(__file__).resolve().parent.parent
PORT_SETTINGS = (
    "EHUB_MQTT_PORT",
    "EHUB_MQTT_TLS_PORT",
    "EHUB_INFLUX_PORT",
    "EHUB_INFLUX_RPC_PORT",
    "EHUB_API_PORT",
    "EHUB_INGEST_METRICS_PORT",
)
TICKS = os.sysconf("SC_CLK_TCK")


def wait_until(
    condition: Callable[[], bool], timeout_s: float, what: str, explain: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{explain()}")
        time.sleep(0.2)  # poll interval of a condition wait


@dataclass
class ProcessUse:
    kind: str
    cpu_s: float
    rss_mb: float
    count: int = 1


def _kind(cmdline: str) -> str:
    for word, kind in (
        ("mosquitto", "mosquitto"),
        ("influxd", "influxd"),
        (" sim ", "simulator"),
        (" edge ", "edge agents"),
        (" ingest ", "ingest"),
        (" control ", "control"),
        (" api ", "api"),
    ):
        if word in f" {cmdline} ":
            return kind
    return "other"


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _use(pid: int) -> tuple[str, float, float] | None:
    try:
        cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        status = (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return None
    cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
    rss = next(
        (int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0
    )
    return cmdline, cpu, rss


@dataclass
class DemoRun:
    """One ``energyhub demo`` child with its own state folder and ports."""

    state_dir: Path
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.ports = {name: free_port() for name in PORT_SETTINGS}
        self.env = {**os.environ, **{k: str(v) for k, v in self.ports.items()}, **self.env}

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['EHUB_API_PORT']}"

    @property
    def influx(self) -> str:
        return f"http://127.0.0.1:{self.ports['EHUB_INFLUX_PORT']}"

    @property
    def output(self) -> Path:
        return self.state_dir / "demo.out"

    def start(self, ready_timeout_s: float = 180.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "energyhub", "demo", "--state-dir", str(self.state_dir), *self.args],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_until(
            lambda: (
                "Live page:" in self.output.read_text()
                or self.process is None
                or self.process.poll() is not None
            ),
            ready_timeout_s,
            "the demo to be up",
            self.logs,
        )
        if self.process.poll() is not None:
            raise AssertionError(f"the demo exited with {self.process.returncode}:\n{self.logs()}")

    def get(self, path: str) -> object:
        return httpx.get(f"{self.api}{path}", timeout=5).json()

    def logs(self, tail: int = 2500) -> str:
        parts = [
            f"--- demo\n{self.output.read_text(errors='replace')[-tail:]}" if self.output.exists() else ""
        ]
        for log in sorted((self.state_dir / "log").glob("*.log")):
            if log.name in ("influxd.log", "mosquitto.log"):
                continue
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def usage(self) -> dict[str, ProcessUse]:
        """CPU seconds so far and memory now, summed per kind of process (all the demo's children)."""
        assert self.process is not None
        out: dict[str, ProcessUse] = {}
        for pid in _children(self.process.pid):
            found = _use(pid)
            if found is None:
                continue
            kind = _kind(found[0])
            if kind in out:
                out[kind].cpu_s += found[1]
                out[kind].rss_mb += found[2]
                out[kind].count += 1
            else:
                out[kind] = ProcessUse(kind, found[1], found[2])
        return out

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
