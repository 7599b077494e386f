"""The API in headless Chromium without a network: ``/docs`` from its own packaged assets with every request that
does not go to the API itself refused, as on a plant network without internet; and the live page without its
broker, which must say it has no data rather than show the last figures as live."""

from __future__ import annotations

import shutil

import httpx
import yaml

from energyhub.cli.services import free_port
from tests.api.test_api import api_settings, serving
from tests.whole.test_charging_plaza import community


async def test_docs_render_with_the_network_off(services, gateway, tmp_path):
    from playwright.async_api import async_playwright

    path = tmp_path / "community.yaml"
    path.write_text(yaml.safe_dump(community(services.settings.site, gateway, free_port(), free_port())))
    settings = api_settings(services, path, tmp_path / "api")
    origin = f"http://127.0.0.1:{settings.port}"
    refused: list[str] = []
    async with serving(settings), async_playwright() as p:
        async with httpx.AsyncClient() as client:
            html = (await client.get(f"{origin}/docs", timeout=10)).text
        assert "cdn.jsdelivr.net" not in html
        assert "unpkg.com" not in html
        browser = await p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = await browser.new_page()

        async def only_the_api(route) -> None:
            if route.request.url.startswith(origin):
                await route.continue_()
            else:
                refused.append(route.request.url)
                await route.abort()

        await page.route("**/*", only_the_api)
        await page.goto(f"{origin}/docs")
        # Swagger UI built the page from the OpenAPI document: the operations are there, the write ones too.
        await page.wait_for_selector(".opblock", timeout=15_000)
        text = await page.locator("#swagger-ui").inner_text()
        assert "/api/flows" in text
        assert "/api/plaza/bookings/{connection}/{device}" in text
        assert "Unable to render" not in text
        await browser.close()
    assert refused == [], refused  # nothing was asked of the internet


async def test_the_live_page_says_no_data_when_the_api_has_no_broker(services, gateway, tmp_path):
    from playwright.async_api import async_playwright

    path = tmp_path / "community.yaml"
    path.write_text(yaml.safe_dump(community(services.settings.site, gateway, free_port(), free_port())))
    # The API's broker is a port nothing listens on: as when Mosquitto is down.
    settings = api_settings(services, path, tmp_path / "api", mqtt_port=free_port())
    async with serving(settings), async_playwright() as p:
        browser = await p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{settings.port}/")
        await page.wait_for_function(
            "() => document.getElementById('status').textContent.startsWith('no data')", timeout=10_000
        )
        status = await page.locator("#status").text_content()
        assert status == "no data: the API has no broker connection (reconnecting…)"
        assert await page.locator('[data-node="hub"] .flow').text_content() == "no data"
        # The company by its name, and no bar (not a full black one while nothing is known).
        assert await page.locator('[data-node="c-plaza"] .name').text_content() == "Charging plaza"
        width = await page.locator('[data-node="hub"] .bar:not(.isp-bar) span').evaluate(
            "s => s.getBoundingClientRect().width"
        )
        assert width == 0
        await browser.close()
