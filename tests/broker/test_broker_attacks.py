"""Attacks a gateway can make with its own valid credentials, against the real session broker.

Found by an independent attack run on the acl_file setup (issue 14): gateway A (1) joined the ingest's shared
subscription group and took a share of every gateway's measurements, which its read rules then dropped: lost;
(2) connected with the ingest's or gateway B's client id and pushed them off the broker; (3) left a retained
measurement that every new subscriber was handed. Each test here failed on that setup (see the report of issue 14)
and passes only while the broker checks subscriptions and client ids.

Every wait is a condition with a timeout. Negative checks are made sound by order: MQTT keeps one publisher's
order, and the broker writes what it queued for one subscriber in order, so once a later message (or a PUBACK)
has arrived, an earlier one would have arrived before it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from energyhub.cli.services import RunningServices
from energyhub.runtime.supervisor import wait_for
from energyhub.wire.topics import Topics
from tests.mqtt_helpers import TIMEOUT_S, PahoClient

NOT_AUTHORIZED = 0x87
MESSAGES = (
    50  # below the broker's in-flight window (100), so nothing waits in a queue behind an acknowledgement
)


@dataclass(frozen=True)
class Estate:
    """Two fresh gateways on the session broker: A attacks, B is the victim."""

    services: RunningServices
    topics: Topics
    a: str
    b: str
    group: str  # the victim ingest's shared-subscription group, unique to the test

    @property
    def port(self) -> int:
        return self.services.settings.mqtt_port

    def password(self, account: str) -> str:
        return self.services.accounts.credentials(account).password


Connect = Callable[..., PahoClient]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """connect(username, client_id=None, will=None) -> a Client that tried to log in; all closed after the test."""
    clients: list[PahoClient] = []

    def make(
        estate: Estate, username: str, *, client_id: str | None = None, will: tuple[str, bytes] | None = None
    ) -> PahoClient:
        client = PahoClient(
            username=username, password=estate.password(username), client_id=client_id, will=will
        )
        clients.append(client)
        client.connect(estate.port)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def estate(services: RunningServices, unique_id: str) -> Estate:
    a, b = f"gw-{unique_id}-a", f"gw-{unique_id}-b"
    for gateway in (a, b):
        services.accounts.add_gateway(gateway)
    services.accounts.reload_broker()
    topics = Topics(site=services.settings.site, root=services.settings.topic_root)
    result = Estate(services=services, topics=topics, a=a, b=b, group=f"ingest-{unique_id}")
    for gateway in (a, b):  # a SIGHUP reload (the acl_file setup) takes effect a moment later
        wait_for(lambda g=gateway: _logs_in(result, g), timeout_s=TIMEOUT_S, what=f"{gateway} can log in")
    return result


def _logs_in(estate: Estate, gateway: str) -> bool:
    client = PahoClient(username=gateway, password=estate.password(gateway), client_id=f"{gateway}-agent")
    try:
        return not client.connect(estate.port).is_failure
    finally:
        client.close()


def login(connect: Connect, estate: Estate, username: str, **kwargs: object) -> PahoClient:
    """Log in and assert that the broker accepts it; a gateway as ``<gateway>-agent``, its edge agent's id."""
    if username.startswith("gw-") and "client_id" not in kwargs:
        kwargs["client_id"] = f"{username}-agent"
    client = connect(estate, username, **kwargs)
    assert client.connack is not None
    assert not client.connack.is_failure, f"{username} was refused: {client.connack}"
    return client


def sequence_numbers(client: PahoClient, topic: str) -> list[int]:
    return sorted(json.loads(payload)["seq"] for payload in client.received().get(topic, []))


# {base}: the site's topics; {group}: the victim ingest's shared group; {a}, {b}: the gateways' subtrees.
ATTACK_FILTERS = [
    "$share/{group}/{base}/gw/+/meas/+",  # the ingest's group: a share of every gateway's measurements
    "$share/{group}/{b}/#",
    "$share/x/#",
    "$share/x/{a}/setpoint/+",  # even on its own topics: no shared group at all
    "#",
    "+/#",
    "{base}/#",
    "{base}/gw/+/meas/+",
    "{base}/gw/+/setpoint/+",
    "{b}/#",
    "{b}/setpoint/+",
    "{b}/setpoint/battery-1",
    "{b}/confirm",
    "{a}/#",  # wider than its own setpoint filter
    "{a}/setpoint/#",
    "$SYS/#",
    "$CONTROL/dynamic-security/#",
]


@pytest.mark.parametrize("template", ATTACK_FILTERS)
def test_a_gateway_cannot_subscribe_beyond_its_own_topics_and_the_victims_get_everything(
    estate: Estate, connect: Connect, template: str
) -> None:
    topics, b = estate.topics, estate.b
    topic_filter = template.format(
        base=topics.base, group=estate.group, a=topics.gateway_subtree(estate.a), b=topics.gateway_subtree(b)
    )
    meas_b = topics.measurement(b, "meter-1")
    # The victims: the ingest account with a plain and with a shared subscription, then B publishing.
    plain = login(connect, estate, "ehub-ingest")
    assert plain.subscribe(f"{topics.gateway_subtree(b)}/meas/+").value == 1
    shared = login(connect, estate, "ehub-ingest")
    assert shared.subscribe(f"$share/{estate.group}/{topics.base}/gw/+/meas/+").value == 1

    attacker = login(connect, estate, estate.a)
    suback = attacker.subscribe(topic_filter)
    gateway_b = login(connect, estate, b)
    payloads = [json.dumps({"seq": n}).encode() for n in range(MESSAGES)]
    assert not any(rc.is_failure for rc in gateway_b.publish_many([(meas_b, p) for p in payloads]))

    everything = list(range(MESSAGES))
    for victim in (plain, shared):
        victim.wait_until(
            lambda v=victim: sequence_numbers(v, meas_b) == everything, "every one of B's messages"
        )
    attacker.publish(topics.measurement(estate.a, "meter-1"), b"{}")  # its PUBACK comes after any delivery
    assert meas_b not in attacker.received()
    assert suback.value == NOT_AUTHORIZED, f"{topic_filter} was granted ({suback})"


