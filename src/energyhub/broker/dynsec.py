"""The broker's rules as Mosquitto 2.0's dynamic-security plugin reads them: one JSON document from accounts.json.

Why the plugin and not ``acl_file``: Mosquitto 2.0's ACL file never checks a SUBSCRIBE (security_default.c grants
every filter), so a gateway could join the ingest's shared-subscription group (``$share/ingest/.../gw/+/meas/+``)
and take its share of every gateway's measurements, which its read rules then dropped: lost. Nor can a password
file bind a username to a client id, so a gateway could connect with the ingest's or another gateway's client id
and push that client off the broker. The plugin checks both (mosquitto 2.0.11, plugins/dynamic-security/):

- **SUBSCRIBE** is checked against ``subscribeLiteral`` (the exact filter string) and ``subscribePattern`` ACLs.
  A pattern covers a filter if every level of the filter equals the pattern's level or the pattern has ``+``
  there, and the filter ends in ``#`` only where the pattern does (sub_matches_sub.c). A ``+`` in the filter
  is covered only by ``+`` in the pattern, so ``gw/+/meas/+`` is not covered by ``gw/G/meas/+``.
- **``$share/<group>/<filter>``** reaches the plugin whole (handle_subscribe.c passes the filter as sent;
  security.c lets ``$share`` through to the plugins for SUBSCRIBE only), so it is covered only by a pattern that
  starts with ``$share/``: ``$share/+/<base>/gw/#`` allows any group on the ingest's topics, and nothing of a
  gateway's starts with ``$share``. The one pattern to never grant is ``#`` alone: it covers every filter,
  ``$share/...``, ``$SYS/...`` and ``$CONTROL/...`` included.
- **PUBLISH** is checked against ``publishClientSend``, every delivery (retained ones too) against
  ``publishClientReceive``, both with ordinary topic matching. Retain is not checked: a gateway may publish a
  retained measurement on its own topics, which is why the ingest may write measurements (to clear one).
- With ``defaultACLAccess`` all false (unsubscribe true) whatever no ACL allows is refused: SUBACK 0x87, PUBACK
  0x87, or a delivery not made. ``$CONTROL`` topics are never allowed by default anyway.
- A client entry with ``clientid`` accepts its username only with that client id (auth.c compares them before
  the password), and the check runs before Mosquitto looks for a connected client with the same id: a
  refused CONNECT therefore takes no session over.

Each account gets one role of its own name holding all its ACLs, so a reviewer reads an account's rights off one
role. Changes reach a running broker through the plugin's control topic (src/energyhub/broker/dynsec_control.py): the plugin
reads this file only at start (a SIGHUP does not reload it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from energyhub.broker.bridge import bridge_site, bridge_topics
from energyhub.runtime.passwords import DynsecPassword
from energyhub.wire.topics import TopicKind, Topics

__all__ = [
    "ANONYMOUS",
    "DEFAULT_ACL_ACCESS",
    "Acl",
    "AclType",
    "ClientEntry",
    "DynsecFile",
    "Role",
    "account_acls",
    "anonymous_acls",
    "client_id_for",
    "password_id",
    "read_dynsec",
    "render_dynsec",
]

# The anonymous group and its role (the `ehub-` prefix is reserved, so no gateway can be called this). Outside dev
# mode the role is empty: anonymous logins are refused anyway (allow_anonymous false), and if one got in it could
# do nothing.
ANONYMOUS = "ehub-anonymous"

# Deny what no ACL allows. Unsubscribing is harmless and always allowed.
DEFAULT_ACL_ACCESS: dict[str, bool] = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}


class Role(StrEnum):
    """What an account is for; decides its ACLs."""

    GATEWAY = "gateway"
    CONTROL = "control"
    INGEST = "ingest"
    API = "api"
    ADMIN = "admin"  # changes the running broker's accounts through $CONTROL/dynamic-security/v1
    BRIDGE = "bridge"  # on a core broker: ehub-bridge-<site>, one estate broker's bridge (broker/bridge.py)


class AclType(StrEnum):
    PUBLISH_SEND = "publishClientSend"  # the client may publish to topics matching it
    PUBLISH_RECEIVE = (
        "publishClientReceive"  # the broker may deliver messages on matching topics to the client
    )
    SUBSCRIBE_LITERAL = "subscribeLiteral"  # the client may subscribe to exactly this filter
    SUBSCRIBE_PATTERN = "subscribePattern"  # the client may subscribe to filters this one covers


@dataclass(frozen=True, order=True, slots=True)
class Acl:
    """One allowing ACL (the rules never deny: the default does)."""

    acltype: AclType
    topic: str

    def to_json(self) -> dict[str, Any]:
        return {"acltype": str(self.acltype), "topic": self.topic, "priority": 0, "allow": True}


def client_id_for(username: str, role: Role) -> str | None:
    """The only client id ``username`` may connect with; None for service accounts (several connections share
    one: ingest workers, API and control instances). A bridge uses its account name, which no other account may use."""
    if role is Role.GATEWAY:
        return f"{username}-agent"
    return username if role is Role.BRIDGE else None


def _read(*topics: str) -> list[Acl]:
    """Subscribe to and receive ``topics`` (filters)."""
    return [Acl(kind, t) for t in topics for kind in (AclType.SUBSCRIBE_PATTERN, AclType.PUBLISH_RECEIVE)]


def _write(*topics: str) -> list[Acl]:
    return [Acl(AclType.PUBLISH_SEND, t) for t in topics]


def _shared(*topics: str) -> list[Acl]:
    """Subscribe to ``topics`` through any shared-subscription group (deliveries are checked on the real topic)."""
    return [Acl(AclType.SUBSCRIBE_PATTERN, f"$share/+/{t}") for t in topics]


def _gateway_acls(gateway: str, topics: Topics) -> list[Acl]:
    subtree = topics.gateway_subtree(gateway)
    literal = (topics.confirm(gateway), topics.heartbeat())
    return [
        # Only what the edge produces: its birth/death, its measurements and its setpoint acknowledgements.
        *_write(
            topics.state(gateway), f"{subtree}/{TopicKind.MEASUREMENT}/+", f"{subtree}/{TopicKind.ACK}/+"
        ),
        # Its own setpoints (the filter or one device's topic), read-only: it cannot forge commands for itself.
        *_read(topics.setpoints_for(gateway)),
        # The ingest's delivery confirmations, and the retained controller heartbeat (failsafe without it).
        *[Acl(AclType.SUBSCRIBE_LITERAL, t) for t in literal],
        *[Acl(AclType.PUBLISH_RECEIVE, t) for t in literal],
    ]


def _bridge_acls(username: str, topics: Topics) -> list[Acl]:
    """Estate ``site``'s bridge on the core: publish what the estate sends out, take back only its confirmations."""
    estate = Topics(site=bridge_site(username), root=topics.root)
    out = [p.pattern for p in bridge_topics(estate) if p.direction == "out"]
    inward = [p.pattern for p in bridge_topics(estate) if p.direction == "in"]
    # Literal only: the bridge subscribes to exactly these filters, and never through a shared group.
    return [*_write(*out), *[Acl(AclType.SUBSCRIBE_LITERAL, t) for t in inward], *_receive(*inward)]


