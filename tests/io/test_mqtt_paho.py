"""The protocol cases of test_mqtt_link.py, asserting what paho-mqtt 2.x does: evidence for docs/mqtt.md.

paho is not used by any service; it is the tests' independent client (the attacks on the broker, here the
comparison). Each test mirrors one for ``MqttLink`` on a broker of this module's own, started by the project's code.
paho runs without its network thread: ``PahoClient`` serves the socket while a test waits on a condition.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from tests.mqtt_helpers import PahoClient, PrivateBroker, mosquitto_version, private_broker

NOT_AUTHORIZED = 0x87


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    with private_broker(tmp_path_factory.mktemp("paho-broker")) as running:
        yield running


@pytest.fixture
def clients() -> Iterator[list[PahoClient]]:
    """Clients a test made; closed after it (a test closes the ones whose goodbye it needs itself)."""
    made: list[PahoClient] = []
    yield made
    for client in made:
        if client.paho.is_connected():
            client.close()


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def barrier(client: PahoClient, broker: PrivateBroker) -> None:
    """A SUBSCRIBE round trip (see tests.mqtt_helpers.barrier): what the broker wrote before its SUBACK is in."""
    assert client.subscribe(f"{broker.topics.base}/control/{fresh('barrier')}").value == 1


def payloads_of(messages: list[mqtt.MQTTMessage]) -> list[bytes]:
    return [bytes(m.payload) for m in messages]


def test_paho_persistent_session_keeps_what_came_while_away_and_what_was_not_acknowledged(broker, clients):
    topic = broker.topics.measurement("gw-a", fresh("session"))
    ingest_id = fresh("ehub-ingest")

    def ingest(*, clean_start: bool) -> PahoClient:
        client = broker.paho("ehub-ingest", client_id=ingest_id, manual_ack=True)
        clients.append(client)
        assert not client.connect(broker.port, clean_start=clean_start, session_expiry_s=600).is_failure
        return client

    first = ingest(clean_start=True)
    assert not first.session_present
    assert first.subscribe(topic).value == 1
    gateway = broker.paho("gw-a")
    clients.append(gateway)
    gateway.connect(broker.port)
    before = [f"before {i}".encode() for i in range(5)]
    assert not any(rc.is_failure for rc in gateway.publish_many([(topic, p) for p in before]))
    first.wait_until(lambda: len(first.messages) == 5, "5 messages")
    first.ack(first.messages[:2])
    barrier(first, broker)
    first.close()

    away = [f"while away {i}".encode() for i in range(20)]
    assert not any(rc.is_failure for rc in gateway.publish_many([(topic, p) for p in away]))
    back = ingest(clean_start=False)
    assert back.session_present
    barrier(back, broker)
    assert payloads_of(back.messages) == before[2:] + away
    assert [m.dup for m in back.messages] == [True] * 3 + [False] * 20
    back.ack(back.messages)
    barrier(back, broker)
    back.close()

    resumed = ingest(clean_start=False)
    assert resumed.session_present
    barrier(resumed, broker)
    assert resumed.messages == []


@pytest.mark.parametrize("receive_maximum", [10, 15_000])
def test_paho_the_broker_sends_at_most_receive_maximum_unacknowledged(broker, clients, receive_maximum):
    topic = broker.topics.measurement("gw-a", fresh("window"))
    reader = broker.paho("ehub-ingest", manual_ack=True)
    clients.append(reader)
    reader.connect(broker.port, receive_maximum=receive_maximum)
    assert reader.subscribe(topic).value == 1
    gateway = broker.paho("gw-a")
    clients.append(gateway)
    gateway.connect(broker.port)
    queued = 25
    payloads = [f"{i}".encode() for i in range(receive_maximum + queued)]
    assert not any(rc.is_failure for rc in gateway.publish_many([(topic, p) for p in payloads]))
    barrier(reader, broker)
    assert len(reader.messages) == receive_maximum
    reader.ack(reader.messages[:5])
    barrier(reader, broker)
    freed = len(reader.messages) - receive_maximum
    if mosquitto_version() >= (2, 0, 13):
        assert freed == 5
    else:  # the broker's quota bug before 2.0.13: see test_mqtt_link.py
        assert freed == min(queued, 5 * receive_maximum)
    reader.ack(reader.messages[5:])
    reader.wait_until(lambda: len(reader.messages) == len(payloads), "the rest")
    reader.ack(reader.messages[receive_maximum + freed :])
    barrier(reader, broker)
    assert payloads_of(reader.messages) == payloads


def test_paho_does_not_take_the_brokers_receive_maximum(broker, clients):
    """The broker announces 100 in CONNACK; paho keeps its own max_inflight_messages (here 1,000) and sends that
    many unacknowledged. Mosquitto lets it pass at QoS 1 (it acknowledges each at once); a broker that enforces
    the limit would disconnect. MqttLink keeps to the announced value (test_batch_is_acknowledged_and_arrives...)."""
    gateway = broker.paho("gw-a", max_inflight=1000)
    clients.append(gateway)
    sent: list[str] = []
    gateway.paho.on_log = lambda _c, _u, _level, text: sent.append(text)
    gateway.connect(broker.port)
    assert gateway.connack_properties is not None
    assert gateway.connack_properties.ReceiveMaximum == 100
    assert gateway.paho.max_inflight_messages == 1000
    topic = broker.topics.measurement("gw-a", fresh("over"))
    for i in range(300):
        assert gateway.paho.publish(topic, str(i).encode(), qos=1).rc == mqtt.MQTT_ERR_SUCCESS
    # Nothing read yet (no network thread, not served): all 300 went out without a PUBACK.
    assert sum(t.startswith("Sending PUBLISH") for t in sent) == 300
    gateway.wait_until(lambda: len(gateway.pubacks) == 300, "300 PUBACKs")
    assert not any(rc.is_failure for rc in gateway.pubacks.values())


@pytest.mark.timeout(180)
def test_paho_packet_ids_wrap_past_65535_and_every_acknowledgement_finds_its_message(broker, clients):
    """70,000 messages and a SUBSCRIBE on one connection, 5,000 at a time: the ids wrap, each PUBACK's reason
    code comes back for the right message (a refusal every 1,000), the SUBACK for the SUBSCRIBE. The reader
    is subscribed and never read: with it the broker answers Success (0x00) only for a message it routed, and
    No matching subscribers (0x10) would show one gone elsewhere (paho reading 70,000 itself takes ~20 s)."""
    topic = broker.topics.measurement("gw-a", fresh("wrap"))
    forbidden = broker.topics.measurement("gw-b", "not-gw-a")
    reader = broker.paho("ehub-ingest")
    clients.append(reader)
    reader.connect(broker.port)
    assert reader.subscribe(topic).value == 1
    gateway = broker.paho("gw-a")
    clients.append(gateway)
    gateway.connect(broker.port)
    codes = []
    for start in range(0, 70_000, 5000):
        if start == 65_000:  # id 65,001; the chunk after it wraps
            assert gateway.subscribe(broker.topics.setpoints_for("gw-a")).value == 1
        chunk = [
            (forbidden if s % 1000 == 999 else topic, str(s).encode()) for s in range(start, start + 5000)
        ]
        codes += [rc.value for rc in gateway.publish_many(chunk)]
    assert codes == [NOT_AUTHORIZED if s % 1000 == 999 else 0 for s in range(70_000)]


@pytest.mark.timeout(180)
def test_paho_refuses_a_publish_whose_wrapped_id_is_still_unacknowledged(broker, clients):
    """70,000 published at once: paho numbers a message when it is queued, so the 65,536th would get the id of
    the first, still unacknowledged; paho refuses it (MQTT_ERR_QUEUE_SIZE, nothing sent) rather than confuse
    the two. The caller must check every publish's rc. (MqttLink numbers a message when it goes out: it takes
    70,000 at once, test_more_than_65535_messages_can_wait_unacknowledged_in_one_batch.)"""
    topic = broker.topics.measurement("gw-a", fresh("many"))
    reader = broker.paho("ehub-ingest")
    clients.append(reader)
    reader.connect(broker.port)
    assert reader.subscribe(topic).value == 1
    gateway = broker.paho("gw-a")
    clients.append(gateway)
    gateway.connect(broker.port)
    infos = [gateway.paho.publish(topic, str(i).encode(), qos=1) for i in range(70_000)]
    assert [i.rc for i in infos[:65_535]] == [mqtt.MQTT_ERR_SUCCESS] * 65_535
    assert [i.rc for i in infos[65_535:]] == [mqtt.MQTT_ERR_QUEUE_SIZE] * (70_000 - 65_535)
    gateway.wait_until(lambda: len(gateway.pubacks) == 65_535, "65,535 PUBACKs", timeout_s=120)
    assert {rc.value for rc in gateway.pubacks.values()} == {0}  # each routed to the reader (never read)


@pytest.fixture
def killable(tmp_path) -> Iterator[PrivateBroker]:
    with private_broker(tmp_path) as running:
        yield running


@pytest.mark.timeout(90)
def test_paho_a_broker_killed_with_messages_in_flight(killable, clients):
    """As test_a_broker_killed_with_messages_in_flight for MqttLink. paho keeps what it has no PUBACK for in
    memory and sends it again, marked duplicate, when the same Client connects again (a process that dies loses
    it); the ingest's side is the broker's and behaves the same."""
    broker = killable
    topic = broker.topics.measurement("gw-a", "meter")

    def ingest() -> PahoClient:
        client = broker.paho("ehub-ingest", client_id="ehub-ingest-durable", manual_ack=True)
        clients.append(client)
        assert not client.connect(broker.port, clean_start=False, session_expiry_s=3600).is_failure
        return client

    reader = ingest()
    assert reader.subscribe(topic).value == 1
    gateway = broker.paho("gw-a")
    clients.append(gateway)
    gateway.connect(broker.port)

    stored = [f"A{i}".encode() for i in range(100)]
    assert not any(rc.is_failure for rc in gateway.publish_many([(topic, p) for p in stored]))
    reader.wait_until(lambda: len(reader.messages) == 100, "A")
    reader.ack(reader.messages[:50])
    barrier(reader, broker)
    acked_at = broker.saved_ns()
    reader.wait_until(lambda: broker.saved_ns() > acked_at, "the broker's next autosave", timeout_s=15)
    saved = broker.saved_ns()

    unsaved = [f"C{i}".encode() for i in range(50)]
    assert not any(rc.is_failure for rc in gateway.publish_many([(topic, p) for p in unsaved]))
    in_flight = [f"B{i}".encode() for i in range(5000)]
    infos = [gateway.paho.publish(topic, p, qos=1) for p in in_flight]  # 100 written, 4,900 queued in paho
    broker.kill_and_restart()
    gateway.wait_until(lambda: gateway.disconnected is not None, "the publisher to see the broker gone")
    unconfirmed = {p for p, info in zip(in_flight, infos, strict=True) if not info.is_published()}
    assert len(unconfirmed) >= 4900
    no_save_since = broker.saved_ns() == saved

    reader = ingest()
    assert reader.session_present
    barrier(reader, broker)
    payloads = payloads_of(reader.messages)
    assert payloads[:50] == stored[50:]
    assert all(m.dup for m in reader.messages[:50])
    assert not set(stored[:50]) & set(payloads)
    if no_save_since:
        assert payloads[50:] == []  # C (and any B PUBACKed before the kill) gone with the broker's memory

    # The same Client connects again and sends what it has no PUBACK for by itself.
    gateway.connect(broker.port)
    gateway.wait_until(lambda: all(info.is_published() for info in infos), "paho's resent messages", 30)
    seen: set[bytes] = set()

    acked = 0

    def all_resent_arrived() -> bool:  # the ingest stores and acknowledges as they come: its window moves on
        nonlocal acked
        new = reader.messages[acked:]
        reader.ack(new)
        acked += len(new)
        seen.update(payloads_of(new))
        return unconfirmed <= seen

    reader.wait_until(all_resent_arrived, "the resent messages at the ingest", 30)
