"""The gateway's own MQTT 5 client against the real, locked-down Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import pytest

from energyhub.io.mqtt import Batch, MqttLink, MqttLinkError, Will
from energyhub.wire.topics import Topics
from tests.mqtt_helpers import (
    PrivateBroker,
    barrier,
    link_as,
    mosquitto_version,
    mqtt_client,
    next_message,
    private_broker,
    receive,
    until,
)


async def test_batch_is_acknowledged_and_arrives_in_order(services, gateway):
    topics = Topics(site=services.settings.site)
    topic = topics.measurement(gateway, "m1")
    async with mqtt_client(services, "ehub-ingest") as observer:
        await observer.subscribe(topic, qos=1)
        link = await link_as(services, gateway)
        # More than the broker's Receive Maximum (100, from max_inflight_messages): the link keeps at most that
        # many in flight and sends the rest as PUBACKs come back; sending them all at once is a protocol error.
        assert link.receive_maximum == 100
        payloads = [f"message {i} ünïcode".encode() for i in range(300)]
        batch = link.publish_batch([(topic, p) for p in payloads])
        assert len(link._inflight) == 100
        await asyncio.wait_for(link.wait(batch.done), 10)
        assert batch.refused == []
        assert not link.closed.done()
        received = [bytes((await next_message(observer)).payload) for _ in payloads]
        assert received == payloads
        await link.disconnect()


async def test_a_topic_outside_the_gateways_own_is_refused_with_the_reason(services, gateway):
    topics = Topics(site=services.settings.site)
    link = await link_as(services, gateway)
    batch = link.publish_batch(
        [(topics.measurement(gateway, "m1"), b"ok"), (topics.measurement("gw-someone-else", "m1"), b"forged")]
    )
    await asyncio.wait_for(link.wait(batch.done), 10)
    assert batch.refused == [(1, 0x87)]  # not authorized; the first one went through
    with pytest.raises(MqttLinkError, match=r"refused a message on .*reason 0x87"):
        await link.publish(topics.setpoint(gateway, "m1"), b"a gateway may not command itself")
    await link.disconnect()


async def test_wrong_password_is_a_clear_refusal(services, gateway):
    with pytest.raises(
        MqttLinkError, match=r"refused the connection: (bad user name or password|not authorized)"
    ):
        await MqttLink.connect(
            services.settings.host,
            services.settings.mqtt_port,
            client_id="x",
            username=gateway,
            password="wrong",
        )


async def test_nothing_listening_is_a_clear_error(services):
    from energyhub.cli.services import free_port

    port = free_port()
    with pytest.raises(MqttLinkError, match=f"cannot connect to the broker at 127.0.0.1:{port}"):
        await MqttLink.connect("127.0.0.1", port, client_id="x")


async def test_subscriptions_deliver_and_last_will_fires_on_abort(services, gateway):
    topics = Topics(site=services.settings.site)
    state = topics.state(gateway)
    async with (
        mqtt_client(services, "ehub-control") as control,
        mqtt_client(services, "ehub-ingest") as ingest,
    ):
        await ingest.subscribe(state, qos=1)
        link = await link_as(services, gateway, will=Will(state, b'{"online": false}', retain=False))
        granted = await link.subscribe([(topics.setpoints_for(gateway), 1)])
        assert granted == [1]
        await control.publish(topics.setpoint(gateway, "bat"), b"command", qos=1)
        message = await asyncio.wait_for(link.next_message(), 5)
        assert (message.topic, message.payload) == (topics.setpoint(gateway, "bat"), b"command")
        link.abort()  # no DISCONNECT: the broker must publish the will
        will = await next_message(ingest)
        assert bytes(will.payload) == b'{"online": false}'
        with pytest.raises(MqttLinkError):
            await link.next_message()


async def test_idle_link_stays_up_on_keepalive(services, gateway):
    topics = Topics(site=services.settings.site)
    link = await link_as(services, gateway, keepalive_s=5)
    # The broker drops a client silent for 1.5 keepalives; PINGREQs keep this one up.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(link.closed), 9)
    await link.publish(topics.measurement(gateway, "m1"), b"still here")
    await link.disconnect()


async def test_garbage_from_the_server_ends_the_link_with_an_error():
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"\x20\xff\xff\xff\xff\x01")  # CONNACK with a five-byte length: malformed
        await writer.drain()
        await reader.read(100)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(MqttLinkError, match="malformed"):
            await MqttLink.connect("127.0.0.1", port, client_id="x", timeout_s=5)


# -- protocol cases, on a broker of this module's own -------------------------------------------------------------
# The same cases for paho-mqtt are in test_mqtt_paho.py; docs/mqtt.md sets the two side by side.
NOT_AUTHORIZED = 0x87


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """Floods and sessions stay off the session's broker, whose other tests' sessions would queue them."""
    with private_broker(tmp_path_factory.mktemp("mqtt-link-broker")) as running:
        yield running


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ingest_barrier(broker: PrivateBroker) -> str:
    """A filter the ingest account may read and no one publishes on."""
    return f"{broker.topics.base}/control/{fresh('barrier')}"


async def publish_all(link: MqttLink, messages: list[tuple[str, bytes]]) -> None:
    batch = link.publish_batch(messages)
    await asyncio.wait_for(link.wait(batch.done), 30)
    assert batch.refused == []


async def test_a_persistent_session_keeps_what_came_while_away_and_what_was_not_acknowledged(broker):
    topic = broker.topics.measurement("gw-a", fresh("session"))
    ingest_id = fresh("ehub-ingest")
    session = {"client_id": ingest_id, "session_expiry_s": 600, "manual_ack": True}
    first = await broker.link("ehub-ingest", **session)
    assert not first.session_present
    assert await first.subscribe([(topic, 1)]) == [1]
    gateway = await broker.link("gw-a")
    before = [f"before {i}".encode() for i in range(5)]
    await publish_all(gateway, [(topic, p) for p in before])
    got = await receive(first, 5)
    assert [m.payload for m in got] == before
    first.ack(got[:2])  # stored; the other three are not when the ingest goes away
    await barrier(first, ingest_barrier(broker))
    await first.disconnect()

    away = [f"while away {i}".encode() for i in range(20)]
    await publish_all(gateway, [(topic, p) for p in away])
    back = await broker.link("ehub-ingest", **session)  # no SUBSCRIBE: the session still has it
    assert back.session_present
    await barrier(back, ingest_barrier(broker))
    again = back.take(100)
    # The three unacknowledged ones first, marked as sent before, then what was queued, in order; nothing more.
    assert [m.payload for m in again] == before[2:] + away
    assert [m.duplicate for m in again] == [True] * 3 + [False] * 20
    back.ack(again)
    await barrier(back, ingest_barrier(broker))
    await back.disconnect()

    # Everything acknowledged: a resumed session brings nothing back.
    resumed = await broker.link("ehub-ingest", **session)
    assert resumed.session_present
    await barrier(resumed, ingest_barrier(broker))
    assert resumed.take(100) == []
    await resumed.disconnect()
    # Without a session expiry the link starts clean: the broker drops the session.
    clean = await broker.link("ehub-ingest", client_id=ingest_id)
    assert not clean.session_present
    await clean.disconnect()
    await gateway.disconnect()


@pytest.mark.parametrize("receive_maximum", [10, 15_000])
async def test_the_broker_sends_at_most_receive_maximum_unacknowledged(broker, receive_maximum):
    """15,000 is the ingest's: above the broker's own in-flight setting (100), so the client's value governs."""
    topic = broker.topics.measurement("gw-a", fresh("window"))
    reader = await broker.link("ehub-ingest", receive_maximum=receive_maximum, manual_ack=True)
    assert await reader.subscribe([(topic, 1)]) == [1]
    gateway = await broker.link("gw-a")
    queued = 25
    payloads = [f"{i}".encode() for i in range(receive_maximum + queued)]
    # Every PUBACK in: the broker has routed each message, in flight to the reader or queued behind its window.
    await publish_all(gateway, [(topic, p) for p in payloads])
    await barrier(reader, ingest_barrier(broker))
    window = reader.take(len(payloads))
    assert len(window) == receive_maximum
    reader.ack(window[:5])
    await barrier(reader, ingest_barrier(broker))
    freed = reader.take(len(payloads))
    if mosquitto_version() >= (2, 0, 13):
        assert len(freed) == 5  # one more for each acknowledgement, no more
    else:
        # Mosquitto before 2.0.13 (its "various fixes around inflight quota management", issue #2306): a PUBACK
        # for the oldest message in flight releases up to Receive Maximum queued ones, so after the first
        # acknowledgements the window no longer holds. Debian's and Ubuntu's 2.0.11 does this; the
        # eclipse-mosquitto image in docker-compose.yml (2.0.20) does not.
        assert len(freed) == min(queued, 5 * receive_maximum)
    reader.ack(window[5:] + freed)
    rest = await receive(reader, len(payloads) - len(window) - len(freed))
    await barrier(reader, ingest_barrier(broker))
    assert reader.take(len(payloads)) == []
    assert [m.payload for m in window + freed + rest] == payloads
    reader.ack(rest)
    await reader.disconnect()
    await gateway.disconnect()