def _receive(*topics: str) -> list[Acl]:
    return [Acl(AclType.PUBLISH_RECEIVE, t) for t in topics]


def _ingest_acls(topics: Topics) -> list[Acl]:
    base = topics.base
    control = f"{base}/control/#"
    return [
        *_read(f"{base}/gw/#", control),
        *_shared(f"{base}/gw/#", control),  # workers in one group split the load
        *_write(
            f"{base}/{TopicKind.DEADLETTER}/#",
            f"{base}/gw/+/{TopicKind.CONFIRM}",
            # An empty retained message clears a retained measurement a gateway left (the broker cannot
            # refuse retain per topic), so that no new subscriber is handed it.
            topics.all_measurements(),
        ),
    ]


def _service_acls(role: Role, topics: Topics) -> list[Acl]:
    base = topics.base
    setpoints = f"{base}/gw/+/{TopicKind.SETPOINT}/+"
    control = f"{base}/control/#"
    if role is Role.CONTROL:
        return [
            *_read(topics.all_measurements(), topics.all_states(), topics.all_acks(), control),
            *_write(setpoints, control),
        ]
    if role is Role.INGEST:
        return _ingest_acls(topics)
    if role is Role.API:
        # Reads everything of the site for the live page; writes setpoints for manual overrides.
        return [*_read(f"{base}/#"), *_write(setpoints)]
    if role is Role.ADMIN:
        dynsec = "$CONTROL/dynamic-security/#"
        return [*_read(dynsec), *_write(dynsec)]
    raise ValueError(f"no service ACLs for role {role!r}")


def account_acls(
    username: str,
    role: Role,
    topics: Topics,
    *,
    bridged_sites: Sequence[str] = (),
    bridged_estate: bool = False,
) -> list[Acl]:
    """The ACLs of account ``username``, sorted.

    On a core broker (``bridged_sites``: the estates with a bridge account) the ingest reads and confirms every
    estate too. On an estate broker that is bridged to a core (``bridged_estate``) the ingest gets nothing: the
    core's workers store this estate's measurements, and a second group here would store and confirm each again.
    """
    if role is Role.GATEWAY:
        acls = _gateway_acls(username, topics)
    elif role is Role.BRIDGE:
        acls = _bridge_acls(username, topics)
    elif role is Role.INGEST and bridged_estate:
        acls = []
    elif role is Role.INGEST:
        acls = [
            *_ingest_acls(topics),
            *(a for site in bridged_sites for a in _ingest_acls(Topics(site=site, root=topics.root))),
        ]
    else:
        acls = _service_acls(role, topics)
    return sorted(set(acls))


