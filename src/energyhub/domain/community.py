"""Load a community file: YAML in, a validated ``Community`` out, or every error at once.

Each error names the file, the line, the path inside the file (``loops[2].connections[5].ean``) and what is wrong,
with the fix where there is one. Structure and values are checked by the pydantic models; checks that span nodes
(unique ids, EANs and Modbus addresses, references to gateways and connections) run here on the raw document, so
they are reported together with the structural errors rather than after them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from energyhub.domain.topology import Community, DeviceRole

__all__ = [
    "CommunityError",
    "CommunitySummary",
    "ConfigFileError",
    "ConfigIssue",
    "line_of",
    "load_community",
    "parse_community",
    "pydantic_issues",
    "read_yaml",
    "summarize",
]

PathT = tuple[str | int, ...]


@dataclass(frozen=True, slots=True, order=True)
class ConfigIssue:
    """One thing wrong with a community file."""

    line: int
    path: str
    message: str

    def format(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        return f"{where}: {self.path or '(document)'}: {self.message}"


class ConfigFileError(ValueError):
    """A YAML file that cannot be used; ``issues`` lists everything wrong with it."""

    def __init__(self, file: str, issues: list[ConfigIssue]) -> None:
        self.file = file
        self.issues = sorted(issues)
        count = len(self.issues)
        lines = [f"{file}: {count} error{'s' if count != 1 else ''}"]
        lines += ["  " + issue.format(file) for issue in self.issues]
        super().__init__("\n".join(lines))


class CommunityError(ConfigFileError):
    """A community file that cannot be used; ``issues`` lists everything wrong with it."""


def format_path(path: PathT) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# -- YAML with line numbers and duplicate keys --------------------------------------------------------------------


def _index_lines(node: yaml.Node, path: PathT, lines: dict[PathT, int], issues: list[ConfigIssue]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[object, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                issues.append(
                    ConfigIssue(
                        key_node.start_mark.line + 1,
                        format_path((*path, key)),
                        f"duplicate key (first on line {seen[key]}): keep one",
                    )
                )
            seen[key] = key_node.start_mark.line + 1
            _index_lines(value_node, (*path, key), lines, issues)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*path, i), lines, issues)


def line_of(path: PathT, lines: dict[PathT, int]) -> int:
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path, 0)


# -- pydantic errors in words ---------------------------------------------------------------------------------------

_HINTS = {
    "missing": "is required: add it",
    "extra_forbidden": "is not a known field: remove it or correct its spelling",
}


def _explain(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind in _HINTS:
        return _HINTS[kind]
    if kind == "greater_than_equal":
        limit = error.get("ctx", {}).get("ge")
        return f"must be at least {limit:g}, got {error['input']!r}: capacities and limits are not negative"
    if kind == "greater_than":
        limit = error.get("ctx", {}).get("gt")
        return f"must be more than {limit:g}, got {error['input']!r}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{error['msg'].lower()}, got {error['input']!r}"
    msg: str = error["msg"]
    return msg.removeprefix("Value error, ")


def pydantic_issues(exc: ValidationError, lines: dict[PathT, int]) -> list[ConfigIssue]:
    out = []
    for error in exc.errors(include_url=False):
        path: PathT = tuple(error["loc"])
        out.append(ConfigIssue(line_of(path, lines), format_path(path), _explain(dict(error))))
    return out


# -- checks across nodes, on the raw document ------------------------------------------------------------------------


def _dicts(parent: Any, key: str, path: PathT) -> Iterator[tuple[PathT, dict[str, Any]]]:
    items = parent.get(key) if isinstance(parent, dict) else None
    if isinstance(items, list):
        for i, item in enumerate(items):
            if isinstance(item, dict):
                yield (*path, key, i), item


def _raw_connections(doc: dict[str, Any]) -> Iterator[tuple[PathT, dict[str, Any]]]:
    for loop_path, loop in _dicts(doc, "loops", ()):
        for micro_path, micro in _dicts(loop, "micro_groups", loop_path):
            yield from _dicts(micro, "connections", micro_path)
        yield from _dicts(loop, "connections", loop_path)


def _cross_checks(doc: dict[str, Any], lines: dict[PathT, int]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []

    def issue(path: PathT, message: str) -> None:
        issues.append(ConfigIssue(line_of(path, lines), format_path(path), message))

    def unique(
        kind: str, seen: dict[Any, PathT], value: Any, path: PathT, scope: str, key: Any = None
    ) -> None:
        key = value if key is None else key
        if value is None or not isinstance(value, str | int) or not isinstance(key, str | int | tuple):
            return
        if key in seen:
            issue(path, f"duplicate {kind} {value!r}: also at {format_path(seen[key])}; {scope}")
        else:
            seen[key] = path

    node_ids: dict[Any, PathT] = {}
    node_scope = "ids must be unique across the hub, loops, micro groups, connections and group agreements"
    hub = doc.get("hub")
    if isinstance(hub, dict):
        unique("id", node_ids, hub.get("id"), ("hub", "id"), node_scope)
    for loop_path, loop in _dicts(doc, "loops", ()):
        unique("id", node_ids, loop.get("id"), (*loop_path, "id"), node_scope)
        for micro_path, micro in _dicts(loop, "micro_groups", loop_path):
            unique("id", node_ids, micro.get("id"), (*micro_path, "id"), node_scope)

    eans: dict[Any, PathT] = {}
    gateways: dict[Any, PathT] = {}
    addresses: dict[Any, PathT] = {}
    connection_ids: set[Any] = set()
    for conn_path, conn in _raw_connections(doc):
        unique("id", node_ids, conn.get("id"), (*conn_path, "id"), node_scope)
        connection_ids.add(conn.get("id"))
        unique(
            "EAN",
            eans,
            str(conn.get("ean")) if conn.get("ean") is not None else None,
            (*conn_path, "ean"),
            "every connection has its own EAN",
        )
        own_gateways = []
        for gw_path, gw in _dicts(conn, "gateways", conn_path):
            unique(
                "gateway id",
                gateways,
                gw.get("id"),
                (*gw_path, "id"),
                "gateway ids are unique in the community",
            )
            own_gateways.append(gw.get("id"))
        device_ids: dict[Any, PathT] = {}
        for dev_path, dev in _dicts(conn, "devices", conn_path):
            gateway = dev.get("gateway")
            if gateway is None:
                if len(own_gateways) != 1:
                    issue(
                        (*dev_path, "gateway"),
                        f"is required: connection {conn.get('id')!r} has "
                        f"{len(own_gateways)} gateways, so say which one polls this device",
                    )
                    continue
                gateway = own_gateways[0]
            elif gateway not in own_gateways:
                known = ", ".join(str(g) for g in own_gateways) or "none"
                issue(
                    (*dev_path, "gateway"),
                    f"unknown gateway {gateway!r}: connection {conn.get('id')!r} has "
                    f"gateways [{known}]; add it under gateways or fix the name",
                )
            unique(
                "device id",
                device_ids,
                dev.get("id"),
                (*dev_path, "id"),
                f"device ids are unique per gateway ({gateway})",
                key=(gateway, dev.get("id")),
            )
            modbus = dev.get("modbus")
            if isinstance(modbus, dict):
                address = (modbus.get("host"), modbus.get("port", 502), modbus.get("unit_id", 1))
                if all(isinstance(a, str | int) for a in address):
                    unique(
                        "Modbus address",
                        addresses,
                        "{}:{} unit {}".format(*address),
                        (*dev_path, "modbus"),
                        "two devices cannot answer at the same host, port and unit id",
                        key=address,
                    )

    member_of: dict[Any, PathT] = {}
    for group_path, group in _dicts(doc, "group_agreements", ()):
        unique("id", node_ids, group.get("id"), (*group_path, "id"), node_scope)
        members = group.get("connections")
        for i, member in enumerate(members if isinstance(members, list) else []):
            member_path = (*group_path, "connections", i)
            if member not in connection_ids:
                issue(member_path, f"unknown connection {member!r}: a group agreement lists connection ids")
            elif member in member_of:
                issue(
                    member_path,
                    f"connection {member!r} is already in the group agreement at "
                    f"{format_path(member_of[member][:2])}; a connection is in at most one",
                )
            else:
                member_of[member] = member_path
    return issues


# -- entry points -----------------------------------------------------------------------------------------------------


def read_yaml(
    text: str, *, file: str, error: type[ConfigFileError] = ConfigFileError
) -> tuple[Any, dict[PathT, int], list[ConfigIssue]]:
    """The document, the line of every path in it, and its duplicate keys; YAML that does not parse raises
    ``error`` with the line."""
    lines: dict[PathT, int] = {}
    issues: list[ConfigIssue] = []
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _index_lines(node, (), lines, issues)
            doc = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(
            file, [ConfigIssue(mark.line + 1 if mark else 0, "", f"not valid YAML: {problem}")]
        ) from None
    return doc, lines, issues


def parse_community(text: str, *, file: str = "<string>") -> Community:
    """Validate a community document given as YAML text; raise ``CommunityError`` with every problem found."""
    doc, lines, issues = read_yaml(text, file=file, error=CommunityError)
    if not isinstance(doc, dict):
        raise CommunityError(file, [ConfigIssue(1, "", "must be a mapping with community, hub and loops")])

    issues += _cross_checks(doc, lines)
    timezone = doc.get("community", {}).get("timezone") if isinstance(doc.get("community"), dict) else None
    context = {"timezone": timezone} if isinstance(timezone, str) else {}
    try:
        community = Community.model_validate(doc, context=context)
    except ValidationError as exc:
        issues += pydantic_issues(exc, lines)
        raise CommunityError(file, issues) from None
    if issues:
        raise CommunityError(file, issues)
    return community


def load_community(path: str | Path) -> Community:
    """Read and validate a community file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CommunityError(str(path), [ConfigIssue(0, "", f"cannot be read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise CommunityError(str(path), [ConfigIssue(0, "", f"is not UTF-8 text ({exc.reason})")]) from None
    return parse_community(text, file=str(path))


# -- summary ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommunitySummary:
    name: str
    hub: str
    companies: int
    connections: int
    loops: int
    micro_groups: int
    gateways: int
    devices: dict[str, int]
    pv_companies: int
    pv_kwp: float
    battery_kw: float
    battery_kwh: float
    ev_chargers: int
    ev_kw: float
    contracted_import_kw: float
    contracted_export_kw: float
    hub_import_kw: float | None
    hub_export_kw: float | None
    group_agreements: int
    parts: dict[str, int] = field(default_factory=dict)

    def format(self) -> str:
        def mw(kw: float | None) -> str:
            return "no limit" if kw is None else f"{kw / 1000:.2f} MW"

        devices = ", ".join(f"{n} {role}" for role, n in sorted(self.devices.items()))
        parts = ", ".join(f"{n} {name}" for name, n in sorted(self.parts.items())) or "firm only"
        return "\n".join(
            [
                f"{self.name}: hub {self.hub}",
                f"  companies      {self.companies} ({self.connections} connections) on {self.loops} loops"
                f" ({self.micro_groups} micro groups)",
                f"  PV             {self.pv_kwp / 1000:.2f} MWp at {self.pv_companies} companies",
                f"  batteries      {self.battery_kw / 1000:.2f} MW / {self.battery_kwh / 1000:.2f} MWh",
                f"  EV chargers    {self.ev_chargers} ({self.ev_kw / 1000:.2f} MW)",
                f"  contracted     {mw(self.contracted_import_kw)} offtake, {mw(self.contracted_export_kw)} feed-in",
                f"  hub limit      {mw(self.hub_import_kw)} offtake, {mw(self.hub_export_kw)} feed-in",
                f"  contract parts {parts}; {self.group_agreements} group agreements",
                f"  gateways       {self.gateways} with {sum(self.devices.values())} devices ({devices})",
            ]
        )


def summarize(community: Community) -> CommunitySummary:
    roles: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    battery_kw = battery_kwh = ev_kw = 0.0
    for _connection, device in community.devices():
        roles[device.role.value] += 1
        if device.role is DeviceRole.BATTERY:
            battery_kw += device.power_kw or 0.0
            battery_kwh += device.capacity_kwh or 0.0
        elif device.role is DeviceRole.EV:
            ev_kw += device.power_kw or 0.0
    for node in community.nodes().values():
        if node.limits.time_blocks:
            parts["time blocks"] += 1
        if node.limits.day_ahead:
            parts["day-ahead"] += 1
        if node.limits.capacity_limitation:
            parts["capacity limitation"] += 1
    connections = [c for _l, _m, c in community.connections()]
    companies: defaultdict[str, float] = defaultdict(float)
    for connection in connections:
        companies[connection.company] += connection.pv_kwp
    return CommunitySummary(
        name=community.community.name,
        hub=community.hub.name or community.hub.id,
        companies=len(companies),
        connections=len(connections),
        loops=len(community.loops),
        micro_groups=sum(len(loop.micro_groups) for loop in community.loops),
        gateways=sum(len(c.gateways) for c in connections),
        devices=dict(roles),
        pv_companies=sum(1 for kwp in companies.values() if kwp > 0),
        pv_kwp=sum(companies.values()),
        battery_kw=battery_kw,
        battery_kwh=battery_kwh,
        ev_chargers=roles[DeviceRole.EV.value],
        ev_kw=ev_kw,
        contracted_import_kw=sum(c.limits.import_kw or 0.0 for c in connections),
        contracted_export_kw=sum(c.limits.export_kw or 0.0 for c in connections),
        hub_import_kw=community.hub.limits.import_kw,
        hub_export_kw=community.hub.limits.export_kw,
        group_agreements=len(community.group_agreements),
        parts=dict(parts),
    )


def only_gateways(community: Community, gateways: set[str]) -> Community:
    """The part of ``community`` that ``gateways`` poll: their connections under the same hub, loops and micro
    groups (emptied ones dropped), and the group agreements all of whose connections remain. For demos and tests
    that simulate a few companies: control then sees only what is there, not the rest as missing."""
    doc = community.model_dump(mode="json", exclude_none=True)

    def keep(connection: dict[str, Any]) -> bool:
        return any(g["id"] in gateways for g in connection.get("gateways", []))

    loops = []
    for loop in doc["loops"]:
        loop["connections"] = [c for c in loop.get("connections", []) if keep(c)]
        micros = []
        for micro in loop.get("micro_groups", []):
            micro["connections"] = [c for c in micro["connections"] if keep(c)]
            if micro["connections"]:
                micros.append(micro)
        loop["micro_groups"] = micros
        if loop["connections"] or micros:
            loops.append(loop)
    if not loops:
        raise ValueError(f"no connection of the community is polled by {', '.join(sorted(gateways))}")
    doc["loops"] = loops
    remaining = {c["id"] for loop in loops for c in loop["connections"]} | {
        c["id"] for loop in loops for m in loop["micro_groups"] for c in m["connections"]
    }
    doc["group_agreements"] = [
        g for g in doc.get("group_agreements", []) if set(g["connections"]) <= remaining
    ]
    return Community.model_validate(doc)
