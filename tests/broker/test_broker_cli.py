"""`energyhub broker` commands through typer's CliRunner (reload of a running broker: test_broker_live.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from energyhub.broker.cli import app

Run = Callable[..., Result]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, [*args, "--state-dir", str(tmp_path)])

    return invoke


def assert_clean_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


def test_init_creates_service_accounts_once(run: Run, tmp_path: Path) -> None:
    first = run("init")
    assert first.exit_code == 0, first.output
    for username in ("ehub-control", "ehub-ingest", "ehub-api"):
        assert f"created {username}" in first.stdout
    assert str(tmp_path / "broker" / "credentials") in first.stdout
    second = run("init")
    assert second.exit_code == 0
    assert "exist already" in second.stdout


def test_add_gateway_prints_the_password_once_and_refuses_a_second_time(run: Run, tmp_path: Path) -> None:
    result = run("add-gateway", "gw-7")
    assert result.exit_code == 0, result.output
    fields = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    credentials_file = tmp_path / "broker" / "credentials" / "gw-7.json"
    assert fields["username"] == "gw-7"
    assert fields["password"] == json.loads(credentials_file.read_text())["password"]
    assert str(credentials_file) in result.stdout
    assert "no running broker" in result.stdout

    again = run("add-gateway", "gw-7")
    assert_clean_error(again, "gw-7", "already", "--rotate")

    rotated = run("add-gateway", "gw-7", "--rotate")
    assert rotated.exit_code == 0, rotated.output
    assert f"password: {fields['password']}" not in rotated.stdout


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("Gateway 1", "not a valid identifier"), ("gw/1", "not a valid identifier"), ("ehub-x", "reserved")],
)
def test_bad_gateway_ids_get_a_clear_message(run: Run, name: str, fragment: str) -> None:
    assert_clean_error(run("add-gateway", name), repr(name), fragment)


def test_list_and_remove(run: Run) -> None:
    assert "broker init" in run("list").stdout
    run("init")
    run("add-gateway", "gw-1")
    listing = run("list").stdout.splitlines()
    assert "gw-1\tgateway" in listing
    assert "ehub-ingest\tingest" in listing
    removed = run("remove", "gw-1")
    assert removed.exit_code == 0, removed.output
    assert "gw-1\tgateway" not in run("list").stdout.splitlines()
    assert_clean_error(run("remove", "gw-1"), "no broker account 'gw-1'")


def test_certs_prints_the_three_paths(run: Run, tmp_path: Path) -> None:
    result = run("certs", "--host", "broker.example.org", "--host", "10.0.0.5")
    assert result.exit_code == 0, result.output
    certs = tmp_path / "broker" / "certs"
    for name in ("ca.crt", "server.crt", "server.key"):
        assert str(certs / name) in result.stdout
        assert (certs / name).exists()
    assert_clean_error(run("certs", "--host", "not a host"), "not a host")


def test_bad_site_gets_a_clear_message(run: Run) -> None:
    assert_clean_error(run("list", "--site", "De Koumen"), "site")


def test_write_config_names_the_plugin_and_where_the_broker_listens(run: Run, tmp_path: Path) -> None:
    result = run(
        "write-config", "--host", "0.0.0.0", "--port", "1883", "--plugin", "/opt/mosquitto/dynsec.so"
    )
    assert result.exit_code == 0, result.output
    broker = tmp_path / "broker"
    conf = (broker / "mosquitto.conf").read_text().splitlines()
    assert "plugin /opt/mosquitto/dynsec.so" in conf
    assert f"plugin_opt_config_file {(broker / 'dynsec' / 'dynamic-security.json').resolve()}" in conf
    assert not any(line.startswith(("password_file", "acl_file")) for line in conf)
    assert "listener 1883 0.0.0.0" in conf
    assert json.loads((broker / "listener.json").read_text()) == {"host": "0.0.0.0", "port": 1883}
    document = json.loads((broker / "dynsec" / "dynamic-security.json").read_text())
    assert {c["username"] for c in document["clients"]} == {
        "ehub-control",
        "ehub-ingest",
        "ehub-api",
        "ehub-admin",
    }
