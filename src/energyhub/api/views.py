"""The read routes: the live page, the estate, the flows, the gateways and their acknowledgements, control's
decisions, the event stream, and the aggregator's quarter hours."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse
from sse_starlette.sse import EventSourceResponse

from energyhub.api.acks import ack_rows, acks_query
from energyhub.api.context import ApiContext
from energyhub.api.models import CounterReset, DeviceQuarterHours, NodeQuarterHours
from energyhub.api.quarter_hours import (
    DEVICE_FIELDS,
    MAX_RANGE,
    NODE_FIELDS,
    RESET_COLUMNS,
    RangeError,
    TimeRange,
    device_totals,
    node_totals,
    quarter_query,
    resets_query,
    rows,
)
from energyhub.domain.ids import IdError
from energyhub.wire.messages import GatewayState, SetpointStatus
from energyhub.wire.topics import check_id

QUIET_PUSH_S = 2.0  # the stream's longest silence

__all__ = ["aggregate_router", "gateway_router", "state_router"]

PAGE = Path(__file__).with_name("page.html")
# A gateway heard only through its acknowledgements: its state fields are there, and null.
NO_STATE: dict[str, Any] = dict.fromkeys(GatewayState.model_fields)


def state_router(ctx: ApiContext) -> APIRouter:
    """The page, the estate, the flows, the clock, control's decisions and the stream."""
    router = APIRouter()
    live, topics, community = ctx.live, ctx.topics, ctx.community

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE.read_text()

    @router.get(
        "/api/topology", summary="The estate: hub, loops, micro groups, connections and their devices"
    )
    async def topology() -> dict[str, Any]:
        companies = {c.id: c.company for _loop, _micro, c in community.connections()}
        return {
            "site": topics.site,
            "name": community.community.name,
            "nodes": [
                {
                    "id": n.id,
                    "name": companies.get(n.id),  # a connection's company; None for the grid's own nodes
                    "level": str(n.level),
                    "parent": n.parent,
                    "children": list(n.children),
                    "capacity_kva": n.capacity_kva,
                }
                for n in community.nodes().values()
            ],
            "devices": [
                {"gateway": g, "device": d.id, "connection": c, "role": str(d.role), "profile": d.profile}
                for (g, _), (c, d) in ctx.devices.items()
            ],
        }

    @router.get("/api/flows", summary="Every node's flow now against its limits (kW, + taken from the grid)")
    async def flows() -> list[dict[str, Any]]:
        return live.flows()

    @router.get(
        "/api/clock",
        summary="The time the figures are of: real time, or a simulation's data clock (start, speed) and its now",
    )
    async def clock() -> dict[str, Any]:
        return live.clock_now()

    @router.get("/api/decisions", summary="Recent control cycles with the binding limit")
    async def decisions(limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> list[dict[str, Any]]:
        series = await ctx.query(
            'SELECT "binding", "curtailed_kw", "cycle_ms", "setpoints", "infeasible" FROM "control_cycle" '
            f"WHERE \"site\" = '{topics.site}' ORDER BY time DESC LIMIT {limit}"
        )
        return [row for s in series for row in s.rows()]

    @router.get(
        "/api/stream",
        summary="Server-sent events: the flows, each time a reading arrives (at most every push_interval_s)",
    )
    async def stream() -> EventSourceResponse:
        def link() -> str:
            # Whether the figures can be live at all: without its broker link the API hears no reading.
            return json.dumps({"broker": ctx.link.ready.is_set(), "error": ctx.link.last_error})

        async def events() -> AsyncIterator[dict[str, str]]:
            yield {"event": "link", "data": link()}
            yield {"event": "clock", "data": json.dumps(live.clock_now())}
            yield {"event": "flows", "data": json.dumps(live.flows())}
            while True:
                live.changed.clear()
                try:
                    # At least every few seconds, readings or not: a page must learn that none come.
                    await asyncio.wait_for(live.changed.wait(), QUIET_PUSH_S)
                    await asyncio.sleep(ctx.settings.push_interval_s)  # coalesce a burst of readings
                except TimeoutError:
                    pass
                yield {"event": "link", "data": link()}
                yield {"event": "clock", "data": json.dumps(live.clock_now())}
                yield {"event": "flows", "data": json.dumps(live.flows())}

        return EventSourceResponse(events())

    return router


def gateway_router(ctx: ApiContext) -> APIRouter:
    """The gateways' state and their setpoint acknowledgements: live, and stored."""
    router = APIRouter()
    live = ctx.live

    @router.get(
        "/api/gateways",
        summary="Each gateway's latest state and health, and its setpoint acknowledgements since the API started",
    )
    async def gateways() -> list[dict[str, Any]]:
        heard = sorted(set(live.states) | set(live.acks.gateways))
        out = []
        for g in heard:
            state = live.states.get(g)
            fields = NO_STATE if state is None else json.loads(state.model_dump_json())
            out.append({"gateway": g, **fields, "acks": live.acks.summary(g)})
        return out

    @router.get(
        "/api/gateways/{gateway}/acks",
        summary="A gateway's stored setpoint acknowledgements (InfluxDB's setpoint_ack), newest first",
    )
    async def gateway_acks(
        gateway: str,
        status: Annotated[
            SetpointStatus | None, Query(description="Only acks of this status: applied or rejected.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[dict[str, Any]]:
        try:
            check_id(gateway, what="gateway")
        except IdError as exc:
            raise HTTPException(422, str(exc)) from None
        if gateway not in ctx.gateways:
            raise HTTPException(
                404, f"unknown gateway {gateway!r}: not in community {ctx.community.community.id!r}"
            )
        series = await ctx.query(acks_query(ctx.topics.site, gateway=gateway, status=status, limit=limit))
        return ack_rows(series)

    return router


def _checked(value: str, what: str) -> str:
    try:
        return check_id(value, what=what)
    except IdError as exc:
        raise HTTPException(422, str(exc)) from None


START = Query(description="UTC with a time zone (RFC 3339); default a day before end.")
END = Query(description="UTC with a time zone; default the data clock's now. At most 31 days after start.")


def aggregate_router(ctx: ApiContext) -> APIRouter:
    """A node's and a device's quarter hours and the counters that fell, as the aggregator stored them."""
    router = APIRouter()
    site, nodes, community = ctx.topics.site, ctx.community.nodes(), ctx.community.community

    def span(start: datetime | None, end: datetime | None) -> TimeRange:
        try:
            return TimeRange.of(start, end, ctx.live.clock.now())
        except RangeError as exc:
            raise HTTPException(422, str(exc)) from None

    @router.get(
        "/api/nodes/{node}/quarter-hours",
        summary="A node's quarter hours from its meters' counters: energy, limits, energy beyond them, resets",
    )
    async def node_quarter_hours(
        node: str,
        start: Annotated[datetime | None, START] = None,
        end: Annotated[datetime | None, END] = None,
    ) -> NodeQuarterHours:
        if _checked(node, "node") not in nodes:
            raise HTTPException(404, f"unknown node {node!r}: not in community {community.id!r}")
        asked = span(start, end)
        found = rows(await ctx.query(quarter_query(site, asked, node=node)), NODE_FIELDS)
        return NodeQuarterHours.model_validate(
            {
                "node": node,
                "level": str(nodes[node].level),
                **asked.to_json(),
                "quarter_hours": found,
                "totals": node_totals(found, asked, ctx.live.clock.now()),
            }
        )

    @router.get(
        "/api/devices/{gateway}/{device}/quarter-hours",
        summary="A device's quarter hours: energy from its counters (meters), power, coverage, counter resets",
    )
    async def device_quarter_hours(
        gateway: str,
        device: str,
        start: Annotated[datetime | None, START] = None,
        end: Annotated[datetime | None, END] = None,
    ) -> DeviceQuarterHours:
        key = (_checked(gateway, "gateway"), _checked(device, "device"))
        if key not in ctx.devices:
            raise HTTPException(
                404,
                f"unknown device {device!r} behind gateway {gateway!r}: not in community {community.id!r}",
            )
        connection, known = ctx.devices[key]
        asked = span(start, end)
        found = rows(
            await ctx.query(quarter_query(site, asked, gateway=gateway, device=device)), DEVICE_FIELDS
        )
        return DeviceQuarterHours.model_validate(
            {
                "gateway": gateway,
                "device": device,
                "connection": connection,
                "role": str(known.role),
                **asked.to_json(),
                "quarter_hours": found,
                "totals": device_totals(found, asked, ctx.live.clock.now()),
            }
        )

    @router.get(
        "/api/counter-resets",
        summary=f"Energy counters that fell (a meter replaced or reset), oldest first; at most {MAX_RANGE.days} days",
    )
    async def counter_resets(
        start: Annotated[datetime | None, START] = None,
        end: Annotated[datetime | None, END] = None,
        gateway: str | None = None,
    ) -> list[CounterReset]:
        if gateway is not None and _checked(gateway, "gateway") not in ctx.gateways:
            raise HTTPException(404, f"unknown gateway {gateway!r}: not in community {community.id!r}")
        series = await ctx.query(resets_query(site, span(start, end), gateway))
        return [CounterReset.model_validate(row) for row in rows(series, RESET_COLUMNS, time_as="ts")]

    return router
