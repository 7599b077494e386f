"""Write a gateway's agent configuration from the community file, so each company's gateway starts from data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from energyhub.domain.topology import Community, DeviceRole
from energyhub.wire.messages import HEARTBEAT_TIMEOUT_S

__all__ = ["SAFE_MODES", "gateway_config"]

# What each kind of device falls back to when control is gone: the hub takes no feed-in, so PV is held low,
# batteries rest, chargers go to their minimum. Override per device in the written file.
# By role, not by profile: a PV inverter found by SunSpec discovery (`profile: sunspec`) needs its safe mode too.
SAFE_MODES: dict[DeviceRole, dict[str, float]] = {
    DeviceRole.PV: {"active_power_limit_pct": 30.0},
    DeviceRole.BATTERY: {"charge_rate_pct": 0.0, "discharge_rate_pct": 0.0},
    DeviceRole.EV: {"max_current_a": 6.0},
}


def gateway_config(
    community: Community,
    gateway: str,
    *,
    mqtt_host: str,
    mqtt_port: int,
    credentials_file: Path,
    buffer_path: Path,
) -> dict[str, Any]:
    devices = []
    for connection, device in community.devices():
        if community.gateway_of(connection, device) != gateway:
            continue
        entry: dict[str, Any] = {
            "id": device.id,
            "profile": device.profile,
            "host": device.modbus.host,
            "port": device.modbus.port,
            "unit_id": device.modbus.unit_id,
        }
        if device.role in SAFE_MODES:
            entry["safe_mode"] = dict(SAFE_MODES[device.role])
        devices.append(entry)
    if not devices:
        known = sorted({community.gateway_of(c, d) for c, d in community.devices()})
        raise ValueError(
            f"gateway {gateway!r} has no devices in the community file (gateways: {', '.join(known[:8])}...)"
        )
    return {
        "gateway": gateway,
        "site": community.community.id,
        "mqtt": {"host": mqtt_host, "port": mqtt_port, "credentials_file": str(credentials_file)},
        "buffer_path": str(buffer_path),
        "interval_s": 1.0,
        "timeout_s": 0.4,
        "retries": 1,
        "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S,
        "devices": devices,
    }
