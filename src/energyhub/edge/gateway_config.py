"""Write a gateway's agent configuration from the community file, so each company's gateway starts from data."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from energyhub.domain.topology import Community, DeviceRole, OcppEndpoint
from energyhub.wire.messages import HEARTBEAT_TIMEOUT_S
from energyhub.wire.roles import CHARGER_W_PER_A, MAX_CURRENT_A, ROLES

__all__ = ["SAFE_MODES", "gateway_config", "ocpp_folder"]

# What each kind of device falls back to when control is gone, as wire/roles.py declares it (PV held low,
# batteries at rest, chargers at their minimum). Override per device in the written file.
# By role, not by profile: a PV inverter found by SunSpec discovery (`profile: sunspec`) needs its safe mode too.
SAFE_MODES: Final[Mapping[DeviceRole, Mapping[str, float]]] = MappingProxyType(
    {role: spec.failsafe for role, spec in ROLES.items() if spec.failsafe}
)


def ocpp_folder(credentials_file: Path, gateway: str) -> Path:
    """Where a gateway's OCPP server keeps its certificate, key and chargers' passwords: beside its broker
    credentials. Made on the gateway with `energyhub ocpp certs --dir` and `energyhub ocpp add-charger --file`."""
    return credentials_file.parent / f"{gateway}-ocpp"


def gateway_config(
    community: Community,
    gateway: str,
    *,
    mqtt_host: str,
    mqtt_port: int,
    credentials_file: Path,
    buffer_path: Path,
    ca_file: Path | None = None,
    ocpp_security_profile: int = 2,
) -> dict[str, Any]:
    """The agent's configuration for ``gateway``. Chargers over OCPP get the gateway's OCPP server (security
    profile 2: its certificate and key, and the chargers' password file, beside the broker credentials), and
    their rating as the bound of control's current, which also makes their station maximum profile."""
    devices = []
    endpoint = OcppEndpoint()
    for connection, device in community.devices():
        if community.gateway_of(connection, device) != gateway:
            continue
        endpoint = next((g.ocpp for g in connection.gateways if g.id == gateway and g.ocpp), endpoint)
        entry: dict[str, Any] = {"id": device.id, "profile": device.profile}
        if device.modbus is not None:
            entry |= {
                "host": device.modbus.host,
                "port": device.modbus.port,
                "unit_id": device.modbus.unit_id,
            }
        elif device.mbus is not None:
            entry["mbus"] = device.mbus.model_dump()
        elif device.ocpp is not None:
            entry["ocpp"] = device.ocpp.model_dump()
            if device.power_kw:
                entry["setpoint_bounds"] = {
                    MAX_CURRENT_A: [0.0, round(device.power_kw * 1000 / CHARGER_W_PER_A, 1)]
                }
        if device.role in SAFE_MODES:
            entry["safe_mode"] = dict(SAFE_MODES[device.role])
        devices.append(entry)
    if not devices:
        known = sorted({community.gateway_of(c, d) for c, d in community.devices()})
        raise ValueError(
            f"gateway {gateway!r} has no devices in the community file (gateways: {', '.join(known[:8])}...)"
        )
    mqtt: dict[str, Any] = {"host": mqtt_host, "port": mqtt_port, "credentials_file": str(credentials_file)}
    if ca_file is not None:
        mqtt["ca_file"] = str(ca_file)
    config: dict[str, Any] = {
        "gateway": gateway,
        "site": community.community.id,
        "mqtt": mqtt,
        "buffer_path": str(buffer_path),
        "interval_s": 1.0,
        "timeout_s": 0.4,
        "retries": 1,
        "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S,
        "devices": devices,
    }
    if any("ocpp" in d for d in devices):
        folder = ocpp_folder(credentials_file, gateway)
        config["ocpp"] = {
            "host": endpoint.host,
            "port": endpoint.port,
            "security_profile": ocpp_security_profile,
            "credentials_file": str(folder / "chargers.json"),
        }
        if ocpp_security_profile == 2:
            config["ocpp"] |= {
                "cert_file": str(folder / "server.crt"),
                "key_file": str(folder / "server.key"),
            }
    return config
