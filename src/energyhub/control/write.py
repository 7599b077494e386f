"""The write phase of an online cycle: the heartbeat, then the setpoints that changed or are about to expire.

The heartbeat is retained, and its Last Will (alive=false, set at connect) tells every gateway at once that
control is gone. It goes first: a gateway in failsafe refuses setpoints until a fresh heartbeat, and the broker
keeps one publisher's messages in order, so this cycle's setpoints are taken. Every setpoint carries an expiry,
so the edge falls back to its safe mode by itself when control stops sending.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from energyhub.control.acks import SentSetpoint, SetpointAcks
from energyhub.control.cycle import SetpointOut
from energyhub.io.mqtt import MqttLink
from energyhub.wire.messages import ControllerHeartbeat, Setpoint, encode
from energyhub.wire.topics import Topics

__all__ = ["SEND_THRESHOLD_KW", "Sent", "SetpointWriter"]

log = logging.getLogger(__name__)
SEND_THRESHOLD_KW = 0.1  # a changed setpoint goes out at once when it moves this much power
REFUSED_LOG_S = 60.0


@dataclass
class Sent:
    value: float
    at: float  # monotonic seconds


class SetpointWriter:
    def __init__(self, topics: Topics, acks: SetpointAcks, *, ttl_s: float, data_ttl_s: float) -> None:
        self.topics = topics
        self.acks = acks
        self.ttl_s = ttl_s  # real seconds: when an unchanged setpoint is sent again
        self.data_ttl_s = data_ttl_s  # the same on the data clock: its expiry
        self.sent: dict[tuple[str, str, str], Sent] = {}  # (gateway, device, name) -> last sent
        self.refused = 0  # setpoints the broker refused (its PUBACK's reason code)
        self._refused_logged = -math.inf

    def due(self, setpoints: list[SetpointOut], now: datetime, mono: float) -> list[tuple[str, bytes]]:
        """The setpoints to send now, as (topic, payload); each is remembered as sent (and for its ack)."""
        outgoing: list[tuple[str, bytes]] = []
        for gateway, device, name, value, unit_kw, why in setpoints:
            key = (gateway, device, name)
            last = self.sent.get(key)
            # Unchanged setpoints are sent again well before they expire, changed ones at once: changed by what
            # moves SEND_THRESHOLD_KW (a fixed 0.5 % step once let 2 kW of four inverters' PV out at a zero limit).
            unchanged = last is not None and abs(last.value - value) * unit_kw < SEND_THRESHOLD_KW
            if last is not None and unchanged and mono - last.at < self.ttl_s / 3:
                continue
            setpoint = Setpoint(
                id=uuid.uuid4().hex[:16],
                name=name,
                value=value,
                created=now,
                expires=now + timedelta(seconds=self.data_ttl_s),
                reason=why[:200],
            )
            self.acks.sent(setpoint.id, SentSetpoint(gateway, device, name, value))
            outgoing.append((self.topics.setpoint(gateway, device), encode(setpoint)))
            self.sent[key] = Sent(value, mono)
        return outgoing

    async def write(
        self,
        link: MqttLink,
        beat: ControllerHeartbeat,
        setpoints: list[SetpointOut],
        now: datetime,
        mono: float,
    ) -> int:
        """Publish the heartbeat, then the setpoints due; the number of setpoints sent."""
        await link.publish(self.topics.heartbeat(), encode(beat), qos=1, retain=True)
        outgoing = self.due(setpoints, now, mono)
        # In one write: awaited one by one, each PUBACK's round trip added up to a quarter second a cycle with
        # the whole estate's inverters changing.
        batch = link.publish_batch(outgoing, qos=1)
        await link.wait(batch.done)
        if batch.refused:
            self._log_refused(outgoing, batch.refused, mono)
        return len(outgoing) - len(batch.refused)

    def _log_refused(
        self, outgoing: list[tuple[str, bytes]], refused: list[tuple[int, int]], mono: float
    ) -> None:
        self.refused += len(refused)
        if mono - self._refused_logged < REFUSED_LOG_S:
            return
        self._refused_logged = mono
        index, reason = refused[0]
        log.warning(
            "the broker refused %d setpoints (%d so far), e.g. on %s (reason 0x%02x): check control's account",
            len(refused),
            self.refused,
            outgoing[index][0],
            reason,
        )