async def test_packet_ids_wrap_past_65535_and_every_acknowledgement_finds_its_message(broker):
    """70,000 QoS 1 messages and a SUBSCRIBE on one connection: the ids wrap while a window of 100 is in flight
    across 65535 -> 1, and each PUBACK (a refusal at a known place every 1,000 messages) and the SUBACK resolve
    exactly what they answer."""
    topic = broker.topics.measurement("gw-a", fresh("wrap"))
    forbidden = broker.topics.measurement("gw-b", "not-gw-a")
    reader = await broker.link("ehub-ingest")
    assert await reader.subscribe([(topic, 1)]) == [1]
    gateway = await broker.link("gw-a")

    def batches(start: int, stop: int) -> list[tuple[Batch, list[int]]]:
        out = []
        for first in range(start, stop, 7):
            seqs = list(range(first, min(first + 7, stop)))
            messages = [(forbidden if s % 1000 == 999 else topic, str(s).encode()) for s in seqs]
            out.append((gateway.publish_batch(messages), seqs))
        return out

    sent = batches(0, 65_450)  # all queued at once; ids are given as the window lets them out
    await asyncio.wait_for(gateway.wait(sent[-1][0].done), 60)
    later = batches(65_450, 70_000)
    assert set(gateway._inflight) == {*range(65_451, 65_536), *range(1, 16)}  # the window spans the wrap
    granted = await asyncio.wait_for(gateway.subscribe([(broker.topics.setpoints_for("gw-a"), 1)]), 30)
    assert granted == [1]
    sent += later
    await asyncio.wait_for(gateway.wait(later[-1][0].done), 60)
    for batch, seqs in sent:
        assert batch.done.done()
        assert batch.refused == [(i, NOT_AUTHORIZED) for i, s in enumerate(seqs) if s % 1000 == 999]
    assert not gateway.closed.done()
    allowed = [str(s).encode() for s in range(70_000) if s % 1000 != 999]
    assert [m.payload for m in await receive(reader, len(allowed), timeout_s=60)] == allowed
    await gateway.disconnect()
    await reader.disconnect()


