"""The gateway agent: poll every device, buffer on disk, publish to the broker, and never lose a measurement.

Two tasks share the on-disk buffer: the poll loop writes one batch per cycle, the publish loop sends the oldest
messages with QoS 1 (at most ``max_inflight`` awaiting PUBACK) and deletes them only once the broker has them. The
publish loop owns the MQTT connection: birth (retained) on connect, the same topic as Last Will for death, and a
jittered back-off between reconnects. Messages buffered before the current connection are marked as replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from datetime import UTC, datetime
from functools import partial

import aiomqtt

from edge.buffer import BufferedMessage, MeasurementBuffer
from edge.config import AgentConfig, DeviceConfig
from edge.poller import Bus, DevicePoller
from edge.profile import DeviceProfile, load_profile
from edge.setpoints import DeviceControl
from edge.sunspec import discover_profile
from hub.messages import (
    ControllerHeartbeat,
    GatewayHealth,
    GatewayState,
    Measurement,
    MessageError,
    Setpoint,
    SetpointAck,
    SetpointStatus,
    decode,
    encode,
)
from hub.topics import TopicError, TopicKind, Topics

__all__ = ["Agent"]

log = logging.getLogger(__name__)
AGENT_VERSION = "0.1.0"


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.topics = Topics(site=config.site, root=config.topic_root)
        self.buffer = MeasurementBuffer(config.buffer_path, max_messages=config.buffer_max_messages)
        self.session = self.buffer.next_session()
        self.seq = 0
        self.buses: dict[tuple[str, int], Bus] = {}
        self.pollers: list[DevicePoller] = []
        self.controls: dict[str, DeviceControl] = {}
        for device in config.devices:
            key = (device.host, device.port)
            bus = self.buses.get(key) or Bus(device.host, device.port, timeout_s=config.timeout_s)
            self.buses[key] = bus
            if device.profile == "sunspec":  # discovered at the first poll that gets an answer
                self.pollers.append(
                    DevicePoller(
                        device.id,
                        None,
                        bus,
                        device.unit_id,
                        retries=config.retries,
                        discover=partial(self._discover, device, bus),
                    )
                )
                continue
            profile = load_profile(device.profile)
            self.pollers.append(DevicePoller(device.id, profile, bus, device.unit_id, retries=config.retries))
            self._add_control(device, profile, bus)
        self.last_heartbeat = (
            time.monotonic()
        )  # counting from start: no controller yet is a missing controller
        self.failsafe = False
        self.published = 0
        self.last_publish: datetime | None = None
        self.connected = asyncio.Event()
        self._wake = asyncio.Event()

    # -- polling ----------------------------------------------------------------------------------------------
    async def poll_once(self) -> None:
        results = await asyncio.gather(*(p.poll() for p in self.pollers))
        batch = []
        for poller, result in zip(self.pollers, results, strict=True):
            message = Measurement(
                ts=datetime.fromtimestamp(result.ts, UTC),
                session=self.session,
                seq=self.seq,
                quality=result.quality,
                values=result.values,
            )
            self.seq += 1
            batch.append((self.topics.measurement(self.config.gateway, poller.device_id), encode(message)))
        # One transaction per cycle: an SD card wears with every small write.
        await asyncio.to_thread(self.buffer.append_many, batch, session=self.session)
        self._wake.set()

    async def poll_loop(self) -> None:
        interval = self.config.interval_s
        next_at = time.monotonic()
        while True:
            await self.poll_once()
            next_at += interval
            delay = next_at - time.monotonic()
            if delay < 0:  # overran: skip the missed cycles rather than bunching polls
                next_at = time.monotonic()
                delay = 0
            await asyncio.sleep(delay)

    # -- publishing -------------------------------------------------------------------------------------------
    def _in_failsafe(self) -> bool:
        return self.failsafe or any(c.in_safe_mode for c in self.controls.values())

    def _health(self) -> GatewayHealth:
        return GatewayHealth(
            devices_ok=sum(not p.failing for p in self.pollers),
            devices_failing=sum(p.failing for p in self.pollers),
            buffer_depth=self.buffer.depth,
            buffer_dropped=self.buffer.dropped,
            last_publish=self.last_publish,
            failsafe=self._in_failsafe(),
        )

    def _state(self, online: bool) -> bytes:
        return encode(
            GatewayState(
                online=online,
                session=self.session,
                ts=datetime.now(UTC),
                agent_version=AGENT_VERSION,
                health=self._health() if online else None,
            )
        )

    def _client(self) -> aiomqtt.Client:
        mqtt = self.config.mqtt
        username, password = mqtt.username, mqtt.password
        if mqtt.credentials_file is not None:
            creds = json.loads(mqtt.credentials_file.read_text())
            username, password = creds["username"], creds["password"]
        tls = (
            aiomqtt.TLSParameters(ca_certs=str(mqtt.ca_file), cert_reqs=ssl.CERT_REQUIRED)
            if mqtt.ca_file
            else None
        )
        return aiomqtt.Client(
            hostname=mqtt.host,
            port=mqtt.port,
            username=username,
            password=password,
            identifier=f"{self.config.gateway}-agent",
            protocol=aiomqtt.ProtocolVersion.V5,
            keepalive=mqtt.keepalive_s,
            tls_params=tls,
            max_inflight_messages=mqtt.max_inflight,
            will=aiomqtt.Will(self.topics.state(self.config.gateway), self._state(False), qos=1, retain=True),
        )

    def _payload(self, message: BufferedMessage, replay: bool) -> bytes:
        if not replay:
            return message.payload
        measurement = decode(Measurement, message.payload)
        return encode(measurement.model_copy(update={"replay": True}))

    async def publish_loop(self) -> None:
        backoff = 0.5
        down_since: float | None = None
        while True:
            try:
                async with self._client() as client:
                    await client.publish(
                        self.topics.state(self.config.gateway), self._state(True), qos=1, retain=True
                    )
                    if down_since is not None:
                        log.info("broker connection back after %.0f s", time.monotonic() - down_since)
                    down_since, backoff = None, 0.5
                    # Everything stored before this connection counts as replay; the backlog itself stays on disk.
                    replay_up_to = self.buffer.last_id()
                    await client.subscribe(self.topics.setpoints_for(self.config.gateway), qos=1)
                    await client.subscribe(self.topics.heartbeat(), qos=1)
                    self.connected.set()
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._send(client, replay_up_to), name="send")
                        group.create_task(self._receive(client), name="receive")
            except* aiomqtt.MqttError as group:
                exc = group.exceptions[0]
                self.connected.clear()
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("broker connection lost or refused (%s); buffering on disk, retrying", exc)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 30.0)

    async def _send(self, client: aiomqtt.Client, replay_up_to: int) -> None:
        limit = self.config.mqtt.max_inflight
        reported_failsafe, reported_at = self._in_failsafe(), time.monotonic()
        while True:
            # The state (with health) goes out when failsafe changes, and every 10 s anyway.
            failsafe = self._in_failsafe()
            if failsafe != reported_failsafe or time.monotonic() - reported_at > 10.0:
                await client.publish(
                    self.topics.state(self.config.gateway), self._state(True), qos=1, retain=True
                )
                reported_failsafe, reported_at = failsafe, time.monotonic()
            batch = self.buffer.peek(limit)
            if not batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                continue
            # QoS 1 publishes complete on PUBACK; only then do the messages leave the disk.
            await asyncio.gather(
                *(
                    client.publish(
                        m.topic, self._payload(m, m.id <= replay_up_to or m.session != self.session), qos=1
                    )
                    for m in batch
                )
            )
            self.buffer.ack([m.id for m in batch])
            self.published += len(batch)
            self.last_publish = datetime.now(UTC)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                info = self.topics.parse(str(message.topic))
            except TopicError as exc:
                log.warning("ignoring message on unexpected topic: %s", exc)
                continue
            if info.kind is TopicKind.HEARTBEAT:
                self._heartbeat(bytes(message.payload))
            elif info.kind is TopicKind.SETPOINT and info.device is not None:
                ack = await self._setpoint(info.device, bytes(message.payload))
                if ack is not None:
                    await client.publish(
                        self.topics.ack(self.config.gateway, info.device), encode(ack), qos=1
                    )

    def _heartbeat(self, payload: bytes) -> None:
        try:
            beat = decode(ControllerHeartbeat, payload)
        except MessageError as exc:
            log.warning("ignoring a bad controller heartbeat: %s", exc)
            return
        if not beat.alive:
            return  # the controller's Last Will: the timeout below takes it from here
        self.last_heartbeat = time.monotonic()
        if self.failsafe:
            log.info("controller heartbeat is back: leaving failsafe, setpoints accepted again")
            self.failsafe = False
            for control in self.controls.values():
                control.in_safe_mode = False
            self._wake.set()

    async def _setpoint(self, device: str, payload: bytes) -> SetpointAck | None:
        try:
            setpoint = decode(Setpoint, payload)
        except MessageError as exc:
            log.warning("ignoring a setpoint for %s that does not parse: %s", device, exc)
            return None
        control = self.controls.get(device)
        if control is None:
            return SetpointAck(
                id=setpoint.id,
                status=SetpointStatus.REJECTED,
                ts=datetime.now(UTC),
                reason=f"gateway {self.config.gateway} has no controllable device {device!r}",
            )
        return await control.apply(setpoint)

    def _add_control(self, device: DeviceConfig, profile: DeviceProfile, bus: Bus) -> None:
        if profile.setpoints:
            self.controls[device.id] = DeviceControl(device, profile, bus)

    async def _discover(self, device: DeviceConfig, bus: Bus) -> DeviceProfile | None:
        """SunSpec discovery for one device; once its profile is known it takes setpoints like any other."""
        profile = await discover_profile(bus, device.unit_id)
        if profile is not None:
            self._add_control(device, profile, bus)
        return profile

    async def watchdog(self) -> None:
        """Safe mode when a setpoint expires or the controller's heartbeat has been missing too long."""
        while True:
            await asyncio.sleep(0.2)
            silent = time.monotonic() - self.last_heartbeat
            if silent > self.config.heartbeat_timeout_s and not self.failsafe:
                log.warning("no controller heartbeat for %.0f s: devices go to safe mode", silent)
                self.failsafe = True
                self._wake.set()
            for control in list(self.controls.values()):
                if self.failsafe:
                    await control.enter_safe_mode("controller heartbeat missing")
                elif control.expired():
                    await control.enter_safe_mode("setpoint expired")
                    self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "gateway %s session %d: %d devices, %d buffered",
            self.config.gateway,
            self.session,
            len(self.pollers),
            self.buffer.depth,
        )
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self.poll_loop(), name="poll"),
                    group.create_task(self.publish_loop(), name="publish"),
                    group.create_task(self.watchdog(), name="watchdog"),
                ]
                await stop.wait()
                for task in tasks:
                    task.cancel()
        finally:
            for bus in self.buses.values():
                bus.close()
            self.buffer.close()
