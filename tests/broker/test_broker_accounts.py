"""Broker accounts and the files they generate (no broker needed; the live checks are in test_broker_live.py)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from energyhub.broker.accounts import ADMIN_ACCOUNT, SERVICE_ACCOUNTS, AccountError, BrokerAccounts, Role
from energyhub.broker.dynsec import ANONYMOUS, DEFAULT_ACL_ACCESS, Acl, AclType, account_acls
from energyhub.runtime.passwords import DynsecPassword, hash_password, verify_password
from energyhub.wire.topics import Topics

TOPICS = Topics(site="de-koumen", root="ehub/v1")
BASE = "ehub/v1/de-koumen"


@pytest.fixture
def accounts(tmp_path: Path) -> BrokerAccounts:
    return BrokerAccounts(tmp_path / "broker", TOPICS)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def dynsec(accounts: BrokerAccounts) -> dict:
    return json.loads(accounts.dynsec_path.read_text())


def passwd_entries(accounts: BrokerAccounts) -> dict[str, str]:
    """username -> the ``$7$`` hash the plugin's config holds for it."""
    entries = {}
    for client in dynsec(accounts)["clients"]:
        entry = DynsecPassword.from_json(client)
        assert entry is not None, client  # what the plugin would load: 12-byte salt, 64-byte hash
        entries[client["username"]] = entry.to_hash()
    return entries


def role_acls(accounts: BrokerAccounts, username: str) -> set[tuple[str, str]]:
    """The (acltype, topic) pairs of the role the account ``username`` has in the generated config."""
    document = dynsec(accounts)
    client = next(c for c in document["clients"] if c["username"] == username)
    assert client["roles"] == [{"rolename": username}]  # one role per account, of its own name
    role = next(r for r in document["roles"] if r["rolename"] == username)
    assert all(
        acl["allow"] is True and acl["priority"] == 0 for acl in role["acls"]
    )  # nothing but allow rules
    return {(acl["acltype"], acl["topic"]) for acl in role["acls"]}


def test_service_accounts_are_created_once(accounts: BrokerAccounts) -> None:
    created = accounts.ensure_service_accounts()
    assert {c.username: c.role for c in created} == SERVICE_ACCOUNTS
    assert accounts.ensure_service_accounts() == []
    for credentials in created:
        assert accounts.credentials(credentials.username) == credentials  # password kept
    assert accounts.accounts() == SERVICE_ACCOUNTS
    entries = passwd_entries(accounts)
    for credentials in created:
        assert verify_password(credentials.password, entries[credentials.username])


def test_files_are_private_and_written_whole(accounts: BrokerAccounts) -> None:
    accounts.ensure_service_accounts()
    gateway = accounts.add_gateway("gw-1")
    credentials_file = accounts.credentials_path("gw-1")
    assert mode(credentials_file) == 0o600
    assert mode(accounts.credentials_dir) == 0o700
    assert mode(accounts.dynsec_path) == 0o600
    assert mode(accounts.dynsec_path.parent) == 0o700  # the broker saves the file there with its own umask
    document = json.loads(credentials_file.read_text())
    assert document["username"] == "gw-1"
    assert document["password"] == gateway.password
    assert document["role"] == "gateway"
    assert document["host"] is None
    leftovers = [p.name for p in accounts.directory.rglob("*.tmp")]
    assert leftovers == []  # atomic writes leave no temp files behind


def test_add_gateway_refuses_duplicates_without_rotate(accounts: BrokerAccounts) -> None:
    first = accounts.add_gateway("gw-1")
    other = accounts.add_gateway("gw-2")
    hash_of_other = passwd_entries(accounts)["gw-2"]
    with pytest.raises(AccountError, match="--rotate"):
        accounts.add_gateway("gw-1")
    assert accounts.credentials("gw-1") == first  # unchanged by the refused call

    rotated = accounts.add_gateway("gw-1", rotate=True)
    assert rotated.password != first.password
    entries = passwd_entries(accounts)
    assert verify_password(rotated.password, entries["gw-1"])
    assert not verify_password(first.password, entries["gw-1"])
    assert entries["gw-2"] == hash_of_other  # other accounts keep their hash byte for byte
    assert accounts.credentials("gw-2") == other


def test_gateways_added_at_once_are_all_or_nothing(accounts: BrokerAccounts) -> None:
    first = accounts.add_gateway("gw-1")
    # One name already taken (without rotate): none of the batch is created.
    with pytest.raises(AccountError, match="gateway 'gw-1' already has a broker account"):
        accounts.add_gateways(["gw-2", "gw-1", "gw-3"])
    assert set(accounts.accounts()) & {"gw-2", "gw-3"} == set()
    assert accounts.credentials("gw-1") == first
    made = accounts.add_gateways(["gw-2", "gw-1", "gw-3"], rotate={"gw-1"})
    assert sorted(made) == ["gw-1", "gw-2", "gw-3"]
    entries = passwd_entries(accounts)
    assert all(verify_password(made[n].password, entries[n]) for n in made)
    assert made["gw-1"].password != first.password
    with pytest.raises(AccountError, match="reserved"):
        accounts.add_gateways(["gw-4", "ehub-x"])
    assert "gw-4" not in accounts.accounts()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ehub-control", "reserved"),
        ("ehub-mine", "reserved"),
        ("GW-1", "not a valid identifier"),
        ("gw/1", "not a valid identifier"),
        ("gw+", "not a valid identifier"),
        ("#", "not a valid identifier"),
        ("", "not a valid identifier"),
    ],
)
def test_bad_gateway_names_are_refused(accounts: BrokerAccounts, name: str, message: str) -> None:
    with pytest.raises(AccountError, match=message):
        accounts.add_gateway(name)
    assert accounts.accounts() == {}


