#!/usr/bin/env python3
"""Take the README's live-page screenshot from a real demo run: `energyhub demo` for a few companies on free
loopback ports, headless Chromium on its live page once readings and a control decision are there, then stop.

    .venv/bin/python scripts/live_page_screenshot.py            # writes docs/img/live-page.png
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from energyhub.cli.services import free_port  # noqa: E402

GATEWAYS = ["gw-002", "gw-011", "gw-018", "gw-049"]


async def shoot(url: str, out: Path) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(url)
        # Readings behind every company, a decision recorded and the quarter hour counted (a boundary crossed,
        # 15 s at the demo's 60x): a page worth showing.
        await page.wait_for_function(
            "() => [...document.querySelectorAll('[data-level=\"connection\"] .parts')].every(e => e.textContent)"
            " && document.getElementById('control').textContent.startsWith('control: ')"
            " && !document.getElementById('control').textContent.includes('no decision')"
            " && !document.querySelector('[data-node=\"huskensweg\"] .isp').textContent.includes('no counters')",
            timeout=180_000,
        )
        await asyncio.sleep(3)  # a few more updates, so the bars have moved from their first readings
        await page.screenshot(path=str(out), full_page=True)
        await browser.close()


def main() -> None:
    out = REPO / "docs" / "img" / "live-page.png"
    ports = {
        name: str(free_port())
        for name in (
            "EHUB_MQTT_PORT",
            "EHUB_MQTT_TLS_PORT",
            "EHUB_INFLUX_PORT",
            "EHUB_INFLUX_RPC_PORT",
            "EHUB_INGEST_METRICS_PORT",
            "EHUB_API_PORT",
        )
    }
    with tempfile.TemporaryDirectory() as state:
        argv = [sys.executable, "-m", "energyhub", "demo", "--state-dir", state]
        for gateway in GATEWAYS:
            argv += ["--gateway", gateway]
        demo = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, **ports},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert demo.stdout is not None
            for line in demo.stdout:
                if line.startswith("Live page:"):
                    break
            asyncio.run(shoot(f"http://127.0.0.1:{ports['EHUB_API_PORT']}/", out))
        finally:
            demo.send_signal(signal.SIGINT)
            demo.wait(60)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
