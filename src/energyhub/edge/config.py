"""The gateway agent's configuration: one YAML file per gateway, validated on load."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from energyhub.domain.ids import IdError
from energyhub.domain.topology import MbusAddress, OcppPoint
from energyhub.wire.messages import HEARTBEAT_TIMEOUT_S
from energyhub.wire.topics import DEFAULT_ROOT, check_id

__all__ = [
    "AgentConfig",
    "ConfigError",
    "DeviceConfig",
    "MqttConfig",
    "OcppServer",
    "SerialLine",
    "load_agent_config",
    "validation_report",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    credentials_file: Path | None = Field(None, description="JSON from `energyhub broker add-gateway`.")
    ca_file: Path | None = Field(
        None, description="CA certificate: connect with TLS and check the broker's name."
    )
    keepalive_s: int = Field(15, ge=5, le=600)
    max_inflight: int = Field(
        100, ge=1, le=1000, description="QoS 1 messages awaiting PUBACK at once (capped by the broker's)."
    )


class SerialLine(_Strict):
    """A Modbus RTU line: a serial port, or ``socket://host:port`` for RTU frames through a TCP converter."""

    port: str = Field(description="e.g. /dev/ttyUSB0, or socket://127.0.0.1:4001")
    baudrate: int = Field(9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    pause_s: float = Field(
        0.02,
        ge=0,
        le=5,
        description="Silence after each answer before the next request: slow devices and RS-485 converters that "
        "switch direction late need 20-100 ms (Modbus itself asks 3.5 characters, under 4 ms at 9600 baud).",
    )
    connect_pause_s: float = Field(
        0.0,
        ge=0,
        le=30,
        description="Wait after opening the port before the first request (some USB adapters).",
    )

    @property
    def char_bits(self) -> int:
        """Bits on the wire per byte: start bit, data bits, parity bit, stop bits."""
        return 1 + self.bytesize + (self.parity != "N") + self.stopbits


class OcppServer(_Strict):
    """The gateway's OCPP server: the management side that the plaza's chargers connect to over WebSocket.

    Security profile 2 (TLS with the gateway's certificate, HTTP Basic auth per charger) when ``cert_file`` is
    given; profile 1 (Basic auth over plain WebSocket) only when asked for, for a closed charger LAN.
    """

    host: str = "127.0.0.1"
    port: int = Field(9000, ge=1, le=65535)
    cert_file: Path | None = Field(None, description="The server's certificate (PEM), with its chain: TLS.")
    key_file: Path | None = Field(None, description="Its private key (PEM).")
    security_profile: Literal[1, 2] = Field(
        2, description="2: TLS and Basic auth (needs cert_file and key_file); 1: Basic auth without TLS."
    )
    credentials_file: Path = Field(
        description="The chargers' hashed passwords, from `energyhub ocpp add-charger`; read at each connect."
    )
    meter_interval_s: int = Field(
        1, ge=1, le=3600, description="MeterValueSampleInterval asked of every charger at boot."
    )
    heartbeat_interval_s: int = Field(60, ge=10, le=86_400, description="Heartbeat interval given at boot.")
    call_timeout_s: float = Field(10.0, gt=0, le=120, description="How long a charger may take to answer.")

    @model_validator(mode="after")
    def _tls_for_profile_2(self) -> Self:
        if self.security_profile == 2 and (self.cert_file is None or self.key_file is None):
            raise ValueError(
                "security profile 2 needs cert_file and key_file (TLS); give them, or security_profile: 1 "
                "for Basic auth without TLS on a closed charger network"
            )
        return self


class DeviceConfig(_Strict):
    id: str
    profile: str
    host: str | None = Field(None, description="Modbus TCP address; leave out for a device on a serial line.")
    port: int = Field(502, ge=1, le=65535)
    serial: SerialLine | None = Field(None, description="Modbus RTU line, instead of host and port.")
    mbus: MbusAddress | None = Field(None, description="A wired M-Bus meter behind a TCP level converter.")
    ocpp: OcppPoint | None = Field(
        None, description="A charger connector that connects to this gateway's OCPP server (see `ocpp:`)."
    )
    unit_id: int = Field(1, ge=0, le=255)
    interval_s: float | None = Field(
        None, gt=0, description="Poll interval; the agent's default if left out."
    )
    setpoint_bounds: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Narrower bounds than the profile's, per setpoint name: [min, max]."
    )
    safe_mode: dict[str, float] = Field(
        default_factory=dict,
        description="Setpoints applied when control is gone or a setpoint expires, e.g. {active_power_limit_pct: 30}.",
    )

    @model_validator(mode="after")
    def _one_transport(self) -> Self:
        given = [n for n in ("host", "serial", "mbus", "ocpp") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "give one of host (Modbus TCP), serial (Modbus RTU), mbus (M-Bus) or ocpp (a charger over "
                f"OCPP); this device has {', '.join(given) or 'none'}"
            )
        if self.ocpp is not None and self.profile != "ocpp":
            raise ValueError("a charger over OCPP has profile: ocpp")
        return self

    @property
    def bus_key(self) -> str:
        """Devices with the same key share one connection, and one owner polls them in turn."""
        if self.ocpp is not None:
            return f"ocpp:{self.ocpp.charge_point_id}"
        if self.mbus is not None:
            return f"mbus:{self.mbus.host}:{self.mbus.port}"
        return (
            f"rtu:{self.serial.port}" if self.serial is not None else f"tcp:{self.host}:{self.port}"
        )  # as Bus.name

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        try:
            return check_id(value, what="device")
        except IdError as exc:
            raise ValueError(str(exc)) from None


