"""Setpoint acknowledgements: what the API heard since it started, and what the ingest stored in InfluxDB.

A gateway answers every setpoint with a ``SetpointAck`` (applied or rejected, with a reason) on its own
``gw/<gateway>/ack/<device>`` topic, which only that gateway may publish to. ``AckBook`` counts them per gateway,
keeps each gateway's last rejection, and matches them to the overrides this API sent, so an operator can see
whether an override took. The ingest stores every ack as the ``setpoint_ack`` measurement (tags ``gateway``,
``device``, ``status``, and ``connection``, ``role`` and ``site`` where known; fields ``id``, and where given
``name``, ``reason``, ``readback``, ``value``); ``acks_query`` reads it back.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from energyhub.io.influx import Series
from energyhub.io.schema import SETPOINT_ACK, SETPOINT_ACK_FIELDS
from energyhub.wire.messages import SetpointAck, SetpointStatus

__all__ = [
    "ACK_COLUMNS",
    "SETPOINT_ACK",
    "SETPOINT_ID",
    "AckBook",
    "AckRecord",
    "GatewayAcks",
    "SentOverride",
    "ack_rows",
    "acks_query",
]

# Tags and fields of a stored ack (the ingest writes it; its names are in energyhub.io.schema); a missing tag or
# field comes back null.
ACK_COLUMNS = ("gateway", "device", "status", *SETPOINT_ACK_FIELDS, "connection", "role")
# What a setpoint id may be to be looked up: Setpoint.id allows any 1-64 characters, but this goes into InfluxQL
# between quotes, so only characters that need no escaping there.
SETPOINT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True, slots=True)
class AckRecord:
    """One acknowledgement as the API heard it: the gateway and device from its topic, the rest its payload."""

    gateway: str
    device: str
    id: str
    status: SetpointStatus
    ts: datetime
    name: str | None = None
    reason: str | None = None
    readback: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "gateway": self.gateway,
            "device": self.device,
            "id": self.id,
            "status": self.status.value,
            "ts": self.ts.isoformat(),
            "name": self.name,
            "reason": self.reason,
            "readback": self.readback,
        }


@dataclass(slots=True)
class GatewayAcks:
    applied: int = 0
    rejected: int = 0
    last_rejection: AckRecord | None = None

    def to_json(self) -> dict[str, Any]:
        last = self.last_rejection
        return {
            "applied": self.applied,
            "rejected": self.rejected,
            "last_rejection": None
            if last is None
            else {k: v for k, v in last.to_json().items() if k not in ("gateway", "status")},
        }


@dataclass(slots=True)
class SentOverride:
    """An override this API published, and the gateway's answer once it came."""

    id: str
    gateway: str
    device: str
    name: str
    value: float
    created: datetime
    expires: datetime
    topic: str
    ack: AckRecord | None = None

    def to_json(self, now: datetime) -> dict[str, Any]:
        if self.ack is None:
            state, message = "sent", "sent, not yet acknowledged"
        elif self.ack.status is SetpointStatus.APPLIED:
            state, message = "applied", "applied by the gateway"
        else:
            state, message = "rejected", f"rejected by the gateway: {self.ack.reason}"
        return {
            "id": self.id,
            "gateway": self.gateway,
            "device": self.device,
            "name": self.name,
            "value": self.value,
            "created": self.created.isoformat(),
            "expires": self.expires.isoformat(),
            "expired": now >= self.expires,
            "topic": self.topic,
            "state": state,
            "acknowledged": self.ack is not None,
            "message": message,
            "ack": None if self.ack is None else self.ack.to_json(),
        }


class AckBook:
    """Acknowledgement counts per gateway since start, and the overrides sent (the newest ``max_overrides``)."""

    def __init__(self, max_overrides: int = 10_000) -> None:
        self.max_overrides = max_overrides
        self.gateways: dict[str, GatewayAcks] = {}
        self.overrides: OrderedDict[str, SentOverride] = OrderedDict()

    def expect(self, override: SentOverride) -> None:
        """Note an override before it is published: its ack may come before the broker's PUBACK does."""
        self.overrides[override.id] = override
        while len(self.overrides) > self.max_overrides:
            self.overrides.popitem(last=False)

    def forget(self, setpoint_id: str) -> None:
        """The override was not sent after all (the broker was away)."""
        self.overrides.pop(setpoint_id, None)

    def take(self, gateway: str, device: str, ack: SetpointAck) -> AckRecord:
        sent = self.overrides.get(ack.id)
        # Only the device the override went to can answer it: another gateway (its own topic, so the broker
        # lets it) naming our id does not settle it.
        ours = sent is not None and (sent.gateway, sent.device) == (gateway, device)
        # ``name`` is new in SetpointAck: an older gateway leaves it out, then the override's name stands in.
        name = getattr(ack, "name", None) or (sent.name if ours and sent is not None else None)
        record = AckRecord(gateway, device, ack.id, ack.status, ack.ts, name, ack.reason, ack.readback)
        counts = self.gateways.setdefault(gateway, GatewayAcks())
        if ack.status is SetpointStatus.APPLIED:
            counts.applied += 1
        else:
            counts.rejected += 1
            counts.last_rejection = record
        if ours and sent is not None:
            sent.ack = record
        return record

    def summary(self, gateway: str) -> dict[str, Any]:
        return self.gateways.get(gateway, GatewayAcks()).to_json()


def acks_query(
    site: str,
    *,
    gateway: str | None = None,
    setpoint_id: str | None = None,
    status: SetpointStatus | None = None,
    limit: int = 50,
) -> str:
    """InfluxQL for the newest ``limit`` stored acks. Every argument is a checked identifier (``check_id``,
    ``SETPOINT_ID``, the enum, an int), so the quoting is safe."""
    columns = ", ".join(f'"{c}"' for c in ACK_COLUMNS)
    # The ingest tags the site; a point without the tag (``site = ''`` in InfluxQL) is taken as this site's.
    where = [f"(\"site\" = '{site}' OR \"site\" = '')"]
    if gateway is not None:
        where.append(f"\"gateway\" = '{gateway}'")
    if setpoint_id is not None:
        where.append(f"\"id\" = '{setpoint_id}'")
    if status is not None:
        where.append(f"\"status\" = '{status.value}'")
    return f'SELECT {columns} FROM "{SETPOINT_ACK}" WHERE {" AND ".join(where)} ORDER BY time DESC LIMIT {int(limit)}'


def ack_rows(series: list[Series]) -> list[dict[str, Any]]:
    """The rows of ``acks_query``, newest first: ``ts`` and every column, null where the point has none."""
    rows = [row for s in series for row in s.rows()]
    return [{"ts": row.get("time"), **{c: row.get(c) for c in ACK_COLUMNS}} for row in rows]
