"""The process-image phase of an online cycle: messages in as they come, one frozen snapshot per cycle.

Like a PLC's input image: between cycles every measurement goes to ``LiveState`` (the newest per device) and every
setpoint acknowledgement to ``SetpointAcks``; at the start of a cycle ``freeze`` copies what the decision needs
into arrays (``snapshot.py``), books the quarter hour's energy up to now (the decision budgets the rest of the
quarter hour on it, so it is booked first) and smooths the inferred load. A measurement is never retained, so a
retained one (which the broker hands every new subscriber) is not a reading, nor is one dated well ahead of the
data clock (``MeasurementGate``).
"""

from __future__ import annotations

import logging
from datetime import datetime

import numpy as np
import numpy.typing as npt

from energyhub.control.acks import SetpointAcks
from energyhub.control.quarter_hour import QuarterHourBook
from energyhub.control.snapshot import LiveState, Snapshot
from energyhub.domain.clock import Clock
from energyhub.domain.network import Network
from energyhub.domain.topology import Community
from energyhub.io.mqtt import IncomingMessage
from energyhub.wire.messages import MessageError
from energyhub.wire.readings import MeasurementGate
from energyhub.wire.topics import TopicError, TopicKind, Topics

__all__ = ["MAX_GAP_REAL_S", "ProcessImage"]

log = logging.getLogger(__name__)
Array = npt.NDArray[np.float64]
MAX_GAP_REAL_S = (
    10.0  # at most this many real seconds of power are booked at once (after a pause: not a whole ISP)
)


class ProcessImage:
    def __init__(
        self,
        community: Community,
        network: Network,
        topics: Topics,
        clock: Clock,
        acks: SetpointAcks,
        *,
        stale_after_s: float,
        max_ahead_s: float,
        cycle_s: float,
        load_smoothing_s: float,
    ) -> None:
        self.topics = topics
        self.acks = acks
        self.state = LiveState(community, network, stale_after_s=stale_after_s)
        self.gate = MeasurementGate(clock, max_ahead_s)
        self.quarter = QuarterHourBook(network)
        self._max_gap_s = clock.data_s(MAX_GAP_REAL_S)
        # A first-order filter's step per cycle, on the inferred load.
        self._alpha = cycle_s / (cycle_s + load_smoothing_s)
        self._load_estimate: Array | None = None

    def take(self, message: IncomingMessage, mono: float) -> None:
        """One message off the broker (``mono``: when it came, monotonic seconds)."""
        try:
            info = self.topics.parse(message.topic)
            if info.gateway is None or info.device is None:
                return
            if info.kind is TopicKind.MEASUREMENT:
                measurement = self.gate.admit(message.topic, message.payload, retained=message.retained)
                if measurement is not None:
                    self.state.update(info.gateway, info.device, measurement)
            elif info.kind is TopicKind.ACK:
                self.acks.take(
                    info.gateway, info.device, message.payload, retained=message.retained, mono=mono
                )
        except (TopicError, MessageError) as exc:
            log.debug("ignoring %s: %s", message.topic, exc)  # the ingest dead-letters these

    def freeze(self, now: datetime, mono: float) -> Snapshot:
        """This cycle's snapshot: ``now`` on the data clock, ``mono`` the monotonic time (what is stale)."""
        snap = self.state.snapshot(mono)
        self.quarter.account(now, snap, self.state.energy, self._max_gap_s)
        # The load is inferred (meter minus devices), and a meter and an inverter are never read at the same
        # instant: a step in PV shows in one a poll before the other. Acting on that difference at once makes
        # the loop swing, so the inferred load is smoothed over a few seconds.
        if self._load_estimate is None:
            self._load_estimate = snap.load_kw.copy()
        else:
            self._load_estimate += self._alpha * (snap.load_kw - self._load_estimate)
        snap.load_kw = self._load_estimate.copy()
        return snap