def test_remove_deletes_everywhere(accounts: BrokerAccounts) -> None:
    accounts.add_gateway("gw-1")
    accounts.add_gateway("gw-2")
    accounts.remove("gw-1")
    assert accounts.accounts() == {"gw-2": Role.GATEWAY}
    assert not accounts.credentials_path("gw-1").exists()
    assert "gw-1" not in passwd_entries(accounts)
    assert "gw-1" not in accounts.dynsec_path.read_text()  # nor its role
    with pytest.raises(AccountError, match="no broker account 'gw-1'"):
        accounts.remove("gw-1")
    with pytest.raises(AccountError, match="no broker account 'gw-1'"):
        accounts.credentials("gw-1")


def test_the_admin_account_cannot_be_removed(accounts: BrokerAccounts) -> None:
    accounts.ensure_service_accounts()
    with pytest.raises(AccountError, match="running broker"):
        accounts.remove(ADMIN_ACCOUNT)
    assert ADMIN_ACCOUNT in accounts.accounts()


def test_a_lost_credentials_file_keeps_the_hash(accounts: BrokerAccounts) -> None:
    gateway = accounts.add_gateway("gw-1")
    accounts.credentials_path("gw-1").unlink()
    accounts.write_files()
    assert verify_password(gateway.password, passwd_entries(accounts)["gw-1"])  # the gateway keeps working
    with pytest.raises(AccountError, match="--rotate"):
        accounts.credentials("gw-1")


def test_broken_accounts_file_names_itself(accounts: BrokerAccounts) -> None:
    accounts.directory.mkdir(parents=True)
    accounts.accounts_path.write_text("{not json")
    with pytest.raises(AccountError, match=r"accounts\.json is not valid JSON"):
        accounts.add_gateway("gw-1")
    accounts.accounts_path.write_text('{"gw-1": "superuser"}')
    with pytest.raises(AccountError, match=r"'gw-1'.*roles: gateway, control, ingest, api"):
        accounts.accounts()


def anonymous_acls(accounts: BrokerAccounts) -> list[dict]:
    document = dynsec(accounts)
    assert document["anonymousGroup"] == ANONYMOUS
    group = next(g for g in document["groups"] if g["groupname"] == ANONYMOUS)
    assert group["roles"] == [{"rolename": ANONYMOUS}]
    return next(r for r in document["roles"] if r["rolename"] == ANONYMOUS)["acls"]


def test_dev_mode_survives_later_changes(accounts: BrokerAccounts) -> None:
    accounts.write_files(dev_mode=True)
    accounts.add_gateway("gw-1")
    assert {(a["acltype"], a["topic"]) for a in anonymous_acls(accounts)} == {
        ("publishClientSend", f"{BASE}/#"),
        ("publishClientReceive", f"{BASE}/#"),
        ("subscribePattern", f"{BASE}/#"),
        ("subscribePattern", f"$share/+/{BASE}/#"),
    }
    accounts.write_files(dev_mode=False)
    accounts.add_gateway("gw-2")
    assert anonymous_acls(accounts) == []  # the group stays, with a role that allows nothing


def test_reload_without_a_running_broker(accounts: BrokerAccounts) -> None:
    assert accounts.reload_broker() is False  # no pid file
    accounts.directory.mkdir(parents=True)
    accounts.pid_path.write_text(f"{os.getpid()}\n")  # alive, but not mosquitto: not a broker to change
    assert accounts.reload_broker() is False
    accounts.pid_path.write_text("")
    assert accounts.reload_broker() is False


def test_everything_is_denied_unless_allowed(accounts: BrokerAccounts) -> None:
    accounts.ensure_service_accounts()
    document = dynsec(accounts)
    assert document["defaultACLAccess"] == DEFAULT_ACL_ACCESS
    assert DEFAULT_ACL_ACCESS == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    topics = {acl["topic"] for role in document["roles"] for acl in role["acls"]}
    assert "#" not in topics  # `#` as a subscribe pattern would cover $share/..., $SYS/... and $CONTROL/...