async def test_more_than_65535_messages_can_wait_unacknowledged_in_one_batch(broker):
    """Ids are given when a message goes out (at most Receive Maximum in flight), not when it is queued."""
    topic = broker.topics.measurement("gw-a", fresh("many"))
    reader = await broker.link("ehub-ingest")
    assert await reader.subscribe([(topic, 1)]) == [1]
    gateway = await broker.link("gw-a")
    payloads = [str(i).encode() for i in range(70_000)]
    await publish_all(gateway, [(topic, p) for p in payloads])
    assert [m.payload for m in await receive(reader, len(payloads), timeout_s=60)] == payloads
    await gateway.disconnect()
    await reader.disconnect()


@pytest.fixture
def killable(tmp_path) -> Iterator[PrivateBroker]:
    with private_broker(tmp_path) as running:
        yield running


@pytest.mark.timeout(90)
async def test_a_broker_killed_with_messages_in_flight(killable):
    """SIGKILL while QoS 1 messages are unacknowledged both ways, then a restart on the same port from the
    broker's last autosave. The publisher knows what it has no PUBACK for (its wait raises, the batch is not
    done) and sends it again; what the ingest had not acknowledged comes again; what it had is not resent."""
    broker = killable
    topic = broker.topics.measurement("gw-a", "meter")
    session = {"client_id": "ehub-ingest-durable", "session_expiry_s": 3600, "manual_ack": True}
    ingest = await broker.link("ehub-ingest", **session)
    assert await ingest.subscribe([(topic, 1)]) == [1]
    gateway = await broker.link("gw-a")

    stored = [f"A{i}".encode() for i in range(100)]
    await publish_all(gateway, [(topic, p) for p in stored])
    got = await receive(ingest, 100)
    ingest.ack(got[:50])  # A0-A49 stored; A50-A99 are in flight to the ingest at the kill
    await barrier(ingest, ingest_barrier(broker))
    acked_at = broker.saved_ns()
    await until(lambda: broker.saved_ns() > acked_at, "the broker's next autosave", timeout_s=15)
    saved = broker.saved_ns()

    # Acknowledged by the broker after its last save: in its memory only.
    unsaved = [f"C{i}".encode() for i in range(50)]
    await publish_all(gateway, [(topic, p) for p in unsaved])
    await receive(ingest, 50)
    # 5,000 more: the first 100 (the broker's Receive Maximum) written, the rest queued in the link.
    in_flight = [f"B{i}".encode() for i in range(5000)]
    batch = gateway.publish_batch([(topic, p) for p in in_flight])
    assert len(gateway._inflight) == 100
    broker.kill_and_restart()  # before this task reads anything: PUBACKs sent before the kill wait in the socket

    with pytest.raises(MqttLinkError):
        await asyncio.wait_for(gateway.wait(batch.done), 10)
    assert not batch.done.done()
    # The 4,900 never written and any of the 100 the broker did not acknowledge before it died: unconfirmed,
    # so the batch is, and its sender sends it again.
    assert 4900 <= batch.pending <= 5000
    with pytest.raises(MqttLinkError):
        await asyncio.wait_for(ingest.wait(ingest.closed), 10)
    no_save_since = broker.saved_ns() == saved

    ingest = await broker.link("ehub-ingest", **session)
    assert ingest.session_present  # from the database: the broker was killed, not stopped
    await barrier(ingest, ingest_barrier(broker))
    back = ingest.take(10_000)
    payloads = [m.payload for m in back]
    assert payloads[:50] == stored[50:]  # unacknowledged at the kill: sent again, marked as such
    assert all(m.duplicate for m in back[:50])
    assert not set(stored[:50]) & set(payloads)  # acknowledged before the save: not sent again
    assert set(payloads[50:]) <= set(unsaved) | set(in_flight)
    if no_save_since:  # as good as always: the kill comes well within the 5 s after a save
        # The broker came back exactly as it saved itself: the C messages (and any B it acknowledged before it
        # died), PUBACKed but never written to disk, are gone. Why the agent keeps every measurement until the
        # ingest confirms it stored it, not merely until the broker acknowledged it.
        assert payloads[50:] == []

    # The publisher sends again what it has no PUBACK for; the ingest gets all of it (some may come twice).
    gateway = await broker.link("gw-a")
    await publish_all(gateway, [(topic, p) for p in in_flight])
    seen = set(payloads)
    deadline = asyncio.get_running_loop().time() + 30
    while not set(in_flight) <= seen:
        assert asyncio.get_running_loop().time() < deadline, "the publisher's resent messages"
        await ingest.wait_messages(1.0)
        more = ingest.take(10_000)
        seen.update(m.payload for m in more)
        ingest.ack(more)
    ingest.ack(back)
    await gateway.disconnect()
    await ingest.disconnect()


async def test_a_link_that_only_sends_qos0_stays_up(broker):
    """Nothing comes back for QoS 0: the link must still ask (PINGREQ) rather than take the silence for a dead
    broker. A keepalive of 2 s: declared dead after 3 s of silence; this publishes for 5 s."""
    topic = broker.topics.measurement("gw-a", fresh("qos0"))
    link = await broker.link("gw-a", keepalive_s=2)
    loop = asyncio.get_running_loop()
    until_t = loop.time() + 5
    while loop.time() < until_t:
        link.publish_batch([(topic, b"fire and forget")], qos=0)
        # Paces the publisher, and fails at once if the link ends.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(link.closed), 0.1)
    assert not link.closed.done()
    await asyncio.wait_for(link.publish(topic, b"still here"), 5)
    await link.disconnect()


async def test_keepalive_zero_means_no_keepalive(broker):
    """MQTT's 0 switches the keepalive off: no pings, and silence is no reason to drop the link."""
    link = await broker.link("gw-a", keepalive_s=0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(link.closed), 1.5)
    await asyncio.wait_for(link.publish(broker.topics.measurement("gw-a", fresh("k0")), b"up"), 5)
    await link.disconnect()
