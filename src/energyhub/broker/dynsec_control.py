"""Bring a running broker's dynamic-security plugin in line with the generated document, over its control topic.

The plugin reads its config file only at start (a SIGHUP does not reload it), so a new, rotated or removed account
reaches a running broker as commands on ``$CONTROL/dynamic-security/v1``, sent by the ``ehub-admin`` account; the
plugin answers on ``.../v1/response``. ``sync`` asks the broker for its clients, roles and groups and sends only
the differences, so a reload with nothing changed sends nothing and disconnects nobody.

What the plugin does on a change (mosquitto 2.0.11, plugins/dynamic-security/clients.c, roles.c):
``deleteClient``, ``setClientPassword`` and every ``modifyClient`` disconnect the clients logged in with that
username, so a removed account or an old password is off the broker at once; ``createClient``, ``createRole``
and ``modifyRole`` disconnect no one. After each change the plugin saves its whole state over its config file
(``<file>.new``, then a rename).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import secrets
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from energyhub.broker.dynsec import ANONYMOUS
from energyhub.io.mqtt import MqttLink, MqttLinkError

__all__ = ["BrokerState", "DynsecControl", "DynsecControlError", "plan_changes", "sync"]

COMMAND_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{COMMAND_TOPIC}/response"
_QUERIES = ("getDefaultACLAccess", "listClients", "listRoles", "listGroups", "getAnonymousGroup")
_T = TypeVar("_T")


class DynsecControlError(RuntimeError):
    """The broker could not be reached, refused the admin account, or refused a command."""


class DynsecControl:
    """A short-lived admin connection to one broker, through the project's one MQTT client.

    Callers are synchronous (the command line, account changes made from a service or a test that may itself run
    an event loop), so the connection lives on a private event loop in its own thread for the ``with`` block."""

    def __init__(self, host: str, port: int, *, username: str, password: str, timeout_s: float = 5.0) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._login = (username, password)
        self._client_id = f"{username}-{secrets.token_hex(4)}"
        self._responses: dict[str, dict[str, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._link: MqttLink | None = None

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    # -- the private loop -----------------------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, _T], what: str) -> _T:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self.timeout_s + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DynsecControlError(
                f"no {what} from the broker at {self.where} within {self.timeout_s:.0f} s"
            ) from None

    async def _open(self) -> None:
        username, password = self._login
        try:
            self._link = await MqttLink.connect(
                self.host,
                self.port,
                client_id=self._client_id,
                username=username,
                password=password,
                keepalive_s=30,
                timeout_s=self.timeout_s,
            )
        except MqttLinkError as exc:  # refused, unreachable, timed out, or the admin login refused
            raise DynsecControlError(f"admin connection: {exc}") from None
        (granted,) = await self._link.subscribe([(RESPONSE_TOPIC, 0)])
        if granted >= 0x80:
            raise DynsecControlError(
                f"the broker at {self.where} does not let the admin account read {RESPONSE_TOPIC} "
                f"(0x{granted:02x}): it does not run the dynamic-security plugin with our config"
            )

    def _take(self, payload: bytes) -> None:
        try:
            document = json.loads(payload)
        except ValueError:
            return
        responses = document.get("responses") if isinstance(document, dict) else None
        for response in responses if isinstance(responses, list) else []:
            if isinstance(response, dict) and isinstance(response.get("correlationData"), str):
                self._responses[response["correlationData"]] = response

    async def _exchange(self, payload: bytes, ids: list[str]) -> None:
        assert self._link is not None
        try:
            await self._link.publish(COMMAND_TOPIC, payload, qos=1)
            async with asyncio.timeout(self.timeout_s):
                while not all(i in self._responses for i in ids):
                    self._take((await self._link.next_message()).payload)
        except MqttLinkError as exc:
            raise DynsecControlError(
                f"the broker at {self.where} closed the admin connection ({exc})"
            ) from None
        except TimeoutError:
            raise DynsecControlError(
                f"no answer to the dynsec commands from the broker at {self.where} within {self.timeout_s:.0f} s"
            ) from None

    # -- the API --------------------------------------------------------------------------------------------
    def __enter__(self) -> DynsecControl:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dynsec-admin", daemon=True)
        self._thread.start()
        try:
            self._run(self._open(), "CONNACK")
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        link, loop = self._link, self._loop
        if loop is None:
            return
        if link is not None:
            try:
                self._run(link.disconnect(), "goodbye")
            except (DynsecControlError, MqttLinkError):
                link.abort()
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(self.timeout_s)
        loop.close()
        self._loop = self._thread = self._link = None

    def execute(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send ``commands`` in one message; return the plugin's responses in the same order."""
        if not commands:
            return []
        token = secrets.token_hex(6)  # responses go to every admin connection: ours carry our token
        ids = [f"{token}-{n}" for n in range(len(commands))]
        payload = json.dumps(
            {"commands": [{**c, "correlationData": i} for c, i in zip(commands, ids, strict=True)]}
        ).encode()
        self._run(self._exchange(payload, ids), "answer to the dynsec commands")
        return [self._responses.pop(i) for i in ids]


