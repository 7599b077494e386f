"""A device names exactly one way its gateway reaches it; the agent refuses the ones it cannot read yet."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from energyhub.domain.topology import Device
from energyhub.edge.config import ConfigError, DeviceConfig, load_agent_config


def test_a_community_device_needs_exactly_one_transport():
    with pytest.raises(ValidationError, match=r"exactly one of modbus, mbus or ocpp.*has none"):
        Device.model_validate({"id": "m1", "role": "meter", "profile": "eastron_sdm630"})
    with pytest.raises(ValidationError, match="has modbus, ocpp"):
        Device.model_validate(
            {
                "id": "ev-1",
                "role": "ev",
                "profile": "ocpp",
                "power_kw": 350,
                "modbus": {"host": "127.0.0.1"},
                "ocpp": {"charge_point_id": "TRUCK-1"},
            }
        )
    with pytest.raises(ValidationError, match="role: ev and profile: ocpp"):
        Device.model_validate(
            {"id": "m1", "role": "meter", "profile": "ocpp", "ocpp": {"charge_point_id": "TRUCK-1"}}
        )
    gas = Device.model_validate(
        {"id": "gas-1", "role": "gas", "profile": "x", "mbus": {"host": "127.0.0.1", "address": 5}}
    )
    assert gas.mbus is not None
    assert (gas.mbus.port, gas.mbus.address) == (10001, 5)


def test_an_edge_device_needs_exactly_one_transport():
    with pytest.raises(ValidationError, match="this device has host, mbus"):
        DeviceConfig.model_validate(
            {"id": "g", "profile": "x", "host": "127.0.0.1", "mbus": {"host": "127.0.0.1"}}
        )


def test_an_ocpp_charger_needs_the_gateways_ocpp_server(tmp_path: Path):
    path = tmp_path / "gateway.yaml"
    config = {
        "gateway": "gw-1",
        "site": "s",
        "ocpp": {"security_profile": 1, "credentials_file": str(tmp_path / "c.json")},
        "devices": [
            {"id": "m1", "profile": "eastron_sdm630", "host": "127.0.0.1"},
            {"id": "ev-1", "profile": "ocpp", "ocpp": {"charge_point_id": "TRUCK-1"}},
        ],
    }
    path.write_text(yaml.safe_dump(config))
    assert load_agent_config(path).ocpp is not None
    del config["ocpp"]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="ev-1 connect over OCPP: give the gateway an ocpp: server"):
        load_agent_config(path)
