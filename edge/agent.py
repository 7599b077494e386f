"""The gateway agent: poll every device, buffer on disk, publish to the broker, and never lose a measurement.

Two tasks share the on-disk buffer: the poll loop writes one batch per cycle, the publish loop sends the oldest
messages with QoS 1 (at most ``max_inflight`` awaiting PUBACK, in one socket write) and deletes them once the broker
has them. Deletes are batched about once a second, because each is a synchronous disk write; a process killed in
that second sends those messages again after its restart (at least once; the ingest's writes are idempotent). The
publish loop owns the MQTT connection (``hub.mqtt_link``): birth (retained) on connect, the same topic as Last Will
for death, and a jittered back-off between reconnects. Messages buffered before the current connection are marked
as replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import logging
import random
import ssl
import time
from datetime import UTC, datetime
from functools import partial

from edge.buffer import BufferedMessage, MeasurementBuffer
from edge.config import AgentConfig, DeviceConfig
from edge.poller import Bus, DevicePoller, PollResult
from edge.profile import DeviceProfile, load_profile
from edge.setpoints import DeviceControl
from edge.sunspec import discover_profile
from hub.clock import Clock, clock_from_env
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
from hub.mqtt_link import MqttLink, MqttLinkError, Will
from hub.topics import TopicError, TopicKind, Topics

__all__ = ["Agent"]

log = logging.getLogger(__name__)
AGENT_VERSION = "0.1.0"


class Agent:
    def __init__(self, config: AgentConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        # Readings, states and acknowledgements are stamped on the data clock; timers run on real time.
        self.clock = clock or clock_from_env()
        self.topics = Topics(site=config.site, root=config.topic_root)
        self.buffer = MeasurementBuffer(config.buffer_path, max_messages=config.buffer_max_messages)
        self.session = self.buffer.next_session()
        self.seq = 0
        self.buses: dict[str, Bus] = {}
        self.pollers: list[DevicePoller] = []
        self.controls: dict[str, DeviceControl] = {}
        for device in config.devices:
            bus = self.buses.get(device.bus_key) or Bus.for_device(device, timeout_s=config.timeout_s)
            self.buses[device.bus_key] = bus
            # `profile: sunspec` is discovered at the first poll that gets an answer.
            discovered = device.profile == "sunspec"
            profile = None if discovered else load_profile(device.profile)
            self.pollers.append(
                DevicePoller(
                    device.id,
                    profile,
                    bus,
                    device.unit_id,
                    retries=config.retries,
                    interval_s=device.interval_s or config.interval_s,
                    discover=partial(self._discover, device, bus) if discovered else None,
                    clock=self.clock.timestamp,
                )
            )
            if profile is not None:
                self._add_control(device, profile, bus)
        self.last_heartbeat = (
            time.monotonic()
        )  # counting from start: no controller yet is a missing controller
        self.failsafe = False
        self.published = 0
        self.last_publish: datetime | None = None
        self.connected = asyncio.Event()
        self._acked: list[int] = []  # acknowledged by the broker, deleted from disk at the next flush
        self._acked_at = time.monotonic()
        self._wake = asyncio.Event()

    # -- polling ----------------------------------------------------------------------------------------------
    async def _poll_bus(self, pollers: list[DevicePoller]) -> list[tuple[DevicePoller, PollResult]]:
        # The bus's owner: its devices one after the other, as on a serial line.
        return [(poller, await poller.poll()) for poller in pollers]

    async def poll_once(self, due: list[DevicePoller] | None = None) -> None:
        """Poll ``due`` (every device when None) and store the measurements as one batch."""
        by_bus: dict[Bus, list[DevicePoller]] = {}
        for poller in self.pollers if due is None else due:
            by_bus.setdefault(poller.bus, []).append(poller)
        per_bus = await asyncio.gather(*(self._poll_bus(group) for group in by_bus.values()))
        batch = []
        for poller, result in itertools.chain.from_iterable(per_bus):
            # Built from values this agent decoded itself: validation would only cost CPU on the hot path.
            message = Measurement.model_construct(
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
        """Each device at its own interval; devices due at the same moment are polled (and stored) together."""
        start = time.monotonic()
        for poller in self.pollers:
            poller.next_due = start
        while True:
            now = time.monotonic()
            due = [p for p in self.pollers if p.next_due <= now]
            if due:
                await self.poll_once(due)
            now = time.monotonic()
            for poller in due:
                poller.next_due += poller.interval_s
                if poller.next_due < now:  # overran: skip the missed polls rather than bunching them
                    poller.next_due = now + poller.interval_s
            next_due = min((p.next_due for p in self.pollers), default=now + self.config.interval_s)
            await asyncio.sleep(max(0.0, next_due - time.monotonic()))

    # -- publishing -------------------------------------------------------------------------------------------
    def _in_failsafe(self) -> bool:
        # Failsafe means "control is lost". A device whose last setpoint expired while control lives (a charger
        # that control no longer steers once its vehicle left) is at its safe values too, but needs no limit:
        # it is counted apart, not reported as a lost controller.
        return self.failsafe

    def _safety(self) -> tuple[bool, int]:
        return self._in_failsafe(), self._devices_in_safe_mode()

    def _devices_in_safe_mode(self) -> int:
        return sum(c.in_safe_mode for c in self.controls.values())

    @property
    def unsent(self) -> int:
        """Measurements on disk that the broker does not have yet."""
        return self.buffer.depth - len(self._acked)

    def _health(self) -> GatewayHealth:
        return GatewayHealth(
            devices_ok=sum(not p.failing for p in self.pollers),
            devices_failing=sum(p.failing for p in self.pollers),
            buffer_depth=self.unsent,
            buffer_dropped=self.buffer.dropped,
            last_publish=self.last_publish,
            failsafe=self._in_failsafe(),
            devices_in_safe_mode=self._devices_in_safe_mode(),
        )

    def _state(self, online: bool) -> bytes:
        return encode(
            GatewayState(
                online=online,
                session=self.session,
                ts=self.clock.now(),
                agent_version=AGENT_VERSION,
                health=self._health() if online else None,
            )
        )

    async def _connect(self) -> MqttLink:
        mqtt = self.config.mqtt
        username, password = mqtt.username, mqtt.password
        if mqtt.credentials_file is not None:
            creds = json.loads(mqtt.credentials_file.read_text())
            username, password = creds["username"], creds["password"]
        tls = None
        if mqtt.ca_file is not None:
            tls = ssl.create_default_context(cafile=str(mqtt.ca_file))  # checks the broker's name too
        return await MqttLink.connect(
            mqtt.host,
            mqtt.port,
            client_id=f"{self.config.gateway}-agent",
            username=username,
            password=password,
            keepalive_s=mqtt.keepalive_s,
            tls=tls,
            will=Will(self.topics.state(self.config.gateway), self._state(False), qos=1, retain=True),
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
            link: MqttLink | None = None
            try:
                link = await self._connect()
                await link.publish(
                    self.topics.state(self.config.gateway), self._state(True), qos=1, retain=True
                )
                if down_since is not None:
                    log.info("broker connection back after %.0f s", time.monotonic() - down_since)
                down_since, backoff = None, 0.5
                # Everything stored before this connection counts as replay; the backlog itself stays on disk.
                replay_up_to = self.buffer.last_id()
                granted = await link.subscribe(
                    [(self.topics.setpoints_for(self.config.gateway), 1), (self.topics.heartbeat(), 1)]
                )
                if any(code >= 0x80 for code in granted):
                    log.error("the broker refused our setpoint or heartbeat subscription (codes %s)", granted)
                self.connected.set()
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._send(link, replay_up_to), name="send")
                    group.create_task(self._receive(link), name="receive")
            except* MqttLinkError as group:
                exc = group.exceptions[0]
                self.connected.clear()
                self._flush_acks()
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("broker connection lost or refused (%s); buffering on disk, retrying", exc)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 30.0)
            finally:
                if link is not None:
                    link.abort()

    def _flush_acks(self) -> None:
        """Delete what the broker has acknowledged: batched, since each delete is a synchronous disk write."""
        if self._acked:
            self.buffer.ack(self._acked)
            self._acked = []
        self._acked_at = time.monotonic()

    async def _send(self, link: MqttLink, replay_up_to: int) -> None:
        limit = max(1, min(self.config.mqtt.max_inflight, link.receive_maximum))
        reported, reported_at = self._safety(), time.monotonic()
        sent_up_to = 0  # this connection starts again at the oldest message still on disk
        while True:
            # The state (with health) goes out when failsafe or a device's safe mode changes, and every 10 s anyway.
            safety = self._safety()
            if safety != reported or time.monotonic() - reported_at > 10.0:
                link.publish_batch([(self.topics.state(self.config.gateway), self._state(True))], retain=True)
                reported, reported_at = safety, time.monotonic()
            if time.monotonic() - self._acked_at > 1.0 or len(self._acked) >= 5000:
                self._flush_acks()
            batch = self.buffer.peek(limit, after_id=sent_up_to)
            if not batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                continue
            # QoS 1: a message leaves the disk only once its PUBACK is in.
            sent = link.publish_batch(
                [
                    (m.topic, self._payload(m, m.id <= replay_up_to or m.session != self.session))
                    for m in batch
                ]
            )
            await link.wait(sent.done)
            for index, reason in sent.refused:
                # Refused for good (not authorized, malformed): holding it would stop the whole gateway.
                log.error("the broker refused %s (reason 0x%02x); dropping it", batch[index].topic, reason)
            sent_up_to = batch[-1].id
            self._acked.extend(m.id for m in batch)
            self.published += len(batch) - len(sent.refused)
            self.last_publish = self.clock.now()

    async def _receive(self, link: MqttLink) -> None:
        while True:
            message = await link.next_message()
            try:
                info = self.topics.parse(message.topic)
            except TopicError as exc:
                log.warning("ignoring message on unexpected topic: %s", exc)
                continue
            if info.kind is TopicKind.HEARTBEAT:
                self._heartbeat(message.payload)
            elif info.kind is TopicKind.SETPOINT and info.device is not None:
                ack = await self._setpoint(info.device, message.payload)
                if ack is not None:
                    link.publish_batch([(self.topics.ack(self.config.gateway, info.device), encode(ack))])

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
            setpoint_id = _raw_id(payload)
            log.warning(
                "rejecting a setpoint for %s that does not parse (id %s): %s", device, setpoint_id, exc
            )
            if setpoint_id is None:
                return None  # nothing to acknowledge it by: the log is all there is
            return SetpointAck(
                id=setpoint_id, status=SetpointStatus.REJECTED, ts=self.clock.now(), reason=str(exc)[:200]
            )
        control = self.controls.get(device)
        if control is None:
            return SetpointAck(
                id=setpoint.id,
                status=SetpointStatus.REJECTED,
                ts=self.clock.now(),
                reason=f"gateway {self.config.gateway} has no controllable device {device!r}",
            )
        return await control.apply(setpoint)

    def _add_control(self, device: DeviceConfig, profile: DeviceProfile, bus: Bus) -> None:
        if profile.setpoints:
            self.controls[device.id] = DeviceControl(device, profile, bus, clock=self.clock)

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
                    await control.enter_safe_mode("setpoint expired", control_lost=False)
                    self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        # Profiles, plans and clients live as long as the process: keep the cyclic collector from rescanning them.
        gc.freeze()
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
            self._flush_acks()
            for bus in self.buses.values():
                bus.close()
            self.buffer.close()


def _raw_id(payload: bytes) -> str | None:
    """The id of a setpoint that failed validation, when the payload still carries a usable one."""
    try:
        raw = json.loads(payload)
    except ValueError:
        return None
    setpoint_id = raw.get("id") if isinstance(raw, dict) else None
    return setpoint_id if isinstance(setpoint_id, str) and 0 < len(setpoint_id) <= 64 else None
