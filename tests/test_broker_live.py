"""The broker's lock-down, proven with real Mosquitto and real MQTT v5 connections.

Every login here uses a hash made by broker.passwords (not mosquitto_passwd), so each accepted login also proves
that Mosquitto accepts our hash format. Negative checks ("B never receives X") are made sound without sleeps: the
denied message is sent first and an allowed one after it on the same connection at QoS 1, and MQTT keeps a
publisher's order, so once the allowed one has arrived the denied one would have arrived before it.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from typer.testing import CliRunner

from broker.accounts import BrokerAccounts
from broker.cli import app
from hub.services import free_port, start_broker
from hub.settings import ServiceSettings
from hub.supervisor import ManagedProcess, Supervisor, wait_for
from hub.topics import Topics

HOST = "127.0.0.1"
TIMEOUT_S = 5.0
NOT_AUTHORIZED = 0x87
GATEWAYS = ("gw-a", "gw-b")


@dataclass(frozen=True)
class LiveBroker:
    settings: ServiceSettings
    topics: Topics
    accounts: BrokerAccounts
    process: ManagedProcess

    @property
    def port(self) -> int:
        return self.settings.mqtt_port

    @property
    def tls_port(self) -> int:
        assert self.settings.mqtt_tls_port is not None
        return self.settings.mqtt_tls_port

    def password(self, username: str) -> str:
        return self.accounts.credentials(username).password


def _start(tmp_path: Path, *, dev_mode: bool) -> Iterator[LiveBroker]:
    settings = ServiceSettings(
        state_dir=tmp_path, host=HOST, mqtt_port=free_port(), mqtt_tls_port=free_port(), dev_mode=dev_mode
    )
    topics = Topics(site=settings.site, root=settings.topic_root)
    accounts = BrokerAccounts(tmp_path.resolve() / "broker", topics)
    for gateway in GATEWAYS:
        accounts.add_gateway(gateway)
    with Supervisor() as supervisor:
        process = start_broker(supervisor, settings)
        yield LiveBroker(settings=settings, topics=topics, accounts=accounts, process=process)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBroker]:
    yield from _start(tmp_path_factory.mktemp("broker"), dev_mode=False)


@pytest.fixture(scope="module")
def dev_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBroker]:
    yield from _start(tmp_path_factory.mktemp("dev-broker"), dev_mode=True)


class Client:
    """A paho MQTT v5 client that records CONNACK, PUBACKs, SUBACKs and messages.

    No network thread: the client's socket is served while a test waits on it (``_until``), so a refused login
    costs no reconnect back-off and every wait is a condition with a timeout.
    """

    def __init__(self, *, username: str | None, password: str | None, ca_cert: Path | None = None) -> None:
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:12]}", protocol=mqtt.MQTTv5
        )
        if username is not None:
            self.paho.username_pw_set(username, password)
        if ca_cert is not None:
            self.paho.tls_set(ca_certs=str(ca_cert))  # verifies the chain and the host name
        self.connack: ReasonCode | None = None
        self.pubacks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self.paho.on_connect = self._on_connect
        self.paho.on_publish = self._on_publish
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_message = self._on_message

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self.connack = rc

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties) -> None:
        self.pubacks[mid] = rc

    def _on_subscribe(self, _c: mqtt.Client, _u: object, mid: int, rcs: list[ReasonCode], _p: object) -> None:
        self.subacks[mid] = rcs

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        self.messages.append(message)

    def _until(self, condition: Callable[[], bool], what: str) -> None:
        def served() -> bool:
            self.paho.loop(timeout=0.02)  # read and write what is pending, run the callbacks
            return condition()

        wait_for(served, timeout_s=TIMEOUT_S, interval_s=0.0, what=what)

    def connect(self, port: int) -> ReasonCode:
        self.paho.connect(HOST, port, keepalive=30)
        self._until(lambda: self.connack is not None, "CONNACK")
        assert self.connack is not None
        return self.connack

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.paho.publish(topic, payload, qos=1, retain=retain)
        self._until(lambda: info.mid in self.pubacks, f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def subscribe(self, topic_filter: str) -> ReasonCode:
        """Subscribe at QoS 1 and return the SUBACK's reason code."""
        _, mid = self.paho.subscribe(topic_filter, qos=1)
        assert mid is not None
        self._until(lambda: mid in self.subacks, f"SUBACK for {topic_filter}")
        return self.subacks[mid][0]

    def received(self) -> dict[str, list[bytes]]:
        result: dict[str, list[bytes]] = {}
        for message in self.messages:
            result.setdefault(message.topic, []).append(bytes(message.payload))
        return result

    def expect(self, topic: str, payload: bytes) -> None:
        """Wait until ``payload`` has arrived on ``topic`` (older retained messages may come first)."""
        self._until(lambda: payload in self.received().get(topic, []), f"{payload!r} on {topic}")

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop(timeout=0.01)  # flush the DISCONNECT


