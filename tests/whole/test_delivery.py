"""End-to-end delivery: a measurement leaves a gateway's buffer only when the ingest has stored it.

Each test runs a real agent (simulated devices over Modbus TCP) and the real ingest on the session's Mosquitto and
influxd, and counts from outside: the sequence numbers stored in InfluxDB, and the agent's SQLite buffer read
directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from energyhub.cli.services import RunningServices, free_port
from energyhub.io.influx import InfluxClient
from energyhub.simulators.devices import InverterDevice, InverterState, MeterDevice
from energyhub.simulators.modbus_server import GatewayServer
from energyhub.simulators.sdm630 import MeterState
from tests.edge.test_edge_agent import running_agent
from tests.ingest.test_ingest import ingest_settings, running


@pytest.fixture
async def devices() -> AsyncIterator[GatewayServer]:
    meter = MeterDevice(unit_id=1, state=MeterState(power_w=-5_000.0))
    inverter = InverterDevice(unit_id=2, state=InverterState(rated_w=50_000, available_w=20_000))
    server = GatewayServer(host="127.0.0.1", port=free_port(), devices=[meter, inverter])
    async with server:
        yield server


def agent_config(services: RunningServices, gateway: str, buffer: Path, port: int, **top: Any) -> Path:
    s = services.settings
    config = {
        "gateway": gateway,
        "site": s.site,
        "mqtt": {
            "host": "127.0.0.1",
            "port": s.mqtt_port,
            "credentials_file": str(services.accounts.credentials_path(gateway)),
        },
        "buffer_path": str(buffer),
        "interval_s": 0.1,
        "timeout_s": 0.04,
        "retries": 1,
        "confirm_timeout_s": 2.0,
        "devices": [
            {"id": "meter", "profile": "eastron_sdm630", "host": "127.0.0.1", "port": port, "unit_id": 1},
            {"id": "pv", "profile": "sunspec_inverter", "host": "127.0.0.1", "port": port, "unit_id": 2},
        ],
        **top,
    }
    path = buffer.parent / f"{gateway}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.05)  # poll interval of a condition wait
    assert condition(), what


def held(buffer: Path) -> dict[int, set[int]]:
    """Session -> sequence numbers in the agent's buffer, read as an outsider (read-only, payload decoded)."""
    import json

    out: dict[int, set[int]] = {}
    with contextlib.closing(sqlite3.connect(f"file:{buffer}?mode=ro", uri=True)) as db:
        for (payload,) in db.execute("SELECT payload FROM messages"):
            m = json.loads(payload)
            out.setdefault(m["session"], set()).add(m["seq"])
    return out


async def stored(services: RunningServices, gateway: str) -> dict[int, set[int]]:
    """Session -> sequence numbers in InfluxDB."""
    s = services.settings
    async with InfluxClient(url=s.influx_url, database=s.influx_db) as client:
        series = await client.query(f"SELECT seq, session FROM device WHERE gateway = '{gateway}'")
    out: dict[int, set[int]] = {}
    for row in (r for one in series for r in one.rows()):
        out.setdefault(int(row["session"]), set()).add(int(row["seq"]))
    return out


def missing(seqs: set[int]) -> set[int]:
    return set(range(max(seqs) + 1)) - seqs if seqs else set()


async def test_kept_until_stored_and_sent_again_when_no_one_stored_it(
    services, unique_id, gateway, devices, tmp_path
):
    """The broker acknowledges (no subscriber, or a queue no one reads): the agent still keeps everything, and sends
    it again until the ingest confirms it stored it."""
    buffer = tmp_path / "buffer.db"
    async with running_agent(agent_config(services, gateway, buffer, devices.port)) as agent:
        await until(lambda: agent.seq >= 60 and agent.published >= 60, 20, "60 measurements published")
        on_disk = held(buffer)
        assert list(on_disk) == [agent.session]
        assert missing(on_disk[agent.session]) == set()
        # Acknowledged by the broker, and still on disk (the poll in progress may not be stored yet).
        assert len(on_disk[agent.session]) >= 60 - len(agent.pollers)
        async with running(ingest_settings(services, unique_id, share_group=None)) as ingest:
            # Everything from seq 0 is stored, though the ingest subscribed long after it was first sent.
            made = agent.seq

            async def all_stored() -> bool:
                got = (await stored(services, gateway)).get(agent.session, set())
                return set(range(made)) <= got

            async with asyncio.timeout(30):
                while not await all_stored():
                    await asyncio.sleep(0.2)  # poll interval of a condition wait
            await until(lambda: agent.buffer.depth < 30, 15, "the confirmed measurements deleted")
            assert agent.confirmed >= made
            assert ingest.metrics.gaps[gateway] == 0
            leftover = held(buffer).get(agent.session, set())
            assert not leftover or min(leftover) >= made - 30  # only the newest few still wait for theirs