def test_gateway_rules() -> None:
    subtree = f"{BASE}/gw/gw-1"
    assert set(account_acls("gw-1", Role.GATEWAY, TOPICS)) == {
        # Only what the edge produces.
        Acl(AclType.PUBLISH_SEND, f"{subtree}/state"),
        Acl(AclType.PUBLISH_SEND, f"{subtree}/meas/+"),
        Acl(AclType.PUBLISH_SEND, f"{subtree}/ack/+"),
        # Its setpoints (the filter or one device's topic), its confirmations and the heartbeat: to subscribe
        # to and to receive, and nothing else; no shared group, nothing of another gateway's.
        Acl(AclType.SUBSCRIBE_PATTERN, f"{subtree}/setpoint/+"),
        Acl(AclType.PUBLISH_RECEIVE, f"{subtree}/setpoint/+"),
        Acl(AclType.SUBSCRIBE_LITERAL, f"{subtree}/confirm"),
        Acl(AclType.PUBLISH_RECEIVE, f"{subtree}/confirm"),
        Acl(AclType.SUBSCRIBE_LITERAL, f"{BASE}/control/heartbeat"),
        Acl(AclType.PUBLISH_RECEIVE, f"{BASE}/control/heartbeat"),
    }


def test_service_rules(accounts: BrokerAccounts) -> None:
    accounts.ensure_service_accounts()
    send, receive, pattern = "publishClientSend", "publishClientReceive", "subscribePattern"
    assert role_acls(accounts, "ehub-control") == {
        *((kind, f"{BASE}/gw/+/{t}") for t in ("meas/+", "state", "ack/+") for kind in (receive, pattern)),
        (receive, f"{BASE}/control/#"),
        (pattern, f"{BASE}/control/#"),
        (send, f"{BASE}/control/#"),
        (send, f"{BASE}/gw/+/setpoint/+"),
    }
    assert role_acls(accounts, "ehub-ingest") == {
        (receive, f"{BASE}/gw/#"),
        (pattern, f"{BASE}/gw/#"),
        (pattern, f"$share/+/{BASE}/gw/#"),  # any shared group, on the ingest's topics only
        (receive, f"{BASE}/control/#"),
        (pattern, f"{BASE}/control/#"),
        (pattern, f"$share/+/{BASE}/control/#"),
        (send, f"{BASE}/deadletter/#"),
        (send, f"{BASE}/gw/+/confirm"),
        (send, f"{BASE}/gw/+/meas/+"),  # to clear a retained measurement
    }
    assert role_acls(accounts, "ehub-api") == {
        (receive, f"{BASE}/#"),
        (pattern, f"{BASE}/#"),
        (send, f"{BASE}/gw/+/setpoint/+"),
    }
    control = "$CONTROL/dynamic-security/#"
    assert role_acls(accounts, ADMIN_ACCOUNT) == {(receive, control), (pattern, control), (send, control)}


def test_gateways_are_bound_to_their_client_id_and_services_are_not(accounts: BrokerAccounts) -> None:
    accounts.ensure_service_accounts()
    accounts.add_gateway("gw-1")
    clients = {c["username"]: c for c in dynsec(accounts)["clients"]}
    assert clients["gw-1"]["clientid"] == "gw-1-agent"
    for service in SERVICE_ACCOUNTS:
        assert "clientid" not in clients[service]  # several workers and instances share one account


def test_a_rotated_password_changes_the_password_id(accounts: BrokerAccounts) -> None:
    accounts.add_gateway("gw-1")
    accounts.add_gateway("gw-2")
    ids = {c["username"]: c["textdescription"] for c in dynsec(accounts)["clients"]}
    accounts.add_gateway("gw-1", rotate=True)
    after = {c["username"]: c["textdescription"] for c in dynsec(accounts)["clients"]}
    assert after["gw-1"] != ids["gw-1"]  # how a reload sees that the running broker has the old password
    assert after["gw-2"] == ids["gw-2"]
    assert accounts.credentials("gw-1").password not in accounts.dynsec_path.read_text()


def test_hashes_of_the_old_password_file_are_kept_and_the_old_files_removed(accounts: BrokerAccounts) -> None:
    accounts.directory.mkdir(parents=True)
    accounts.accounts_path.write_text('{"gw-old": "gateway"}')
    passwd, acl = accounts.legacy_paths
    passwd.write_text(f"gw-old:{hash_password('from-before')}\n")
    acl.write_text("# dev mode: anonymous clients may use the whole site.\ntopic readwrite x/#\n")
    accounts.write_files()
    assert verify_password(
        "from-before", passwd_entries(accounts)["gw-old"]
    )  # no credentials file: hash kept
    assert anonymous_acls(accounts) != []  # dev mode carried over from the old ACL file
    assert not passwd.exists()
    assert not acl.exists()


def test_a_service_account_without_credentials_is_made_anew(accounts: BrokerAccounts) -> None:
    accounts.ensure_service_accounts()
    old = accounts.credentials("ehub-api")
    accounts.credentials_path("ehub-api").unlink()
    with pytest.raises(AccountError, match="energyhub broker init"):
        accounts.credentials("ehub-api")
    created = accounts.ensure_service_accounts()
    assert [c.username for c in created] == ["ehub-api"]
    assert created[0].password != old.password
    assert verify_password(created[0].password, passwd_entries(accounts)["ehub-api"])