def test_a_gateway_may_subscribe_to_what_is_its_own(estate: Estate, connect: Connect) -> None:
    topics, a = estate.topics, estate.a
    gateway = login(connect, estate, a)
    for own in (
        topics.setpoints_for(a),
        topics.setpoint(a, "battery-1"),
        topics.confirm(a),
        topics.heartbeat(),
    ):
        assert gateway.subscribe(own).value == 1, own


@pytest.mark.parametrize("victim", ["gateway", "ingest"])
def test_a_gateway_cannot_take_another_clients_id(estate: Estate, connect: Connect, victim: str) -> None:
    topics, b = estate.topics, estate.b
    state_b, meas_b = topics.state(b), topics.measurement(b, "meter-1")
    observer = login(connect, estate, "ehub-api")
    assert observer.subscribe(state_b).value == 1
    death = f"dead {uuid.uuid4().hex}".encode()
    gateway_b = login(connect, estate, b, will=(state_b, death))
    ingest_id = f"ehub-ingest-{estate.group}"
    ingest = login(connect, estate, "ehub-ingest", client_id=ingest_id)
    assert ingest.subscribe(meas_b).value == 1
    stolen_id = f"{b}-agent" if victim == "gateway" else ingest_id

    for attempt in range(10):  # the attack run pushed B off ten times in 20 s
        attacker = connect(estate, estate.a, client_id=stolen_id)
        assert attacker.connack is not None
        assert attacker.connack.value >= 0x80, (
            f"attempt {attempt}: {estate.a} got {stolen_id} ({attacker.connack})"
        )
        attacker.close()

    # B is still there: it publishes (a PUBACK comes back), and its Last Will was never sent (the broker would
    # have queued it to the observer before B's later message).
    alive = f"alive {uuid.uuid4().hex}".encode()
    assert not gateway_b.publish(state_b, alive).is_failure
    observer.expect(state_b, alive)
    assert death not in observer.received()[state_b]
    # The ingest still gets B's measurements on the connection it had.
    assert not gateway_b.publish(meas_b, b'{"seq": 0}').is_failure
    ingest.expect(meas_b, b'{"seq": 0}')
    for name, client in (("B", gateway_b), ("the ingest", ingest)):
        client.serve()
        assert client.disconnected is None, f"{name} was disconnected: {client.disconnected}"


def test_a_gateway_cannot_publish_on_anothers_or_the_services_topics(
    estate: Estate, connect: Connect
) -> None:
    topics, a, b = estate.topics, estate.a, estate.b
    observer = login(connect, estate, "ehub-api")  # reads the whole site
    assert observer.subscribe(f"{topics.base}/#").value == 1
    attacker = login(connect, estate, a)
    forged = [
        topics.state(b),
        topics.measurement(b, "meter-1"),
        topics.ack(b, "battery-1"),
        topics.confirm(b),
        topics.confirm(a),  # confirmations come from the ingest: a forged one would empty A's own buffer
        topics.setpoint(a, "battery-1"),
        topics.setpoint(b, "battery-1"),
        topics.heartbeat(),
        topics.deadletter("ingest"),
    ]
    for topic in forged:
        assert attacker.publish(topic, b'{"forged": true}').value == NOT_AUTHORIZED, topic
    evil = f"evil-{uuid.uuid4().hex[:8]}"
    command = {"commands": [{"command": "createClient", "username": evil, "password": "x", "roles": []}]}
    assert (
        attacker.publish("$CONTROL/dynamic-security/v1", json.dumps(command).encode()).value == NOT_AUTHORIZED
    )
    own = topics.measurement(a, "meter-1")
    assert not attacker.publish(own, b'{"own": true}').is_failure
    observer.expect(own, b'{"own": true}')
    assert not any(topic in observer.received() for topic in forged)
    intruder = PahoClient(username=evil, password="x", client_id=evil)
    try:
        assert intruder.connect(estate.port).is_failure
    finally:
        intruder.close()


def test_the_ingest_can_clear_a_retained_measurement(estate: Estate, connect: Connect) -> None:
    topics, a = estate.topics, estate.a
    stale, marker = topics.measurement(a, "meter-1"), topics.measurement(a, "meter-2")
    attacker = login(connect, estate, a)
    # The broker cannot refuse retain per topic: a gateway may leave a retained measurement on its own topics.
    assert not attacker.publish(stale, b'{"stale": true}', retain=True).is_failure
    assert not attacker.publish(marker, b'{"marker": true}', retain=True).is_failure
    ingest = login(connect, estate, "ehub-ingest")
    assert not ingest.publish(stale, b"", retain=True).is_failure  # an empty retained message clears it

    newcomer = login(connect, estate, "ehub-ingest")
    assert newcomer.subscribe(stale).value == 1
    assert newcomer.subscribe(marker).value == 1  # handled after the first: its retained message comes after
    newcomer.expect(marker, b'{"marker": true}')
    assert stale not in newcomer.received()
    assert not ingest.publish(marker, b"", retain=True).is_failure  # leave nothing retained behind
