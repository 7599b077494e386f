"""The API's one broker connection: shared by the live view and the overrides, a clear 503 while the broker is
away (or silent), back by itself when it returns; over TLS with --mqtt-ca-file. And the live view's handling of
acknowledgements, without a broker."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import yaml

from energyhub.api.acks import AckBook, SentOverride
from energyhub.api.live import LiveView
from energyhub.cli.services import free_port
from energyhub.domain.community import load_community
from energyhub.wire.messages import Setpoint, SetpointAck, SetpointStatus, decode, encode
from energyhub.wire.roles import PV_LIMIT_PCT
from energyhub.wire.topics import Topics
from tests.api.test_api import TOKEN, api_settings, publish_meter, serving, wait_json
from tests.control.test_control_loop import community_doc
from tests.mqtt_helpers import can_log_in, link_as

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOST = "127.0.0.1"


class Relay:
    """A TCP relay on loopback in front of the broker, which a test can cut, freeze and restore: the broker away,
    a broker that takes packets and never answers, and the broker back, without touching the session's broker."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.accepted = 0
        self.frozen = False
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.frozen = False
        self._server = await asyncio.start_server(self._serve, HOST, self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        self._transports |= {writer.transport, up_writer.transport}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if not self.frozen:  # frozen: taken and dropped, as by a broker that hangs
                    sink.write(data)
        sink.transport.abort()

    async def cut(self) -> None:
        """The broker goes away: no new connections, and the open ones are reset."""
        assert self._server is not None
        self._server.close()
        for transport in self._transports:
            transport.abort()
        self._transports.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def until(condition, what: str, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)  # poll interval of a condition wait
    assert condition(), what


@pytest.fixture
async def community(services, gateway, tmp_path):
    doc = community_doc(services.settings.site, [free_port(), free_port()], gateway_prefix="gw-api")
    doc["loops"][0]["connections"][0]["gateways"] = [{"id": gateway}]
    path = tmp_path / "community.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    if "gw-api-2" not in services.accounts.accounts():
        services.accounts.add_gateway("gw-api-2")
        services.accounts.reload_broker()
    await can_log_in(services, "gw-api-2")
    return path


async def test_one_connection_a_503_while_the_broker_is_away_and_back_by_itself(
    services, gateway, community, tmp_path
):
    relay = Relay(services.settings.mqtt_port)
    await relay.start()
    settings = api_settings(
        services, community, tmp_path / "api", mqtt_port=relay.port, publish_timeout_s=1.0
    )
    topics = Topics(site=services.settings.site)
    gw = await link_as(services, gateway)  # straight to the broker: only the API goes through the relay
    await gw.subscribe([(topics.setpoints_for(gateway), 1)])
    body = {"gateway": gateway, "device": "pv1", "name": PV_LIMIT_PCT, "value": 50, "ttl_s": 60}
    try:
        async with (
            serving(settings) as app,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=10) as client,
        ):
            link = app.state.link
            await asyncio.wait_for(link.ready.wait(), 10)

            async def override_reaches_the_gateway() -> None:
                sent = await client.post("/api/overrides", json=body, headers=AUTH)
                assert sent.status_code == 202, sent.text
                received = decode(Setpoint, (await asyncio.wait_for(gw.next_message(), 5)).payload)
                assert received.id == sent.json()["id"]

            async def live_view_reads(watts: float, seq: int) -> None:
                await publish_meter(services, "gw-api-2", "meter2", watts, seq)
                await wait_json(
                    client,
                    "/api/flows",
                    lambda b: (
                        next(f for f in b if f["node"] == "c-002")["flow_kw"] == pytest.approx(watts / 1000)
                    ),
                )

            # Readings in, overrides out: all over the one connection made at start.
            await live_view_reads(1_000.0, 0)
            for _ in range(3):
                await override_reaches_the_gateway()
            assert (relay.accepted, link.connections) == (1, 1)

            # A broker that takes the PUBLISH and never answers: 503 after publish_timeout_s, not a hang.
            relay.frozen = True
            started = time.monotonic()
            silent = await client.post("/api/overrides", json=body, headers=AUTH)
            took = time.monotonic() - started
            assert silent.status_code == 503, silent.text
            assert "did not acknowledge it within 1 s" in silent.json()["detail"]
            assert 0.9 <= took < 3.0, took
            # It may still arrive: kept, and its state says it is not answered.
            maybe = re.search(r"manual-[0-9a-f]{12}", silent.json()["detail"]).group()
            assert (await client.get(f"/api/overrides/{maybe}")).json()["state"] == "sent"

            # The broker away: 503 at once, with when to try again.
            await relay.cut()
            await until(lambda: not link.ready.is_set(), "the API saw the connection go")
            started = time.monotonic()
            away = await client.post("/api/overrides", json=body, headers=AUTH)
            assert away.status_code == 503, away.text
            assert time.monotonic() - started < 0.5
            assert "the setpoint was not sent: not connected to the broker" in away.json()["detail"]
            assert away.headers["retry-after"] == "2"
            # The reads that need no broker still serve.
            assert (await client.get("/api/topology")).status_code == 200

            # Back: the link reconnects by itself, subscribes again, and overrides go out.
            await relay.start()
            await asyncio.wait_for(link.ready.wait(), 15)
            await override_reaches_the_gateway()
            await live_view_reads(2_000.0, 1)
            assert (relay.accepted, link.connections) == (2, 2)
    finally:
        await gw.disconnect()
        with contextlib.suppress(AssertionError):
            await relay.cut()


