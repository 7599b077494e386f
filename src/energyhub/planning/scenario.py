"""A planning scenario: how the community changes year by year, and what each year's community looks like.

A scenario file names the years to simulate and, per year, what changes from then on: PV roofs added or taken
off, batteries at a company, inside a loop or at the hub, chargers added to the charging plaza, yearly growth or
shrinkage of companies' use, and contract changes (for instance the feed-in right that lets members share inside
the hub). Changes accumulate: a year's community is the base community plus every change up to that year. A
``sweep`` section asks for the smallest battery at one place that keeps curtailment under a target.

``community_for_year`` applies the changes to the community document and validates the result with the same
models as a community file, so a year's community is one a person could also write by hand (``energyhub plan``
saves it next to the year's results). Errors name the scenario file, the line and the change.
"""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from energyhub.domain.community import (
    ConfigFileError,
    ConfigIssue,
    format_path,
    line_of,
    pydantic_issues,
    read_yaml,
)
from energyhub.domain.ean import ean_check_digit
from energyhub.domain.topology import Community, DeviceRole

__all__ = [
    "BatteryPlan",
    "Change",
    "ContractChange",
    "PlazaPlan",
    "Roof",
    "Scenario",
    "ScenarioError",
    "Sweep",
    "community_for_year",
    "connections_of",
    "growth_factors",
    "load_scenario",
    "parse_scenario",
    "with_battery",
    "with_roof",
]

Id = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
TRUCK_KW = 350.0
CAR_KW = 22.0
DC_AC_RATIO = 1.15  # as the reference community's inverters


