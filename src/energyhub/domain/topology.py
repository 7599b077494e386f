"""The community's topology as typed models: hub (substation) > loops > optional micro groups > connections >
gateways > devices, plus group agreements over several connections.

These models validate one node at a time; checks across nodes (unique ids, references) live in ``community.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from energyhub.domain.contracts import Kw, Limits, Strict
from energyhub.domain.ean import EanError, validate_ean
from energyhub.domain.ids import IdError, check_id

__all__ = [
    "Community",
    "CommunityInfo",
    "Connection",
    "Device",
    "DeviceRole",
    "Gateway",
    "GroupAgreement",
    "Hub",
    "Level",
    "Loop",
    "MbusAddress",
    "MicroGroup",
    "ModbusAddress",
    "NodeRef",
    "OcppPoint",
]


def _id(value: object) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("id_type", "must be a text id like 'gw-017'")
    try:
        return check_id(value)
    except IdError as exc:
        raise PydanticCustomError("bad_id", str(exc)) from None


def _ean(value: object) -> str:
    # An unquoted EAN is an integer in YAML; lossless as long as it has 18 digits (Dutch EANs start with 87).
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    try:
        return validate_ean(value)  # type: ignore[arg-type]
    except EanError as exc:
        raise PydanticCustomError("ean", str(exc)) from None


Id = Annotated[str, BeforeValidator(_id)]
Ean = Annotated[str, BeforeValidator(_ean)]


class Level(StrEnum):
    """Where a node sits in the grid; ``group`` is a group agreement, a virtual node over connections."""

    CONNECTION = "connection"
    MICRO = "micro"
    LOOP = "loop"
    HUB = "hub"
    GROUP = "group"


class DeviceRole(StrEnum):
    METER = "meter"  # the connection's grid meter: its net flow, import positive
    PV = "pv"
    BATTERY = "battery"
    EV = "ev"
    LOAD = "load"  # a sub-metered load behind the grid meter
    GAS = "gas"  # a gas meter (m3), read over M-Bus
    WATER = "water"  # a water meter (m3), read over M-Bus


class ModbusAddress(Strict):
    """Where the gateway reaches the device: Modbus TCP (or an RTU-to-TCP gateway) and the unit id."""

    host: str = Field(min_length=1)
    port: int = Field(502, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=247)


class MbusAddress(Strict):
    """Where the gateway reaches a wired M-Bus meter: an M-Bus level converter on TCP (transparent, as the
    serial line behind it) and the meter's primary address."""

    host: str = Field(min_length=1)
    port: int = Field(10001, ge=1, le=65535)
    address: int = Field(1, ge=0, le=250, description="Primary address (0-250) on the M-Bus line.")


class OcppPoint(Strict):
    """A charger that connects to its gateway's OCPP server: the station's id and which of its connectors (OCPP
    1.6's connectorId, 2.0.1's EVSE id) this device is."""

    charge_point_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$", description="The id in the station's URL path."
    )
    connector_id: int = Field(1, ge=1, le=16)
    version: Literal["1.6", "2.0.1"] = Field("1.6", description="OCPP 1.6J or 2.0.1, as the station speaks.")


