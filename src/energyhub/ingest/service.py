"""The ingest: every measurement and gateway state from MQTT into InfluxDB, at least once, whatever fails.

Once a batch is written, the ingest confirms to each gateway which of its sequence numbers are stored
(``gw/<gateway>/confirm``); only then does the gateway delete them from its buffer, so a broker that restarts or
routes to no one cannot lose a measurement. A measurement the ingest refuses (dead letter) is confirmed too: it
was handled, and sending it again would not change that. A retained measurement is never confirmed (a gateway
never retains one) and is cleared from the broker.

A message is acknowledged to the broker only after the write that holds it succeeded (or after it went to the dead
letters), in the order received. While InfluxDB is away the batch is retried and held, and the worker reads no
more: with ``max_pending`` messages unacknowledged (MQTT 5 Receive Maximum) the broker keeps the rest in this
worker's persistent session. Several workers in one shared-subscription group split the load; a worker killed
mid-batch gets its unacknowledged messages again when it reconnects with the same client id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from energyhub.domain.clock import Clock, clock_from_env
from energyhub.domain.community import load_community
from energyhub.ingest.metrics import IngestMetrics
from energyhub.ingest.points import DeviceTags, ack_point, measurement_point, state_point
from energyhub.ingest.sequence import SequenceTracker
from energyhub.ingest.settings import IngestSettings
from energyhub.ingest.writer import write_batch
from energyhub.io.influx import InfluxError
from energyhub.io.line_protocol import LineProtocolError, encode_point
from energyhub.io.mqtt import IncomingMessage, MqttLink, MqttLinkError
from energyhub.io.retention import keep_trying, raw_keep_for
from energyhub.io.schema import AGGREGATE_LATE, INGEST, INGEST_GATEWAY
from energyhub.runtime.connection import keep_connected
from energyhub.wire.messages import (
    DeadLetter,
    GatewayState,
    Measurement,
    MessageError,
    SetpointAck,
    confirmations,
    decode,
    encode,
)
from energyhub.wire.readings import not_a_reading
from energyhub.wire.topics import TopicError, TopicInfo, TopicKind, Topics

__all__ = ["IngestService"]

log = logging.getLogger(__name__)
T = TypeVar("T")
SERVICE = "ingest"
PREPARE_SLICE = 500  # messages prepared between two turns of the event loop: some 10 ms
LATE_S = 10.0  # real seconds after its time: a measurement stored later is marked for the aggregator


@dataclass(slots=True)
class _Pending:
    message: IncomingMessage
    gateway: str | None = None
    site: str | None = None  # of the topic
    line: str | None = None
    fields: int = 0
    device_ts: float | None = None  # live measurements only: for the lag
    ts: float | None = None  # measurements: the device's time, for the late marks
    replay: bool = False
    session: int | None = None  # measurements: what to confirm to the gateway
    seq: int | None = None
    retained: bool = False  # a retained measurement: cleared from the broker once dead-lettered
    why: str | None = None  # dead letter: the kind of problem
    reason: str | None = None  # dead letter: the problem in words


class _Refused(Exception):
    """A measurement that parses but cannot be a real reading: a dead letter of kind ``why``."""

    def __init__(self, why: str, reason: str) -> None:
        super().__init__(reason)
        self.why = why


class IngestService:
    def __init__(self, settings: IngestSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        # Device timestamps are on the data clock: lag is measured on it and told in real seconds.
        self.clock = clock or clock_from_env()
        self.topics = Topics(site=settings.site, root=settings.topic_root)
        # Every site this worker reads (several on a core broker that estate brokers bridge to).
        self.site_topics = {site: Topics(site=site, root=settings.topic_root) for site in settings.all_sites}
        self.metrics = IngestMetrics()
        self.tracker = SequenceTracker() if settings.track_gaps else None
        self.known = _device_tags(settings)
        self.influx = settings.influx(
            retention_policy=settings.influx_rp,
            gzip_min_bytes=settings.influx_gzip_min_bytes
            if settings.influx_gzip_min_bytes is not None
            else 2**63,
        )
        self.connected = asyncio.Event()
        self.client_id = f"ehub-ingest-{settings.worker}"
        self._gap_logged: dict[str, float] = {}
        self._topic_info: dict[str, TopicInfo] = {}  # topics repeat every poll: parsed once
        self._filling = 0  # messages in the batch being filled
        self._queued = 0  # in batches handed to the writer, not yet acknowledged

    # -- MQTT ---------------------------------------------------------------------------------------------------
    async def _connect(self) -> MqttLink:
        s = self.settings
        return await s.connect_mqtt(
            self.client_id,
            session_expiry_s=s.session_expiry_s,
            receive_maximum=s.max_pending,
            manual_ack=True,
        )

    def _filters(self) -> list[tuple[str, int]]:
        # One group for all sites: a worker takes its share of every estate, so the load evens out across them.
        filters = [
            f
            for topics in self.site_topics.values()
            for f in (topics.all_measurements(), topics.all_states(), topics.all_acks())
        ]
        if self.settings.share_group:
            filters = [f"$share/{self.settings.share_group}/{f}" for f in filters]
        return [(f, 1) for f in filters]

    async def consume_loop(self) -> None:
        await keep_connected(self._connect, self._subscribed, what="ingest", ready=self.connected)

    async def _subscribed(self, link: MqttLink) -> None:
        # Retain as published: a measurement published with retain is then seen as such, live or stored.
        granted = await link.subscribe(self._filters(), retain_as_published=True)
        if any(code >= 0x80 for code in granted):
            hint = (
                ": on an estate broker bridged to a core, run the ingest against the core (docs/estates.md)"
                if 0x87 in granted
                else ""
            )
            raise MqttLinkError(f"the broker refused the subscriptions (codes {granted}){hint}")
        log.info(
            "connected as %s (%s session), reading %s",
            self.client_id,
            "resumed" if link.session_present else "new",
            ", ".join(f for f, _ in self._filters()),
        )
        self.connected.set()
        await self._consume(link)

    async def _consume(self, link: MqttLink) -> None:
        """Fill batches while the previous one is written: one batch in the writer, one waiting, one filling,
        so the ingest's work overlaps InfluxDB's. The writer takes them in order, so acknowledgements stay in
        the order received; while it is stuck (InfluxDB away) the queue is full and reading stops."""
        s = self.settings
        loop = asyncio.get_running_loop()
        ready: asyncio.Queue[list[_Pending]] = asyncio.Queue(maxsize=1)
        writer = asyncio.create_task(self._write_batches(link, ready))
        batch: list[_Pending] = []
        deadline = 0.0
        try:
            while True:
                timeout = None if not batch else max(0.0, deadline - loop.time())
                got = await self._until_writer_fails(writer, link.wait_messages(timeout))
                if got:
                    if not batch:
                        deadline = loop.time() + s.batch_max_delay_s
                    # A slice at a time: between slices the loop serves the writer's socket, so InfluxDB gets the
                    # body and the acknowledgements go out while this batch fills (bench/ingest.py).
                    room = min(s.batch_max_points - len(batch), PREPARE_SLICE)
                    batch.extend(self._prepare(m) for m in link.take(room))
                    self._filling = len(batch)
                    self._show_pending()
                    if len(batch) < s.batch_max_points and loop.time() < deadline:
                        continue
                if batch:
                    await self._until_writer_fails(writer, ready.put(batch))
                    self._queued += len(batch)
                    self._filling = 0
                    batch = []
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, MqttLinkError):
                await writer
            self._filling = self._queued = 0
            self._show_pending()

    @staticmethod
    async def _until_writer_fails(writer: asyncio.Task[None], step: Coroutine[Any, Any, T]) -> T:
        """Run ``step``, but raise the writer's error (a lost broker connection) as soon as it has one."""
        task = asyncio.ensure_future(step)
        await asyncio.wait({task, writer}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            writer.result()  # raises what stopped the writer
            raise MqttLinkError("the writer stopped")
        return task.result()

    async def _write_batches(self, link: MqttLink, ready: asyncio.Queue[list[_Pending]]) -> None:
        while True:
            batch = await ready.get()
            await self._flush(link, batch)
            self._queued -= len(batch)
            self._show_pending()

    def _show_pending(self) -> None:
        self.metrics.set_pending(self._filling + self._queued)

    # -- one message --------------------------------------------------------------------------------------------
    def _prepare(self, message: IncomingMessage) -> _Pending:
        pending = _Pending(message)
        try:
            info = self._topic_info.get(message.topic)
            if info is None:
                info = self._parse(message.topic)
                if len(self._topic_info) > 100_000:  # bounded: topics are per device, but a client may spray
                    self._topic_info.clear()
                self._topic_info[message.topic] = info
            if info.gateway is None:
                raise TopicError(f"{message.topic!r} names no gateway")
            pending.gateway, pending.site = info.gateway, info.site
            if info.kind is TopicKind.MEASUREMENT and info.device is not None:
                if message.retained:
                    pending.retained = True
                    raise _Refused(
                        "retained",
                        "a retained measurement (a gateway never retains one: it would reach every new "
                        "subscriber as if it were current); cleared from the broker",
                    )
                measurement = decode(Measurement, message.payload)
                self.metrics.message("measurement")
                pending.session, pending.seq = measurement.session, measurement.seq
                pending.ts, pending.replay = measurement.ts.timestamp(), measurement.replay
                self._check_reading(info.gateway, info.device, measurement)
                pending.line, pending.fields = measurement_point(
                    info.site, info.gateway, info.device, measurement, self.known, message.payload
                )
                if measurement.replay:
                    self.metrics.replay(info.gateway)
                else:
                    pending.device_ts = measurement.ts.timestamp()
                if self.tracker is not None:
                    tracked = self._tracked(info.site, info.gateway)
                    missing = self.tracker.see(tracked, measurement.session, measurement.seq)
                    if missing:
                        self._log_gap(tracked, measurement.session, missing, measurement.seq)
            elif info.kind is TopicKind.STATE:
                state = decode(GatewayState, message.payload)
                self.metrics.message("state")
                pending.line, pending.fields = state_point(info.site, info.gateway, state)
                if self.tracker is not None and state.online and not message.retained:
                    self.tracker.state(self._tracked(info.site, info.gateway), state.session, state.held_from)
            elif info.kind is TopicKind.ACK and info.device is not None:
                ack = decode(SetpointAck, message.payload)
                self.metrics.message("ack")
                pending.line, pending.fields = ack_point(
                    info.site, info.gateway, info.device, ack, self.known
                )
            else:
                raise TopicError(
                    f"{message.topic!r} is neither a measurement, a gateway state nor a setpoint acknowledgement"
                )
        except _Refused as exc:
            pending.why, pending.reason = exc.why, str(exc)
        except TopicError as exc:
            pending.why, pending.reason = "topic", str(exc)
        except MessageError as exc:
            pending.why, pending.reason = "payload", str(exc)
        except LineProtocolError as exc:
            pending.why, pending.reason = "point", str(exc)
        if pending.why is not None:
            self.metrics.message("rejected")
        return pending

    def _tracked(self, site: str, gateway: str) -> str:
        """The gap tracker's name of a gateway: ``<site>/<gateway>`` when several sites may share gateway ids."""
        return gateway if len(self.site_topics) == 1 else f"{site}/{gateway}"

    def _parse(self, topic: str) -> TopicInfo:
        """Parse ``topic`` with the topics of its own site (the level after the root), one this worker reads."""
        root = self.settings.topic_root + "/"
        site = topic[len(root) :].split("/", 1)[0] if topic.startswith(root) else ""
        topics = self.site_topics.get(site)
        if topics is None:
            raise TopicError(
                f"topic {topic!r} is not under {root}<site>/ for a site this ingest reads "
                f"({', '.join(self.site_topics)})"
            )
        return topics.parse(topic)

    def _check_reading(self, gateway: str, device: str, measurement: Measurement) -> None:
        """Refuse what cannot be a reading of this estate: a time far ahead or never set, an unknown device."""
        why = not_a_reading(measurement, self.clock, self.settings.max_ahead_s)
        if why is not None:
            raise _Refused("timestamp", why)
        if self.known and self.settings.known_devices_only and f"{gateway}/{device}" not in self.known:
            raise _Refused(
                "device",
                f"device {device!r} of gateway {gateway!r} is not in the community file "
                f"{self.settings.community}: add it there, or set known_devices_only: false",
            )

    def _log_gap(self, gateway: str, session: int, missing: int, seq: int) -> None:
        # At most one line per gateway a minute: a gateway that loses messages all the time must not flood the log.
        now = time.monotonic()
        if now - self._gap_logged.get(gateway, -1e9) < 60:
            return
        self._gap_logged[gateway] = now
        log.warning(
            "gateway %s session %d: %d measurement(s) missing before seq %d (%d missing now; logged once a "
            "minute at most)",
            gateway,
            session,
            missing,
            seq,
            self.tracker.missing(gateway) if self.tracker is not None else 0,
        )

    # -- one batch ----------------------------------------------------------------------------------------------
    async def _flush(self, link: MqttLink, batch: list[_Pending]) -> None:
        writable = [p for p in batch if p.line is not None]
        lines = [p.line for p in writable if p.line is not None]
        refused = await write_batch(
            self.influx,
            lines,
            retry_max_s=self.settings.retry_max_s,
            on_retry=lambda _e: self.metrics.retry(),
        )
        for index, reason in refused:
            writable[index].why, writable[index].reason = "influxdb", f"InfluxDB refused the point: {reason}"
        now = self.clock.timestamp()
        stored = [p for p in writable if p.why is None]
        self.metrics.stored(
            len(stored), sum(p.fields for p in stored), Counter(p.gateway for p in stored if p.gateway)
        )
        for p in stored:
            if p.device_ts is not None:
                self.metrics.lag(self.clock.real_s(now - p.device_ts), p.gateway)
        await self._mark_late(stored)
        dead = [p for p in batch if p.why is not None]
        if dead:
            await self._dead_letters(link, dead)
        self._confirm(link, batch)
        # Only now does the broker forget them: a crash before this line gets them all again.
        link.ack([p.message for p in batch])

    async def _mark_late(self, stored: list[_Pending]) -> None:
        """Tell the aggregator which stored measurements came late (replayed, or stored ``LATE_S`` real seconds
        or more after their time), per site: it does their quarter hours again. Written before the broker is
        acknowledged, so a crash in between stores (and marks) them again."""
        now = self.clock.timestamp()
        spans: dict[str, tuple[float, float, int]] = {}
        for p in stored:
            if p.ts is None or not (p.replay or self.clock.real_s(now - p.ts) >= LATE_S):
                continue
            site = p.site or self.topics.site
            low, high, n = spans.get(site, (p.ts, p.ts, 0))
            spans[site] = (min(low, p.ts), max(high, p.ts), n + 1)
        if not spans:
            return
        at = int(now * 1e9)
        lines = [
            encode_point(
                AGGREGATE_LATE,
                {"site": site, "worker": self.settings.worker},
                {"from_ns": int(low * 1e9), "to_ns": int(high * 1e9), "count": n},
                at,
            )
            for site, (low, high, n) in spans.items()
        ]
        await write_batch(self.influx, lines, retry_max_s=self.settings.retry_max_s, on_retry=lambda _e: None)

    def _confirm(self, link: MqttLink, batch: list[_Pending]) -> None:
        """Tell each gateway which of its sequence numbers are handled (stored, or dead letters), as ranges.

        Not awaited: a confirmation lost on the way only makes the gateway send those measurements again.
        """
        handled: defaultdict[tuple[str, str, int], list[int]] = defaultdict(list)
        for p in batch:
            if p.gateway is not None and p.session is not None and p.seq is not None:
                handled[p.site or self.topics.site, p.gateway, p.session].append(p.seq)
        messages = []
        now = self.clock.now()
        for (site, gateway, session), seqs in handled.items():
            # To the gateway's own site: on a core broker only that estate's bridge takes it back.
            topics = self.site_topics.get(site, self.topics)
            for confirmation in confirmations(session, seqs, now):
                messages.append((topics.confirm(gateway), encode(confirmation)))
            if self.tracker is not None:
                tracked = self._tracked(site, gateway)
                self.metrics.set_missing(tracked, self.tracker.missing(tracked))
        cleared = [(p.message.topic, b"") for p in batch if p.retained]
        if messages:
            link.publish_batch(messages)
        if cleared:
            link.publish_batch(cleared, retain=True)

    async def _dead_letters(self, link: MqttLink, dead: list[_Pending]) -> None:
        letters = []
        for p in dead:
            # Under the site it came from (the bridge takes nothing back, but the core's readers see it there).
            topic = self.site_topics.get(p.site or "", self.topics).deadletter(SERVICE)
            why, reason = p.why or "unknown", p.reason or "no reason recorded"
            self.metrics.dead_letter(why)
            log.warning("dead letter from %r: %s", p.message.topic[:200], reason[:300])
            letter = DeadLetter(
                service=SERVICE,
                topic=p.message.topic,
                reason=reason[:2000],
                payload_b64=base64.b64encode(p.message.payload).decode(),
                size=len(p.message.payload),
                ts=self.clock.now(),
            )
            letters.append((topic, encode(letter)))
        sent = link.publish_batch(letters)
        await link.wait(sent.done)
        if sent.refused:
            log.error("the broker refused %d dead letter(s): check the ingest's ACL", len(sent.refused))

    # -- the ingest's own figures -------------------------------------------------------------------------------
    async def metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.metrics_interval_s)
            await self.write_own_metrics()

    async def write_own_metrics(self) -> None:
        now = int(self.clock.timestamp() * 1e9)  # on the data clock, beside the data they describe
        site, worker = self.topics.site, self.settings.worker
        lines = [encode_point(INGEST, {"site": site, "worker": worker}, self.metrics.snapshot(), now)]
        lags = self.metrics.gateway_lags()
        for gateway in sorted(set(self.metrics.replayed) | set(self.metrics.gaps) | set(lags)):
            fields: dict[str, float | int] = {
                "replayed": self.metrics.replayed[gateway],
                "gaps": self.metrics.gaps[gateway],
            }
            if gateway in lags:
                fields["lag_s"] = lags[gateway]
            lines.append(
                encode_point(
                    INGEST_GATEWAY, {"site": site, "gateway": gateway, "worker": worker}, fields, now
                )
            )
        try:
            await self.influx.write(lines)
        except InfluxError as exc:
            log.warning("could not write the ingest's own figures: %s", exc)

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        if s.metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(s.metrics_port, addr=s.metrics_host, registry=self.metrics.registry)
            log.info("Prometheus metrics on http://%s:%d/metrics", s.metrics_host, s.metrics_port)
        log.info(
            "ingest %s: MQTT %s:%d -> InfluxDB %s/%s",
            self.client_id,
            s.mqtt_host,
            s.mqtt_port,
            s.influx_url,
            s.influx_db,
        )
        try:
            # The database and its policies before the first write (a missing database refuses them), raw kept
            # long enough for this run's data clock.
            await keep_trying(self.influx, raw_keep_for(s.raw_retention_days, self.clock), stop, 2.0)
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self.consume_loop(), name="consume"),
                    group.create_task(self.metrics_loop(), name="metrics"),
                ]
                await stop.wait()
                for task in tasks:
                    task.cancel()
        finally:
            with contextlib.suppress(Exception):
                await self.write_own_metrics()
            await self.influx.aclose()


def _device_tags(settings: IngestSettings) -> dict[str, DeviceTags]:
    if settings.community is None:
        return {}
    community = load_community(settings.community)
    return {
        f"{community.gateway_of(connection, device)}/{device.id}": DeviceTags(
            connection.id, device.role.value
        )
        for connection, device in community.devices()
    }
