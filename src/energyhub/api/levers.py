"""The operators' levers: day-ahead limit uploads, manual overrides, and whether an override took."""

from __future__ import annotations

import math
import uuid
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException

from energyhub.api.acks import SETPOINT_ID, SentOverride, ack_rows, acks_query
from energyhub.api.context import ApiContext
from energyhub.api.link import BrokerRefused, BrokerUnavailable
from energyhub.api.models import DayAheadUpload, Override
from energyhub.domain.contracts import DayAheadProfile
from energyhub.domain.day_ahead import with_profiles
from energyhub.domain.ids import IdError
from energyhub.domain.isp import isps_in_local_day
from energyhub.domain.topology import Device, DeviceRole
from energyhub.wire.messages import Setpoint, encode
from energyhub.wire.profile import SUNSPEC, ProfileError, load_profile
from energyhub.wire.roles import CHARGER_MAX_A, CHARGER_W_PER_A, role_spec
from energyhub.wire.topics import check_id

__all__ = ["day_ahead_router", "override_router"]

# Discovered SunSpec devices take setpoints as the SunSpec profiles of their role say.
SUNSPEC_PROFILE = {DeviceRole.PV: "sunspec_inverter", DeviceRole.BATTERY: "sunspec_battery"}

# A 503 says when to try again: about when the link's first reconnect attempt is made.
RETRY_AFTER = {"Retry-After": "2"}


def day_ahead_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    community = ctx.community

    @router.put(
        "/api/limits/{node}/day-ahead",
        status_code=201,
        dependencies=[Depends(ctx.require_token)],
        summary="Store a DSO day-ahead limit profile for a node",
    )
    async def day_ahead(node: str, upload: DayAheadUpload) -> dict[str, Any]:
        if node not in community.nodes():
            raise HTTPException(404, f"unknown node {node!r}")
        expected = isps_in_local_day(upload.date, ZoneInfo(community.community.timezone))
        for name, values in (("import_kw", upload.import_kw), ("export_kw", upload.export_kw)):
            if values is not None and len(values) != expected:
                raise HTTPException(
                    422,
                    f"{name} has {len(values)} values; {upload.date} has {expected} quarter hours locally",
                )
        if upload.import_kw is None and upload.export_kw is None:
            raise HTTPException(422, "give import_kw, export_kw or both")
        if community.nodes()[node].limits.day_ahead is None:
            raise HTTPException(409, f"{node}: its contract has no day-ahead right to restrict")
        profile = DayAheadProfile.model_validate(
            upload.model_dump(), context={"timezone": community.community.timezone}
        )
        _merged, problems = with_profiles(community, {node: [profile]})
        if problems:
            raise HTTPException(422, problems[0])
        path = ctx.day_ahead.save(node, profile)
        return {"node": node, "date": upload.date.isoformat(), "quarter_hours": expected, "stored": str(path)}

    return router


def _check_override(ctx: ApiContext, body: Override) -> None:
    """A 4xx naming what is wrong: a malformed id, a device not behind that gateway, a setpoint it does not take."""
    try:
        check_id(body.gateway, what="gateway")
        check_id(body.device, what="device")
    except IdError as exc:
        raise HTTPException(422, str(exc)) from None
    found = ctx.devices.get((body.gateway, body.device))
    if found is None:
        raise HTTPException(404, f"no device {body.device!r} behind gateway {body.gateway!r}")
    device = found[1]
    takes = role_spec(device.role).setpoints
    if body.name not in takes:
        offer = f"it takes {', '.join(takes)}" if takes else "it takes no setpoints"
        raise HTTPException(
            422, f"device {body.device!r} is a {device.role.value}: {offer}, not {body.name!r}"
        )
    low, high, source = setpoint_bounds(device, body.name)
    if not low <= body.value <= high:
        raise HTTPException(
            422,
            f"{body.name} {body.value:g} is outside [{low:g}, {high:g}], the bounds of {source}: the gateway "
            "would refuse it",
        )