class Device(Strict):
    id: Id
    gateway: Id | None = Field(
        None, description="Gateway that polls it; may be left out if the connection has one."
    )
    role: DeviceRole
    profile: str = Field(
        min_length=1,
        description="Device profile name (edge/profiles/<name>.yaml), 'sunspec', an M-Bus profile, or 'ocpp'.",
    )
    modbus: ModbusAddress | None = Field(None, description="Modbus TCP (or RTU behind a TCP gateway).")
    mbus: MbusAddress | None = Field(None, description="Wired M-Bus, for gas and water meters.")
    ocpp: OcppPoint | None = Field(None, description="A charger managed over OCPP by its gateway.")
    kwp: Kw | None = Field(None, description="PV peak power (pv).")
    ac_kw: Kw | None = Field(None, description="Inverter AC rating (pv); defaults to kwp.")
    power_kw: Kw | None = Field(None, description="Rated charge/discharge or charging power (battery, ev).")
    capacity_kwh: Kw | None = Field(None, description="Usable energy (battery).")
    efficiency: float | None = Field(
        None, gt=0, le=1, description="One-way efficiency of charging and of discharging (battery); 0.95."
    )
    wear_eur_per_kwh: float | None = Field(
        None,
        ge=0,
        description="What wear costs per kWh moved in or out (battery); 0.025: about 300 EUR/kWh over 6,000 cycles.",
    )
    vehicle: Literal["car", "truck"] | None = Field(None, description="What the charger serves (ev).")

    @model_validator(mode="after")
    def _one_transport(self) -> Self:
        given = [name for name in ("modbus", "mbus", "ocpp") if getattr(self, name) is not None]
        if len(given) != 1:
            raise PydanticCustomError(
                "transport",
                "a device needs exactly one of modbus, mbus or ocpp (how its gateway reaches it); it has {given}",
                {"given": ", ".join(given) or "none"},
            )
        if self.ocpp is not None and (self.role is not DeviceRole.EV or self.profile != "ocpp"):
            raise PydanticCustomError(
                "ocpp_device", "an ocpp device is a charger: give it role: ev and profile: ocpp"
            )
        return self

    @model_validator(mode="after")
    def _ratings_fit_the_role(self) -> Self:
        needs = {
            DeviceRole.PV: ("kwp",),
            DeviceRole.BATTERY: ("power_kw", "capacity_kwh"),
            DeviceRole.EV: ("power_kw",),
        }.get(self.role, ())
        missing = [name for name in needs if getattr(self, name) is None]
        if missing:
            raise PydanticCustomError(
                "rating_missing",
                "a {role} device needs {fields}",
                {"role": self.role.value, "fields": " and ".join(missing)},
            )
        return self


class OcppEndpoint(Strict):
    """Where a gateway's OCPP server listens: the address its chargers are configured with."""

    host: str = Field("0.0.0.0", description="The gateway's address on the charger network (0.0.0.0: all).")
    port: int = Field(9000, ge=1, le=65535)


class Gateway(Strict):
    id: Id
    name: str | None = None
    ocpp: OcppEndpoint | None = Field(
        None, description="The gateway's OCPP server, for its chargers with `ocpp:` (default 0.0.0.0:9000)."
    )


class Connection(Strict):
    """One grid connection (one EAN) of one company."""

    id: Id
    ean: Ean
    company: str = Field(min_length=1)
    capacity_kva: Kw = Field(description="Physical connection size, e.g. 3x250 A = 173 kVA, 630 kVA.")
    limits: Limits = Field(
        description="Contract: import_kw / export_kw are the contracted transport capacity."
    )
    annual_use_kwh: Kw | None = Field(
        None, description="Yearly offtake before PV, for simulation and planning."
    )
    load_profile: str = Field("business", description="Load profile name used by the simulators.")
    gateways: list[Gateway] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=list)

    @model_validator(mode="after")
    def _contract_fits(self) -> Self:
        if self.limits.import_kw is None or self.limits.export_kw is None:
            raise PydanticCustomError(
                "contract_missing",
                "a connection needs limits.import_kw and limits.export_kw: its contracted transport capacity "
                "(GTV) for offtake and feed-in in kW (0 for none)",
            )
        for name, value in (("import_kw", self.limits.import_kw), ("export_kw", self.limits.export_kw)):
            if value > self.capacity_kva:
                raise PydanticCustomError(
                    "contract_above_capacity",
                    "limits.{name} {value} kW exceeds the connection's capacity_kva {cap}: "
                    "contracted capacity cannot be larger than the connection",
                    {"name": name, "value": f"{value:g}", "cap": f"{self.capacity_kva:g}"},
                )
        meters = [d.id for d in self.devices if d.role is DeviceRole.METER]
        if self.devices and len(meters) != 1:
            raise PydanticCustomError(
                "meter_count",
                "has {n} grid meters ({ids}); a connection with devices needs exactly one device with role meter",
                {"n": len(meters), "ids": ", ".join(meters) or "none"},
            )
        return self

    @property
    def pv_kwp(self) -> float:
        return sum(d.kwp or 0.0 for d in self.devices if d.role is DeviceRole.PV)


