"""Message models: one pydantic model per MQTT payload of the contract, and strict JSON encoding.

Decoding rejects unknown fields, wrong types, non-finite numbers and naive timestamps with a reason that names the
field, so a bad payload becomes a dead letter that says what was wrong. Timestamps are UTC on the wire. Who sent a
message (site, gateway, device) is in its topic, which the broker's ACL vouches for, not in the payload.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Self, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

__all__ = [
    "HEARTBEAT_TIMEOUT_S",
    "ControllerHeartbeat",
    "DeliveryConfirmation",
    "GatewayHealth",
    "GatewayState",
    "Measurement",
    "MessageError",
    "Quality",
    "Setpoint",
    "SetpointAck",
    "SetpointStatus",
    "confirmations",
    "decode",
    "encode",
]

UtcDatetime = Annotated[AwareDatetime, AfterValidator(lambda t: t.astimezone(UTC))]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class GatewayHealth(Message):
    """A gateway's own summary, sent with its state."""

    devices_ok: int = Field(ge=0)
    devices_failing: int = Field(ge=0)
    buffer_depth: int = Field(
        ge=0,
        description="Measurements held (on disk or, while the disk is full, in memory) not yet confirmed stored.",
    )
    buffer_dropped: int = Field(
        0,
        ge=0,
        description="Measurements dropped because the buffer was full or the disk could not take them.",
    )
    buffer_error: str | None = Field(
        None,
        max_length=300,
        description="Why the buffer cannot be written now (a full disk), None when it can.",
    )
    last_publish: UtcDatetime | None = None
    failsafe: bool = Field(
        False, description="Control is lost (no heartbeat): every device is in its local safe mode."
    )
    devices_in_safe_mode: int = Field(
        0,
        ge=0,
        description="Devices at their safe values: all of them in failsafe, or those whose last setpoint expired "
        "while control lives (control steers them no longer, e.g. a charger without a vehicle).",
    )


class GatewayState(Message):
    """Birth (online=true, retained, on connect) and death (online=false, the same topic as Last Will)."""

    online: bool
    session: int = Field(ge=0, description="Increases at each agent start; matches a death to its birth.")
    ts: UtcDatetime
    agent_version: str | None = None
    health: GatewayHealth | None = None
    held_from: int | None = Field(
        None,
        ge=0,
        description="The lowest sequence number of this session the gateway still holds unconfirmed (the next one "
        "when it holds none): every lower one is stored, or counted in buffer_dropped.",
    )


class Quality(StrEnum):
    GOOD = "good"
    PARTIAL = "partial"  # some values could not be read: they are null
    BAD = "bad"  # the device did not answer: every value is null


# Stored beside a device's values in the same point (see src/energyhub/ingest/points.py), so no value may carry these names.
RESERVED_VALUE_NAMES = frozenset({"seq", "session", "quality", "replay"})


class Measurement(Message):
    """All values of one device from one poll."""

    ts: UtcDatetime = Field(description="When the device was read.")
    session: int = Field(ge=0)
    seq: int = Field(ge=0, description="Per gateway session, +1 per message: a gap is a lost message.")
    quality: Quality
    values: dict[Name, Finite | None] = Field(
        description="Name -> value in SI-like units (W, Wh, V, A, Hz, %)."
    )
    replay: bool = Field(False, description="Sent from the on-disk buffer after an outage.")

    @model_validator(mode="after")
    def _quality_matches_values(self) -> Self:
        values = self.values
        # The common case first, all at C speed: every message passes here.
        if (
            self.quality is Quality.GOOD
            and RESERVED_VALUE_NAMES.isdisjoint(values)
            and None not in values.values()
        ):
            return self
        reserved = RESERVED_VALUE_NAMES.intersection(values)
        if reserved:
            raise ValueError(f"value names {sorted(reserved)} are reserved for the message's own fields")
        missing = list(values.values()).count(None)
        expected = (
            Quality.GOOD
            if missing == 0
            else (Quality.BAD if missing == len(self.values) else Quality.PARTIAL)
        )
        if self.values and self.quality is not expected:
            raise ValueError(
                f"quality is {self.quality.value!r} but {missing} of {len(self.values)} values "
                f"are null, which is {expected.value!r}"
            )
        return self


