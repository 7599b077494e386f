"""What a reload sends to a running broker: the differences only (no broker here; live: test_broker_live.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from energyhub.broker.dynsec import (
    ANONYMOUS,
    DEFAULT_ACL_ACCESS,
    ClientEntry,
    Role,
    password_id,
    render_dynsec,
)
from energyhub.broker.dynsec_control import BrokerState, plan_changes
from energyhub.runtime.passwords import DynsecPassword
from energyhub.wire.topics import Topics

TOPICS = Topics(site="de-koumen")
ACCOUNTS = {"gw-1": Role.GATEWAY, "gw-2": Role.GATEWAY, "ehub-ingest": Role.INGEST, "ehub-admin": Role.ADMIN}
PASSWORDS = {name: f"password of {name}" for name in ACCOUNTS}


def document(
    accounts: dict[str, Role], passwords: dict[str, str], *, dev_mode: bool = False
) -> dict[str, Any]:
    clients = [
        ClientEntry(
            username=name,
            role=role,
            password=DynsecPassword.make(passwords[name]),
            password_id=password_id(passwords[name]),
        )
        for name, role in accounts.items()
    ]
    return render_dynsec(clients, accounts, TOPICS, dev_mode=dev_mode)


def as_broker_has_it(desired: dict[str, Any]) -> BrokerState:
    """The state a broker that loaded ``desired`` reports through its list commands (no hashes)."""
    clients = {}
    for client in desired["clients"]:
        listed = {k: v for k, v in client.items() if k not in ("password", "salt", "iterations")}
        clients[client["username"]] = {**listed, "groups": []}
    return BrokerState(
        default_access=dict(desired["defaultACLAccess"]),
        clients=clients,
        roles={r["rolename"]: copy.deepcopy(r) for r in desired["roles"]},
        groups={g["groupname"]: copy.deepcopy(g) for g in desired["groups"]},
        anonymous_group=desired["anonymousGroup"],
    )


def plan(state: BrokerState, desired: dict[str, Any], plaintexts: dict[str, str] = PASSWORDS) -> list[Any]:
    commands, unreachable = plan_changes(state, desired, plaintexts, keep="ehub-admin")
    assert unreachable == []
    return [(c["command"], c.get("username") or c.get("rolename") or c.get("groupname")) for c in commands]


def test_nothing_changed_sends_nothing() -> None:
    desired = document(ACCOUNTS, PASSWORDS)
    assert plan(as_broker_has_it(desired), desired) == []


def test_a_new_gateway_gets_its_role_then_its_account() -> None:
    state = as_broker_has_it(document(ACCOUNTS, PASSWORDS))
    desired = document({**ACCOUNTS, "gw-3": Role.GATEWAY}, {**PASSWORDS, "gw-3": "new"})
    commands, _ = plan_changes(state, desired, {**PASSWORDS, "gw-3": "new"}, keep="ehub-admin")
    assert [(c["command"], c.get("rolename", c.get("username"))) for c in commands] == [
        ("createRole", "gw-3"),
        ("createClient", "gw-3"),
    ]
    create = commands[1]
    assert create["password"] == "new"  # the plugin hashes it itself: 2.0.11 takes no hash over the wire
    assert create["clientid"] == "gw-3-agent"
    assert create["roles"] == [{"rolename": "gw-3"}]
    assert create["textdescription"] == password_id("new")
    assert "salt" not in create


def test_a_rotated_password_is_sent_and_a_removed_account_deleted() -> None:
    state = as_broker_has_it(document(ACCOUNTS, PASSWORDS))
    accounts = {k: v for k, v in ACCOUNTS.items() if k != "gw-2"}
    passwords = {**PASSWORDS, "gw-1": "rotated"}
    desired = document(accounts, passwords)
    commands, _ = plan_changes(state, desired, passwords, keep="ehub-admin")
    assert commands == [
        {
            "command": "modifyClient",
            "username": "gw-1",
            "password": "rotated",
            "textdescription": password_id("rotated"),
        },
        {"command": "deleteClient", "username": "gw-2"},
        {"command": "deleteRole", "rolename": "gw-2"},
    ]


def test_rights_and_client_ids_are_brought_back_and_foreign_entries_removed() -> None:
    desired = document(ACCOUNTS, PASSWORDS)
    state = as_broker_has_it(desired)
    state.roles["gw-1"]["acls"].append(
        {"acltype": "subscribePattern", "topic": "#", "priority": 0, "allow": True}
    )
    state.clients["gw-2"].pop("clientid")
    state.clients["ehub-ingest"]["clientid"] = "stolen"
    state.clients["intruder"] = {"username": "intruder", "roles": [], "groups": []}
    state.groups["friends"] = {"groupname": "friends", "roles": [], "clients": []}
    state.default_access["subscribe"] = True
    assert plan(state, desired) == [
        ("setDefaultACLAccess", None),
        ("modifyRole", "gw-1"),
        ("modifyClient", "ehub-ingest"),
        ("modifyClient", "gw-2"),
        ("deleteClient", "intruder"),
        ("deleteGroup", "friends"),
    ]
    commands, _ = plan_changes(state, desired, PASSWORDS, keep="ehub-admin")
    assert commands[0]["acls"] == [{"acltype": t, "allow": a} for t, a in DEFAULT_ACL_ACCESS.items()]
    assert commands[2]["clientid"] == ""  # unbinds
    assert commands[3]["clientid"] == "gw-2-agent"


def test_the_admin_doing_the_change_is_never_touched() -> None:
    desired = document(ACCOUNTS, {**PASSWORDS, "ehub-admin": "new admin password"})
    state = as_broker_has_it(document(ACCOUNTS, PASSWORDS))  # the broker has the old admin password id
    assert plan(state, desired) == []  # a modifyClient would disconnect the connection sending it


@pytest.mark.parametrize("dev_mode", [True, False])
def test_dev_mode_changes_only_the_anonymous_role(dev_mode: bool) -> None:
    state = as_broker_has_it(document(ACCOUNTS, PASSWORDS, dev_mode=not dev_mode))
    assert plan(state, document(ACCOUNTS, PASSWORDS, dev_mode=dev_mode)) == [("modifyRole", ANONYMOUS)]


def test_an_empty_broker_is_given_everything_but_the_lost_passwords() -> None:
    state = BrokerState(default_access={}, clients={}, roles={}, groups={}, anonymous_group="")
    desired = document(ACCOUNTS, PASSWORDS)
    plaintexts = {k: v for k, v in PASSWORDS.items() if k != "gw-2"}  # gw-2's credentials file is lost
    commands, unreachable = plan_changes(state, desired, plaintexts, keep="ehub-admin")
    assert unreachable == ["gw-2"]
    kinds = [c["command"] for c in commands]
    assert kinds.count("createRole") == len(ACCOUNTS) + 1  # and the anonymous one
    assert kinds.count("createClient") == len(ACCOUNTS) - 1
    assert tuple(k for k in kinds if "Group" in k) == ("createGroup", "setAnonymousGroup")