async def test_an_ingest_restart_counts_no_false_gaps(services, unique_id, gateway, devices, tmp_path):
    """A second ingest that starts mid-session counts from what the gateway still holds, not from seq 0."""
    buffer = tmp_path / "buffer.db"
    settings = ingest_settings(services, unique_id, share_group=None)
    async with running_agent(agent_config(services, gateway, buffer, devices.port)) as agent:
        async with running(settings) as first:
            await until(lambda: agent.confirmed >= 50, 20, "50 measurements confirmed")
            assert first.metrics.gaps[gateway] == 0
        made_before = agent.seq
        async with running(settings) as second:
            await until(lambda: agent.seq > made_before + 150, 30, "the gateway's next state (every 10 s)")
            await until(lambda: agent.confirmed >= agent.seq - 20, 20, "the second ingest confirming")
            assert second.tracker is not None
            assert second.tracker.missing(gateway) == 0
            assert second.metrics.gaps[gateway] == 0
    assert missing((await stored(services, gateway))[agent.session]) == set()


async def test_a_deleted_buffer_opens_a_new_session_and_loses_nothing(
    services, unique_id, gateway, devices, tmp_path
):
    buffer = tmp_path / "buffer.db"
    async with (
        running_agent(agent_config(services, gateway, buffer, devices.port)) as agent,
        running(ingest_settings(services, unique_id, share_group=None)),
    ):
        await until(lambda: agent.confirmed >= 20, 20, "20 measurements confirmed")
        first = agent.session
        for leftover in tmp_path.glob("buffer.db*"):
            if not leftover.name.endswith(".session"):
                leftover.unlink()
        await until(lambda: agent.session != first, 10, "a new session after the buffer file went")
        second = agent.session
        assert second > first
        assert buffer.exists()
        await until(lambda: agent.seq >= 40, 20, "40 measurements in the new session")
        await until(lambda: agent.buffer.depth < 20, 20, "the new buffer drained")
    got = await stored(services, gateway)
    assert set(got) == {first, second}
    assert missing(got[first]) == set()
    assert missing(got[second]) == set()
    assert min(got[second]) == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A real 2 MiB filesystem (tmpfs) to fill up; needs root, as on the CI machines."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path) -> Path:
    """Write a file until the filesystem has no space left."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


async def test_a_full_disk_degrades_and_the_reported_drop_is_the_real_loss(
    services, unique_id, gateway, devices, small_disk
):
    buffer = small_disk / "buffer.db"
    config = agent_config(services, gateway, buffer, devices.port, memory_max_messages=100)
    async with running_agent(config) as agent:
        await until(lambda: agent.seq >= 10, 10, "the first polls stored")
        filler = fill(small_disk)
        await until(lambda: agent.buffer_error is not None, 10, "the full disk noticed")
        await until(lambda: agent._held_dropped > 0, 20, "more than memory holds: the oldest dropped")
        polled = agent.seq
        await until(lambda: agent.seq >= polled + 20, 10, "still polling on a full disk")
        assert agent._health().buffer_dropped > 0
        assert "full" in (agent._health().buffer_error or "")
        async with running(ingest_settings(services, unique_id, share_group=None)):
            filler.unlink()  # an operator frees space
            await until(lambda: agent.buffer_error is None, 10, "the buffer writable again")
            await until(lambda: agent.buffer.depth < 20 and agent.confirmed > 0, 30, "everything held stored")
            dropped = agent.buffer.dropped
            made = agent.seq
    got = (await stored(services, gateway))[agent.session]
    lost = set(range(made)) - got - held(buffer).get(agent.session, set())
    assert dropped > 0
    assert len(lost) == dropped  # what the gateway reports dropped is exactly what is missing, nothing more