class Setpoint(Message):
    """From control to one device. The edge applies it until ``expires``, then falls back to safe mode."""

    id: str = Field(min_length=1, max_length=64)
    name: Name = Field(
        description="What to set, as the device profile names it, e.g. active_power_limit_pct."
    )
    value: Finite
    created: UtcDatetime
    expires: UtcDatetime
    reason: str | None = Field(None, max_length=200, description="Why, e.g. the binding limit.")

    @model_validator(mode="after")
    def _expires_after_created(self) -> Self:
        if self.expires <= self.created:
            raise ValueError("expires must be after created")
        return self


class SetpointStatus(StrEnum):
    APPLIED = "applied"
    REJECTED = "rejected"


class SetpointAck(Message):
    id: str = Field(min_length=1, max_length=64)
    status: SetpointStatus
    ts: UtcDatetime
    reason: str | None = Field(None, max_length=200)
    readback: Finite | None = Field(None, description="Value read back from the device after writing.")
    name: Name | None = Field(None, description="The setpoint's name, so a rejection says what was refused.")
    value: Finite | None = Field(None, description="The value that was asked for.")

    @model_validator(mode="after")
    def _rejection_has_reason(self) -> Self:
        if self.status is SetpointStatus.REJECTED and not self.reason:
            raise ValueError("a rejected setpoint needs a reason")
        return self


# How long a gateway waits without a live heartbeat before its failsafe, by default: the edge's
# heartbeat_timeout_s, and what control's Last Will must come within.
HEARTBEAT_TIMEOUT_S = 10.0


class ControllerHeartbeat(Message):
    """Retained; its Last Will has alive=false, so every gateway learns at once that control is gone."""

    alive: bool
    ts: UtcDatetime
    cycle: int = Field(ge=0)
    period_s: Finite = Field(gt=0)
    policy: str | None = None


MAX_RANGES = 10_000  # per confirmation: a worker's batch of 5,000 points never needs more


class DeliveryConfirmation(Message):
    """The ingest to one gateway: these sequence numbers of this session are stored in the database.

    Only then does the gateway delete them from its buffer, so no broker restart, missing subscription or crash
    between the gateway and the database can lose a measurement. Ranges are inclusive ``[first, last]``: a worker
    of a shared ingest group confirms what it stored, not everything up to a number.
    """

    session: int = Field(ge=0)
    ranges: list[tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]] = Field(
        max_length=MAX_RANGES, description="Inclusive [first, last] sequence numbers stored, first <= last."
    )
    ts: UtcDatetime

    @model_validator(mode="after")
    def _ranges_ordered(self) -> Self:
        for first, last in self.ranges:
            if first > last:
                raise ValueError(f"range [{first}, {last}] ends before it starts")
        return self


def confirmations(session: int, seqs: list[int], ts: datetime) -> list[DeliveryConfirmation]:
    """``seqs`` (any order, repeats allowed) as inclusive ranges, in as many confirmations as their bound needs."""
    ranges: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if ranges and seq <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], seq))
        else:
            ranges.append((seq, seq))
    return [
        DeliveryConfirmation(session=session, ranges=ranges[start : start + MAX_RANGES], ts=ts)
        for start in range(0, len(ranges), MAX_RANGES)
    ]


class DeadLetter(Message):
    """What a service could not use: the original bytes (base64) and why, on ``deadletter/<service>``."""

    service: str
    topic: str = Field(description="Where the message came in.")
    reason: str = Field(max_length=2000)
    payload_b64: str = Field(description="The original payload, base64: it may not be text at all.")
    size: int = Field(ge=0, description="Bytes of the original payload.")
    ts: UtcDatetime = Field(description="When the service gave up on it.")


class MessageError(ValueError):
    """A payload that does not fit its model; the message says which field and why."""


M = TypeVar("M", bound=Message)


def encode(message: Message) -> bytes:
    return message.model_dump_json(exclude_none=False).encode()


def decode(model: type[M], payload: bytes | str) -> M:
    """Parse ``payload`` as ``model``; raise ``MessageError`` naming every bad field."""
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        reasons = []
        for error in exc.errors(include_url=False):
            where = ".".join(str(p) for p in error["loc"]) or "payload"
            reasons.append(f"{where}: {error['msg']}")
        raise MessageError(f"{model.__name__}: " + "; ".join(reasons)) from None
