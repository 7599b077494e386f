"""Broker accounts and the files they generate (no broker needed; the live checks are in test_broker_live.py)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from broker.accounts import SERVICE_ACCOUNTS, AccountError, BrokerAccounts, Role
from broker.acl import render_acl
from broker.passwords import verify_password
from hub.topics import Topics

TOPICS = Topics(site="de-koumen", root="ehub/v1")
BASE = "ehub/v1/de-koumen"


@pytest.fixture
def accounts(tmp_path: Path) -> BrokerAccounts:
    return BrokerAccounts(tmp_path / "broker", TOPICS)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def passwd_entries(accounts: BrokerAccounts) -> dict[str, str]:
    lines = accounts.passwd_path.read_text().splitlines()
    return dict(line.split(":", 1) for line in lines)


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
    assert mode(accounts.passwd_path) == 0o600
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
    assert "gw-1" not in accounts.acl_path.read_text()
    with pytest.raises(AccountError, match="no broker account 'gw-1'"):
        accounts.remove("gw-1")
    with pytest.raises(AccountError, match="no broker account 'gw-1'"):
        accounts.credentials("gw-1")


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


def test_dev_mode_survives_later_changes(accounts: BrokerAccounts) -> None:
    accounts.write_files(dev_mode=True)
    accounts.add_gateway("gw-1")
    assert f"topic readwrite {BASE}/#" in accounts.acl_path.read_text()
    accounts.write_files(dev_mode=False)
    accounts.add_gateway("gw-2")
    assert f"topic readwrite {BASE}/#" not in accounts.acl_path.read_text()


def test_reload_without_a_running_broker(accounts: BrokerAccounts) -> None:
    assert accounts.reload_broker() is False  # no pid file
    accounts.directory.mkdir(parents=True)
    accounts.pid_path.write_text(f"{os.getpid()}\n")  # alive, but not mosquitto: must not get a SIGHUP
    assert accounts.reload_broker() is False
    accounts.pid_path.write_text("")
    assert accounts.reload_broker() is False


def test_acl_rules_per_role() -> None:
    text = render_acl(
        {
            "gw-1": Role.GATEWAY,
            "ehub-control": Role.CONTROL,
            "ehub-ingest": Role.INGEST,
            "ehub-api": Role.API,
        },
        TOPICS,
    )
    blocks = {block.splitlines()[1]: block.splitlines()[2:] for block in text.split("\n\n")[1:] if block}
    assert blocks["user gw-1"] == [
        f"topic write {BASE}/gw/gw-1/state",
        f"topic write {BASE}/gw/gw-1/meas/+",
        f"topic write {BASE}/gw/gw-1/ack/+",
        f"topic read {BASE}/gw/gw-1/setpoint/+",
        f"topic read {BASE}/control/heartbeat",
    ]
    assert blocks["user ehub-control"] == [
        f"topic read {BASE}/gw/+/meas/+",
        f"topic read {BASE}/gw/+/state",
        f"topic read {BASE}/gw/+/ack/+",
        f"topic write {BASE}/gw/+/setpoint/+",
        f"topic readwrite {BASE}/control/#",
    ]
    assert blocks["user ehub-ingest"] == [
        f"topic read {BASE}/gw/#",
        f"topic read {BASE}/control/#",
        f"topic write {BASE}/deadletter/#",
    ]
    assert blocks["user ehub-api"] == [f"topic read {BASE}/#", f"topic write {BASE}/gw/+/setpoint/+"]
    assert "pattern" not in text
    assert "topic readwrite" not in text.split("user ")[0]  # no anonymous rules outside dev mode


def test_acl_dev_mode_puts_anonymous_rules_first() -> None:
    text = render_acl({"gw-1": Role.GATEWAY}, TOPICS, dev_mode=True)
    anonymous_section = text.split("\nuser ")[0]
    assert f"\ntopic readwrite {BASE}/#" in anonymous_section


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
