"""MQTT topic names: one builder and one parser for every topic of the message contract.

Layout, versioned under one root so a v2 can run beside v1 during a migration::

    {root}/{site}/gw/{gateway}/state              gateway birth / death (retained, also the Last Will)
    {root}/{site}/gw/{gateway}/meas/{device}      one measurement message per device per poll
    {root}/{site}/gw/{gateway}/setpoint/{device}  control -> edge
    {root}/{site}/gw/{gateway}/ack/{device}       edge -> control: applied / rejected
    {root}/{site}/gw/{gateway}/confirm            ingest -> edge: which sequence numbers are stored
    {root}/{site}/control/heartbeat               retained controller heartbeat
    {root}/{site}/deadletter/{service}            what a service could not use, with the reason

Everything a gateway may touch lies under ``{root}/{site}/gw/{gateway}/``, so the broker's ACL can isolate gateways
by subtree. Identifiers are bounded (``ID_PATTERN``) so they are safe as topic levels and as InfluxDB tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from energyhub.domain.ids import ID_PATTERN, IdError, check_id

__all__ = [
    "DEFAULT_ROOT",
    "ID_PATTERN",
    "TopicError",
    "TopicInfo",
    "TopicKind",
    "Topics",
    "check_id",
]

DEFAULT_ROOT = "ehub/v1"
_ROOT_PATTERN = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


class TopicError(IdError):
    """A topic or identifier that does not fit the contract."""


def _topic_id(value: str, *, what: str = "id") -> str:
    """``check_id`` for a topic level: a bad one is a ``TopicError``, as every other fault of a topic is."""
    try:
        return check_id(value, what=what)
    except IdError as exc:
        raise TopicError(str(exc)) from None


class TopicKind(StrEnum):
    STATE = "state"
    MEASUREMENT = "meas"
    SETPOINT = "setpoint"
    ACK = "ack"
    CONFIRM = "confirm"
    HEARTBEAT = "heartbeat"
    DEADLETTER = "deadletter"


_DEVICE_KINDS = {TopicKind.MEASUREMENT, TopicKind.SETPOINT, TopicKind.ACK}


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What a parsed topic names."""

    kind: TopicKind
    site: str
    gateway: str | None = None
    device: str | None = None
    service: str | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic builder and parser for one site (one hub) under one root."""

    site: str
    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        _topic_id(self.site, what="site")
        if not _ROOT_PATTERN.match(self.root):
            raise TopicError(
                f"topic root {self.root!r} must be levels of A-Z, a-z, 0-9, '-' or '_' joined by '/'"
            )

    @property
    def base(self) -> str:
        return f"{self.root}/{self.site}"

    # -- builders -------------------------------------------------------------------------------------------
    def gateway_subtree(self, gateway: str) -> str:
        """The prefix of every topic a gateway owns (no trailing slash)."""
        return f"{self.base}/gw/{_topic_id(gateway, what='gateway')}"

    def state(self, gateway: str) -> str:
        return f"{self.gateway_subtree(gateway)}/state"

    def measurement(self, gateway: str, device: str) -> str:
        return f"{self.gateway_subtree(gateway)}/meas/{_topic_id(device, what='device')}"

    def setpoint(self, gateway: str, device: str) -> str:
        return f"{self.gateway_subtree(gateway)}/setpoint/{_topic_id(device, what='device')}"

    def ack(self, gateway: str, device: str) -> str:
        return f"{self.gateway_subtree(gateway)}/ack/{_topic_id(device, what='device')}"

    def confirm(self, gateway: str) -> str:
        return f"{self.gateway_subtree(gateway)}/confirm"

    def heartbeat(self) -> str:
        return f"{self.base}/control/heartbeat"

    def deadletter(self, service: str) -> str:
        return f"{self.base}/deadletter/{_topic_id(service, what='service')}"

    # -- subscription filters ---------------------------------------------------------------------------------
    def all_measurements(self) -> str:
        return f"{self.base}/gw/+/meas/+"

    def all_states(self) -> str:
        return f"{self.base}/gw/+/state"

    def all_acks(self) -> str:
        return f"{self.base}/gw/+/ack/+"

    def setpoints_for(self, gateway: str) -> str:
        return f"{self.gateway_subtree(gateway)}/setpoint/+"

    # -- parser -----------------------------------------------------------------------------------------------
    def parse(self, topic: str) -> TopicInfo:
        """Tell what a concrete topic names; raise ``TopicError`` saying why when it is not one of ours."""
        prefix = self.base + "/"
        if not topic.startswith(prefix):
            raise TopicError(f"topic {topic!r} is not under {prefix!r}")
        parts = topic[len(prefix) :].split("/")
        try:
            if parts[0] == "gw" and len(parts) == 3 and parts[2] in (TopicKind.STATE, TopicKind.CONFIRM):
                return TopicInfo(TopicKind(parts[2]), self.site, gateway=_topic_id(parts[1], what="gateway"))
            if parts[0] == "gw" and len(parts) == 4 and parts[2] in _DEVICE_KINDS:
                return TopicInfo(
                    TopicKind(parts[2]),
                    self.site,
                    gateway=_topic_id(parts[1], what="gateway"),
                    device=_topic_id(parts[3], what="device"),
                )
            if parts == ["control", "heartbeat"]:
                return TopicInfo(TopicKind.HEARTBEAT, self.site)
            if parts[0] == "deadletter" and len(parts) == 2:
                return TopicInfo(TopicKind.DEADLETTER, self.site, service=_topic_id(parts[1], what="service"))
        except TopicError as exc:
            raise TopicError(f"topic {topic!r}: {exc}") from None
        raise TopicError(
            f"topic {topic!r} is not a known energyhub topic (expected gw/<gateway>/{{state,confirm}}, "
            "gw/<gateway>/{meas,setpoint,ack}/<device>, control/heartbeat or deadletter/<service> "
            f"under {prefix!r})"
        )
