"""Overrides are checked against the device's bounds before they are sent: a 4xx naming the bound, never a
setpoint the gateway would refuse in its log, and never a 500 for a number JSON cannot hold."""

from __future__ import annotations

import asyncio

import httpx
import yaml

from energyhub.cli.services import free_port
from tests.api.test_api import TOKEN, api_settings, serving
from tests.control.test_control_loop import community_doc


async def test_an_override_beyond_the_devices_bounds_is_refused_naming_them(services, unique_id, tmp_path):
    doc = community_doc(
        services.settings.site, [free_port(), free_port()], gateway_prefix=f"gw-b{unique_id[:6]}"
    )
    plaza = doc["loops"][0]["connections"][1]
    plaza["devices"].append(
        {
            "id": "truck",
            "role": "ev",
            "profile": "ocpp",
            "power_kw": 350,
            "vehicle": "truck",
            "ocpp": {"charge_point_id": "DC-1", "version": "2.0.1"},
        }
    )
    gateway_1 = doc["loops"][0]["connections"][0]["gateways"][0]["id"]
    gateway_2 = plaza["gateways"][0]["id"]
    path = tmp_path / "community.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    settings = api_settings(services, path, tmp_path / "api")
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def override(gateway: str, device: str, name: str, value: object) -> dict:
        return {"gateway": gateway, "device": device, "name": name, "value": value, "ttl_s": 30}

    async with serving(settings), httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}") as client:
        # A SunSpec inverter (discovered at the edge) takes 0 to 100 % as the SunSpec inverter profile says.
        r = await client.post(
            "/api/overrides", json=override(gateway_1, "pv1", "active_power_limit_pct", 150), headers=auth
        )
        assert r.status_code == 422
        assert (
            "active_power_limit_pct 150 is outside [0, 100], the bounds of profile sunspec_inverter" in r.text
        )
        r = await client.post(
            "/api/overrides", json=override(gateway_1, "pv1", "active_power_limit_pct", -1), headers=auth
        )
        assert r.status_code == 422
        # A 350 kW charger over OCPP: its rating at 400 V x sqrt 3.
        r = await client.post(
            "/api/overrides", json=override(gateway_2, "truck", "max_current_a", 600), headers=auth
        )
        assert r.status_code == 422
        assert "outside [0, 505.2], the bounds of charger truck's rating" in r.text
        # Numbers JSON (as Python reads it) lets through: NaN, Infinity, and 1e400 (read as infinity).
        for raw in ("NaN", "Infinity", "-Infinity", "1e400"):
            body = f'{{"gateway": "{gateway_1}", "device": "pv1", "name": "active_power_limit_pct", "value": {raw}}}'
            r = await client.post(
                "/api/overrides", content=body, headers={**auth, "Content-Type": "application/json"}
            )
            assert r.status_code == 422, (raw, r.status_code, r.text)
        # Within bounds: sent (a 503 only while the API's broker link is still coming up).
        async with asyncio.timeout(15):
            while True:
                r = await client.post(
                    "/api/overrides",
                    json=override(gateway_1, "pv1", "active_power_limit_pct", 40),
                    headers=auth,
                )
                if r.status_code != 503:
                    break
                await asyncio.sleep(0.2)  # poll interval of a condition wait
        assert r.status_code == 202, r.text
