"""The gateway agent with a real broker and simulated devices: values arrive as the devices hold them, and a broker
outage or a killed agent leaves no gap in what a subscriber receives."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from energyhub.cli.services import broker_accounts, free_port, start_broker
from energyhub.edge.agent import Agent
from energyhub.edge.config import ConfigError, load_agent_config
from energyhub.io.mqtt import MqttLink, MqttLinkError
from energyhub.runtime.settings import ServiceSettings
from energyhub.runtime.supervisor import Supervisor
from energyhub.simulators.devices import InverterDevice, InverterState, MeterDevice
from energyhub.simulators.modbus_server import GatewayServer
from energyhub.simulators.sdm630 import MeterState
from energyhub.wire.messages import (
    ControllerHeartbeat,
    GatewayState,
    Measurement,
    Quality,
    Setpoint,
    SetpointAck,
    SetpointStatus,
    decode,
    encode,
)
from energyhub.wire.topics import Topics
from tests.mqtt_helpers import Observer as LinkClient

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "gw-test"


@pytest.fixture
def broker(tmp_path):
    settings = ServiceSettings(
        state_dir=tmp_path / "state", mqtt_port=free_port(), mqtt_tls_port=None, site="test-site"
    )
    accounts = broker_accounts(settings)
    accounts.ensure_service_accounts()
    accounts.add_gateway(GATEWAY)
    with Supervisor() as supervisor:
        process = start_broker(supervisor, settings)
        yield settings, accounts, supervisor, process


def gateway_yaml(tmp_path: Path, settings, accounts, devices: list[dict], **top) -> Path:
    """tmp_path/gateway.yaml for GATEWAY on the test broker with ``devices``; ``top`` sets top-level keys."""
    config = {
        "gateway": GATEWAY,
        "site": settings.site,
        "mqtt": {
            "host": "127.0.0.1",
            "port": settings.mqtt_port,
            "credentials_file": str(accounts.credentials_path(GATEWAY)),
        },
        "buffer_path": str(tmp_path / "buffer.db"),
        "devices": devices,
        **top,
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def agent_config(
    tmp_path: Path, settings, accounts, device_port: int, *, pv: dict | None = None, **top
) -> Path:
    """A gateway config for the two test devices; ``pv`` changes the inverter's entry, ``top`` top-level keys."""
    devices = [
        {"id": "meter", "profile": "eastron_sdm630", "host": "127.0.0.1", "port": device_port, "unit_id": 1},
        {"id": "pv", "profile": "sunspec_inverter", "host": "127.0.0.1", "port": device_port, "unit_id": 2},
    ]
    devices[1].update(pv or {})
    return gateway_yaml(
        tmp_path, settings, accounts, devices, **{"interval_s": 0.2, "timeout_s": 0.05, "retries": 1, **top}
    )


@contextlib.asynccontextmanager
async def control_link(settings, creds, client_id: str, **options):
    """A connection of the project's own client as ``creds`` (a service account), closed at the end."""
    link = await MqttLink.connect(
        "127.0.0.1",
        settings.mqtt_port,
        client_id=client_id,
        username=creds.username,
        password=creds.password,
        **options,
    )
    try:
        yield LinkClient(link)
    finally:
        link.abort()


