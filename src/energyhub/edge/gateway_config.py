"""Write a gateway's agent configuration from the community file, so each company's gateway starts from data."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from energyhub.domain.topology import Community, DeviceRole
from energyhub.wire.messages import HEARTBEAT_TIMEOUT_S
from energyhub.wire.roles import ROLES

__all__ = ["SAFE_MODES", "gateway_config"]

# What each kind of device falls back to when control is gone, as wire/roles.py declares it (PV held low,
# batteries at rest, chargers at their minimum). Override per device in the written file.
# By role, not by profile: a PV inverter found by SunSpec discovery (`profile: sunspec`) needs its safe mode too.
SAFE_MODES: Final[Mapping[DeviceRole, Mapping[str, float]]] = MappingProxyType(
    {role: spec.failsafe for role, spec in ROLES.items() if spec.failsafe}
)


def gateway_config(
    community: Community,
    gateway: str,
    *,
    mqtt_host: str,
    mqtt_port: int,
    credentials_file: Path,
    buffer_path: Path,
    ca_file: Path | None = None,
) -> dict[str, Any]:
    devices = []
    for connection, device in community.devices():
        if community.gateway_of(connection, device) != gateway:
            continue
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
    return {
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
