"""Plaza bookings through the API: stored where control reads them, checked before they are stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import yaml

from energyhub.cli.services import free_port
from energyhub.domain.bookings import BookingStore
from tests.api.test_api import TOKEN, api_settings, serving
from tests.whole.test_charging_plaza import community


async def test_a_booking_is_stored_for_control_and_bad_ones_are_refused(services, gateway, tmp_path):
    path = tmp_path / "community.yaml"
    path.write_text(yaml.safe_dump(community(services.settings.site, gateway, free_port(), free_port())))
    settings = api_settings(services, path, tmp_path / "api")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    leaves = (datetime.now(UTC) + timedelta(hours=3)).replace(microsecond=0)
    body = {"energy_kwh": 40, "departure": leaves.isoformat()}
    async with serving(settings), httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}") as client:
        assert (await client.put("/api/plaza/bookings/c-plaza/car-1", json=body)).status_code == 401
        r = await client.put("/api/plaza/bookings/c-plaza/car-1", json=body, headers=auth)
        assert r.status_code == 201, r.text
        # In the folder control reads, as control reads it.
        stored = BookingStore(tmp_path / "api" / "bookings").load()
        assert stored[1] == []
        assert stored[0][("c-plaza", "car-1")].energy_kwh == 40
        assert stored[0][("c-plaza", "car-1")].departure == leaves
        listed = (await client.get("/api/plaza/bookings")).json()
        assert [(b["device"], b["energy_kwh"]) for b in listed] == [("car-1", 40.0)]
        # Refused, naming why: not a charger, a departure past, no energy, a date without a zone, junk.
        r = await client.put("/api/plaza/bookings/c-plaza/meter", json=body, headers=auth)
        assert r.status_code == 404
        assert "no charger 'meter'" in r.text
        past = {**body, "departure": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()}
        r = await client.put("/api/plaza/bookings/c-plaza/truck-1", json=past, headers=auth)
        assert r.status_code == 422
        assert "is not after now" in r.text
        for bad in (
            {**body, "energy_kwh": 0},
            {**body, "departure": "2030-01-01T10:00"},
            {"energy_kwh": "x"},
        ):
            assert (
                await client.put("/api/plaza/bookings/c-plaza/truck-1", json=bad, headers=auth)
            ).status_code == 422
        assert ("c-plaza", "truck-1") not in BookingStore(tmp_path / "api" / "bookings").load()[0]
        # Cancelled: gone from the folder; cancelling again is a 404.
        assert (await client.delete("/api/plaza/bookings/c-plaza/car-1", headers=auth)).status_code == 204
        assert (await client.delete("/api/plaza/bookings/c-plaza/car-1", headers=auth)).status_code == 404
        assert (await client.get("/api/plaza/bookings")).json() == []