class AgentConfig(_Strict):
    gateway: str
    site: str
    topic_root: str = DEFAULT_ROOT
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    buffer_path: Path = Path("var/edge/buffer.db")
    buffer_max_messages: int = Field(1_000_000, ge=100)
    memory_max_messages: int = Field(
        20_000, ge=100, description="Held in memory while the buffer cannot be written (a full disk)."
    )
    confirm_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A measurement sent this long ago without the ingest confirming it stored goes out again.",
    )
    interval_s: float = Field(1.0, gt=0)
    timeout_s: float = Field(
        0.4, gt=0, description="Per request; x (retries + 1) must stay under the interval."
    )
    retries: int = Field(1, ge=0, le=5)
    backoff_max_s: float = Field(
        30.0,
        gt=0,
        description="A device that stopped answering is tried once per back-off, doubling from its interval up "
        "to this, so it does not hold up the other devices of its line; it is back at the first answer.",
    )
    heartbeat_timeout_s: float = Field(
        HEARTBEAT_TIMEOUT_S, gt=0, description="Control silent this long: devices go to safe mode."
    )
    ocpp: OcppServer | None = Field(
        None, description="The OCPP server for this gateway's chargers over OCPP."
    )
    devices: list[DeviceConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _ocpp_server_for_ocpp_chargers(self) -> Self:
        chargers = [d.id for d in self.devices if d.ocpp is not None]
        if chargers and self.ocpp is None:
            raise ValueError(
                f"{', '.join(chargers)} connect over OCPP: give the gateway an ocpp: server (host, port, "
                "credentials_file)"
            )
        seen: dict[tuple[str, int], str] = {}
        for device in self.devices:
            if device.ocpp is None:
                continue
            key = (device.ocpp.charge_point_id, device.ocpp.connector_id)
            if key in seen:
                raise ValueError(
                    f"{device.id} and {seen[key]} are both connector {key[1]} of charge point {key[0]}"
                )
            seen[key] = device.id
        return self

    @field_validator("gateway", "site")
    @classmethod
    def _ids(cls, value: str) -> str:
        try:
            return check_id(value)
        except IdError as exc:
            raise ValueError(str(exc)) from None


class ConfigError(ValueError):
    pass


def validation_report(path: Path, exc: ValidationError) -> str:
    """Every error of a YAML file that did not validate, each with the file and the field it is about."""
    lines = [
        f"  {path}: {'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors(include_url=False)
    ]
    return f"{path}: {len(lines)} error(s)\n" + "\n".join(lines)


def load_agent_config(path: Path) -> AgentConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        config = AgentConfig.model_validate(data)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(validation_report(path, exc)) from None
    ca = config.mqtt.ca_file
    if ca is not None and not ca.is_file():
        raise ConfigError(
            f"{path}: mqtt.ca_file: {ca}: no such file: TLS to the broker needs its CA certificate (ca.crt from "
            "`energyhub broker certs` on the central side, which `energyhub gateway-config --bundle` copies)"
        )
    timeouts = [
        d.id
        for d in config.devices
        if (d.host is not None or d.serial is not None)  # Modbus: M-Bus and OCPP have their own timing
        and config.timeout_s * (config.retries + 1) >= (d.interval_s or config.interval_s)
    ]
    if timeouts:
        raise ConfigError(
            f"{path}: timeout_s x (retries + 1) = {config.timeout_s * (config.retries + 1):g} s is not "
            f"shorter than the poll interval of {', '.join(timeouts)}: lower the timeout or the retries"
        )
    return config