class Observer:
    """The ingest account with a persistent session, so a broker restart keeps what is queued for it."""

    def __init__(self, settings, accounts) -> None:
        self.settings, self.accounts = settings, accounts
        self.topics = Topics(site=settings.site)
        self.messages: list[tuple[str, Measurement]] = []
        self.states: list[GatewayState] = []
        self.task: asyncio.Task | None = None
        # Set once the subscriptions stand: an agent started before that would publish its first messages to a
        # session the broker does not yet keep for us (seen: seq 0 and 1 missing on a fresh machine).
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        creds = self.accounts.credentials("ehub-ingest")
        while True:
            try:
                async with control_link(self.settings, creds, "observer", session_expiry_s=3600) as client:
                    await client.subscribe(self.topics.all_measurements(), qos=1)
                    await client.subscribe(self.topics.all_states(), qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        info = self.topics.parse(message.topic)
                        if info.kind == "state":
                            self.states.append(decode(GatewayState, message.payload))
                        else:
                            self.messages.append((info.device, decode(Measurement, message.payload)))
            except MqttLinkError:
                await asyncio.sleep(0.1)  # broker away: retry, as a real consumer does

    async def wait_for(self, condition, timeout_s: float = 20.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                await asyncio.sleep(0.05)

    def seqs(self, session: int) -> list[int]:
        return sorted({m.seq for _d, m in self.messages if m.session == session})


@contextlib.asynccontextmanager
async def observing(settings, accounts):
    observer = Observer(settings, accounts)
    task = asyncio.create_task(observer.run())
    try:
        await asyncio.wait_for(observer.subscribed.wait(), 20)
        yield observer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def running_agent(path: Path):
    agent = Agent(load_agent_config(path))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def newest_buffered_seq(path: Path) -> int:
    """The highest sequence number on the agent's disk (-1 when empty): what was polled, sent or not."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT payload FROM messages ORDER BY id DESC LIMIT 1").fetchall()
    return decode(Measurement, rows[0][0]).seq if rows else -1


@pytest.fixture
async def devices():
    meter = MeterDevice(unit_id=1, state=MeterState(power_w=-5_000.0))
    inverter = InverterDevice(unit_id=2, state=InverterState(rated_w=50_000, available_w=20_000))
    server = GatewayServer(host="127.0.0.1", port=free_port(), devices=[meter, inverter])
    async with server:
        yield server, meter, inverter


async def test_values_arrive_as_the_devices_hold_them_and_survive_a_broker_outage(tmp_path, broker, devices):
    settings, accounts, _supervisor, process = broker
    server, meter, _inverter = devices
    async with (
        observing(settings, accounts) as observer,
        running_agent(agent_config(tmp_path, settings, accounts, server.port)) as agent,
    ):
        await observer.wait_for(lambda: len(observer.messages) >= 10)
        birth = observer.states[0]
        assert birth.online
        assert birth.held_from == 0
        session = birth.session
        by_device = {d: m for d, m in observer.messages}
        assert by_device["meter"].values["power_w"] == -5_000.0
        assert by_device["meter"].values["voltage_l1_v"] == 230.0
        assert by_device["pv"].values["power_w"] == -20_000.0  # producing: import-positive sign
        assert all(m.quality is Quality.GOOD for _d, m in observer.messages)
        assert observer.seqs(session) == list(range(len(observer.seqs(session))))

        # A device fault: the meter's values go missing with a quality flag; the inverter keeps flowing.
        meter.faults.offline = True
        await observer.wait_for(
            lambda: any(d == "meter" and m.quality is Quality.BAD for d, m in observer.messages)
        )
        bad = next(m for d, m in observer.messages if d == "meter" and m.quality is Quality.BAD)
        assert all(v is None for v in bad.values.values())
        after = len(observer.messages)
        await observer.wait_for(lambda: any(d == "pv" for d, _m in observer.messages[after:]))
        meter.faults.clear()

        # Broker down for a while: the agent buffers on disk; after the restart nothing is missing.
        process.stop()
        await observer.wait_for(lambda: agent.unsent >= 10)
        buffered_max = agent.seq
        process.start()
        process.wait_ready()
        await observer.wait_for(
            lambda: observer.seqs(session) and observer.seqs(session)[-1] >= buffered_max, 30
        )
        seqs = observer.seqs(session)
        assert seqs == list(range(seqs[-1] + 1)), "a sequence gap after the broker outage"
        assert any(m.replay for _d, m in observer.messages), "buffered messages are marked as replay"


async def test_each_device_is_polled_at_its_own_interval(tmp_path, broker, devices):
    settings, accounts, _supervisor, _process = broker
    server, _meter, _inverter = devices
    config = agent_config(tmp_path, settings, accounts, server.port, pv={"interval_s": 0.8})
    async with observing(settings, accounts) as observer, running_agent(config):
        count = lambda device: sum(d == device for d, _m in observer.messages)  # noqa: E731
        await observer.wait_for(lambda: count("pv") >= 2)
        meter0, pv0 = count("meter"), count("pv")
        await observer.wait_for(lambda: count("pv") >= pv0 + 4)
        # Four pv polls at 0.8 s take 3.2 s, in which the meter at 0.2 s is polled about 16 times.
        assert 10 <= count("meter") - meter0 <= 22


async def test_rtu_line_goes_through_the_same_path(tmp_path, broker):
    """Two meters on one RTU line (RTU frames over TCP, as a transparent serial converter passes them)."""
    settings, accounts, _supervisor, _process = broker
    meters = [MeterDevice(unit_id=u, state=MeterState(power_w=1_000.0 * u)) for u in (3, 4)]
    server = GatewayServer(host="127.0.0.1", port=free_port(), devices=meters, framer="rtu")
    line = {"serial": {"port": f"socket://127.0.0.1:{server.port}", "baudrate": 19200, "parity": "E"}}
    config = agent_config(tmp_path, settings, accounts, server.port, timeout_s=0.08)
    data = yaml.safe_load(config.read_text())
    data["devices"] = [{"id": f"rtu{u}", "profile": "eastron_sdm630", "unit_id": u, **line} for u in (3, 4)]
    config.write_text(yaml.safe_dump(data))
    async with server, observing(settings, accounts) as observer, running_agent(config) as agent:
        await observer.wait_for(lambda: {d for d, _m in observer.messages} == {"rtu3", "rtu4"})
        assert len(agent.buses) == 1  # one owner for the line
        by_device = {d: m for d, m in observer.messages}
        assert by_device["rtu3"].values["power_w"] == 3_000.0
        assert by_device["rtu4"].values["power_w"] == 4_000.0
        assert all(m.quality is Quality.GOOD for _d, m in observer.messages)


def test_a_device_needs_exactly_one_transport(tmp_path):
    path = tmp_path / "g.yaml"
    base = {"gateway": "gw-x", "site": "s", "devices": []}
    for device, problem in (
        ({"id": "a", "profile": "eastron_sdm630"}, "give one of host"),
        (
            {"id": "a", "profile": "eastron_sdm630", "host": "127.0.0.1", "serial": {"port": "/dev/ttyUSB0"}},
            "this device has host, serial",
        ),
        (
            {"id": "a", "profile": "eastron_sdm630", "serial": {"port": "/dev/ttyUSB0", "parity": "X"}},
            "parity",
        ),
    ):
        path.write_text(yaml.safe_dump({**base, "devices": [device]}))
        with pytest.raises(ConfigError, match=rf"{path}: .*devices\.0.*{problem}"):
            load_agent_config(path)


async def test_agent_killed_with_sigkill_loses_nothing(tmp_path, broker, devices):
    settings, accounts, _supervisor, process = broker
    server, _meter, _inverter = devices
    config = agent_config(tmp_path, settings, accounts, server.port)
    async with observing(settings, accounts) as observer:
        cmd = [sys.executable, "-m", "energyhub", "edge", "--config", str(config)]
        log = (tmp_path / "agent.log").open("w")
        agent = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            await observer.wait_for(lambda: len(observer.messages) >= 10)
            s1 = observer.messages[0][1].session
            await observer.wait_for(lambda: len(observer.seqs(s1)) >= 10)
            process.stop()  # broker away, so the agent holds unsent messages on disk when it dies
            # Polls that only the disk holds: six past what the observer had when the broker went.
            received = observer.seqs(s1)[-1]
            await observer.wait_for(lambda: newest_buffered_seq(tmp_path / "buffer.db") >= received + 6)
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait()
            process.start()
            process.wait_ready()
            agent = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            try:
                await observer.wait_for(lambda: len({m.session for _d, m in observer.messages}) == 2, 30)
                s2 = max(m.session for _d, m in observer.messages)
                await observer.wait_for(lambda: len(observer.seqs(s2)) >= 5, 30)
            except TimeoutError:
                raise AssertionError((tmp_path / "agent.log").read_text()[-3000:]) from None
            assert s2 > s1
            first = observer.seqs(s1)
            assert first == list(range(first[-1] + 1)), "a gap in the killed session"
            # Polls made while the broker was down were replayed by the next session.
            assert first[-1] >= received + 6
            assert observer.seqs(s2)[0] == 0
            assert any(m.replay and m.session == s1 for _d, m in observer.messages)
        finally:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=10)
            log.close()


async def collect_acks(control: LinkClient, acks: dict[str, SetpointAck]) -> None:
    """Every acknowledgement control's client receives, by setpoint id."""
    async for message in control.messages:
        ack = decode(SetpointAck, message.payload)
        acks[ack.id] = ack


async def test_setpoints_acks_and_failsafe(tmp_path, broker, devices):
    settings, accounts, _supervisor, _process = broker
    server, _meter, inverter = devices
    path = agent_config(
        tmp_path,
        settings,
        accounts,
        server.port,
        heartbeat_timeout_s=1.0,
        pv={
            "safe_mode": {"active_power_limit_pct": 30},
            "setpoint_bounds": {"active_power_limit_pct": [0, 90]},
        },
    )
    topics = Topics(site=settings.site)
    creds = accounts.credentials("ehub-control")
    beating = asyncio.Event()
    beating.set()
    acks: dict[str, SetpointAck] = {}

    async with (
        observing(settings, accounts) as observer,
        running_agent(path) as agent,
        control_link(settings, creds, "control-test") as control,
    ):
        await control.subscribe(topics.all_acks(), qos=1)

        async def heartbeat() -> None:
            cycle = 0
            while True:
                await beating.wait()
                beat = ControllerHeartbeat(alive=True, ts=datetime.now(UTC), cycle=cycle, period_s=0.2)
                await control.publish(topics.heartbeat(), encode(beat), qos=1, retain=True)
                cycle += 1
                await asyncio.sleep(0.2)  # the heartbeat's own period

        async def send(
            sp_id: str, device: str, name: str, value: float, *, expires_in: float = 30
        ) -> SetpointAck:
            now = datetime.now(UTC)
            created = now if expires_in > 0 else now - timedelta(seconds=60)
            sp = Setpoint(
                id=sp_id, name=name, value=value, created=created, expires=now + timedelta(seconds=expires_in)
            )
            await control.publish(topics.setpoint(GATEWAY, device), encode(sp), qos=1)
            await observer.wait_for(lambda: sp_id in acks)
            return acks[sp_id]

        tasks = [asyncio.create_task(heartbeat()), asyncio.create_task(collect_acks(control, acks))]
        try:
            await asyncio.wait_for(agent.connected.wait(), 10)
            ack = await send("sp-1", "pv", "active_power_limit_pct", 25)
            assert (ack.status, ack.readback) == (SetpointStatus.APPLIED, 25.0)
            assert (inverter.state.limit_pct, inverter.state.limit_enabled) == (25.0, True)
            ack = await send("sp-2", "pv", "active_power_limit_pct", 95)
            assert (ack.status, ack.reason) == (
                SetpointStatus.REJECTED,
                "active_power_limit_pct 95 is outside [0, 90]",
            )
            ack = await send("sp-3", "pv", "battery_power_w", 5)
            assert ack.status is SetpointStatus.REJECTED
            assert "has no setpoint 'battery_power_w' (it has: active_power_limit_pct)" in ack.reason
            ack = await send("sp-4", "pv", "active_power_limit_pct", 40, expires_in=-1)
            assert ack.status is SetpointStatus.REJECTED
            assert ack.reason.startswith("expired at")
            ack = await send("sp-5", "meter", "active_power_limit_pct", 40)
            assert ack.reason == "gateway gw-test has no controllable device 'meter'"
            # A payload that fails validation but carries an id is rejected by that id, with the reason.
            await control.publish(
                topics.setpoint(GATEWAY, "pv"), b'{"id": "sp-bad", "name": "active_power_limit_pct"}', qos=1
            )
            await observer.wait_for(lambda: "sp-bad" in acks)
            assert acks["sp-bad"].status is SetpointStatus.REJECTED
            assert "value" in acks["sp-bad"].reason
            assert "Field required" in acks["sp-bad"].reason
            assert inverter.state.limit_pct == 25.0  # none of the rejected ones touched the device

            # A setpoint that expires without a successor: the device goes to its safe mode.
            ack = await send("sp-6", "pv", "active_power_limit_pct", 60, expires_in=1.0)
            assert ack.status is SetpointStatus.APPLIED
            await observer.wait_for(lambda: inverter.state.limit_pct == 30.0, 10)
            # While control lives that is no failsafe (control no longer steers that device, as a charger whose
            # vehicle left): the state counts the device at its safe values and says control is there.
            await observer.wait_for(
                lambda: any(s.health and s.health.devices_in_safe_mode == 1 for s in observer.states), 10
            )
            assert not any(s.health and s.health.failsafe for s in observer.states)

            # The controller goes quiet: failsafe within the timeout, reported in the state; back when it returns.
            await send("sp-7", "pv", "active_power_limit_pct", 70)
            assert inverter.state.limit_pct == 70.0
            beating.clear()
            quiet_at = asyncio.get_running_loop().time()
            await observer.wait_for(lambda: inverter.state.limit_pct == 30.0, 10)
            assert (
                asyncio.get_running_loop().time() - quiet_at < 1.0 + 1.5
            )  # timeout + watchdog and write time
            await observer.wait_for(lambda: any(s.health and s.health.failsafe for s in observer.states), 10)
            lost = next(s for s in observer.states if s.health and s.health.failsafe)
            assert lost.health is not None
            assert lost.health.devices_in_safe_mode == 1  # the inverter, its one controllable device
            beating.set()
            await observer.wait_for(lambda: not agent.failsafe, 10)
            count = len(observer.states)
            await observer.wait_for(
                lambda: any(s.health and not s.health.failsafe for s in observer.states[count:]), 15
            )
            ack = await send("sp-8", "pv", "active_power_limit_pct", 80)
            assert (ack.status, inverter.state.limit_pct) == (SetpointStatus.APPLIED, 80.0)
        finally:
            for task in tasks:
                task.cancel()


async def test_sunspec_device_without_a_profile(tmp_path, broker, devices):
    settings, accounts, _supervisor, _process = broker
    server, _meter, inverter = devices
    # profile: sunspec: discovered from the device's model chain
    path = agent_config(tmp_path, settings, accounts, server.port, pv={"profile": "sunspec"})
    topics = Topics(site=settings.site)
    creds = accounts.credentials("ehub-control")
    async with observing(settings, accounts) as observer, running_agent(path):
        await observer.wait_for(
            lambda: any(d == "pv" and m.quality is Quality.GOOD for d, m in observer.messages)
        )
        pv = next(m for d, m in observer.messages if d == "pv" and m.quality is Quality.GOOD)
        assert pv.values["power_w"] == -20_000.0
        async with control_link(settings, creds, "control-sunspec") as control:
            await control.subscribe(topics.all_acks(), qos=1)
            now = datetime.now(UTC)
            await control.publish(
                topics.heartbeat(),
                encode(ControllerHeartbeat(alive=True, ts=now, cycle=1, period_s=1.0)),
                qos=1,
                retain=True,
            )
            sp = Setpoint(
                id="d-1",
                name="active_power_limit_pct",
                value=40,
                created=now,
                expires=now + timedelta(seconds=30),
            )
            await control.publish(topics.setpoint(GATEWAY, "pv"), encode(sp), qos=1)
            async with asyncio.timeout(10):
                async for message in control.messages:
                    ack = decode(SetpointAck, message.payload)
                    break
        assert (ack.status, ack.readback) == (SetpointStatus.APPLIED, 40.0)
        assert inverter.state.limit_pct == 40.0


async def test_failsafe_cannot_be_fooled_by_an_old_heartbeat(tmp_path, broker, devices):
    """A heartbeat counts by its own timestamp, alive=false counts at once, and a setpoint in failsafe is refused."""
    settings, accounts, _supervisor, _process = broker
    server, _meter, inverter = devices
    path = agent_config(
        tmp_path,
        settings,
        accounts,
        server.port,
        heartbeat_timeout_s=10.0,
        pv={"safe_mode": {"active_power_limit_pct": 30}},
    )
    topics = Topics(site=settings.site)
    creds = accounts.credentials("ehub-control")
    acks: dict[str, SetpointAck] = {}

    def beat(age_s: float, *, alive: bool = True) -> bytes:
        ts = datetime.now(UTC) - timedelta(seconds=age_s)
        return encode(ControllerHeartbeat(alive=alive, ts=ts, cycle=1, period_s=1.0))

    async with (
        observing(settings, accounts) as observer,
        control_link(settings, creds, "control-old-beat") as control,
    ):
        # What a gateway reconnecting to a hung control gets: its last heartbeat, retained, 13 s old.
        await control.publish(topics.heartbeat(), beat(13.0), qos=1, retain=True)
        await control.subscribe(topics.all_acks(), qos=1)

        collector = asyncio.create_task(collect_acks(control, acks))
        loop = asyncio.get_running_loop()
        try:
            started = loop.time()  # the agent counts its silence from its start
            async with running_agent(path) as agent:
                await asyncio.wait_for(agent.connected.wait(), 10)
                # Stale heartbeats do not count: silence since start, so failsafe 10 s after start. (Counted as
                # fresh, the one sent 5 s in would put it at 15 s.)
                await observer.wait_for(lambda: loop.time() - started > 5.0, 10)
                await control.publish(topics.heartbeat(), beat(12.0), qos=1, retain=True)
                await observer.wait_for(lambda: agent.failsafe, 15)
                assert 9.5 < loop.time() - started < 13.0
                await observer.wait_for(lambda: inverter.state.limit_pct == 30.0, 5)
                # In failsafe a setpoint is refused, and the device stays at its safe value.
                now = datetime.now(UTC)
                sp = Setpoint(
                    id="sp-f", name="active_power_limit_pct", value=80, created=now,
                    expires=now + timedelta(seconds=30),
                )  # fmt: skip
                await control.publish(topics.setpoint(GATEWAY, "pv"), encode(sp), qos=1)
                await observer.wait_for(lambda: "sp-f" in acks)
                assert acks["sp-f"].status is SetpointStatus.REJECTED
                assert "failsafe" in (acks["sp-f"].reason or "")
                assert inverter.state.limit_pct == 30.0
                # Another old one changes nothing; a fresh one ends failsafe.
                await control.publish(topics.heartbeat(), beat(11.0), qos=1, retain=True)
                await control.publish(topics.heartbeat(), beat(0.0), qos=1, retain=True)
                await observer.wait_for(lambda: not agent.failsafe, 5)
                # alive=false (a Last Will, a goodbye): failsafe at once, not after the timeout.
                gone_at = loop.time()
                await control.publish(topics.heartbeat(), beat(0.0, alive=False), qos=1, retain=True)
                await observer.wait_for(lambda: agent.failsafe, 5)
                assert loop.time() - gone_at < 2.0
        finally:
            collector.cancel()