@dataclass(frozen=True)
class BrokerState:
    """What the running plugin holds, as its list commands tell it."""

    default_access: dict[str, bool]
    clients: dict[str, dict[str, Any]]
    roles: dict[str, dict[str, Any]]
    groups: dict[str, dict[str, Any]]
    anonymous_group: str

    @classmethod
    def query(cls, control: DynsecControl) -> BrokerState:
        commands: list[dict[str, Any]] = [{"command": c} for c in _QUERIES]
        for command in commands[1:4]:
            command["verbose"] = True
        answers = control.execute(commands)
        errors = [f"{a.get('command')}: {a['error']}" for a in answers if "error" in a]
        if errors:
            raise DynsecControlError(f"the broker refused to list its accounts: {'; '.join(errors)}")
        default, clients, roles, groups, anonymous = (a.get("data", {}) for a in answers)
        return cls(
            default_access={a["acltype"]: bool(a["allow"]) for a in default.get("acls", [])},
            clients={c["username"]: c for c in clients.get("clients", [])},
            roles={r["rolename"]: r for r in roles.get("roles", [])},
            groups={g["groupname"]: g for g in groups.get("groups", [])},
            anonymous_group=str(anonymous.get("group", {}).get("groupname", "")),
        )


def _acl_set(acls: object) -> set[tuple[str, str, bool, int]]:
    return {
        (
            str(a.get("acltype", "")).lower(),
            str(a.get("topic")),
            bool(a.get("allow")),
            int(a.get("priority", 0)),
        )
        for a in (acls if isinstance(acls, list) else [])
        if isinstance(a, dict)
    }


def _names(entries: object, key: str) -> set[str]:
    return {str(e.get(key)) for e in (entries if isinstance(entries, list) else []) if isinstance(e, dict)}


def _client_changes(
    have: Mapping[str, Any], want: Mapping[str, Any], plaintext: str | None
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if have.get("clientid") != want.get("clientid"):
        changes["clientid"] = want.get("clientid") or ""  # "" unbinds
    if _names(have.get("roles"), "rolename") != _names(want["roles"], "rolename"):
        changes["roles"] = want["roles"]
    if have.get("groups"):
        changes["groups"] = []
    if have.get("textname") != want.get("textname"):
        changes["textname"] = want["textname"]
    # The description carries the password id: a mismatch means the broker still has an older password.
    if have.get("textdescription") != want.get("textdescription") and plaintext is not None:
        changes["password"] = plaintext
        changes["textdescription"] = want["textdescription"]
    return changes


def plan_changes(
    state: BrokerState, desired: Mapping[str, Any], plaintexts: Mapping[str, str], *, keep: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """The commands that turn ``state`` into ``desired`` (a document from ``render_dynsec``), and the accounts
    that cannot be brought over (a new account whose plaintext password is lost). ``keep`` is the admin
    account doing the change: never modified, since any change would disconnect the connection sending it."""
    commands: list[dict[str, Any]] = []
    if state.default_access != desired["defaultACLAccess"]:
        acls = [{"acltype": t, "allow": a} for t, a in desired["defaultACLAccess"].items()]
        commands.append({"command": "setDefaultACLAccess", "acls": acls})

    wanted_roles = {r["rolename"]: r for r in desired["roles"]}
    for name, role in wanted_roles.items():
        if name not in state.roles:
            commands.append({"command": "createRole", **role})
        elif _acl_set(state.roles[name].get("acls")) != _acl_set(role["acls"]):
            commands.append({"command": "modifyRole", "rolename": name, "acls": role["acls"]})

    group = state.groups.get(ANONYMOUS)
    if group is None:
        commands.append(
            {"command": "createGroup", "groupname": ANONYMOUS, "roles": [{"rolename": ANONYMOUS}]}
        )
    elif _names(group.get("roles"), "rolename") != {ANONYMOUS}:
        commands.append(
            {"command": "modifyGroup", "groupname": ANONYMOUS, "roles": [{"rolename": ANONYMOUS}]}
        )
    if state.anonymous_group != ANONYMOUS:
        commands.append({"command": "setAnonymousGroup", "groupname": ANONYMOUS})

    unreachable: list[str] = []
    wanted_clients = {c["username"]: c for c in desired["clients"]}
    for username, client in wanted_clients.items():
        plaintext = plaintexts.get(username)
        have = state.clients.get(username)
        if have is None:
            if plaintext is None:
                unreachable.append(username)
                continue
            fields = {k: v for k, v in client.items() if k not in ("salt", "iterations")}
            commands.append({"command": "createClient", **fields, "password": plaintext})
            continue
        if username == keep:
            continue
        if have.get("disabled"):
            commands.append({"command": "enableClient", "username": username})
        changes = _client_changes(have, client, plaintext)
        if changes:
            commands.append({"command": "modifyClient", "username": username, **changes})

    # Removals last: a removed account is disconnected; its role and any foreign group go after it.
    for username in sorted(set(state.clients) - set(wanted_clients) - {keep}):
        commands.append({"command": "deleteClient", "username": username})
    for name in sorted(
        set(state.groups) - {ANONYMOUS}
    ):  # never the anonymous group (2.0.11 would crash later)
        commands.append({"command": "deleteGroup", "groupname": name})
    for name in sorted(set(state.roles) - set(wanted_roles)):
        commands.append({"command": "deleteRole", "rolename": name})
    return commands, unreachable


def sync(
    control: DynsecControl, desired: Mapping[str, Any], plaintexts: Mapping[str, str], *, keep: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """Apply ``plan_changes`` to the broker behind ``control``; return the commands sent and the accounts that
    could not be brought over. Raises ``DynsecControlError`` if the plugin refused a command."""
    state = BrokerState.query(control)
    commands, unreachable = plan_changes(state, desired, plaintexts, keep=keep)
    answers = control.execute(commands)
    errors = [
        f"{a.get('command')} {_subject(c)}: {a['error']}"
        for c, a in zip(commands, answers, strict=True)
        if "error" in a
    ]
    if errors:
        raise DynsecControlError(f"the broker refused {len(errors)} change(s): {'; '.join(errors)}")
    return commands, unreachable


def _subject(command: Mapping[str, Any]) -> str:
    for key in ("username", "rolename", "groupname"):
        if key in command:
            return repr(command[key])
    return ""