class ScenarioError(ConfigFileError):
    """A scenario that cannot be used; ``issues`` lists everything wrong with it."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Roof(Strict):
    """A PV roof added to a connection (one inverter)."""

    connection: Id
    kwp: float = Field(gt=0)
    ac_kw: float | None = Field(
        None, gt=0, description=f"Inverter rating; kwp / {DC_AC_RATIO} when left out."
    )
    id: Id | None = None


class BatteryPlan(Strict):
    """A battery placed at a connection (behind its meter), inside a loop or micro group (its own connection
    there), or at the hub (its own connection at the substation's busbar)."""

    id: Id
    at: Id
    power_kw: float = Field(gt=0)
    capacity_kwh: float = Field(gt=0)


class PlazaPlan(Strict):
    """Chargers added to a connection, the charging plaza."""

    connection: Id
    trucks: int = Field(0, ge=0)
    cars: int = Field(0, ge=0)
    truck_kw: float = Field(TRUCK_KW, gt=0)
    car_kw: float = Field(CAR_KW, gt=0)


class ContractChange(Strict):
    """New contracted limits for a node; ``node: "*"`` is every connection. ``export_kw: capacity`` gives a
    connection a feed-in right up to its physical size (as a hub contract that lets members share)."""

    node: Id | Literal["*"]
    import_kw: float | None = Field(None, ge=0)
    export_kw: float | Literal["capacity"] | None = None

    @model_validator(mode="after")
    def _something_changes(self) -> ContractChange:
        if self.import_kw is None and self.export_kw is None:
            raise ValueError("give import_kw, export_kw or both")
        if isinstance(self.export_kw, float) and self.export_kw < 0:
            raise ValueError("export_kw must be at least 0 (or 'capacity')")
        return self


class Change(Strict):
    pv: list[Roof] = Field(default_factory=list)
    remove_pv: list[Id] = Field(default_factory=list, description="Connections whose PV is taken off.")
    batteries: list[BatteryPlan] = Field(default_factory=list)
    remove_batteries: list[str] = Field(
        default_factory=list,
        description="Batteries taken out: a planned battery's id or '<connection>/<device>'.",
    )
    plaza: list[PlazaPlan] = Field(default_factory=list)
    growth: dict[str, float] = Field(
        default_factory=dict,
        description="Yearly change of use from this year on, against the year before, a fraction: '*' for every "
        "connection, an id for one (an id wins over '*').",
    )
    contracts: list[ContractChange] = Field(default_factory=list)

    @model_validator(mode="after")
    def _growth_is_a_fraction(self) -> Change:
        for key, rate in self.growth.items():
            if not -1.0 < rate < 10.0:
                raise ValueError(f"growth[{key}] {rate:g} is not a yearly fraction (e.g. 0.02 for +2 %)")
        return self


class Sweep(Strict):
    """Sizes to try at one place, in one year. ``battery``: the smallest battery there that keeps curtailment at
    or under the target. ``pv``: the most PV a connection's roofs can take before curtailment passes it (how
    much PV fits)."""

    kind: Literal["battery", "pv"] = "battery"
    at: Id = Field(description="battery: a connection, loop, micro group or the hub; pv: a connection.")
    sizes: list[float] = Field(min_length=1, description="kWh of battery, or kWp of PV.")
    c_rate: float = Field(0.5, gt=0, description="A battery's power as a fraction of its capacity per hour.")
    target_curtailed_pct: float = Field(ge=0, le=100, description="Of the PV on offer.")
    year: int | None = Field(None, description="The year to sweep; the last year when left out.")

    @model_validator(mode="after")
    def _sizes(self) -> Sweep:
        if any(size < 0 for size in self.sizes):
            raise ValueError("sizes must be at least 0")
        return self

    @property
    def unit(self) -> str:
        return "kWh" if self.kind == "battery" else "kWp"


class Scenario(Strict):
    name: str = Field(min_length=1)
    years: list[int] = Field(min_length=1)
    seed: int = Field(0, ge=0, description="Weather, loads and EV sessions of the simulators.")
    policy: Literal["greedy", "mpc", "oracle"] = "mpc"
    margin: float = Field(0.02, ge=0, lt=0.5)
    key: Literal["kwp", "contracted", "priority"] = Field("kwp", description="How curtailment is shared.")
    priority: dict[str, float] = Field(
        default_factory=dict, description="With key priority: connection id -> weight on its kWp."
    )
    start: str = Field("01-01", pattern=r"^\d\d-\d\d$", description="Month-day each simulated period starts.")
    days: int | None = Field(
        None, ge=1, le=366, description="Days simulated per year; the whole year if left out."
    )
    changes: dict[int, Change] = Field(default_factory=dict)
    sweep: Sweep | None = None

    @model_validator(mode="after")
    def _years(self) -> Scenario:
        if sorted(set(self.years)) != self.years:
            raise ValueError("years must be increasing and each listed once")
        late = [year for year in self.changes if year > self.years[-1]]
        if late:
            raise ValueError(f"changes in {late[0]} come after the last year simulated ({self.years[-1]})")
        month, day = (int(part) for part in self.start.split("-"))
        try:
            date(2001, month, day)  # a year without 29 February: the start must exist in every year
        except ValueError:
            raise ValueError(f"start {self.start!r} is not a month-day that every year has") from None
        if self.policy == "oracle" and (self.days is None or self.days > 31):
            raise ValueError(
                "policy oracle solves the whole period as one linear program: give days of at most 31 "
                "(it is a yardstick for short periods; plan years with mpc)"
            )
        if self.sweep and self.sweep.year is not None and self.sweep.year not in self.years:
            raise ValueError(f"sweep.year {self.sweep.year} is not one of the years")
        return self

    @property
    def sweep_year(self) -> int:
        return self.sweep.year if self.sweep and self.sweep.year is not None else self.years[-1]


def parse_scenario(text: str, *, file: str = "<string>") -> tuple[Scenario, dict[tuple[str | int, ...], int]]:
    """The scenario and the line of every path in it (for errors found later, against the community)."""
    doc, lines, issues = read_yaml(text, file=file, error=ScenarioError)
    if not isinstance(doc, dict):
        raise ScenarioError(file, [ConfigIssue(1, "", "must be a mapping with name, years and changes")])
    if isinstance(doc.get("changes"), dict):
        # Year keys as text, as the line index has them, so an error inside a change finds its line.
        doc["changes"] = {str(year): change for year, change in doc["changes"].items()}
    try:
        scenario = Scenario.model_validate(doc)
    except ValidationError as exc:
        raise ScenarioError(file, issues + pydantic_issues(exc, lines)) from None
    if issues:
        raise ScenarioError(file, issues)
    return scenario, lines


def load_scenario(path: Path) -> tuple[Scenario, dict[tuple[str | int, ...], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(path), [ConfigIssue(0, "", f"cannot be read: {exc}")]) from None
    return parse_scenario(text, file=str(path))


# -- applying changes to the community document ----------------------------------------------------------------


class _Problem(Exception):
    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def connections_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The connections of a community document by id."""
    out = {}
    for loop in doc["loops"]:
        for micro in loop.get("micro_groups", []):
            for connection in micro["connections"]:
                out[connection["id"]] = connection
        for connection in loop.get("connections", []):
            out[connection["id"]] = connection
    return out


def _containers(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Loops and micro groups by id: where a battery of its own connection can go."""
    out = {}
    for loop in doc["loops"]:
        out[loop["id"]] = loop
        for micro in loop.get("micro_groups", []):
            out[micro["id"]] = micro
    return out


def _planned_ean(doc: dict[str, Any], seq: int) -> str:
    used = {c["ean"] for c in connections_of(doc).values()}
    while True:
        first = f"87199{seq:012d}"  # 871 99...: a range the reference community does not use
        ean = first + str(ean_check_digit(first))
        if ean not in used:
            return ean
        seq += 1


def _free_port(doc: dict[str, Any]) -> int:
    """A loopback port no device of the community answers on, for a planned connection's devices."""
    used = {
        d["modbus"].get("port", 502)
        for c in connections_of(doc).values()
        for d in c.get("devices", [])
        if "modbus" in d and d["modbus"].get("host") == "127.0.0.1"
    }
    return next(port for port in range(30000, 65536) if port not in used)


def _add_device(doc: dict[str, Any], connection: dict[str, Any], device: dict[str, Any]) -> None:
    """Add a planned device with the Modbus address a gateway would give it: the connection's first device's host
    and port with the next free unit id (a new port for a connection without devices). The community file then
    stays valid (one meter, unique addresses)."""
    devices = connection.setdefault("devices", [])
    gateways = connection.setdefault("gateways", [])
    if not gateways:
        gateways.append({"id": f"gw-{connection['id']}"})
    if not any(d["role"] == DeviceRole.METER.value for d in devices):
        devices.append(
            {
                "id": "meter",
                "gateway": gateways[0]["id"],
                "role": "meter",
                "profile": "eastron_sdm630",
                "modbus": {"host": "127.0.0.1", "port": _free_port(doc), "unit_id": 1},
            }
        )
    ids = {d["id"] for d in devices}
    if device["id"] in ids:
        raise _Problem((), f"connection {connection['id']} already has a device {device['id']!r}")
    first = next(
        d["modbus"] for d in devices if "modbus" in d
    )  # the meter at least: every connection has one
    used = {
        d["modbus"].get("unit_id", 1)
        for d in devices
        if "modbus" in d and d["modbus"].get("host") == first["host"]
    }
    unit = next(u for u in range(1, 248) if u not in used)
    device["gateway"] = devices[0].get("gateway", gateways[0]["id"])
    device["modbus"] = {"host": first["host"], "port": first.get("port", 502), "unit_id": unit}
    devices.append(device)


def with_roof(doc: dict[str, Any], connection: dict[str, Any], roof: Roof, *, default_id: str) -> None:
    """Put a PV roof (one inverter) on a connection of the community document (in place)."""
    taken = {d["id"] for d in connection.get("devices", [])}
    rid = roof.id or next(f"{default_id}-{n}" for n in range(1, 1000) if f"{default_id}-{n}" not in taken)
    device = {
        "id": rid,
        "role": "pv",
        "profile": "sunspec_inverter",
        "kwp": roof.kwp,
        "ac_kw": roof.ac_kw or round(roof.kwp / DC_AC_RATIO, 3),
    }
    _add_device(doc, connection, device)


def with_battery(doc: dict[str, Any], plan: BatteryPlan, seq: int = 0) -> None:
    """Put a battery into the community document (in place)."""
    connections = connections_of(doc)
    device = {
        "id": plan.id,
        "role": "battery",
        "profile": "sunspec_battery",
        "power_kw": plan.power_kw,
        "capacity_kwh": plan.capacity_kwh,
    }
    if plan.at in connections:
        _add_device(doc, connections[plan.at], device)
        return
    if plan.id in connections or plan.id in _containers(doc):
        raise _Problem(
            ("id",), f"{plan.id!r} is already a node id: a battery of its own connection needs a new one"
        )
    own = {
        "id": plan.id,
        "ean": _planned_ean(doc, seq),
        "company": f"battery {plan.id} (planned)",
        "capacity_kva": plan.power_kw,
        "limits": {"import_kw": plan.power_kw, "export_kw": plan.power_kw},
        "annual_use_kwh": 0.0,
        "load_profile": "none",
        "gateways": [{"id": f"gw-{plan.id}"}],
        "devices": [],
    }
    containers = _containers(doc)
    if plan.at in containers:
        containers[plan.at].setdefault("connections", []).append(own)
    elif plan.at == doc["hub"]["id"]:
        # At the substation's busbar: a loop of its own with no limit but the hub's.
        doc["loops"].append(
            {"id": f"{plan.id}-busbar", "name": "planned battery at the hub", "connections": [own]}
        )
    else:
        raise _Problem(("at",), f"unknown place {plan.at!r}: a connection, loop, micro group or the hub id")
    _add_device(doc, own, {**device, "id": "battery"})


def _remove_battery(doc: dict[str, Any], name: str) -> None:
    connections = connections_of(doc)
    if "/" in name:
        connection_id, device_id = name.split("/", 1)
        connection = connections.get(connection_id)
        devices = connection.get("devices", []) if connection else []
        kept = [d for d in devices if not (d["id"] == device_id and d["role"] == "battery")]
        if connection is None or len(kept) == len(devices):
            raise _Problem((), f"no battery {name!r} in the community")
        connection["devices"] = kept
        return
    for loop in list(doc["loops"]):
        for holder in [loop, *loop.get("micro_groups", [])]:
            before = holder.get("connections", [])
            holder["connections"] = [c for c in before if c["id"] != name]
            if len(holder["connections"]) != len(before):
                loop["micro_groups"] = [m for m in loop.get("micro_groups", []) if m["connections"]]
                if not loop.get("connections") and not loop.get("micro_groups"):
                    doc["loops"].remove(loop)
                return
    for connection in connections.values():
        devices = connection.get("devices", [])
        kept = [d for d in devices if not (d["id"] == name and d["role"] == "battery")]
        if len(kept) != len(devices):
            connection["devices"] = kept
            return
    raise _Problem((), f"no battery {name!r} in the community")


def _set_contract(doc: dict[str, Any], change: ContractChange) -> None:
    connections = connections_of(doc)
    targets: list[dict[str, Any]]
    if change.node == "*":
        targets = list(connections.values())
    elif change.node in connections:
        targets = [connections[change.node]]
    else:
        nodes = {doc["hub"]["id"]: doc["hub"], **_containers(doc)}
        nodes.update({g["id"]: g for g in doc.get("group_agreements", [])})
        if change.node not in nodes:
            raise _Problem(("node",), f"unknown node {change.node!r}")
        if change.export_kw == "capacity":
            raise _Problem(("export_kw",), "'capacity' is for connections; give a loop or the hub a number")
        targets = [nodes[change.node]]
    for node in targets:
        limits = node.setdefault("limits", {})
        if change.import_kw is not None:
            limits["import_kw"] = change.import_kw
        if change.export_kw == "capacity":
            limits["export_kw"] = node["capacity_kva"]
        elif change.export_kw is not None:
            limits["export_kw"] = change.export_kw


def _apply(doc: dict[str, Any], year: int, change: Change) -> None:
    connections = connections_of(doc)

    def connection(path: tuple[str | int, ...], cid: str) -> dict[str, Any]:
        if cid not in connections:
            raise _Problem(path, f"unknown connection {cid!r}")
        return connections[cid]

    for i, cid in enumerate(change.remove_pv):
        target = connection(("remove_pv", i), cid)
        target["devices"] = [d for d in target.get("devices", []) if d["role"] != "pv"]
    for i, roof in enumerate(change.pv):
        target = connection(("pv", i, "connection"), roof.connection)
        try:
            with_roof(doc, target, roof, default_id=f"pv-{year}")
        except _Problem as exc:
            raise _Problem(("pv", i, "id"), exc.message) from None
    for i, name in enumerate(change.remove_batteries):
        try:
            _remove_battery(doc, name)
        except _Problem as exc:
            raise _Problem(("remove_batteries", i), exc.message) from None
    for i, battery in enumerate(change.batteries):
        try:
            with_battery(doc, battery, seq=year * 100 + i)
        except _Problem as exc:
            raise _Problem(("batteries", i, *exc.path), exc.message) from None
    for i, plaza in enumerate(change.plaza):
        target = connection(("plaza", i, "connection"), plaza.connection)
        for vehicle, count, kw in (
            ("truck", plaza.trucks, plaza.truck_kw),
            ("car", plaza.cars, plaza.car_kw),
        ):
            for n in range(1, count + 1):
                charger = {
                    "id": f"{vehicle}-{year}-{n}",
                    "role": "ev",
                    "profile": "ev_charger",
                    "power_kw": kw,
                }
                _add_device(doc, target, {**charger, "vehicle": vehicle})
    for i, contract in enumerate(change.contracts):
        try:
            _set_contract(doc, contract)
        except _Problem as exc:
            raise _Problem(("contracts", i, *exc.path), exc.message) from None
    for cid in change.growth:
        if cid != "*":
            connection(("growth", cid), cid)


def growth_factors(scenario: Scenario, connection_ids: list[str], year: int) -> dict[str, float]:
    """Use in ``year`` against the first year, per connection: each calendar year after the first changes use by
    the rate the latest change up to and including that year set. (The first year is the community as given, so
    a rate set then counts from the year after.)"""
    default = 0.0
    rates: dict[str, float] = {}
    factors = dict.fromkeys(connection_ids, 1.0)
    first = scenario.years[0]
    for calendar_year in range(min([first, *scenario.changes]), year + 1):
        change = scenario.changes.get(calendar_year)
        if change:
            default = change.growth.get("*", default)
            rates.update({k: v for k, v in change.growth.items() if k != "*"})
        if calendar_year > first:
            for cid in factors:
                factors[cid] *= 1.0 + rates.get(cid, default)
    return factors


def community_for_year(
    base: Community,
    scenario: Scenario,
    year: int,
    *,
    file: str = "<scenario>",
    lines: dict[tuple[str | int, ...], int] | None = None,
) -> tuple[Community, dict[str, Any]]:
    """The community in ``year``: every change up to that year applied, use grown; and its document."""
    lines = lines or {}
    doc = copy.deepcopy(base.model_dump(mode="json", exclude_none=True, exclude_defaults=True))
    for change_year in sorted(self_year for self_year in scenario.changes if self_year <= year):
        try:
            _apply(doc, change_year, scenario.changes[change_year])
        except _Problem as exc:
            path = ("changes", str(change_year), *exc.path)
            raise ScenarioError(
                file, [ConfigIssue(line_of(path, lines), format_path(path), exc.message)]
            ) from None
    connections = connections_of(doc)
    for cid, weight in scenario.priority.items():
        if cid not in connections or weight <= 0:
            path = ("priority", cid)
            problem = (
                f"unknown connection {cid!r}"
                if cid not in connections
                else f"weight {weight:g} is not positive"
            )
            raise ScenarioError(file, [ConfigIssue(line_of(path, lines), format_path(path), problem)])
    for cid, factor in growth_factors(scenario, list(connections), year).items():
        use = connections[cid].get("annual_use_kwh")
        if use:
            connections[cid]["annual_use_kwh"] = round(use * factor, 1)
    try:
        community = Community.model_validate(doc, context={"timezone": base.community.timezone})
    except ValidationError as exc:
        issues = [
            ConfigIssue(line_of(("changes",), lines), f"changes up to {year}", f"{i.path}: {i.message}")
            for i in pydantic_issues(exc, {})
        ]
        raise ScenarioError(file, issues) from None
    return community, doc


def dump_community(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)