def anonymous_acls(topics: Topics, *, dev_mode: bool) -> list[Acl]:
    """Dev mode: anonymous clients may use the whole site (shared groups included) and nothing outside it."""
    if not dev_mode:
        return []
    return sorted({*_read(f"{topics.base}/#"), *_shared(f"{topics.base}/#"), *_write(f"{topics.base}/#")})


def password_id(password: str) -> str:
    """A short fingerprint of a plaintext password, kept in the client's ``textdescription``.

    The plugin never tells its hashes, so this is how a reload sees that a running broker still has an old
    password (after a rotation) and must be given the new one. It reveals nothing usable: the passwords are 192
    random bits, and the file beside it holds a PBKDF2 hash of the same password anyway.
    """
    digest = hashlib.sha256(b"energyhub broker password id\x00" + password.encode("utf-8")).hexdigest()
    return f"password id {digest[:16]}"


@dataclass(frozen=True, slots=True)
class ClientEntry:
    """One account as the plugin gets it."""

    username: str
    role: Role
    password: DynsecPassword
    password_id: str

    @property
    def clientid(self) -> str | None:
        return client_id_for(self.username, self.role)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"username": self.username}
        if self.clientid is not None:
            entry["clientid"] = self.clientid
        entry["textname"] = f"energyhub {self.role} account"
        entry["textdescription"] = self.password_id
        entry.update(self.password.to_json())
        entry["roles"] = [{"rolename": self.username}]
        return entry


def render_dynsec(
    clients: Sequence[ClientEntry],
    roles: Mapping[str, Role],
    topics: Topics,
    *,
    dev_mode: bool,
    bridged_estate: bool = False,
) -> dict[str, Any]:
    """The plugin's config document: ``clients`` with their hashes, one role per account in ``roles``.

    ``bridged_estate``: this broker forwards its estate to a core broker (see ``account_acls``)."""
    bridged = sorted(bridge_site(u) for u, r in roles.items() if r is Role.BRIDGE)
    role_entries = [
        {
            "rolename": username,
            "textname": f"energyhub {role}"
            + (
                " (none here: this estate is bridged to a core, whose ingest stores it)"
                if role is Role.INGEST and bridged_estate
                else ""
            ),
            "acls": [
                acl.to_json()
                for acl in account_acls(
                    username, role, topics, bridged_sites=bridged, bridged_estate=bridged_estate
                )
            ],
        }
        for username, role in sorted(roles.items())
    ]
    role_entries.append(
        {
            "rolename": ANONYMOUS,
            "textname": "anonymous clients (dev mode only)",
            "acls": [acl.to_json() for acl in anonymous_acls(topics, dev_mode=dev_mode)],
        }
    )
    return {
        "_comment": f"Generated by energyhub (src/energyhub/broker/dynsec.py) from accounts.json for site {topics.site!r}, "
        f"topic root {topics.root!r}: do not edit, it is rewritten.",
        "defaultACLAccess": dict(DEFAULT_ACL_ACCESS),
        "clients": [client.to_json() for client in sorted(clients, key=lambda c: c.username)],
        "groups": [
            {"groupname": ANONYMOUS, "textname": "anonymous clients", "roles": [{"rolename": ANONYMOUS}]}
        ],
        "roles": role_entries,
        "anonymousGroup": ANONYMOUS,
    }


@dataclass(frozen=True)
class DynsecFile:
    """What an existing config file tells (written by us or saved by the broker)."""

    passwords: dict[str, DynsecPassword]
    password_ids: dict[str, str]
    dev_mode: bool


def read_dynsec(path: Path) -> DynsecFile | None:
    """Read the hashes, password ids and dev mode back from ``path``; None if it does not exist or is unreadable."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    passwords: dict[str, DynsecPassword] = {}
    password_ids: dict[str, str] = {}
    clients = document.get("clients")
    for client in clients if isinstance(clients, list) else []:
        username = client.get("username") if isinstance(client, dict) else None
        if not isinstance(username, str):
            continue
        entry = DynsecPassword.from_json(client)
        if entry is not None:
            passwords[username] = entry
        description = client.get("textdescription")
        if isinstance(description, str):
            password_ids[username] = description
    dev_mode = False
    roles = document.get("roles")
    for role in roles if isinstance(roles, list) else []:
        if isinstance(role, dict) and role.get("rolename") == ANONYMOUS:
            dev_mode = bool(role.get("acls"))
    return DynsecFile(passwords=passwords, password_ids=password_ids, dev_mode=dev_mode)
