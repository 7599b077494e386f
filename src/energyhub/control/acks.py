"""Setpoint acknowledgements as control hears them: counted per gateway and in total, matched to what it sent.

A gateway answers every setpoint with a ``SetpointAck`` (applied or rejected, with a reason) on its own
``gw/<gateway>/ack/<device>`` topic, which only that gateway may publish to. Control counts every ack it hears,
matches one to the setpoint it sent by id where it can (an ack to the API's override, or to a setpoint sent before
a restart, is counted but not matched), and logs a rejection with its reason: at most once a minute per device
and kind of reason, so a device that refuses every cycle does not flood the log. A reason's numbers are not part
of its kind ("... 12.5 is outside [50, 100]" and "... 13 is outside [50, 100]" are one kind). The counts go into
``control_cycle`` each cycle (``record.py``); the ingest stores each ack itself (``setpoint_ack``).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass

from energyhub.wire.messages import MessageError, SetpointAck, SetpointStatus, decode

__all__ = ["ACK_LOG_EVERY_S", "AckCounts", "SentSetpoint", "SetpointAcks"]

log = logging.getLogger(__name__)
ACK_LOG_EVERY_S = 60.0
# Setpoints waiting for their ack; beyond this many the oldest are forgotten (a gateway that never answers must
# not grow control's memory: an estate's few hundred devices send a few hundred a minute).
WAITING_KEPT = 20_000
LOGGED_KEPT = 1_000  # kinds of rejection remembered for the log's once a minute; pruned beyond
_NUMBER = re.compile(r"[-+]?\d+(?:[.:]\d+)*")


@dataclass(frozen=True, slots=True)
class SentSetpoint:
    gateway: str
    device: str
    name: str
    value: float


@dataclass(slots=True)
class AckCounts:
    applied: int = 0
    rejected: int = 0

    def add(self, status: SetpointStatus) -> None:
        if status is SetpointStatus.APPLIED:
            self.applied += 1
        else:
            self.rejected += 1


@dataclass(slots=True)
class _Logged:
    at: float
    suppressed: int = 0


class SetpointAcks:
    def __init__(self, *, log_every_s: float = ACK_LOG_EVERY_S, kept: int = WAITING_KEPT) -> None:
        self.total = AckCounts()
        self.gateways: dict[str, AckCounts] = {}
        self.matched = 0  # acks to a setpoint this control sent
        self.unmatched = 0  # acks to setpoints it did not send (the API's overrides, a run before a restart)
        self.ignored = 0  # retained (old, from the broker's store) or not an ack at all
        self.last_rejection: dict[tuple[str, str], str] = {}  # (gateway, device) -> its latest reason
        self.log_every_s = log_every_s
        self._kept = kept
        self._waiting: OrderedDict[str, SentSetpoint] = OrderedDict()
        self._logged: dict[tuple[str, str, str], _Logged] = {}

    def sent(self, setpoint_id: str, setpoint: SentSetpoint) -> None:
        """Remember a setpoint control publishes, so that its ack can be matched to it."""
        self._waiting[setpoint_id] = setpoint
        while len(self._waiting) > self._kept:
            self._waiting.popitem(last=False)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def take(self, gateway: str, device: str, payload: bytes, *, retained: bool, mono: float) -> None:
        """One message off ``gw/<gateway>/ack/<device>``; ``mono`` is when it came (monotonic seconds).
        Raises ``MessageError`` when it is no ack."""
        if retained:
            self.ignored += 1  # an ack is never retained: one from the broker's store is old news
            return
        try:
            ack = decode(SetpointAck, payload)
        except MessageError:
            self.ignored += 1
            raise
        self.count(gateway, device, ack, mono)

    def count(self, gateway: str, device: str, ack: SetpointAck, mono: float) -> SentSetpoint | None:
        """Count ``ack`` and return the setpoint it answers, if control sent it."""
        self.total.add(ack.status)
        self.gateways.setdefault(gateway, AckCounts()).add(ack.status)
        sent = self._waiting.get(ack.id)
        # Matched only on the topic it was sent to: an id is no secret to a gateway that saw it.
        if sent is not None and (sent.gateway, sent.device) == (gateway, device):
            del self._waiting[ack.id]
            self.matched += 1
        else:
            sent = None
            self.unmatched += 1
        if ack.status is SetpointStatus.REJECTED:
            self._rejected(gateway, device, ack, sent, mono)
        return sent

    def _rejected(
        self, gateway: str, device: str, ack: SetpointAck, sent: SentSetpoint | None, mono: float
    ) -> None:
        reason = ack.reason or "no reason given"
        self.last_rejection[(gateway, device)] = reason
        key = (gateway, device, _NUMBER.sub("#", reason))
        logged = self._logged.get(key)
        if logged is not None and mono - logged.at < self.log_every_s:
            logged.suppressed += 1
            return
        # The setpoint's name from the ack itself where the gateway gives it (newer gateways do), else from ours.
        name = getattr(ack, "name", None) or (sent.name if sent else "a setpoint")
        what = f"{name} {sent.value:g}" if sent is not None else name
        more = f" ({logged.suppressed} more like it since)" if logged and logged.suppressed else ""
        log.warning("%s/%s rejected %s (setpoint %s): %s%s", gateway, device, what, ack.id, reason, more)
        self._logged[key] = _Logged(mono)
        if len(self._logged) > LOGGED_KEPT:
            self._logged = {k: v for k, v in self._logged.items() if mono - v.at < self.log_every_s}