Connect = Callable[..., Client]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """connect(port, username, password=None, ca_cert=None) -> a connected Client, closed after the test."""
    clients: list[Client] = []

    def make(
        port: int, username: str | None, password: str | None = None, *, ca_cert: Path | None = None
    ) -> Client:
        client = Client(username=username, password=password, ca_cert=ca_cert)
        clients.append(client)
        client.connect(port)
        return client

    yield make
    for client in clients:
        client.close()


def login(connect: Connect, broker: LiveBroker, username: str) -> Client:
    """Log ``username`` in with its stored password and assert that the broker accepts it."""
    client = connect(broker.port, username, broker.password(username))
    assert client.connack is not None
    assert not client.connack.is_failure, f"{username} was refused: {client.connack}"
    return client


def unique(prefix: str = "dev") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_wrong_password_and_anonymous_are_refused(broker: LiveBroker, connect: Connect) -> None:
    wrong = connect(broker.port, "gw-a", "not-the-password")
    anonymous = connect(broker.port, None)
    unknown = connect(broker.port, "gw-nobody", broker.password("gw-a"))
    for client in (wrong, anonymous, unknown):
        assert client.connack is not None
        assert client.connack.is_failure
        assert client.connack.value == NOT_AUTHORIZED  # what Mosquitto 2.0 answers to v5 clients
    right = connect(broker.port, "gw-a", broker.password("gw-a"))
    assert right.connack is not None
    assert not right.connack.is_failure  # the broker accepts a hash that broker.passwords made


def test_dev_mode_admits_anonymous_clients_to_the_site_only(dev_broker: LiveBroker, connect: Connect) -> None:
    topics = dev_broker.topics
    anonymous = connect(dev_broker.port, None)
    assert anonymous.connack is not None
    assert not anonymous.connack.is_failure
    assert anonymous.subscribe(f"{topics.base}/#").value == 1  # granted QoS 1
    assert anonymous.publish("elsewhere/topic", b"x").value == NOT_AUTHORIZED
    topic = topics.measurement("gw-a", unique())
    assert not anonymous.publish(topic, b"anon").is_failure
    anonymous.expect(topic, b"anon")
    # Named accounts keep their own rules in dev mode, and a wrong password is still refused.
    wrong = connect(dev_broker.port, "gw-a", "not-the-password")
    assert wrong.connack is not None
    assert wrong.connack.is_failure
    gateway = connect(dev_broker.port, "gw-a", dev_broker.password("gw-a"))
    assert gateway.publish(topics.measurement("gw-b", unique()), b"forged").value == NOT_AUTHORIZED


