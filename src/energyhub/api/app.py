"""The HTTP API and the live page: the estate's topology, live flows against limits, recent control decisions,
gateway health, day-ahead limit uploads and manual overrides. OpenAPI at ``/docs``; writes need the token."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any

import aiomqtt
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import SettingsConfigDict
from sse_starlette.sse import EventSourceResponse

from energyhub.api.guard import RequestGuard, token_refusal
from energyhub.api.live import LiveView
from energyhub.domain.community import load_community
from energyhub.domain.contracts import DayAheadProfile
from energyhub.domain.day_ahead import DayAheadStore, with_profiles
from energyhub.domain.ids import IdError
from energyhub.domain.isp import isps_in_local_day
from energyhub.io.influx import InfluxClient, InfluxError
from energyhub.runtime.connection import ConnectedSettings
from energyhub.runtime.layered_settings import load_layered
from energyhub.wire.messages import Setpoint, encode
from energyhub.wire.readings import MAX_AHEAD_S
from energyhub.wire.topics import DEFAULT_ROOT, Topics, check_id

__all__ = ["ApiSettings", "create_app", "load_api_settings"]

PAGE = Path(__file__).with_name("page.html")
# For the OpenAPI page's "Authorize"; the token itself is checked by src/energyhub/api/guard.py.
BEARER = HTTPBearer(auto_error=False, description="The API's token (EHUB_API_TOKEN): every write needs it.")


class ApiSettings(ConnectedSettings):
    model_config = SettingsConfigDict(env_prefix="EHUB_API_", extra="forbid")

    community: Path = Path("examples/de-koumen.yaml")
    site: str | None = None
    topic_root: str = DEFAULT_ROOT
    host: str = "127.0.0.1"
    port: int = Field(18090, ge=1, le=65535)
    token: str | None = Field(None, description="Bearer token for the write endpoints; none: writes refused.")
    state_dir: Path = Field(Path("var/api"), description="Where uploaded day-ahead profiles are kept.")
    push_interval_s: float = Field(0.5, gt=0, le=10, description="Live page: at most one update this often.")
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=16 * 1024,
        le=64 * 1024 * 1024,
        description="The largest request body taken, in bytes; a larger one gets 413 before it is read. The "
        "largest the API takes is a day-ahead upload: 2 x 100 values, a few kB.",
    )
    max_ahead_s: float = Field(
        MAX_AHEAD_S,
        gt=0,
        le=3600,
        description="Live view: a measurement dated more than this many real seconds ahead of the data clock is "
        "ignored (and counted); at 60x that is 60 minutes of data.",
    )


def load_api_settings(file: Path | None = None, **flags: object) -> ApiSettings:
    return load_layered(ApiSettings, file, **flags)


class DayAheadUpload(BaseModel):
    """A DSO's day-ahead profile for one node: one value per quarter hour of the local day (92, 96 or 100)."""

    date: date
    import_kw: list[float] | None = None
    export_kw: list[float] | None = None

    @field_validator("import_kw", "export_kw")
    @classmethod
    def _non_negative(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and any(v < 0 for v in values):
            raise ValueError("values are kW of transport capacity: none may be negative")
        return values


class Override(BaseModel):
    """A manual setpoint for one device, which expires like control's own."""

    gateway: str
    device: str
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$", description="As the device profile names it.")
    value: float
    ttl_s: float = Field(300, gt=0, le=86_400)
    reason: str = Field("manual override", max_length=200)


def create_app(settings: ApiSettings) -> FastAPI:
    community = load_community(settings.community)
    day_ahead_store = DayAheadStore(settings.state_dir / "day_ahead")
    topics = Topics(site=settings.site or community.community.id, root=settings.topic_root)
    live = LiveView(community, topics, max_ahead_s=settings.max_ahead_s)
    devices = {(community.gateway_of(c, d), d.id): (c.id, d) for c, d in community.devices()}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(live.run(settings.mqtt_host, settings.mqtt_port, settings.mqtt_login()))
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(
        title="energyhub",
        description="The energy community's live state, control decisions, and the operators' levers.",
        lifespan=lifespan,
    )
    app.state.live = live
    # The token of a write and the size of a body, before the body is read (FastAPI reads it before it runs a
    # route's dependencies).
    app.add_middleware(RequestGuard, token=settings.token, max_body_bytes=settings.max_body_bytes)

    def require_token(
        request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
    ) -> None:
        """The guard has checked the token already; checked here too, so no write route is open on its own."""
        given = (value for name, value in request.scope["headers"] if name == b"authorization")
        refusal = token_refusal(given, settings.token)
        if refusal is not None:
            raise HTTPException(refusal.status, refusal.detail, refusal.headers or None)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE.read_text()

    @app.get("/api/topology", summary="The estate: hub, loops, micro groups, connections and their devices")
    async def topology() -> dict[str, Any]:
        nodes = community.nodes()
        return {
            "site": topics.site,
            "name": community.community.name,
            "nodes": [
                {
                    "id": n.id,
                    "level": str(n.level),
                    "parent": n.parent,
                    "children": list(n.children),
                    "capacity_kva": n.capacity_kva,
                }
                for n in nodes.values()
            ],
            "devices": [
                {"gateway": g, "device": d.id, "connection": c, "role": str(d.role), "profile": d.profile}
                for (g, _), (c, d) in devices.items()
            ],
        }

    @app.get("/api/flows", summary="Every node's flow now against its limits (kW, + taken from the grid)")
    async def flows() -> list[dict[str, Any]]:
        return live.flows()

    @app.get(
        "/api/clock",
        summary="The time the figures are of: real time, or a simulation's data clock (start, speed) and its now",
    )
    async def clock() -> dict[str, Any]:
        return live.clock_now()

    @app.get("/api/gateways", summary="Each gateway's latest state and health")
    async def gateways() -> list[dict[str, Any]]:
        return [{"gateway": g, **json.loads(s.model_dump_json())} for g, s in sorted(live.states.items())]

    @app.get("/api/decisions", summary="Recent control cycles with the binding limit")
    async def decisions(limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> list[dict[str, Any]]:
        try:
            async with InfluxClient(
                url=settings.influx_url, database=settings.influx_db, token=settings.influx_token
            ) as client:
                series = await client.query(
                    'SELECT "binding", "curtailed_kw", "cycle_ms", "setpoints", "infeasible" FROM "control_cycle" '
                    f"WHERE \"site\" = '{topics.site}' ORDER BY time DESC LIMIT {limit}",
                    epoch=None,
                )
        except InfluxError as exc:
            raise HTTPException(503, f"the database did not answer: {exc}") from None
        return [row for s in series for row in s.rows()]

    @app.put(
        "/api/limits/{node}/day-ahead",
        status_code=201,
        dependencies=[Depends(require_token)],
        summary="Store a DSO day-ahead limit profile for a node",
    )
    async def day_ahead(node: str, upload: DayAheadUpload) -> dict[str, Any]:
        if node not in community.nodes():
            raise HTTPException(404, f"unknown node {node!r}")
        from zoneinfo import ZoneInfo

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
        path = day_ahead_store.save(node, profile)
        return {"node": node, "date": upload.date.isoformat(), "quarter_hours": expected, "stored": str(path)}

    @app.post(
        "/api/overrides",
        status_code=202,
        dependencies=[Depends(require_token)],
        summary="Send a manual setpoint to one device, with an expiry",
    )
    async def override(body: Override) -> dict[str, Any]:
        try:
            check_id(body.gateway, what="gateway")
            check_id(body.device, what="device")
        except IdError as exc:
            raise HTTPException(422, str(exc)) from None
        if (body.gateway, body.device) not in devices:
            raise HTTPException(404, f"no device {body.device!r} behind gateway {body.gateway!r}")
        now = live.clock.now()
        setpoint = Setpoint(
            id=f"manual-{uuid.uuid4().hex[:12]}",
            name=body.name,
            value=body.value,
            created=now,
            expires=now + timedelta(seconds=live.clock.data_s(body.ttl_s)),  # ttl_s real seconds
            reason=body.reason,
        )
        username, password = settings.mqtt_login()
        try:
            async with aiomqtt.Client(
                settings.mqtt_host,
                settings.mqtt_port,
                username=username,
                password=password,
            ) as client:
                await client.publish(topics.setpoint(body.gateway, body.device), encode(setpoint), qos=1)
        except aiomqtt.MqttError as exc:
            raise HTTPException(503, f"the broker did not take the setpoint: {exc}") from None
        return {
            "id": setpoint.id,
            "expires": setpoint.expires.isoformat(),
            "topic": topics.setpoint(body.gateway, body.device),
        }

    @app.get(
        "/api/stream",
        summary="Server-sent events: the flows, each time a reading arrives (at most every push_interval_s)",
    )
    async def stream() -> EventSourceResponse:
        async def events() -> AsyncIterator[dict[str, str]]:
            yield {"event": "clock", "data": json.dumps(live.clock_now())}
            yield {"event": "flows", "data": json.dumps(live.flows())}
            while True:
                live.changed.clear()
                await live.changed.wait()
                await asyncio.sleep(settings.push_interval_s)  # coalesce a burst of readings into one update
                yield {"event": "clock", "data": json.dumps(live.clock_now())}
                yield {"event": "flows", "data": json.dumps(live.flows())}

        return EventSourceResponse(events())

    return app
