"""Gateway configs generated from the community file load, are current, and give every device its profile."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from energyhub.cli.main import app
from energyhub.domain.community import load_community
from energyhub.edge.config import ConfigError, load_agent_config
from energyhub.edge.gateway_config import gateway_config
from energyhub.edge.profile import load_profile
from tests.conftest import EXAMPLES

DEMO = ["gw-002", "gw-011", "gw-018", "gw-049"]


@pytest.mark.parametrize("gateway", DEMO)
def test_committed_examples_load_and_are_current(gateway, tmp_path):
    path = EXAMPLES / "gateways" / f"{gateway}.yaml"
    config = load_agent_config(path)
    assert config.gateway == gateway
    for device in config.devices:
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
    chargers = [d for d in plaza["devices"] if d["profile"] == "ev_charger"]
    assert len(chargers) == 18
    assert all(d["safe_mode"] == {"max_current_a": 6.0} for d in chargers)
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
