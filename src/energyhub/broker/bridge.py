"""An estate broker bridged to a core broker: what goes out, what comes in, and why nothing can loop.

One Mosquitto per estate (its gateways and its control log in there) forwards its estate's traffic to one core
broker, where the ingest workers share one group. The bridge is a Mosquitto 2.0 ``connection`` section in the
estate's mosquitto.conf (MQTT 5: ``bridge_protocol_version mqttv50``), logging in to the core as
``ehub-bridge-<site>``, an account whose role on the core may publish only that estate's subtree and subscribe
only to its confirmations (src/energyhub/broker/dynsec.py)::

    out  {root}/{site}/gw/+/meas/+        measurements
    out  {root}/{site}/gw/+/state         births and deaths (retained: kept as published)
    out  {root}/{site}/gw/+/ack/+         setpoint acknowledgements
    out  {root}/{site}/deadletter/#       what a service of the estate could not use
    in   {root}/{site}/gw/+/confirm       the ingest's confirmations, back to the gateways

Why no filter that goes out may overlap one that comes in (``check_no_loop``): Mosquitto stops a bridged message
from coming back with MQTT 5's No Local on the bridge's own subscriptions (bridge.c), but a *shared* subscription
never looks at No Local (subs.c ``subs__shared_process`` in 2.0.11; MQTT 5 §3.8.3.1 even forbids the flag there),
and shared groups are per broker, not across a bridge (eclipse/mosquitto#1560). So a group ``ingest`` on an estate
broker and the group ``ingest`` on the core are two groups: each gets every measurement, once on the estate and
once more through the bridge, and with an overlapping ``in`` filter a message could come back in to a group that
already had it. Hence the guard on both sides: the bridge brings in nothing it sends out, and a bridged estate
broker gives the ingest account no read access at all (its role is empty), so an ingest pointed at an estate
broker is refused (SUBACK 0x87) instead of storing and confirming everything a second time.

Settings live in ``<broker dir>/bridge.json`` (written by ``energyhub broker bridge``), so ``energyhub services``
and ``write-config`` put the same section in every mosquitto.conf they write. Mosquitto reads bridges only at
start: a change needs a broker restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from energyhub.domain.ids import IdError
from energyhub.wire.topics import TopicKind, Topics, check_id

__all__ = [
    "BRIDGE_PREFIX",
    "BridgeError",
    "BridgeSettings",
    "BridgeTopic",
    "bridge_site",
    "bridge_topics",
    "bridge_username",
    "check_no_loop",
    "filters_overlap",
    "read_bridge",
    "render_bridge",
    "write_bridge",
]

BRIDGE_PREFIX = "ehub-bridge-"
Direction = Literal["in", "out"]
# Mosquitto's bridge back-off: first retry after 1 s, doubling (with jitter) up to 10 s, so a core restart is
# noticed within seconds; Mosquitto's own default (5 s up to 30 s) would leave the estate queueing longer.
RESTART_TIMEOUT = (1, 10)
KEEPALIVE_S = 15  # as the gateways: a core that vanished without a FIN is noticed within about 20 s


class BridgeError(ValueError):
    """Bridge settings that cannot make a working, loop-free bridge; the message says what to change."""


def bridge_username(site: str) -> str:
    """The core account (and the only client id) of estate ``site``'s bridge."""
    try:
        check_id(site, what="site")
    except IdError as exc:
        raise BridgeError(str(exc)) from None
    name = f"{BRIDGE_PREFIX}{site}"
    if len(name) > 63:
        raise BridgeError(
            f"site {site!r} is too long for a bridge account name ({name!r} is over 63 characters)"
        )
    return name


def bridge_site(username: str) -> str:
    """The estate whose bridge account ``username`` is."""
    if not username.startswith(BRIDGE_PREFIX) or len(username) == len(BRIDGE_PREFIX):
        raise BridgeError(f"{username!r} is not a bridge account (expected {BRIDGE_PREFIX}<site>)")
    return username[len(BRIDGE_PREFIX) :]


@dataclass(frozen=True, slots=True)
class BridgeTopic:
    pattern: str
    direction: Direction


def bridge_topics(topics: Topics) -> list[BridgeTopic]:
    """What estate ``topics.site`` sends to the core and takes back from it (see the module's table)."""
    base = topics.base
    return [
        BridgeTopic(topics.all_measurements(), "out"),
        BridgeTopic(topics.all_states(), "out"),
        BridgeTopic(topics.all_acks(), "out"),
        BridgeTopic(f"{base}/{TopicKind.DEADLETTER}/#", "out"),
        BridgeTopic(f"{base}/gw/+/{TopicKind.CONFIRM}", "in"),
    ]


def filters_overlap(a: str, b: str) -> bool:
    """True if some topic matches both filters (``+`` one level, ``#`` the rest, as MQTT matches)."""
    left, right = a.split("/"), b.split("/")
    for x, y in zip(left, right, strict=False):
        if x == "#" or y == "#":
            return True
        if x != y and x != "+" and y != "+":
            return False
    if len(left) == len(right):
        return True
    longer = left if len(left) > len(right) else right
    return longer[min(len(left), len(right))] == "#"  # "a/#" also matches "a"


