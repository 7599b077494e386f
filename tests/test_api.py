"""The HTTP API and the live page, against the real broker, in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from mqtt_helpers import can_log_in, link_as
from test_control_loop import community_doc

from api.app import ApiSettings, create_app
from hub.messages import GatewayState, Measurement, Quality, Setpoint, decode, encode
from hub.services import free_port
from hub.topics import Topics

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts"
TOKEN = "test-token-0123456789"


@pytest.fixture
async def api(services, tmp_path):
    """The API on a free port, for a two-company community whose gateways the test can publish as."""
    site = services.settings.site
    doc = community_doc(site, [free_port(), free_port()], gateway_prefix="gw-api")
    # c-001 has a non-firm right the DSO restricts day ahead: what the upload endpoint is for.
    doc["loops"][0]["connections"][0]["limits"]["day_ahead"] = {"import_kw": 100, "export_kw": 0}
    path = tmp_path / "community.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    for n in (1, 2):
        services.accounts.add_gateway(
            f"gw-api-{n}"
        ) if f"gw-api-{n}" not in services.accounts.accounts() else None
    services.accounts.reload_broker()
    for n in (1, 2):
        await can_log_in(services, f"gw-api-{n}")
    settings = ApiSettings(
        community=path,
        site=site,
        port=free_port(),
        token=TOKEN,
        mqtt_port=services.settings.mqtt_port,
        mqtt_credentials_file=services.accounts.credentials_path("ehub-api"),
        influx_url=services.settings.influx_url,
        influx_db=services.settings.influx_db,
        state_dir=tmp_path / "api",
        push_interval_s=0.1,
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.02)  # poll interval of a condition wait
    try:
        yield settings
    finally:
        server.should_exit = True
        await task


async def publish_meter(services, gateway: str, device: str, watts: float, seq: int) -> None:
    topics = Topics(site=services.settings.site)
    link = await link_as(services, gateway)
    m = Measurement(ts=datetime.now(UTC), session=1, seq=seq, quality=Quality.GOOD, values={"power_w": watts})
    await link.wait(link.publish_batch([(topics.measurement(gateway, device), encode(m))]).done)
    await link.disconnect()


async def wait_json(client: httpx.AsyncClient, path: str, condition, timeout_s: float = 10.0):
    async with asyncio.timeout(timeout_s):
        while True:
            body = (await client.get(path)).json()
            if condition(body):
                return body
            await asyncio.sleep(0.05)  # poll interval of a condition wait


async def test_flows_topology_gateways_and_the_write_endpoints(services, api):
    base = f"http://127.0.0.1:{api.port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        topology = (await client.get("/api/topology")).json()
        assert {n["id"] for n in topology["nodes"] if n["level"] == "loop"} == {"loop-1"}
        # Live flows: the hub is the sum of the grid meters, against its limits.
        await publish_meter(services, "gw-api-1", "meter1", -5_000.0, 0)
        await publish_meter(services, "gw-api-2", "meter2", 8_000.0, 0)
        flows = await wait_json(
            client,
            "/api/flows",
            lambda b: next(f for f in b if f["node"] == "hub")["metered_connections"] == 2,
        )
        hub = next(f for f in flows if f["node"] == "hub")
        assert hub["flow_kw"] == pytest.approx(3.0)
        assert (hub["limit_import_kw"], hub["limit_export_kw"]) == (500.0, 0.0)
        assert hub["headroom"] == pytest.approx(1 - 3.0 / 500.0, abs=1e-3)
        assert next(f for f in flows if f["node"] == "c-001")["flow_kw"] == pytest.approx(-5.0)
        # Gateway health from the state messages.
        topics = Topics(site=services.settings.site)
        link = await link_as(services, "gw-api-1")
        state = GatewayState(online=True, session=3, ts=datetime.now(UTC), agent_version="t")
        await link.wait(link.publish_batch([(topics.state("gw-api-1"), encode(state))], retain=True).done)
        await link.disconnect()
        gateways = await wait_json(
            client, "/api/gateways", lambda b: any(g["gateway"] == "gw-api-1" for g in b)
        )
        assert next(g for g in gateways if g["gateway"] == "gw-api-1")["session"] == 3
        assert (await client.get("/api/decisions?limit=5")).status_code == 200
        assert "/api/overrides" in (await client.get("/openapi.json")).json()["paths"]

        # Writes: a token, known devices, sane values; every refusal says why.
        override = {
            "gateway": "gw-api-1",
            "device": "pv1",
            "name": "active_power_limit_pct",
            "value": 40,
            "ttl_s": 60,
        }
        refused = await client.post("/api/overrides", json=override)
        assert refused.status_code == 401
        assert "token" in refused.json()["detail"]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        unknown = await client.post("/api/overrides", json={**override, "device": "pv9"}, headers=auth)
        assert unknown.status_code == 404
        assert "no device 'pv9'" in unknown.json()["detail"]
        bad = await client.post("/api/overrides", json={**override, "ttl_s": -1}, headers=auth)
        assert bad.status_code == 422
        assert "ttl_s" in json.dumps(bad.json())
        gateway = await link_as(services, "gw-api-1")
        await gateway.subscribe([(topics.setpoints_for("gw-api-1"), 1)])
        accepted = await client.post("/api/overrides", json=override, headers=auth)
        assert accepted.status_code == 202
        received = decode(Setpoint, (await asyncio.wait_for(gateway.next_message(), 5)).payload)
        assert (received.id, received.name, received.value) == (
            accepted.json()["id"],
            "active_power_limit_pct",
            40,
        )
        assert 55 <= (received.expires - received.created).total_seconds() <= 60
        await gateway.disconnect()
        # A day-ahead profile has one value per local quarter hour: 92 on the spring DST day.
        short = await client.put(
            "/api/limits/c-001/day-ahead", json={"date": "2026-03-29", "import_kw": [100] * 96}, headers=auth
        )
        assert short.status_code == 422
        assert "has 92 quarter hours" in short.json()["detail"]
        stored = await client.put(
            "/api/limits/c-001/day-ahead", json={"date": "2026-03-29", "import_kw": [100] * 92}, headers=auth
        )
        assert stored.status_code == 201
        assert Path(stored.json()["stored"]).exists()
        assert (
            await client.put("/api/limits/nowhere/day-ahead", json={"date": "2026-03-29"}, headers=auth)
        ).status_code == 404


async def test_live_page_in_headless_chromium(services, api):
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{api.port}/"
    await publish_meter(services, "gw-api-1", "meter1", -2_000.0, 0)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(url)
        await page.wait_for_selector('[data-level="loop"]')
        assert await page.locator('[data-level="loop"]').count() == 1  # every loop of the community
        assert await page.locator('[data-level="connection"]').count() == 2
        hub = page.locator('[data-node="hub"] .flow')
        await page.wait_for_function(
            "() => document.querySelector('[data-node=\"c-001\"] .flow').textContent.includes('2.0')"
        )
        # A new reading shows within 2 s of its publication.
        before = await hub.text_content()
        published = time.monotonic()
        await publish_meter(services, "gw-api-2", "meter2", 7_300.0, 1)
        await page.wait_for_function(
            "() => document.querySelector('[data-node=\"hub\"] .flow').textContent.includes('takes 5.3')",
            timeout=2_000,
        )
        print(f"live page updated {time.monotonic() - published:.2f} s after publication")
        assert await hub.text_content() != before
        await page.screenshot(path=str(ARTIFACTS / "live-page.png"), full_page=True)
        # Readable on a phone: nothing wider than the screen.
        phone = await browser.new_page(viewport={"width": 390, "height": 844})
        await phone.goto(url)
        await phone.wait_for_selector('[data-level="loop"]')
        assert await phone.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        await phone.screenshot(path=str(ARTIFACTS / "live-page-phone.png"), full_page=True)
        await browser.close()


def test_compose_files_match_the_compose_specification():
    files = [REPO / "docker-compose.yml", REPO / "edge" / "deploy" / "docker-compose.edge.yml"]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    compose = yaml.safe_load(files[0].read_text())
    for name in ("mosquitto", "influxdb", "grafana", "ingest", "control", "api"):
        service = compose["services"][name]
        assert service.get("restart") == "unless-stopped", name
        assert "healthcheck" in service or name in ("ingest", "control"), name


async def test_live_page_with_the_whole_reference_community(services, tmp_path):
    """A hundred companies on six loops: every one is drawn, and a reading still shows within 2 s."""
    from playwright.async_api import async_playwright

    community = REPO / "examples" / "de-koumen.yaml"
    settings = ApiSettings(
        community=community,
        site=services.settings.site,
        port=free_port(),
        mqtt_port=services.settings.mqtt_port,
        mqtt_credentials_file=services.accounts.credentials_path("ehub-api"),
        influx_url=services.settings.influx_url,
        influx_db=services.settings.influx_db,
        state_dir=tmp_path,
        push_interval_s=0.5,
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.02)  # poll interval of a condition wait
        if "gw-002" not in services.accounts.accounts():
            services.accounts.add_gateway("gw-002")
            services.accounts.reload_broker()
        await can_log_in(services, "gw-002")
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(f"http://127.0.0.1:{settings.port}/")
            await page.wait_for_selector('[data-level="loop"]')
            assert await page.locator('[data-level="loop"]').count() == 6
            assert await page.locator('[data-level="connection"]').count() == 100
            await publish_meter(services, "gw-002", "meter", 123_400.0, 0)
            await page.wait_for_function(
                "() => document.querySelector('[data-node=\"c-002\"] .flow').textContent.includes('takes 123.4')",
                timeout=2_000,
            )
            await browser.close()
    finally:
        server.should_exit = True
        await task
