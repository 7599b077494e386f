"""Limits of every node for every quarter hour, composed from its contract parts (see ``energyhub.domain.contracts``).

``limit_at(node, t)`` answers for the quarter hour that contains ``t``: the contract limits per direction in W (the
DSO checks these against the quarter-hour average), the physical capacity in W (checked instantaneously), and which
contract part set each value, so an operator can see why a limit is what it is. No safety margin is applied here;
control adds its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from energyhub.domain.contracts import Limits
from energyhub.domain.isp import isp_index_in_local_day, isp_start
from energyhub.domain.topology import Community, Level, NodeRef

__all__ = ["LimitBook", "NodeLimit", "UnknownNode", "compose_limit", "limit_at"]

Direction = Literal["import", "export"]


class UnknownNode(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class NodeLimit:
    """A node's limits during one quarter hour. ``math.inf`` means no limit in that direction."""

    node: str
    level: Level
    isp_start: datetime
    import_w: float
    export_w: float
    physical_w: float
    import_source: str
    export_source: str


def compose_limit(limits: Limits, t: datetime, tz: ZoneInfo, direction: Direction) -> tuple[float, str]:
    """The limit in W for one direction in the quarter hour containing ``t``, and the parts that set it."""
    start = isp_start(t)
    local = start.astimezone(tz)
    key = f"{direction}_kw"
    firm: float | None = getattr(limits, key)
    if firm is None:  # validation guarantees no additive parts then
        value, source = math.inf, "none"
    else:
        value, source = firm, "firm"
    for i, block in enumerate(limits.time_blocks):
        extra = getattr(block, key)
        if extra and block.covers(local):
            value += extra
            source += f"+time_blocks[{i}]"
    if limits.day_ahead is not None:
        day, index = isp_index_in_local_day(start, tz)
        profile = limits.day_ahead.by_date().get(day)
        announced = getattr(profile, key) if profile is not None else None
        if announced is not None:
            extra = announced[index]
        else:
            extra = getattr(limits.day_ahead, key) if limits.day_ahead.unannounced == "full" else 0.0
        if extra:
            value += extra
            source += "+day_ahead"
    if limits.capacity_limitation is not None:
        for i, window in enumerate(limits.capacity_limitation.windows):
            cap = getattr(window, key)
            if cap is not None and cap < value and window.applies(local):
                value, source = cap, f"capacity_limitation.windows[{i}]"
        for i, call in enumerate(limits.capacity_limitation.calls):
            cap = getattr(call, key)
            if cap is not None and cap < value and call.applies(start):
                value, source = cap, f"capacity_limitation.calls[{i}]"
    return value * 1000.0, source


class LimitBook:
    """Answers ``limit_at`` for every node of one community."""

    def __init__(self, community: Community) -> None:
        self._nodes = community.nodes()
        self._tz = ZoneInfo(community.community.timezone)

    @property
    def nodes(self) -> dict[str, NodeRef]:
        return self._nodes

    def node(self, node_id: str) -> NodeRef:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise UnknownNode(
                f"unknown node {node_id!r}: not the hub, a loop, a micro group, a connection or a group agreement"
            ) from None

    def limit_at(self, node_id: str, t: datetime) -> NodeLimit:
        node = self.node(node_id)
        import_w, import_source = compose_limit(node.limits, t, self._tz, "import")
        export_w, export_source = compose_limit(node.limits, t, self._tz, "export")
        physical_w = node.capacity_kva * 1000.0 if node.capacity_kva is not None else math.inf
        return NodeLimit(
            node=node.id,
            level=node.level,
            isp_start=isp_start(t),
            import_w=import_w,
            export_w=export_w,
            physical_w=physical_w,
            import_source=import_source,
            export_source=export_source,
        )


def limit_at(community: Community, node_id: str, t: datetime) -> NodeLimit:
    """One-off ``LimitBook(community).limit_at(node_id, t)``; build a ``LimitBook`` when asking many times."""
    return LimitBook(community).limit_at(node_id, t)