def check_no_loop(patterns: list[BridgeTopic]) -> None:
    """Refuse a bridge that would bring in what it sends out (No Local does not cover shared groups)."""
    outs = [p.pattern for p in patterns if p.direction == "out"]
    for inward in (p.pattern for p in patterns if p.direction == "in"):
        if inward.startswith("$share/"):
            raise BridgeError(f"bridge topic {inward!r}: a bridge may not join a shared group on the core")
        for out in outs:
            if filters_overlap(inward, out):
                raise BridgeError(
                    f"bridge topics {out!r} (out) and {inward!r} (in) overlap: a message sent out could come "
                    "back in, and shared groups ignore No Local, so they would get it twice"
                )


@dataclass(frozen=True, kw_only=True)
class BridgeSettings:
    """Where the core broker is and how this estate's bridge logs in to it."""

    core_host: str
    core_port: int
    credentials_file: Path  # the ehub-bridge-<site> JSON made on the core by `energyhub broker add-bridge`
    ca_file: Path | None = None  # the core's CA certificate: TLS to the core's TLS port

    def __post_init__(self) -> None:
        if not 1 <= self.core_port <= 65535:
            raise BridgeError(f"core port {self.core_port} is not a TCP port (1-65535)")
        for what, value in (("core host", self.core_host), ("credentials file", str(self.credentials_file))):
            if not value or any(c in value for c in "\r\n "):
                raise BridgeError(f"{what} {value!r} must be non-empty, without spaces or line breaks")

    def login(self, site: str) -> tuple[str, str]:
        """(username, password) from the credentials file, which must be this estate's bridge account."""
        path = self.credentials_file
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            username, password = str(raw["username"]), str(raw["password"])
        except FileNotFoundError:
            raise BridgeError(
                f"bridge credentials file {path} is missing: make it on the core with "
                f"`energyhub broker add-bridge {site}` and copy it here"
            ) from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise BridgeError(f"{path} is not a credentials file ({exc!r})") from None
        if username != bridge_username(site):
            raise BridgeError(
                f"{path} holds account {username!r}, but this broker serves site {site!r}, whose bridge logs in "
                f"as {bridge_username(site)!r}: run `energyhub broker add-bridge {site}` on the core"
            )
        if any(c in password for c in "\r\n"):
            raise BridgeError(f"{path}: the password contains a line break, which mosquitto.conf cannot hold")
        return username, password

    def to_json(self) -> dict[str, object]:
        return {
            "core_host": self.core_host,
            "core_port": self.core_port,
            "credentials_file": str(self.credentials_file),
            "ca_file": None if self.ca_file is None else str(self.ca_file),
        }


def read_bridge(path: Path) -> BridgeSettings | None:
    """The bridge settings in ``path``; None if there is no bridge."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise BridgeError(
            f"{path} is not valid JSON ({exc}): rewrite it with `energyhub broker bridge`"
        ) from None
    try:
        ca = raw.get("ca_file")
        return BridgeSettings(
            core_host=str(raw["core_host"]),
            core_port=int(raw["core_port"]),
            credentials_file=Path(raw["credentials_file"]),
            ca_file=None if ca is None else Path(ca),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BridgeError(f"{path}: {exc!r}: rewrite it with `energyhub broker bridge`") from None


def write_bridge(path: Path, settings: BridgeSettings | None) -> None:
    """Store ``settings`` (None removes the bridge)."""
    from energyhub.broker.accounts import write_atomic  # here: accounts imports this module

    if settings is None:
        path.unlink(missing_ok=True)
        return
    write_atomic(path, json.dumps(settings.to_json(), indent=2) + "\n", mode=0o600)


def _path(path: Path) -> str:
    text = str(path.resolve())
    if any(c in text for c in "\r\n"):
        raise BridgeError(f"path {text!r} contains a line break, which mosquitto.conf cannot hold")
    return text


def render_bridge(settings: BridgeSettings, topics: Topics) -> list[str]:
    """The lines of the ``connection`` section for estate ``topics.site``."""
    patterns = bridge_topics(topics)
    check_no_loop(patterns)
    username, password = settings.login(topics.site)
    host = f"[{settings.core_host}]" if ":" in settings.core_host else settings.core_host
    lines = [
        f"connection {username}",
        f"address {host}:{settings.core_port}",
        "bridge_protocol_version mqttv50",
        # The core binds the account to this client id: no other account can take it and push the bridge off.
        f"remote_clientid {username}",
        f"local_clientid {username}.local",
        f"remote_username {username}",
        f"remote_password {password}",
        # Keep the queue for the core on this broker while the core is away (persisted with autosave).
        "cleansession false",
        "local_cleansession false",
        # The state (retained birth/death) reaches the core retained, so a new ingest there still sees it.
        "bridge_outgoing_retain true",
        # Its up/down notice stays here: the core account may publish nothing outside the estate's subtree.
        "notifications true",
        "notifications_local_only true",
        f"restart_timeout {RESTART_TIMEOUT[0]} {RESTART_TIMEOUT[1]}",
        f"keepalive_interval {KEEPALIVE_S}",
        "start_type automatic",
    ]
    if settings.ca_file is not None:
        lines += [
            f"bridge_cafile {_path(settings.ca_file)}",
            "bridge_tls_version tlsv1.2",
            "bridge_insecure false",
        ]
    lines += [f"topic {p.pattern} {p.direction} 1" for p in patterns]
    return lines
