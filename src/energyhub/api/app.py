"""The HTTP API and the live page: the estate's topology, live flows against limits, recent control decisions,
gateway health and setpoint acknowledgements, day-ahead limit uploads and manual overrides. OpenAPI at ``/docs``;
writes need the token.

The process keeps one MQTT connection (``energyhub.api.link.BrokerLink``) from start to stop: the live view reads
through it and the overrides publish through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from energyhub.api.context import ApiContext
from energyhub.api.guard import RequestGuard
from energyhub.api.levers import day_ahead_router, override_router
from energyhub.api.plaza import plaza_router
from energyhub.api.settings import ApiSettings, load_api_settings
from energyhub.api.views import aggregate_router, gateway_router, state_router

__all__ = ["ApiSettings", "create_app", "load_api_settings"]


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity as text: JSON has neither, and Starlette refuses to render them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


async def _invalid(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, but one that echoes a NaN or an infinity it refused (Python's JSON parser takes them) instead
    of failing to render it and answering 500."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else [{"msg": str(exc)}]
    return JSONResponse({"detail": _finite(jsonable_encoder(errors))}, status_code=422)


def create_app(settings: ApiSettings) -> FastAPI:
    ctx = ApiContext.build(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        link = asyncio.create_task(ctx.link.run(), name="api broker link")
        try:
            yield
        finally:
            link.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link
            await ctx.influx.aclose()

    app = FastAPIOffline(
        title="energyhub",
        description="The energy community's live state, control decisions, and the operators' levers.",
        lifespan=lifespan,
    )
    app.add_exception_handler(RequestValidationError, _invalid)
    app.state.live = ctx.live
    app.state.link = ctx.link
    # The token of a write and the size of a body, before the body is read (FastAPI reads it before it runs a
    # route's dependencies).
    app.add_middleware(RequestGuard, token=settings.token, max_body_bytes=settings.max_body_bytes)
    for router in (
        state_router,
        gateway_router,
        aggregate_router,
        day_ahead_router,
        override_router,
        plaza_router,
    ):
        app.include_router(router(ctx))
    return app
