"""The HTTP API and the live page, against the real broker, in headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from fastapi import FastAPI

from energyhub.api.app import ApiSettings, create_app
from energyhub.cli.services import free_port
from energyhub.io.influx import InfluxClient
from energyhub.io.line_protocol import encode_point
from energyhub.wire.messages import GatewayState, Measurement, Quality, Setpoint, decode, encode
from energyhub.wire.roles import POWER_W, PV_LIMIT_PCT
from energyhub.wire.topics import Topics
from tests.control.test_control_loop import community_doc
from tests.mqtt_helpers import can_log_in, link_as

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
TOKEN = "test-token-0123456789"


@pytest.fixture
def api_community(services, tmp_path) -> Path:
    """A two-company community whose gateways the test can publish as (accounts made and usable)."""
    site = services.settings.site
    doc = community_doc(site, [free_port(), free_port()], gateway_prefix="gw-api")
    # c-001 has a non-firm right the DSO restricts day ahead: what the upload endpoint is for.
    doc["loops"][0]["connections"][0]["limits"]["day_ahead"] = {"import_kw": 100, "export_kw": 0}
    path = tmp_path / "community.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    known = services.accounts.accounts()
    for n in (1, 2):
        if f"gw-api-{n}" not in known:
            services.accounts.add_gateway(f"gw-api-{n}")
    services.accounts.reload_broker()
    return path


def api_settings(services, community: Path, state_dir: Path, **extra) -> ApiSettings:
    given = {
        "community": community,
        "site": services.settings.site,
        "port": free_port(),
        "token": TOKEN,
        "mqtt_port": services.settings.mqtt_port,
        "mqtt_credentials_file": services.accounts.credentials_path("ehub-api"),
        "influx_url": services.settings.influx_url,
        "influx_db": services.settings.influx_db,
        "state_dir": state_dir,
        "push_interval_s": 0.1,
    }
    return ApiSettings(**{**given, **extra})


@asynccontextmanager
async def serving(settings: ApiSettings) -> AsyncIterator[FastAPI]:
    """The API in a real uvicorn server on 127.0.0.1, as `energyhub api` runs it; stopped on leaving."""
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.02)  # poll interval of a condition wait
        yield app
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def api(services, api_community, tmp_path):
    """The API on a free port, for the two-company community of ``api_community``."""
    for n in (1, 2):
        await can_log_in(services, f"gw-api-{n}")
    settings = api_settings(services, api_community, tmp_path / "api")
    async with serving(settings):
        yield settings


async def publish_meter(
    services, gateway: str, device: str, watts: float, seq: int, *, ts: datetime | None = None, retain=False
) -> None:
    topics = Topics(site=services.settings.site)
    link = await link_as(services, gateway)
    m = Measurement(
        ts=ts or datetime.now(UTC), session=1, seq=seq, quality=Quality.GOOD, values={POWER_W: watts}
    )
    batch = link.publish_batch([(topics.measurement(gateway, device), encode(m))], retain=retain)
    await link.wait(batch.done)
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
            "name": PV_LIMIT_PCT,
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
        assert accepted.json()["state"] == "sent"
        received = decode(Setpoint, (await asyncio.wait_for(gateway.next_message(), 5)).payload)
        assert (received.id, received.name, received.value) == (
            accepted.json()["id"],
            PV_LIMIT_PCT,
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
    from playwright.async_api import TimeoutError as PlaywrightTimeout
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{api.port}/"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(url)
        await page.wait_for_selector('[data-level="loop"]')
        assert await page.locator('[data-level="loop"]').count() == 1  # every loop of the community
        assert await page.locator('[data-level="connection"]').count() == 2
        # Companies by name, their connection id beside it; a node without a reading shows no bar at all.
        assert await page.locator('[data-node="c-002"] .name').text_content() == "Loop test 2"
        assert await page.locator('[data-node="c-002"] .nid').text_content() == "c-002"
        width = await page.locator('[data-node="c-002"] .bar:not(.isp-bar) span').evaluate(
            "s => s.getBoundingClientRect().width"
        )
        assert width == 0
        hub = page.locator('[data-node="hub"] .flow')
        # The API may still be subscribing (a loaded machine, seen in CI): a reading published before that is not
        # for it, so the gateway publishes again, as a real one does every poll, until the page shows it.
        for seq in range(30):
            await publish_meter(services, "gw-api-1", "meter1", -2_000.0, seq)
            try:
                await page.wait_for_function(
                    "() => document.querySelector('[data-node=\"c-001\"] .flow').textContent.includes('2.0')",
                    timeout=1_000,
                )
                break
            except PlaywrightTimeout:
                continue
        else:
            raise AssertionError("the live page never showed c-001's reading")
        # What the company has behind its meter: its PV, curtailed, as its inverter reports it.
        link = await link_as(services, "gw-api-1")
        pv = Measurement(
            ts=datetime.now(UTC),
            session=1,
            seq=100,
            quality=Quality.GOOD,
            values={POWER_W: -30_000.0, "power_limit_pct": 30.0, "power_limit_enabled": 1.0},
        )
        await link.wait(
            link.publish_batch(
                [(Topics(site=services.settings.site).measurement("gw-api-1", "pv1"), encode(pv))]
            ).done
        )
        await link.disconnect()
        await page.wait_for_function(
            "() => document.querySelector('[data-node=\"c-001\"] .parts').textContent === 'PV 30.0 kW (curtailed to 30 %)'",
            timeout=5_000,
        )
        # The quarter hour so far from c-001's meter counters: one reading before its start, two after, 1.5 kWh
        # counted since, against 250 kW (firm 150 and the unannounced day-ahead 100) for 15 minutes.
        link = await link_as(services, "gw-api-1")
        topic = Topics(site=services.settings.site).measurement("gw-api-1", "meter1")
        now = datetime.now(UTC)
        isp = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
        times = (
            isp - timedelta(seconds=1),
            isp + (now - isp) / 2,
            now,
        )  # the last one now: nothing to add since
        readings = [
            Measurement(
                ts=ts,
                session=2,
                seq=i,
                quality=Quality.GOOD,
                values={POWER_W: -2_000.0, "energy_import_wh": counter, "energy_export_wh": 0.0},
            )
            for i, (ts, counter) in enumerate(zip(times, (500_000.0, 500_000.0, 501_500.0), strict=True))
        ]
        await link.wait(link.publish_batch([(topic, encode(m)) for m in readings]).done)
        await link.disconnect()
        try:
            await page.wait_for_function(
                "() => document.querySelector('[data-node=\"c-001\"] .isp').textContent.includes(' 1.5 of 62.5 kWh')",
                timeout=5_000,
            )
        except PlaywrightTimeout:
            shown = await page.locator('[data-node="c-001"] .isp').text_content()
            raise AssertionError(f"c-001's quarter hour shows {shown!r}") from None
        # Why PV is curtailed: control's last decision as it recorded it, the binding limit named.
        async with InfluxClient(
            url=services.settings.influx_url, database=services.settings.influx_db
        ) as influx:
            await influx.write(
                encode_point(
                    "control_cycle",
                    {"site": services.settings.site, "policy": "live-page-test"},  # no other test counts it
                    {"binding": "hub:export", "curtailed_kw": 40.0, "infeasible": 0},
                    time.time_ns(),
                )
            )
        await page.wait_for_function(
            "() => document.getElementById('control').textContent === "
            "'control: binding: hub export · PV curtailed 40.0 kW'",
            timeout=10_000,
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
    files = [
        REPO / "docker-compose.yml",
        REPO / "src" / "energyhub" / "edge" / "deploy" / "docker-compose.edge.yml",
    ]
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
    async with serving(settings):
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


# -- the request guard: the token and the body's size are checked before a byte of the body is read -------------

BIG = 100 * 1024 * 1024  # the 100 MB body of issue 14
LIMIT = 1024 * 1024  # max_body_bytes by default


class Upload:
    """A JSON body of ``length`` bytes (about ``size``) in 64 KiB parts."""

    CHUNK = b"x" * 65536
    HEAD, TAIL = b'{"date": "2026-03-29", "import_kw": [100], "pad": "', b'"}'

    def __init__(self, size: int) -> None:
        self.chunks = max(0, (size - len(self.HEAD) - len(self.TAIL)) // len(self.CHUNK))
        self.length = len(self.HEAD) + self.chunks * len(self.CHUNK) + len(self.TAIL)

    def parts(self):
        yield self.HEAD
        for _ in range(self.chunks):
            yield self.CHUNK
        yield self.TAIL


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes the client had sent when the answer came
    took_s: float

    def json(self):
        return json.loads(self.body)


def put_while_sending(
    port: int, path: str, headers: dict[str, str], upload: Upload, *, chunked: bool
) -> Answer:
    """PUT ``upload`` on a socket of its own, reading while it sends and stopping once answered, as curl does
    (httpx reads only once it has sent it all). Blocking: run it in a thread, beside the server."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(upload.length)}
    head = [f"PUT {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    head += [f"{k}: {v}" for k, v in {**headers, **framing}.items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    answered, sent = threading.Event(), [0]

    def send_body() -> None:
        with contextlib.suppress(OSError):  # reset by the server: what a refusal may do
            for part in upload.parts():
                if answered.is_set():
                    return
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                sent[0] += len(part)
            if chunked:
                sock.sendall(b"0\r\n\r\n")

    started = time.monotonic()
    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            assert more, f"the server closed without an answer after {sent[0]} bytes"
            data += more
        head_bytes, body = data.split(b"\r\n\r\n", 1)
        status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
        answer_headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
        while len(body) < int(answer_headers["content-length"]):
            more = sock.recv(65536)
            assert more, "the answer was cut short"
            body += more
        answer = Answer(
            int(status_line.split()[1]), answer_headers, body, sent[0], time.monotonic() - started
        )
    finally:
        answered.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sender.join(timeout=30)
        sock.close()
    return answer


def peak_rss_reset() -> None:
    """Start this process's peak resident memory (VmHWM) afresh (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


@pytest.mark.parametrize(
    ("authorization", "chunked", "status"),
    [
        (None, False, 401),
        ("Bearer wrong-token", True, 401),
        (TOKEN, False, 401),  # the token without its scheme
        (f"Bearer {TOKEN}", False, 413),  # Content-Length over the limit
        (f"Bearer {TOKEN}", True, 413),  # chunked, no Content-Length: counted as it arrives
    ],
    ids=["no-token", "wrong-token-chunked", "no-scheme", "too-large", "too-large-chunked"],
)
async def test_a_100_mb_body_is_refused_before_it_is_read(api, authorization, chunked, status):
    upload = Upload(BIG)
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    # Client and server share this process: its peak memory shows whether the server held the body.
    before = rss_kib("VmRSS")
    peak_rss_reset()
    r = await asyncio.to_thread(
        put_while_sending, api.port, "/api/limits/c-001/day-ahead", headers, upload, chunked=chunked
    )
    grew_mib = (rss_kib("VmHWM") - before) / 1024
    print(
        f"{status}: answered after {r.sent / 2**20:.1f} MiB of {upload.length / 2**20:.0f} MiB sent, "
        f"in {r.took_s:.3f} s; peak memory +{grew_mib:.0f} MiB"
    )
    assert r.status == status, r.body
    # The server answered long before the client was done, and never held the body.
    assert r.sent < upload.length // 10
    assert grew_mib < 40
    assert r.headers["connection"] == "close"
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in r.json()["detail"]
    else:
        assert r.json()["limit_bytes"] == LIMIT
        assert f"{LIMIT} bytes" in r.json()["detail"]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", timeout=10) as client:
        assert (await client.get("/api/topology")).status_code == 200  # and it keeps serving


async def test_a_body_just_over_the_limit_is_refused_and_one_at_the_limit_is_read(api):
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    profile = json.dumps({"date": "2026-03-29", "import_kw": [100] * 92}).encode()
    at_limit = profile[:-1] + b" " * (LIMIT - len(profile)) + b"}"  # JSON allows the padding
    assert len(at_limit) == LIMIT
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", timeout=10) as client:

        async def in_parts():  # no Content-Length: sent chunked
            yield at_limit[:1000]
            yield at_limit[1000:]

        for content in (at_limit, in_parts()):
            r = await client.put("/api/limits/c-001/day-ahead", content=content, headers=auth)
            assert r.status_code == 201, r.text

    class Over(Upload):
        HEAD, TAIL = at_limit[:-1], b" }"

    over = Over(0)
    assert over.length == LIMIT + 1
    for chunked in (False, True):
        r = await asyncio.to_thread(
            put_while_sending, api.port, "/api/limits/c-001/day-ahead", auth, over, chunked=chunked
        )
        assert r.status == 413, r.body


@pytest.mark.parametrize(
    ("authorization", "status", "named_invalid"),
    [
        (None, 401, False),
        (TOKEN, 401, False),  # no scheme: what the API took before issue 14
        (f"Basic {TOKEN}", 401, False),
        (f"Bearer{TOKEN}", 401, False),
        ("Bearer", 401, False),
        (f"Bearer {TOKEN} extra", 401, False),
        (f"Bearer {TOKEN}x", 401, True),  # RFC 6750: a bearer token that is wrong is named invalid_token
        ("Bearer x", 401, True),
        (f"Bearer {TOKEN}", 201, False),
        (f"bearer {TOKEN}", 201, False),  # the scheme is case-insensitive (RFC 7235)
        (f"BEARER  {TOKEN}", 201, False),
    ],
)
async def test_only_a_bearer_token_opens_the_writes(api, authorization, status, named_invalid):
    headers = {} if authorization is None else {"Authorization": authorization}
    body = {"date": "2026-03-29", "import_kw": [100] * 92}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", timeout=10) as client:
        r = await client.put("/api/limits/c-001/day-ahead", json=body, headers=headers)
        assert r.status_code == status, r.text
        if status == 401:
            challenge = r.headers["www-authenticate"]
            assert challenge.startswith("Bearer")
            assert ('error="invalid_token"' in challenge) is named_invalid
            assert "token" in r.json()["detail"]
            # The refused body was read and dropped: the connection closed cleanly, the next request works.
            assert (await client.get("/api/topology")).status_code == 200


async def test_writes_are_off_without_a_token_before_the_body_is_read(services, api_community, tmp_path):
    settings = api_settings(services, api_community, tmp_path / "api", token=None)
    upload = Upload(BIG)
    async with serving(settings):
        r = await asyncio.to_thread(
            put_while_sending,
            settings.port,
            "/api/limits/c-001/day-ahead",
            {"Authorization": f"Bearer {TOKEN}"},
            upload,
            chunked=False,
        )
    assert r.status == 403
    assert "EHUB_API_TOKEN" in r.json()["detail"]
    assert r.sent < upload.length // 10


# -- the live view: a retained or future-dated reading is not a reading ------------------------------------------


async def test_the_live_view_ignores_retained_and_future_readings(services, api_community, tmp_path):
    for n in (1, 2):
        await can_log_in(services, f"gw-api-{n}")
    topics = Topics(site=services.settings.site)
    # A gateway's bug: a retained reading, which the broker hands every new subscriber (dated now, so only its
    # retain flag gives it away).
    await publish_meter(services, "gw-api-1", "meter1", -9_900_000.0, 0, retain=True)
    settings = api_settings(services, api_community, tmp_path / "api")
    try:
        async with (
            serving(settings) as app,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=10) as client,
        ):

            def flow(body, node):
                return next(f for f in body if f["node"] == node)["flow_kw"]

            # The live view has subscribed (and had the retained reading) once gw-api-2's shows: sent until then,
            # as the live view subscribes in its own time.
            async with asyncio.timeout(10):
                while flow(flows := (await client.get("/api/flows")).json(), "c-002") is None:
                    await publish_meter(services, "gw-api-2", "meter2", 8_000.0, 0)
                    await asyncio.sleep(0.2)  # poll interval of a condition wait
            assert flow(flows, "c-001") is None, flows
            assert flow(flows, "hub") == pytest.approx(8.0)
            # Dated 2099, live: not a reading either; nor a retained one that comes live (retain as published).
            await publish_meter(
                services, "gw-api-1", "meter1", -9_900_000.0, 1, ts=datetime(2099, 1, 1, tzinfo=UTC)
            )
            await publish_meter(services, "gw-api-1", "meter1", -9_800_000.0, 1, retain=True)
            await publish_meter(services, "gw-api-2", "meter2", 9_000.0, 1)
            flows = await wait_json(client, "/api/flows", lambda b: flow(b, "c-002") == pytest.approx(9.0))
            assert flow(flows, "c-001") is None, flows
            # A good reading of the same meter, a few seconds ahead (clocks differ that much), counts.
            ahead = datetime.now(UTC) + timedelta(seconds=5)
            await publish_meter(services, "gw-api-1", "meter1", -5_000.0, 2, ts=ahead)
            flows = await wait_json(client, "/api/flows", lambda b: flow(b, "c-001") is not None)
            assert flow(flows, "c-001") == pytest.approx(-5.0)
            assert flow(flows, "hub") == pytest.approx(4.0)
            live = app.state.live
            assert (live.gate.retained, live.gate.misdated) == (2, 1)
    finally:
        link = await link_as(services, "gw-api-1")  # clear the retained reading for the tests after this one
        await link.wait(
            link.publish_batch([(topics.measurement("gw-api-1", "meter1"), b"")], retain=True).done
        )
        await link.disconnect()


@pytest.mark.parametrize(
    ("speed", "ahead_s", "retained", "taken"),
    [
        (1, 0, False, True),
        (1, 0, True, False),
        (1, 30, False, True),
        (1, 120, False, False),
        # At 60x a real minute is an hour of data: the tolerance is in real seconds.
        (60, 30 * 60, False, True),
        (60, 2 * 3600, False, False),
        (1, 75 * 365 * 86400, False, False),
    ],
)
def test_live_view_take_refuses_retained_and_future(speed, ahead_s, retained, taken, tmp_path):
    from energyhub.api.live import LiveView
    from energyhub.domain.clock import Clock
    from energyhub.domain.community import load_community

    path = tmp_path / "community.yaml"
    path.write_text(
        yaml.safe_dump(community_doc("unit-site", [1502, 1503], gateway_prefix="gw-u"), sort_keys=False)
    )
    clock = Clock.simulated(datetime(2026, 6, 1, 10, tzinfo=UTC), speed)
    topics = Topics(site="unit-site")
    live = LiveView(load_community(path), topics, clock=clock)
    m = Measurement(
        ts=clock.now() + timedelta(seconds=ahead_s),
        session=1,
        seq=0,
        quality=Quality.GOOD,
        values={POWER_W: 1.0},
    )
    live.take(topics.measurement("gw-u-1", "meter1"), encode(m), retained=retained)
    assert (("gw-u-1", "meter1") in live.latest) is taken
    assert live.gate.retained == int(retained)
    assert live.gate.misdated == int(not taken and not retained)