def test_gateway_cannot_publish_into_another_gateways_subtree(broker: LiveBroker, connect: Connect) -> None:
    topics = broker.topics
    observer = login(connect, broker, "ehub-ingest")
    assert observer.subscribe(f"{topics.base}/gw/#").value == 1
    gateway_a = login(connect, broker, "gw-a")
    device = unique()
    forged, own = topics.measurement("gw-b", device), topics.measurement("gw-a", device)
    forged_state = topics.state("gw-b")

    puback = gateway_a.publish(forged, b"forged")
    assert puback.value == NOT_AUTHORIZED
    assert str(puback) == "Not authorized"
    assert gateway_a.publish(forged_state, b"forged").value == NOT_AUTHORIZED
    assert not gateway_a.publish(own, b"own").is_failure

    observer.expect(own, b"own")
    assert forged not in observer.received()
    assert forged_state not in observer.received()


def test_gateway_cannot_read_another_gateways_subtree(broker: LiveBroker, connect: Connect) -> None:
    topics = broker.topics
    control = login(connect, broker, "ehub-control")
    gateway_a = login(connect, broker, "gw-a")
    gateway_b = login(connect, broker, "gw-b")
    # Mosquitto 2.0's acl_file does not check SUBSCRIBE (security_default.c: "FIXME - implement ACL subscription
    # strings"): the SUBACK grants even B's filter. What isolates is the READ check on every delivery, so A
    # subscribes as broadly as it can and must still get nothing of B's.
    for wide in (topics.setpoints_for("gw-b"), f"{topics.base}/gw/+/setpoint/+", f"{topics.base}/#"):
        assert gateway_a.subscribe(wide).value in (1, NOT_AUTHORIZED), wide
    assert gateway_b.subscribe(topics.setpoints_for("gw-b")).value == 1

    device = unique()
    for_b, for_a = topics.setpoint("gw-b", device), topics.setpoint("gw-a", device)
    assert not control.publish(for_b, b"for b").is_failure
    assert not control.publish(for_a, b"for a").is_failure
    gateway_b.expect(for_b, b"for b")  # the message to B was really delivered...
    gateway_a.expect(for_a, b"for a")
    assert for_b not in gateway_a.received()  # ...but never to A

    # Retained messages are checked too: B's retained state is not handed to A when A subscribes to it. The
    # broker handles A's two SUBSCRIBEs in order, so once the retained heartbeat of the second has arrived,
    # B's state from the first would have arrived before it.
    state_b = topics.state("gw-b")
    assert not gateway_b.publish(state_b, b"online", retain=True).is_failure
    heartbeat = f"alive {uuid.uuid4().hex}".encode()
    assert not control.publish(topics.heartbeat(), heartbeat, retain=True).is_failure
    late_a = login(connect, broker, "gw-a")
    late_a.subscribe(state_b)
    assert late_a.subscribe(topics.heartbeat()).value == 1
    late_a.expect(topics.heartbeat(), heartbeat)
    assert state_b not in late_a.received()


def test_only_control_writes_setpoints_and_services_have_their_rights(
    broker: LiveBroker, connect: Connect
) -> None:
    topics = broker.topics
    observer = login(connect, broker, "ehub-api")
    assert observer.subscribe(f"{topics.base}/#").value == 1
    gateway_a = login(connect, broker, "gw-a")
    device = unique()

    # A gateway cannot forge setpoints for itself, nor the controller's heartbeat, nor dead letters.
    forged_setpoint = topics.setpoint("gw-a", device)
    assert gateway_a.publish(forged_setpoint, b"forged").value == NOT_AUTHORIZED
    assert gateway_a.publish(topics.heartbeat(), b"forged").value == NOT_AUTHORIZED
    assert gateway_a.publish(topics.deadletter("ingest"), b"forged").value == NOT_AUTHORIZED
    ack = topics.ack("gw-a", device)
    assert not gateway_a.publish(ack, b"applied").is_failure
    observer.expect(ack, b"applied")
    assert forged_setpoint not in observer.received()

    # Control can write setpoints and the retained heartbeat; gateways read the heartbeat.
    control = login(connect, broker, "ehub-control")
    assert not control.publish(forged_setpoint, b"real").is_failure
    observer.expect(forged_setpoint, b"real")
    heartbeat = f"alive {uuid.uuid4().hex}".encode()
    assert not control.publish(topics.heartbeat(), heartbeat, retain=True).is_failure
    observer.expect(topics.heartbeat(), heartbeat)
    assert gateway_a.subscribe(topics.heartbeat()).value == 1
    gateway_a.expect(topics.heartbeat(), heartbeat)  # the retained one, delivered on subscribe

    # Ingest writes dead letters but no setpoints; control cannot write dead letters.
    ingest = login(connect, broker, "ehub-ingest")
    deadletter = topics.deadletter("ingest")
    assert ingest.publish(topics.setpoint("gw-a", device), b"x").value == NOT_AUTHORIZED
    assert control.publish(deadletter, b"x").value == NOT_AUTHORIZED
    assert not ingest.publish(deadletter, b"bad payload").is_failure
    observer.expect(deadletter, b"bad payload")


