"""The online loop: measurements in, one decision per cycle, setpoints with expiry and a heartbeat out.

Each cycle (``cycle_s``, 1 s by default) runs four phases, each in a module of its own:

1. **process image** (``image.py``): freeze the latest state of every device into a snapshot, book the quarter
   hour's energy so far;
2. **decide** (``cycle.py``): a pure function of the snapshot and control's state, no I/O and no clock read;
3. **write** (``write.py``): the retained heartbeat, then the setpoints that changed or are about to expire;
4. **record** (``record.py``): count the cycle, write its points to InfluxDB.

Between cycles the day-ahead folder is looked at (``day_ahead.py``), and messages are taken in as they come:
measurements into the process image, setpoint acknowledgements into ``acks.py``. One ``MqttLink`` is kept up by
``keep_connected``; its Last Will (heartbeat alive=false) tells every gateway at once when control is gone, and a
clean stop says so itself. Settings and the keepalive's check against the failsafe timeout: ``settings.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from datetime import datetime

import numpy as np
import numpy.typing as npt

from energyhub.control.acks import SetpointAcks
from energyhub.control.cycle import ControlState, Decision, decide, rest_of_quarter_hour
from energyhub.control.day_ahead import DayAheadReload
from energyhub.control.dispatch import DispatchResult
from energyhub.control.image import ProcessImage
from energyhub.control.policies import Policy
from energyhub.control.record import Recorder
from energyhub.control.registry import online_policy
from energyhub.control.settings import ControlSettings, load_control_settings, will_after_s
from energyhub.control.simulate import ShareKeyError, share_key
from energyhub.control.snapshot import LiveState, Snapshot
from energyhub.control.write import Sent, SetpointWriter
from energyhub.domain.bookings import BookingStore
from energyhub.domain.clock import Clock, clock_from_env
from energyhub.domain.community import load_community
from energyhub.domain.limits import LimitBook
from energyhub.domain.network import Network
from energyhub.io.mqtt import MqttLink, MqttLinkError, Will
from energyhub.runtime.connection import keep_connected
from energyhub.runtime.layered_settings import SettingsError
from energyhub.wire.messages import ControllerHeartbeat, encode
from energyhub.wire.readings import MeasurementGate
from energyhub.wire.topics import Topics

__all__ = ["ControlSettings", "OnlineController", "load_control_settings", "will_after_s"]

log = logging.getLogger(__name__)
Array = npt.NDArray[np.float64]
TAKE_AT_ONCE = 1000  # messages taken per wake-up: a burst in one go, without starving the cycle
GOODBYE_S = 5.0  # how long a stop waits for the cycle in progress and the goodbye heartbeat


class OnlineController:
    def __init__(self, settings: ControlSettings, *, clock: Clock | None = None) -> None:
        self.settings = s = settings
        # Quarter hours, contract windows and timestamps on the data clock; the cycle and TTLs in real time.
        self.clock = clock or clock_from_env()
        self.community = load_community(s.community)
        self.network = Network.from_community(self.community)
        self.topics = Topics(site=s.site or self.community.community.id, root=s.topic_root)
        self.day_ahead = DayAheadReload(self.community, s.day_ahead_dir)
        self.bookings = BookingStore(s.bookings_dir) if s.bookings_dir is not None else None
        self._bookings_stamp: tuple[int, int] = (0, 0)
        self.acks = SetpointAcks()
        self.image = ProcessImage(
            self.community,
            self.network,
            self.topics,
            self.clock,
            self.acks,
            stale_after_s=s.stale_after_s,
            max_ahead_s=s.max_ahead_s,
            cycle_s=s.cycle_s,
            load_smoothing_s=s.load_smoothing_s,
        )
        try:
            keys = share_key(self.network, s.share_key, s.priority)
        except ShareKeyError as exc:
            raise SettingsError(f"priority: {exc}") from None
        self.control = ControlState(
            network=self.network,
            devices=self.state.devices,
            battery_index=self.state.battery_index,
            charger_index=self.state.charger_index,
            policy=online_policy(s.policy).build(self.network),
            keys=keys,
            book=self.day_ahead.book,
            quarter=self.image.quarter,
            margin=s.margin,
            margin_kw=s.margin_kw,
        )
        self.refresh_day_ahead()
        self.refresh_bookings(self.clock.now())
        self.writer = SetpointWriter(
            self.topics, self.acks, ttl_s=s.setpoint_ttl_s, data_ttl_s=self.clock.data_s(s.setpoint_ttl_s)
        )
        self.influx = s.influx()
        self.recorder = Recorder(self.influx, self.network, self.topics.site, self.policy.name)
        self.connected = asyncio.Event()  # set while a link is up and subscribed
        self.last_decision: Decision | None = None
        self.last_snapshot: Snapshot | None = None

    # -- what tests and callers look at ---------------------------------------------------------------------------
    @property
    def state(self) -> LiveState:
        return self.image.state

    @property
    def gate(self) -> MeasurementGate:
        return self.image.gate

    @property
    def policy(self) -> Policy:
        return self.control.policy

    @property
    def book(self) -> LimitBook:
        return self.control.book

    @property
    def day_ahead_problems(self) -> list[str]:
        return self.day_ahead.problems

    @property
    def last(self) -> DispatchResult | None:
        return self.last_decision.result if self.last_decision else None

    @property
    def sent(self) -> dict[tuple[str, str, str], Sent]:
        return self.writer.sent

    @property
    def cycles(self) -> int:
        return self.recorder.cycles

    @property
    def infeasible_cycles(self) -> int:
        return self.recorder.infeasible_cycles

    @property
    def cycle_ms(self) -> deque[float]:
        return self.recorder.cycle_ms

    def refresh_day_ahead(self) -> bool:
        """Merge the uploaded day-ahead profiles into the contracts if the folder changed; True if it did."""
        changed = self.day_ahead.reload(time.monotonic())
        self.control.book = self.day_ahead.book
        return changed

    def refresh_bookings(self, now: datetime) -> None:
        """The plaza bookings whose departure is ahead, into the process image (read when the folder changed,
        and pruned of the departed at every look)."""
        if self.bookings is None:
            return
        stamp = self.bookings.stamp()
        if stamp != self._bookings_stamp:
            self._bookings_stamp = stamp
            found, problems = self.bookings.load()
            for problem in problems:
                log.warning("plaza booking not used: %s", problem)
            self.state.bookings = {f"{c}/{d}": b for (c, d), b in found.items()}
        self.state.bookings = {k: b for k, b in self.state.bookings.items() if b.departure > now}

    def _limits_now(self, now: datetime, load_kw: Array | None = None) -> tuple[Array, Array, Array, Array]:
        """What a cycle at ``now`` would aim at per node: (import, export) for the rest of the quarter hour, and
        the limits with the margin."""
        s = self.settings
        quarter = self.image.quarter
        aims = rest_of_quarter_hour(
            self.book, self.network, now, quarter.energy_kwh, load_kw, s.margin, s.margin_kw
        )
        return aims.imp_rest, aims.exp_rest, aims.imp, aims.exp

    # -- one cycle ------------------------------------------------------------------------------------------------
    def _heartbeat(self, alive: bool, ts: datetime | None = None) -> ControllerHeartbeat:
        return ControllerHeartbeat(
            alive=alive,
            ts=ts or self.clock.now(),
            cycle=self.cycles,
            period_s=self.settings.cycle_s,
            policy=self.policy.name,
        )

    async def cycle(self, link: MqttLink) -> None:
        started = time.perf_counter()
        now, mono = self.clock.now(), time.monotonic()
        if self.day_ahead.due(mono):
            self.refresh_day_ahead()
            self.refresh_bookings(now)
        snap = self.image.freeze(now, mono)
        decision = decide(self.control, snap, now)
        self.last_decision, self.last_snapshot = decision, snap
        sent = await self.writer.write(link, self._heartbeat(True, now), decision.setpoints, now, mono)
        ms = (time.perf_counter() - started) * 1000
        self.recorder.book(decision, ms, mono)
        await self.recorder.write(
            now, decision, snap, self.image.quarter, ms=ms, sent=sent, acks=self.acks.total
        )

    async def _cycles(self, link: MqttLink, stop: asyncio.Event) -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            await self.cycle(link)
            next_at += self.settings.cycle_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))

    # -- the broker -----------------------------------------------------------------------------------------------
    async def _connect(self) -> MqttLink:
        will = Will(self.topics.heartbeat(), encode(self._heartbeat(alive=False)), qos=1, retain=True)
        return await self.settings.connect_mqtt(
            f"ehub-control-{uuid.uuid4().hex[:6]}",
            will=will,
            # Short: the broker sends the Will after 1.5 x keepalive of silence (a hung process).
            keepalive_s=self.settings.mqtt_keepalive_s,
        )

    async def _subscribe(self, link: MqttLink) -> None:
        # Retain as published: a measurement published retained shows as such live too, not only when the broker
        # hands it out from its store. Acks at QoS 1: a count that loses some is no count.
        filters = [(self.topics.all_measurements(), 0), (self.topics.all_acks(), 1)]
        measurements, acks = await link.subscribe(filters, retain_as_published=True)
        if measurements >= 0x80:
            raise MqttLinkError(
                f"the broker refused control's measurement subscription (code 0x{measurements:02x})"
            )
        if acks >= 0x80:
            log.warning(
                "the broker refused the acknowledgement subscription (0x%02x): acks go uncounted", acks
            )

    async def _receive(self, link: MqttLink) -> None:
        while True:
            await link.wait_messages(None)  # raises when the link ends
            mono = time.monotonic()
            for message in link.take(TAKE_AT_ONCE):
                self.image.take(message, mono)

    async def _serve(self, link: MqttLink, stop: asyncio.Event) -> None:
        """One connection's life: subscribe, then take messages in and run cycles until ``stop`` or the link
        breaks (``MqttLinkError``: ``keep_connected`` connects again)."""
        await self._subscribe(link)
        # Set until the goodbye is out: a stop waits for it while it is set.
        self.connected.set()
        log.info("connected to the broker at %s:%s", self.settings.mqtt_host, self.settings.mqtt_port)
        try:
            tasks = [asyncio.create_task(self._receive(link)), asyncio.create_task(self._cycles(link, stop))]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                task.result()  # a lost link, or a bug: raised here, not lost in a task
            # A clean stop: say so at once, rather than let the gateways wait for the timeout; then no Will.
            goodbye = encode(self._heartbeat(alive=False))
            await link.publish(self.topics.heartbeat(), goodbye, qos=1, retain=True)
            await link.disconnect()
        finally:
            self.connected.clear()

    async def run(self, stop: asyncio.Event) -> None:
        session = asyncio.create_task(
            keep_connected(self._connect, lambda link: self._serve(link, stop), what="control")
        )
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([session, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not session.done() and self.connected.is_set():
                # Connected: the session ends its cycle and says goodbye itself.
                await asyncio.wait([session], timeout=GOODBYE_S)
        finally:
            for task in (session, stopping):
                task.cancel()
            await asyncio.gather(session, stopping, return_exceptions=True)
            await self.influx.aclose()
        if session.done() and not session.cancelled():
            session.result()  # a failure that is not the broker's (those keep_connected retries) ends the run
