"""Gateway configs generated from the community file load, are current, and give every device its profile."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from energyhub.cli.main import app
from energyhub.domain.community import load_community
from energyhub.edge.config import ConfigError, load_agent_config
from energyhub.edge.gateway_config import gateway_config
from energyhub.edge.mbus_profile import load_mbus_profile
from energyhub.wire.profile import load_profile
from tests.conftest import EXAMPLES

REPO = Path(__file__).resolve().parents[2]
DEMO = ["gw-002", "gw-011", "gw-018", "gw-049"]


@pytest.mark.parametrize("gateway", DEMO)
def test_committed_examples_load_and_are_current(gateway, tmp_path):
    path = EXAMPLES / "gateways" / f"{gateway}.yaml"
    config = load_agent_config(path)
    assert config.gateway == gateway
    for device in config.devices:
        if device.mbus is not None:
            load_mbus_profile(device.profile)
        elif device.ocpp is None:  # a charger over OCPP has no register map
            load_profile(device.profile)
    result = CliRunner().invoke(
        app,
        [
            "gateway-config",
            "--community",
            str(EXAMPLES / "de-koumen.yaml"),
            "--gateway",
            gateway,
            "--out",
            str(tmp_path / "new.yaml"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new.yaml").read_text().split("\n", 1)[1] == path.read_text().split("\n", 1)[1]


def test_safe_modes_by_device_kind():
    community = load_community(EXAMPLES / "de-koumen.yaml")
    plaza = gateway_config(
        community,
        "gw-018",
        mqtt_host="127.0.0.1",
        mqtt_port=1,
        credentials_file=EXAMPLES,
        buffer_path=EXAMPLES,
    )
    chargers = [d for d in plaza["devices"] if d["profile"] == "ocpp"]
    assert len(chargers) == 18
    assert all(d["safe_mode"] == {"max_current_a": 6.0} for d in chargers)
    # Its OCPP server: where the community file says, TLS, its files beside the broker credentials.
    assert plaza["ocpp"]["port"] == 19018
    assert plaza["ocpp"]["security_profile"] == 2
    assert plaza["ocpp"]["cert_file"].endswith("gw-018-ocpp/server.crt")
    truck = next(d for d in chargers if d["id"] == "ev-truck-1")
    assert truck["setpoint_bounds"] == {"max_current_a": [0.0, 505.2]}  # 350 kW at 400 V x sqrt 3
    meter = next(d for d in plaza["devices"] if d["profile"] == "eastron_sdm630")
    assert "safe_mode" not in meter
    shop = gateway_config(
        community,
        "gw-002",
        mqtt_host="127.0.0.1",
        mqtt_port=1,
        credentials_file=EXAMPLES,
        buffer_path=EXAMPLES,
    )
    assert {d["profile"] for d in shop["devices"]} >= {"sunspec_inverter", "sunspec_battery"}
    with pytest.raises(ValueError, match="gateway 'gw-999' has no devices"):
        gateway_config(
            community, "gw-999", mqtt_host="h", mqtt_port=1, credentials_file=EXAMPLES, buffer_path=EXAMPLES
        )


def test_timeout_longer_than_the_interval_is_refused(tmp_path):
    config = yaml.safe_load((EXAMPLES / "gateways" / "gw-011.yaml").read_text())
    config["timeout_s"] = 0.6
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(
        ConfigError, match=r"timeout_s x \(retries \+ 1\) = 1.2 s is not shorter than the poll"
    ):
        load_agent_config(path)
    config["timeout_s"] = 0.4
    config["devices"][0]["id"] = "Bad Id"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"devices.0.id: device 'Bad Id' is not a valid identifier"):
        load_agent_config(path)


def gateway_config_cli(tmp_path, *args: str):
    return CliRunner().invoke(
        app,
        ["gateway-config", "--community", str(EXAMPLES / "de-koumen.yaml"), "--gateway", "gw-017", *args],
    )


def test_the_tls_port_needs_the_ca_and_the_plain_port_refuses_one(tmp_path):
    no_ca = gateway_config_cli(tmp_path, "--mqtt-port", "18831")
    assert no_ca.exit_code == 2
    assert "port 18831 is the broker's TLS listener: give its CA with --ca-file" in no_ca.output
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    plain = gateway_config_cli(tmp_path, "--mqtt-port", "18830", "--ca-file", str(ca))
    assert plain.exit_code == 2
    assert "port 18830 is the broker's plain listener, which speaks no TLS" in plain.output
    missing = gateway_config_cli(tmp_path, "--mqtt-port", "18831", "--ca-file", str(tmp_path / "nope.crt"))
    assert missing.exit_code == 2
    assert "nope.crt: no such file" in missing.output


def test_a_bundle_holds_the_files_and_names_them_where_the_unit_expects_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    credentials = tmp_path / "var" / "broker" / "credentials" / "gw-017.json"
    credentials.parent.mkdir(parents=True)
    credentials.write_text('{"username": "gw-017", "password": "x"}')
    ca = tmp_path / "ca.crt"
    ca.write_text("a CA")
    result = gateway_config_cli(
        tmp_path, "--mqtt-host", "broker.example.org", "--mqtt-port", "18831", "--ca-file", str(ca),
        "--bundle", "gw-017",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    bundle = tmp_path / "gw-017"
    assert sorted(p.name for p in bundle.iterdir()) == ["ca.crt", "gateway.yaml", "gw-017.json"]
    assert (bundle / "gw-017.json").stat().st_mode & 0o077 == 0  # a password: the owner's only
    config = yaml.safe_load((bundle / "gateway.yaml").read_text())
    assert config["mqtt"] == {
        "host": "broker.example.org",
        "port": 18831,
        "credentials_file": "/etc/energyhub/gw-017.json",
        "ca_file": "/etc/energyhub/ca.crt",
    }
    assert config["buffer_path"] == "/var/lib/energyhub/buffer.db"
    unit = (REPO / "src/energyhub/edge/deploy/energyhub-edge.service").read_text()
    assert "ExecStart=/opt/energyhub/.venv/bin/energyhub edge --config /etc/energyhub/gateway.yaml" in unit
    assert "StateDirectory=energyhub" in unit
    assert "User=energyhub" in unit
    # Without the account there is nothing to bundle: say how to make it.
    credentials.unlink()
    again = gateway_config_cli(tmp_path, "--bundle", "gw-017")
    assert again.exit_code == 2
    assert "make the gateway's account first: energyhub broker add-gateway gw-017" in again.output


def test_a_config_with_only_what_it_must_say_loads(tmp_path):
    # The defaults themselves keep timeout x (retries + 1) under the interval (0.4 x 2 < 1 s).
    path = tmp_path / "gw.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "gateway": "gw-1",
                "site": "s",
                "devices": [{"id": "m", "profile": "eastron_sdm630", "host": "h"}],
            }
        )
    )
    config = load_agent_config(path)
    assert config.timeout_s * (config.retries + 1) < config.interval_s
