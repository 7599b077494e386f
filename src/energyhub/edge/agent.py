"""The gateway agent: poll every device, buffer on disk, publish to the broker, and never lose a measurement.

Two tasks share the on-disk buffer: the poll loop writes one batch per cycle, the publish loop sends the oldest
messages with QoS 1 (at most ``max_inflight`` awaiting PUBACK, in one socket write). A message leaves the disk only
when the ingest confirms that the database has it (``gw/<gateway>/confirm``): a broker's PUBACK proves nothing
once the broker restarts, or when no one subscribes. What is not confirmed within ``confirm_timeout_s`` is sent
again, and so is everything on disk after a reconnect (at least once; the ingest's writes are idempotent). Deletes
are batched about once a second, because each is a synchronous disk write.

The publish loop owns the MQTT connection (``energyhub.io.mqtt``): birth (retained) on connect, the same topic as Last
Will for death, and a jittered back-off between reconnects. Messages sent before are marked as replay.

The gateway degrades instead of dying: a full disk keeps the newest measurements in memory (bounded, the dropped
ones counted), and a buffer file deleted under it is re-created with what it held, under a new session.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import logging
import sqlite3
import time
from collections import deque
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

from energyhub.domain.clock import Clock, clock_from_env
from energyhub.edge import line_budget
from energyhub.edge.buffer import BufferedMessage, MeasurementBuffer
from energyhub.edge.buffer import BufferError as BufferFileError
from energyhub.edge.config import AgentConfig, DeviceConfig
from energyhub.edge.poller import Bus, DevicePoller, PollResult
from energyhub.edge.setpoints import DeviceControl
from energyhub.edge.sunspec import discover_profile
from energyhub.io.mqtt import MqttLink, Will
from energyhub.runtime.connection import broker_login, broker_tls, keep_connected
from energyhub.wire.messages import (
    ControllerHeartbeat,
    DeliveryConfirmation,
    GatewayHealth,
    GatewayState,
    Measurement,
    MessageError,
    Quality,
    Setpoint,
    SetpointAck,
    SetpointStatus,
    decode,
    encode,
)
from energyhub.wire.profile import DeviceProfile, load_profile
from energyhub.wire.topics import TopicError, TopicKind, Topics

if TYPE_CHECKING:
    from energyhub.edge.mbus import MbusGateway, MbusPoller
    from energyhub.edge.ocpp_server import OcppControl, OcppService

__all__ = ["Agent"]

log = logging.getLogger(__name__)
AGENT_VERSION = "0.1.0"
# Sent this long ago and not confirmed though the ingest confirms again: it was away, and missed those. In steady
# state a confirmation comes within a batch (0.2 s) and deletes are flushed every second.
INGEST_AWAY_S = 5.0
MBUS_TIMEOUT_S = 2.0
MBUS_INTERVAL_S = 60.0


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
        self.pollers: list[DevicePoller | MbusPoller] = []
        self.mbus_gateways: dict[str, MbusGateway] = {}
        self.controls: dict[str, DeviceControl | OcppControl] = {}
        self.ocpp: OcppService | None = None
        chargers = [d for d in config.devices if d.ocpp is not None]
        if chargers:
            # Chargers over OCPP are not polled: they connect to this gateway's OCPP server and report
            # themselves. Imported here: only a plaza gateway needs the library (0.2 s of start-up, and memory).
            from energyhub.edge.ocpp_server import OcppControl, OcppService

            assert config.ocpp is not None  # AgentConfig refuses chargers without a server
            self.ocpp = OcppService(config.ocpp, chargers, self.record, clock=self.clock)
            for device in chargers:
                self.controls[device.id] = OcppControl(device, self.ocpp, clock=self.clock)
        planned: dict[str, DeviceProfile] = {}  # the Modbus devices' profiles, for the serial lines' budget
        for device in config.devices:
            if device.ocpp is not None:
                continue
            if device.mbus is not None:
                self.pollers.append(self._mbus_poller(device))
                continue
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
                    backoff_max_s=config.backoff_max_s,
                    discover=partial(self._discover, device, bus) if discovered else None,
                    clock=self.clock.timestamp,
                )
            )
            if profile is not None:
                planned[device.profile] = profile
                self._add_control(device, profile, bus)
        for warning in line_budget.warnings(config, planned):
            log.warning("gateway %s: %s", config.gateway, warning)
        # Counting from start: no controller yet is a missing controller.
        self.last_heartbeat = time.monotonic()
        self.failsafe = False
        self.published = 0
        self.confirmed = 0
        self.last_publish: datetime | None = None
        self.connected = asyncio.Event()
        self._refused: list[int] = []  # refused by the broker for good: deleted at the next flush
        # (session, first seq, last seq) confirmed stored: deleted at the next flush.
        self._confirmed: list[tuple[int, int, int]] = []
        self._flushed_at = time.monotonic()
        self._ingest_heard = False  # a confirmation since the publish loop last looked: the ingest is there
        self._wake = asyncio.Event()
        # While the disk cannot be written: the newest measurements, as (topic, payload, seq, session).
        self._held: deque[tuple[str, bytes, int, int]] = deque()
        self._held_dropped = 0  # dropped from memory and not yet counted on disk
        self.buffer_error: str | None = None
        # One writer of the buffer and the sequence counter at a time: the poll loop and the OCPP server.
        self._store_lock = asyncio.Lock()
        self._pending: list[tuple[str, PollResult, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def _mbus_poller(self, device: DeviceConfig) -> MbusPoller:
        from energyhub.edge.mbus import MbusGateway, MbusPoller  # only a gateway with M-Bus meters needs it

        gateway = self.mbus_gateways.get(device.bus_key)
        if gateway is None:
            # M-Bus at 2400 baud: a SND_NKE and a long RSP_UD take a second where Modbus takes milliseconds.
            gateway = MbusGateway.for_device(device, timeout_s=max(self.config.timeout_s, MBUS_TIMEOUT_S))
            self.mbus_gateways[device.bus_key] = gateway
        return MbusPoller.for_device(
            device,
            gateway,
            # Battery-powered meters count their telegrams: a minute unless configured otherwise.
            interval_s=device.interval_s or max(self.config.interval_s, MBUS_INTERVAL_S),
            backoff_max_s=max(self.config.backoff_max_s, 900.0),
            clock=self.clock.timestamp,
        )

    # -- polling ----------------------------------------------------------------------------------------------
    async def _poll_bus(
        self, pollers: list[DevicePoller | MbusPoller]
    ) -> list[tuple[DevicePoller | MbusPoller, PollResult]]:
        # The bus's owner: its devices one after the other, as on a serial line; a backed-off one gives nothing.
        out = []
        for poller in pollers:
            result = await poller.poll()
            if result is not None:
                out.append((poller, result))
        return out

    async def poll_once(self, due: list[DevicePoller | MbusPoller] | None = None) -> None:
        """Poll ``due`` (every device when None) and store the measurements as one batch."""
        by_bus: dict[Bus | MbusGateway, list[DevicePoller | MbusPoller]] = {}
        for poller in self.pollers if due is None else due:
            by_bus.setdefault(poller.bus, []).append(poller)
        per_bus = await asyncio.gather(*(self._poll_bus(group) for group in by_bus.values()))
        async with self._store_lock:
            batch = [self._message(p.device_id, r) for p, r in itertools.chain.from_iterable(per_bus)]
            # One transaction per cycle: an SD card wears with every small write.
            await asyncio.to_thread(self._store, batch, self.session)
        self._wake.set()

    def _message(self, device_id: str, result: PollResult) -> tuple[str, bytes, int]:
        """The measurement of one reading, with the next sequence number; call holding the store lock."""
        # Built from values this agent decoded itself: validation would only cost CPU on the hot path.
        message = Measurement.model_construct(
            ts=datetime.fromtimestamp(result.ts, UTC),
            session=self.session,
            seq=self.seq,
            quality=result.quality,
            values=result.values,
        )
        self.seq += 1
        return (self.topics.measurement(self.config.gateway, device_id), encode(message), self.seq - 1)

    async def record(
        self, device_id: str, values: dict[str, float | None], quality: Quality, ts: float
    ) -> None:
        """Store one reading that a device reported itself (a charger's meter value); returns once it is on disk
        (or held in memory while the disk is full). Readings arriving together share one disk transaction."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((device_id, PollResult(values, quality, ts), done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_pending())
        await done

    async def _flush_pending(self) -> None:
        async with self._store_lock:
            while self._pending:
                items, self._pending = self._pending, []
                try:
                    batch = [self._message(device_id, result) for device_id, result, _ in items]
                    await asyncio.to_thread(self._store, batch, self.session)
                except Exception as exc:  # noqa: BLE001 - every waiter hears it, none is left hanging
                    for *_, done in items:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for *_, done in items:
                    if not done.done():
                        done.set_result(None)
                self._wake.set()

    def _store(self, batch: list[tuple[str, bytes, int]], session: int) -> None:
        """Write the batch (and what memory holds) to disk; on a full disk hold the newest in memory instead."""
        self._check_buffer_file()  # in this worker thread, with the write: one stat, no extra hop per poll
        rows = [*self._held, *((topic, payload, seq, session) for topic, payload, seq in batch)]
        try:
            self.buffer.append_rows(rows)
            if self._held_dropped:
                self.buffer.count_dropped(self._held_dropped)
                self._held_dropped = 0
        except sqlite3.DatabaseError as exc:  # SQLITE_FULL, an I/O error: keep polling, keep what fits
            if self.buffer_error is None:
                log.error(
                    "cannot write the buffer %s (%s): holding the newest %d measurements in memory and dropping "
                    "older ones until it can be written again",
                    self.buffer.path,
                    exc,
                    self.config.memory_max_messages,
                )
            self.buffer_error = f"buffer not writable: {exc}"[:300]
            excess = max(0, len(rows) - self.config.memory_max_messages)
            self._held = deque(rows[excess:])
            self._held_dropped += excess
            return
        if self.buffer_error is not None:
            log.info(
                "the buffer is writable again: %d measurements held in memory are on disk", len(self._held)
            )
            self.buffer_error = None
        self._held.clear()

    def _check_buffer_file(self) -> None:
        """A buffer file deleted or replaced under the agent: move what it held to a new file, new session (from
        the next poll: the batch being stored still belongs to the old one)."""
        if not self.buffer.replaced():
            return
        try:
            moved = self.buffer.reopen()
        except (BufferFileError, sqlite3.DatabaseError, OSError) as exc:
            log.error(
                "the buffer file %s was deleted or replaced and cannot be opened again: %s",
                self.buffer.path,
                exc,
            )
            return
        old, last_seq = self.session, self.seq
        self.session, self.seq = self.buffer.next_session(), 0
        log.error(
            "the buffer file %s was deleted or replaced: a new one holds the %d unsent measurements; session %d "
            "ends at seq %d, session %d starts",
            self.buffer.path,
            moved,
            old,
            last_seq,
            self.session,
        )

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
        """Measurements held (on disk, or in memory while the disk is full) that are not confirmed stored."""
        return self.buffer.depth + len(self._held)

    def _health(self) -> GatewayHealth:
        # A charger whose station is not connected is a failing device.
        chargers, away = (len(self.ocpp.by_device), self.ocpp.disconnected) if self.ocpp else (0, 0)
        return GatewayHealth(
            devices_ok=sum(not p.failing for p in self.pollers) + chargers - away,
            devices_failing=sum(p.failing for p in self.pollers) + away,
            buffer_depth=self.unsent,
            buffer_dropped=self.buffer.dropped + self._held_dropped,
            buffer_error=self.buffer_error,
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
                held_from=self._held_from() if online else None,
            )
        )

    def _held_from(self) -> int:
        held = self.buffer.held_from(self.session)
        return self.seq if held is None else held

    async def _connect(self) -> MqttLink:
        mqtt = self.config.mqtt
        username, password = broker_login(mqtt.credentials_file, mqtt.username, mqtt.password)
        return await MqttLink.connect(
            mqtt.host,
            mqtt.port,
            client_id=f"{self.config.gateway}-agent",
            username=username,
            password=password,
            keepalive_s=mqtt.keepalive_s,
            tls=broker_tls(mqtt.ca_file),
            will=Will(self.topics.state(self.config.gateway), self._state(False), qos=1, retain=True),
        )

    def _payload(self, message: BufferedMessage, replay: bool) -> bytes:
        if not replay:
            return message.payload
        measurement = decode(Measurement, message.payload)
        return encode(measurement.model_copy(update={"replay": True}))

    async def publish_loop(self) -> None:
        await keep_connected(
            self._connect,
            self._serve,
            what=f"gateway {self.config.gateway} (buffering on disk)",
            ready=self.connected,
            on_lost=lambda _exc: self._flush_deletes(),
        )

    async def _serve(self, link: MqttLink) -> None:
        # Subscribed before the birth, so no confirmation of what the ingest stores next is missed.
        granted = await link.subscribe(
            [
                (self.topics.setpoints_for(self.config.gateway), 1),
                (self.topics.heartbeat(), 1),
                (self.topics.confirm(self.config.gateway), 1),
            ]
        )
        if any(code >= 0x80 for code in granted):
            log.error(
                "the broker refused our setpoint, heartbeat or confirmation subscription (codes %s)", granted
            )
        await link.publish(self.topics.state(self.config.gateway), self._state(True), qos=1, retain=True)
        if not self.connected.is_set():
            mqtt = self.config.mqtt
            log.info(
                "gateway %s: connected to the broker at %s:%d%s",
                self.config.gateway,
                mqtt.host,
                mqtt.port,
                " (TLS)" if mqtt.ca_file else "",
            )
        self.connected.set()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._send(link), name="send")
            group.create_task(self._receive(link), name="receive")

    def _flush_deletes(self) -> None:
        """Delete what is confirmed stored (or refused for good): batched, since each delete is a synchronous disk
        write. On a full disk the delete may fail too: it is tried again at the next flush."""
        self._flushed_at = time.monotonic()
        try:
            if self._refused:
                self.buffer.ack(self._refused)
                self._refused = []
            if self._confirmed:
                self.confirmed += self.buffer.confirm(self._confirmed)
                self._confirmed = []
        except sqlite3.DatabaseError as exc:
            log.warning("cannot delete confirmed measurements from the buffer yet: %s", exc)

    async def _send(self, link: MqttLink) -> None:
        limit = max(1, min(self.config.mqtt.max_inflight, link.receive_maximum))
        reported, reported_at = (self._safety(), self.session), time.monotonic()
        # This connection starts again at the oldest message on disk: all of it is unconfirmed, and the broker may
        # have lost what it acknowledged (a restart). What was sent before counts as replay.
        sent_up_to, replay_up_to = 0, self.buffer.last_id()
        sent_at: deque[tuple[int, float]] = deque()  # (last id of a batch, when sent), oldest first
        resend_after = self.config.confirm_timeout_s
        checked_at = time.monotonic()
        while True:
            now = time.monotonic()
            # The state (with health) goes out when failsafe, a device's safe mode or the session changes, and
            # every 10 s anyway.
            safety = (self._safety(), self.session)
            if safety != reported or now - reported_at > 10.0:
                link.publish_batch([(self.topics.state(self.config.gateway), self._state(True))], retain=True)
                reported, reported_at = safety, now
            if now - self._flushed_at > 1.0 or len(self._confirmed) + len(self._refused) >= 5000:
                self._flush_deletes()
            ingest_back = False
            if self._ingest_heard:
                # The ingest stores again. If it was away (what was sent seconds ago is still unconfirmed), what
                # it missed went nowhere: send it again now, not after the timeout.
                self._ingest_heard, resend_after = False, self.config.confirm_timeout_s
                ingest_back = bool(sent_at) and now - sent_at[0][1] > INGEST_AWAY_S
                if ingest_back:
                    self._flush_deletes()  # so the oldest row left is one really not confirmed
            if (now - checked_at > 1.0 or ingest_back) and sent_at:
                checked_at = now
                oldest = self.buffer.peek(1)
                while sent_at and (not oldest or sent_at[0][0] < oldest[0].id):
                    sent_at.popleft()  # those batches are confirmed to their last message
                if not sent_at:
                    resend_after = self.config.confirm_timeout_s
                elif now - sent_at[0][1] > (INGEST_AWAY_S if ingest_back else resend_after):
                    # Sent, acknowledged by the broker, and yet not stored: the broker lost it or routed it to
                    # no one. Send everything unconfirmed again, backing off while the ingest stays silent.
                    log.warning(
                        "%d measurements unconfirmed %.0f s after sending: sending them again",
                        self.buffer.depth,
                        now - sent_at[0][1],
                    )
                    replay_up_to = max(replay_up_to, sent_up_to)
                    sent_up_to = 0
                    sent_at.clear()
                    resend_after = min(resend_after * 2, 600.0)
            batch = self.buffer.peek(limit, after_id=sent_up_to)
            if not batch:
                self._wake.clear()
                # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancel that comes as the event is
                # set (failsafe sets it), and the agent would then never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                continue
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
                self._refused.append(batch[index].id)
            sent_up_to = batch[-1].id
            sent_at.append((sent_up_to, time.monotonic()))
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
            elif info.kind is TopicKind.CONFIRM:
                self._confirmation(message.payload)
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
            # The controller's Last Will or its goodbye: control is gone now, not after the timeout.
            self._lose_control("the controller says it is gone (alive=false)")
            return
        # Judged by its own timestamp: a retained heartbeat the broker hands over on reconnecting may be old, from
        # a control that hangs since. A heartbeat counts from when it was sent.
        age_s = self.clock.real_s(self.clock.timestamp() - beat.ts.timestamp())
        if age_s > self.config.heartbeat_timeout_s:
            log.info("ignoring a controller heartbeat sent %.0f s ago (cycle %d): too old", age_s, beat.cycle)
            return
        self.last_heartbeat = max(self.last_heartbeat, time.monotonic() - max(age_s, 0.0))
        if self.failsafe:
            log.info("controller heartbeat is back: leaving failsafe, setpoints accepted again")
            self.failsafe = False
            for control in self.controls.values():
                control.in_safe_mode = False
            self._wake.set()

    def _confirmation(self, payload: bytes) -> None:
        try:
            confirmation = decode(DeliveryConfirmation, payload)
        except MessageError as exc:
            log.warning("ignoring a bad delivery confirmation: %s", exc)
            return
        self._confirmed.extend((confirmation.session, first, last) for first, last in confirmation.ranges)
        self._ingest_heard = True

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
        ack = await self._answer(device, setpoint)
        return ack.model_copy(update={"name": setpoint.name, "value": setpoint.value})

    async def _answer(self, device: str, setpoint: Setpoint) -> SetpointAck:
        if self.failsafe:
            # Control is lost: whatever sent this is not the controller whose heartbeat keeps the limits.
            return SetpointAck(
                id=setpoint.id,
                status=SetpointStatus.REJECTED,
                ts=self.clock.now(),
                reason=f"gateway {self.config.gateway} is in failsafe (no live controller heartbeat)",
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

    def _lose_control(self, why: str) -> None:
        """Failsafe: the watchdog puts every device in its safe mode and setpoints are refused."""
        if not self.failsafe:
            log.warning("%s: devices go to safe mode", why)
            self.failsafe = True
            self._wake.set()

    async def watchdog(self) -> None:
        """Safe mode when a setpoint expires or the controller's heartbeat has been missing too long."""
        while True:
            await asyncio.sleep(0.2)
            silent = time.monotonic() - self.last_heartbeat
            if silent > self.config.heartbeat_timeout_s:
                self._lose_control(f"no controller heartbeat for {silent:.0f} s")
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
                if self.ocpp is not None:
                    tasks.append(group.create_task(self.ocpp.serve(), name="ocpp"))
                await stop.wait()
                for task in tasks:
                    task.cancel()
        finally:
            self._flush_deletes()
            for bus in self.buses.values():
                bus.close()
            for gateway in self.mbus_gateways.values():
                gateway.close()
            self.buffer.close()


def _raw_id(payload: bytes) -> str | None:
    """The id of a setpoint that failed validation, when the payload still carries a usable one."""
    try:
        raw = json.loads(payload)
    except ValueError:
        return None
    setpoint_id = raw.get("id") if isinstance(raw, dict) else None
    return setpoint_id if isinstance(setpoint_id, str) and 0 < len(setpoint_id) <= 64 else None
