"""Plaza bookings through the API: the energy a vehicle on a charger wants and when it leaves, for control's
urgency where the charger's session says nothing of itself (``domain/bookings.py``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from energyhub.api.context import ApiContext
from energyhub.domain.bookings import Booking
from energyhub.domain.topology import DeviceRole

__all__ = ["plaza_router"]


def plaza_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    chargers = {(c.id, d.id) for c, d in ctx.community.devices() if d.role is DeviceRole.EV}

    def charger(connection: str, device: str) -> None:
        if (connection, device) not in chargers:
            raise HTTPException(404, f"no charger {device!r} at connection {connection!r}")

    @router.put(
        "/api/plaza/bookings/{connection}/{device}",
        status_code=201,
        dependencies=[Depends(ctx.require_token)],
        summary="Book a charger: the energy its vehicle wants and its departure",
    )
    async def book(connection: str, device: str, booking: Booking) -> dict[str, Any]:
        charger(connection, device)
        now = ctx.live.clock.now()
        if booking.departure <= now:
            raise HTTPException(
                422, f"departure {booking.departure.isoformat()} is not after now ({now.isoformat()})"
            )
        stored = booking.model_copy(update={"created": now})
        path = ctx.bookings.save(connection, device, stored)
        return {
            "connection": connection,
            "device": device,
            **stored.model_dump(mode="json"),
            "stored": str(path),
        }

    @router.get("/api/plaza/bookings", summary="The bookings whose departure is ahead")
    async def bookings() -> list[dict[str, Any]]:
        ahead = ctx.bookings.ahead(ctx.live.clock.now())
        return [
            {"connection": c, "device": d, **b.model_dump(mode="json")} for (c, d), b in sorted(ahead.items())
        ]

    @router.delete(
        "/api/plaza/bookings/{connection}/{device}",
        status_code=204,
        dependencies=[Depends(ctx.require_token)],
        summary="Cancel a charger's booking",
    )
    async def cancel(connection: str, device: str) -> None:
        charger(connection, device)
        if not ctx.bookings.delete(connection, device):
            raise HTTPException(404, f"charger {device!r} at {connection!r} has no booking")

    return router
