"""The gateway agent: poll every device, buffer on disk, publish to the broker, and never lose a measurement.

Two tasks share the on-disk buffer: the poll loop writes one batch per cycle, the publish loop sends the oldest
messages with QoS 1 (at most ``max_inflight`` awaiting PUBACK) and deletes them only once the broker has them. The
publish loop owns the MQTT connection: birth (retained) on connect, the same topic as Last Will for death, and a
jittered back-off between reconnects. Messages buffered before the current connection are marked as replay.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from datetime import UTC, datetime

import aiomqtt

from edge.buffer import BufferedMessage, MeasurementBuffer
from edge.config import AgentConfig
from edge.poller import Bus, DevicePoller
from edge.profile import load_profile
from hub.messages import GatewayHealth, GatewayState, Measurement, decode, encode
from hub.topics import Topics

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
        for device in config.devices:
            key = (device.host, device.port)
            bus = self.buses.get(key) or Bus(device.host, device.port, timeout_s=config.timeout_s)
            self.buses[key] = bus
            self.pollers.append(
                DevicePoller(
                    device.id, load_profile(device.profile), bus, device.unit_id, retries=config.retries
                )
            )
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
    def _health(self) -> GatewayHealth:
        return GatewayHealth(
            devices_ok=sum(not p.failing for p in self.pollers),
            devices_failing=sum(p.failing for p in self.pollers),
            buffer_depth=self.buffer.depth,
            buffer_dropped=self.buffer.dropped,
            last_publish=self.last_publish,
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
                    backlog = self.buffer.peek(self.buffer.depth)
                    replay_up_to = backlog[-1].id if backlog else 0
                    self.connected.set()
                    await self._send(client, replay_up_to)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("broker connection lost or refused (%s); buffering on disk, retrying", exc)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 30.0)

    async def _send(self, client: aiomqtt.Client, replay_up_to: int) -> None:
        limit = self.config.mqtt.max_inflight
        while True:
            batch = self.buffer.peek(limit)
            if not batch:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=5.0)
                except TimeoutError:
                    await client.publish(
                        self.topics.state(self.config.gateway), self._state(True), qos=1, retain=True
                    )
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
                ]
                await stop.wait()
                for task in tasks:
                    task.cancel()
        finally:
            for bus in self.buses.values():
                bus.close()
            self.buffer.close()