def setpoint_bounds(device: Device, name: str) -> tuple[float, float, str]:
    """What ``device`` takes for setpoint ``name``: (min, max, where the bounds come from). A device's profile
    says it; SunSpec devices are bounded as the SunSpec profiles of their role are; an OCPP charger by its rating."""
    if device.ocpp is not None:
        high = (device.power_kw or 0) * 1000 / CHARGER_W_PER_A or CHARGER_MAX_A
        return 0.0, round(high, 1), f"charger {device.id}'s rating"
    profile = (
        SUNSPEC_PROFILE.get(device.role, device.profile) if device.profile == SUNSPEC else device.profile
    )
    try:
        spec = next(s for s in load_profile(profile).setpoints if s.name == name)
    except (ProfileError, StopIteration):
        return -math.inf, math.inf, "no profile"  # the gateway checks it against what it finds
    return spec.min, spec.max, f"profile {profile}"


def _stored_override(setpoint_id: str, row: dict[str, Any]) -> dict[str, Any]:
    """An override's acknowledgement found only in the database (sent before this API started)."""
    status = row["status"]
    message = "applied by the gateway" if status == "applied" else f"rejected by the gateway: {row['reason']}"
    return {
        "id": setpoint_id,
        "gateway": row["gateway"],
        "device": row["device"],
        "name": row["name"],
        "value": row["value"],
        "state": status,
        "acknowledged": True,
        "message": message,
        "ack": {k: row[k] for k in ("gateway", "device", "id", "status", "ts", "name", "reason", "readback")},
        "source": "database",
    }


def override_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    live, topics = ctx.live, ctx.topics

    @router.post(
        "/api/overrides",
        status_code=202,
        dependencies=[Depends(ctx.require_token)],
        summary="Send a manual setpoint to one device, with an expiry; GET /api/overrides/{id} shows its answer",
    )
    async def override(body: Override) -> dict[str, Any]:
        _check_override(ctx, body)
        now = live.clock.now()
        setpoint = Setpoint(
            id=f"manual-{uuid.uuid4().hex[:12]}",
            name=body.name,
            value=body.value,
            created=now,
            expires=now + timedelta(seconds=live.clock.data_s(body.ttl_s)),  # ttl_s real seconds
            reason=body.reason,
        )
        topic = topics.setpoint(body.gateway, body.device)
        sent = SentOverride(
            setpoint.id, body.gateway, body.device, body.name, body.value, now, setpoint.expires, topic
        )
        live.acks.expect(sent)
        try:
            await ctx.link.publish(topic, encode(setpoint))
        except BrokerUnavailable as exc:
            if not exc.maybe_sent:
                live.acks.forget(setpoint.id)
                raise HTTPException(503, f"the setpoint was not sent: {exc}", RETRY_AFTER) from None
            # Kept: it may still reach the gateway, whose answer then shows under its id.
            raise HTTPException(
                503,
                f"the setpoint {setpoint.id} may not have been sent: {exc}; GET /api/overrides/{setpoint.id} "
                "shows whether the gateway answers it",
                RETRY_AFTER,
            ) from None
        except BrokerRefused as exc:
            live.acks.forget(setpoint.id)
            raise HTTPException(502, f"the setpoint was not sent: {exc}") from None
        return {
            "id": setpoint.id,
            "expires": setpoint.expires.isoformat(),
            "topic": topic,
            "state": "sent",
            "acknowledgement": f"/api/overrides/{setpoint.id}",
        }

    @router.get(
        "/api/overrides/{setpoint_id}",
        summary="An override and the gateway's answer: applied, rejected with the reason, or not yet acknowledged",
    )
    async def override_status(setpoint_id: str) -> dict[str, Any]:
        if not SETPOINT_ID.match(setpoint_id):
            raise HTTPException(
                422, f"{setpoint_id!r} is not a setpoint id: 1 to 64 of A-Z, a-z, 0-9, '_', '.', ':', '-'"
            )
        sent = live.acks.overrides.get(setpoint_id)
        if sent is not None:
            return {**sent.to_json(live.clock.now()), "source": "api"}
        # Sent before this API started, or pushed out of memory: the ingest stored its ack, if there was one.
        rows = ack_rows(await ctx.query(acks_query(topics.site, setpoint_id=setpoint_id, limit=1)))
        if not rows:
            raise HTTPException(
                404,
                f"no override {setpoint_id!r}: this API has not sent it since it started, and InfluxDB holds "
                "no acknowledgement of it",
            )
        return _stored_override(setpoint_id, rows[0])

    return router