async def test_the_api_reaches_the_broker_over_tls(services, gateway, community, tmp_path):
    assert services.settings.mqtt_tls_port is not None
    ca = services.accounts.directory / "certs" / "ca.crt"
    settings = api_settings(
        services, community, tmp_path / "api", mqtt_port=services.settings.mqtt_tls_port, mqtt_ca_file=ca
    )
    topics = Topics(site=services.settings.site)
    gw = await link_as(services, gateway)
    await gw.subscribe([(topics.setpoints_for(gateway), 1)])
    try:
        async with (
            serving(settings) as app,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=10) as client,
        ):
            await asyncio.wait_for(app.state.link.ready.wait(), 10)
            body = {"gateway": gateway, "device": "pv1", "name": PV_LIMIT_PCT, "value": 30}
            sent = await client.post("/api/overrides", json=body, headers=AUTH)
            assert sent.status_code == 202, sent.text
            received = decode(Setpoint, (await asyncio.wait_for(gw.next_message(), 5)).payload)
            assert received.id == sent.json()["id"]
            await gw.publish(
                topics.ack(gateway, "pv1"),
                encode(SetpointAck(id=received.id, status=SetpointStatus.APPLIED, ts=datetime.now(UTC))),
            )
            await wait_json(client, f"/api/overrides/{received.id}", lambda b: b["state"] == "applied")
    finally:
        await gw.disconnect()


# -- the live view's acknowledgements, without a broker ----------------------------------------------------------


@pytest.fixture
def live(tmp_path) -> LiveView:
    path = tmp_path / "community.yaml"
    path.write_text(
        yaml.safe_dump(community_doc("unit-site", [1502, 1503], gateway_prefix="gw-u"), sort_keys=False)
    )
    return LiveView(load_community(path), Topics(site="unit-site"))


def sent_override(setpoint_id: str) -> SentOverride:
    now = datetime.now(UTC)
    return SentOverride(
        setpoint_id, "gw-u-1", "pv1", PV_LIMIT_PCT, 40.0, now, now + timedelta(minutes=5), "t"
    )


def test_acks_are_counted_matched_to_their_override_and_retained_ones_ignored(live):
    topics = live.topics
    live.acks.expect(sent_override("manual-1"))
    rejected = SetpointAck(
        id="manual-1", status=SetpointStatus.REJECTED, ts=datetime.now(UTC), reason="too low"
    )
    # From the broker's store: not sent since the API started.
    live.take(topics.ack("gw-u-1", "pv1"), encode(rejected), retained=True)
    assert (live.retained_acks, live.acks.gateways) == (1, {})
    # Another device of the same gateway cannot answer for pv1; counted for the gateway all the same.
    live.take(topics.ack("gw-u-1", "meter1"), encode(rejected))
    assert live.acks.overrides["manual-1"].ack is None
    live.take(topics.ack("gw-u-1", "pv1"), encode(rejected))
    record = live.acks.overrides["manual-1"].ack
    assert record is not None
    assert (record.reason, record.name) == ("too low", PV_LIMIT_PCT)  # the name from the override
    assert live.acks.summary("gw-u-1")["rejected"] == 2
    # A rejection without its reason breaks the contract: ignored, not counted.
    live.take(topics.ack("gw-u-1", "pv1"), b'{"id": "x", "status": "rejected", "ts": "2026-06-01T12:00:00Z"}')
    assert live.acks.summary("gw-u-1") == {
        "applied": 0,
        "rejected": 2,
        "last_rejection": {
            "device": "pv1",
            "id": "manual-1",
            "ts": rejected.ts.isoformat(),
            "name": PV_LIMIT_PCT,
            "reason": "too low",
            "readback": None,
        },
    }
    assert live.received == 0  # acks do not make the live page redraw


def test_the_override_book_keeps_the_newest():
    book = AckBook(max_overrides=2)
    for n in range(3):
        book.expect(sent_override(f"manual-{n}"))
    assert list(book.overrides) == ["manual-1", "manual-2"]
    book.forget("manual-2")
    assert list(book.overrides) == ["manual-1"]
