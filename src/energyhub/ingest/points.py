"""Messages to InfluxDB points: one point per message, so a redelivered message overwrites itself.

Schema (what dashboards and control query):

- ``device``: one point per measurement message, at the device's timestamp. Tags: ``site``, ``gateway``,
  ``device``, plus ``connection`` and ``role`` when the ingest knows the community. Fields: every value that was
  read (float; a value that could not be read is left out: InfluxDB has no null), and ``seq`` and ``session``
  (integers), ``quality`` (string), ``replay`` (boolean).
- ``gateway_state``: one point per state message (birth, death, health). Tags: ``site``, ``gateway``. Fields:
  ``online``, ``session``, ``agent_version`` and the health summary.

- ``setpoint_ack``: one point per setpoint acknowledgement a gateway sends, at its timestamp. Tags: ``site``,
  ``gateway``, ``device``, ``status`` (applied or rejected), plus ``connection`` and ``role`` when known. Fields:
  ``id`` (the setpoint's), and where given ``name``, ``value`` (asked for), ``readback`` and ``reason``.

Tags are bounded identifiers: a device has one series for its whole life. ``session`` is a field because every
agent restart gives a new one, and as a tag it would open new series for all of a gateway's devices each time
(``bench/series.py``). Series and timestamp come from the message alone, so storing a message twice stores it once.
Two messages of one device at the same timestamp share a point even across sessions; docs/ingest.md says why that
cannot happen unnoticed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from energyhub.io.line_protocol import (
    FieldValue,
    encode_floats,
    encode_point,
    json_number_fields,
    timestamp_ns,
)
from energyhub.io.schema import DEVICE, GATEWAY_STATE, SETPOINT_ACK, SETPOINT_ACK_FIELDS
from energyhub.wire.messages import GatewayState, Measurement, SetpointAck

__all__ = [
    "DEVICE",
    "GATEWAY_STATE",
    "SETPOINT_ACK",
    "DeviceTags",
    "ack_point",
    "measurement_point",
    "state_point",
]


@dataclass(frozen=True, slots=True)
class DeviceTags:
    """What the community file adds to a device's points."""

    connection: str
    role: str


@lru_cache(maxsize=16_384)
def _device_head(site: str, gateway: str, device: str, extra: DeviceTags | None) -> str:
    """Measurement and tags of a device's points: the same for every message of the device, so built once."""
    tags = {"site": site, "gateway": gateway, "device": device}
    if extra is not None:
        tags["connection"], tags["role"] = extra.connection, extra.role
    line = encode_point(DEVICE, tags, {"x": 0.0}, 0)
    return line[: line.index(" x=")]


def measurement_point(
    site: str,
    gateway: str,
    device: str,
    message: Measurement,
    known: Mapping[str, DeviceTags] | None = None,
    payload: bytes | None = None,
) -> tuple[str, int]:
    """The line for ``message`` and its number of fields; ``payload``, the JSON it was decoded from, lends its
    values' text where it can (``json_number_fields``)."""
    count = len(message.values)
    floats = json_number_fields(payload, count) if payload is not None else None
    if floats is None:
        # The values are finite floats or None (the Measurement model says so): None is left out, the rest
        # written with repr, which round-trips every float exactly.
        floats, count = encode_floats(message.values)
    # The message's own four fields: seq, session, quality (good, partial or bad: nothing to escape), replay.
    own = f'seq={message.seq}i,session={message.session}i,quality="{message.quality.value}",' + (
        "replay=true" if message.replay else "replay=false"
    )
    extra = known.get(f"{gateway}/{device}") if known else None
    head = _device_head(site, gateway, device, extra)
    fields = f"{floats},{own}" if count else own
    return f"{head} {fields} {timestamp_ns(message.ts)}", count + 4


def state_point(site: str, gateway: str, message: GatewayState) -> tuple[str, int]:
    fields: dict[str, FieldValue] = {"online": message.online, "session": message.session}
    if message.agent_version:
        fields["agent_version"] = message.agent_version
    health = message.health
    if health is not None:
        fields.update(
            devices_ok=health.devices_ok,
            devices_failing=health.devices_failing,
            buffer_depth=health.buffer_depth,
            buffer_dropped=health.buffer_dropped,
            failsafe=health.failsafe,
        )
        if health.last_publish is not None:
            fields["last_publish_ns"] = timestamp_ns(health.last_publish)
    line = encode_point(GATEWAY_STATE, {"site": site, "gateway": gateway}, fields, timestamp_ns(message.ts))
    return line, len(fields)


def ack_point(
    site: str, gateway: str, device: str, ack: SetpointAck, known: Mapping[str, DeviceTags] | None = None
) -> tuple[str, int]:
    """The line for a setpoint acknowledgement: a rejection is stored with its reason, so it can be found later."""
    tags = {"site": site, "gateway": gateway, "device": device, "status": ack.status.value}
    extra = known.get(f"{gateway}/{device}") if known else None
    if extra is not None:
        tags["connection"], tags["role"] = extra.connection, extra.role
    fields: dict[str, FieldValue] = {}
    for key in SETPOINT_ACK_FIELDS:
        given = getattr(ack, key)
        if given is not None:
            fields[key] = given
    return encode_point(SETPOINT_ACK, tags, fields, timestamp_ns(ack.ts)), len(fields)