class MicroGroup(Strict):
    """A group of connections inside a loop that shares a cable or a local limit (a micro grid)."""

    id: Id
    name: str | None = None
    capacity_kva: Kw | None = None
    limits: Limits = Field(default_factory=Limits)
    connections: list[Connection] = Field(min_length=1)


class Loop(Strict):
    """A DSO medium-voltage cable loop ("lus"): the mini grid."""

    id: Id
    name: str | None = None
    capacity_kva: Kw | None = None
    limits: Limits = Field(default_factory=Limits)
    micro_groups: list[MicroGroup] = Field(default_factory=list)
    connections: list[Connection] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not self.micro_groups and not self.connections:
            raise PydanticCustomError("empty_loop", "has no connections and no micro_groups")
        return self


class Hub(Strict):
    """The substation boundary: everything behind one HV/MV transformer station."""

    id: Id
    name: str | None = None
    substation: str | None = None
    capacity_kva: Kw | None = None
    limits: Limits = Field(default_factory=Limits)


class GroupAgreement(Strict):
    """Groeps-ATO: one cap shared by several connections."""

    id: Id
    name: str | None = None
    connections: list[Id] = Field(min_length=2)
    limits: Limits

    @field_validator("connections")
    @classmethod
    def _unique_members(cls, members: list[str]) -> list[str]:
        if len(set(members)) != len(members):
            raise PydanticCustomError("duplicate_member", "names a connection twice")
        return members


class CommunityInfo(Strict):
    id: Id
    name: str = Field(min_length=1)
    timezone: str = Field("Europe/Amsterdam", description="IANA zone that contract times are written in.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise PydanticCustomError(
                "timezone", "{tz!r} is not an IANA timezone like 'Europe/Amsterdam'", {"tz": value}
            ) from None
        return value


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A node of the limit tree: where it sits, its parent, its children, and its limits."""

    id: str
    level: Level
    parent: str | None
    children: tuple[str, ...]
    limits: Limits
    capacity_kva: float | None


class Community(Strict):
    """A whole community file, validated."""

    version: Literal[1] = 1
    community: CommunityInfo
    hub: Hub
    loops: list[Loop] = Field(min_length=1)
    group_agreements: list[GroupAgreement] = Field(default_factory=list)

    # -- walking ----------------------------------------------------------------------------------------------
    def connections(self) -> Iterator[tuple[Loop, MicroGroup | None, Connection]]:
        for loop in self.loops:
            for micro in loop.micro_groups:
                for connection in micro.connections:
                    yield loop, micro, connection
            for connection in loop.connections:
                yield loop, None, connection

    def devices(self) -> Iterator[tuple[Connection, Device]]:
        for _loop, _micro, connection in self.connections():
            for device in connection.devices:
                yield connection, device

    def gateway_of(self, connection: Connection, device: Device) -> str:
        """The gateway that polls ``device``: its own ``gateway``, or the connection's only gateway."""
        if device.gateway is not None:
            return device.gateway
        return connection.gateways[0].id

    def nodes(self) -> dict[str, NodeRef]:
        """Every node of the limit tree by id, including group agreements as virtual nodes."""
        out: dict[str, NodeRef] = {}
        loop_ids = tuple(loop.id for loop in self.loops)
        out[self.hub.id] = NodeRef(
            self.hub.id, Level.HUB, None, loop_ids, self.hub.limits, self.hub.capacity_kva
        )
        for loop in self.loops:
            children = tuple(m.id for m in loop.micro_groups) + tuple(c.id for c in loop.connections)
            out[loop.id] = NodeRef(loop.id, Level.LOOP, self.hub.id, children, loop.limits, loop.capacity_kva)
            for micro in loop.micro_groups:
                out[micro.id] = NodeRef(
                    micro.id,
                    Level.MICRO,
                    loop.id,
                    tuple(c.id for c in micro.connections),
                    micro.limits,
                    micro.capacity_kva,
                )
        for loop, group_of, connection in self.connections():
            parent = group_of.id if group_of else loop.id
            out[connection.id] = NodeRef(
                connection.id, Level.CONNECTION, parent, (), connection.limits, connection.capacity_kva
            )
        for group in self.group_agreements:
            out[group.id] = NodeRef(group.id, Level.GROUP, None, tuple(group.connections), group.limits, None)
        return out