def _login_refused(broker: LiveBroker, username: str, password: str) -> bool:
    client = Client(username=username, password=password)
    try:
        rc = client.connect(broker.port)
    finally:
        client.close()
    return rc.is_failure


def test_gateway_added_while_running_after_reload(broker: LiveBroker, connect: Connect) -> None:
    accounts = BrokerAccounts(broker.accounts.directory, broker.topics)  # as a separate CLI process would
    new = accounts.add_gateway("gw-late")
    assert _login_refused(broker, "gw-late", new.password)  # not known to the running broker yet
    assert accounts.reload_broker()
    wait_for(
        lambda: not _login_refused(broker, "gw-late", new.password), timeout_s=TIMEOUT_S, what="gw-late login"
    )
    late = connect(broker.port, "gw-late", new.password)
    topics = broker.topics
    assert not late.publish(
        topics.measurement("gw-late", unique()), b"hello"
    ).is_failure  # the ACL is reloaded
    assert late.publish(topics.measurement("gw-a", unique()), b"forged").value == NOT_AUTHORIZED

    rotated = accounts.add_gateway("gw-late", rotate=True)
    assert rotated.password != new.password
    assert accounts.reload_broker()
    wait_for(
        lambda: _login_refused(broker, "gw-late", new.password),
        timeout_s=TIMEOUT_S,
        what="old password refused",
    )
    assert not _login_refused(broker, "gw-late", rotated.password)

    accounts.remove("gw-late")
    assert accounts.reload_broker()
    wait_for(lambda: _login_refused(broker, "gw-late", rotated.password), timeout_s=TIMEOUT_S, what="removal")
    assert broker.process.running  # all without a restart


def test_cli_add_gateway_reloads_the_running_broker(broker: LiveBroker) -> None:
    state_dir = broker.accounts.directory.parent
    result = CliRunner().invoke(app, ["add-gateway", "gw-cli", "--state-dir", str(state_dir)])
    assert result.exit_code == 0, result.output
    assert "reloaded" in result.stdout
    password = next(
        line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("password:")
    )
    wait_for(lambda: not _login_refused(broker, "gw-cli", password), timeout_s=TIMEOUT_S, what="gw-cli login")


def test_tls_listener_needs_the_ca(broker: LiveBroker, connect: Connect) -> None:
    ca_cert = broker.accounts.directory / "certs" / "ca.crt"
    secure = connect(broker.tls_port, "gw-a", broker.password("gw-a"), ca_cert=ca_cert)
    assert secure.connack is not None
    assert not secure.connack.is_failure
    assert not secure.publish(broker.topics.measurement("gw-a", unique()), b"over tls").is_failure

    wrong = connect(broker.tls_port, "gw-a", "not-the-password", ca_cert=ca_cert)
    assert wrong.connack is not None
    assert wrong.connack.is_failure  # the same accounts on the TLS listener

    untrusting = Client(username="gw-a", password=broker.password("gw-a"))
    untrusting.paho.tls_set()  # the system's CAs only: our private CA is unknown
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusting.paho.connect(HOST, broker.tls_port)
