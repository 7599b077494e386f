"""The broker's lock-down, proven with real Mosquitto and real MQTT v5 connections.

Every login here uses a hash made by energyhub.runtime.passwords (not mosquitto_passwd) in the dynamic-security plugin's
config, so each accepted login also proves that the plugin loads our hash format. Negative checks ("B never
receives X") are made sound without sleeps: the denied message is sent first and an allowed one after it on the
same connection at QoS 1, and MQTT keeps a publisher's order, so once the allowed one has arrived the denied one
would have arrived before it. The attacks a gateway could make on the shared session broker are in
test_broker_attacks.py.
"""

from __future__ import annotations

import json
import signal
import ssl
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from energyhub.broker.accounts import ADMIN_ACCOUNT, BrokerAccounts
from energyhub.broker.cli import app
from energyhub.broker.dynsec import client_id_for, read_dynsec
from energyhub.broker.dynsec_control import BrokerState, DynsecControl, plan_changes
from energyhub.cli.services import free_port, start_broker
from energyhub.runtime.settings import ServiceSettings
from energyhub.runtime.supervisor import ManagedProcess, Supervisor, wait_for
from energyhub.wire.topics import Topics
from tests.mqtt_helpers import PahoClient as Client

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

    def client_id(self, username: str) -> str | None:
        """The client id the account is bound to (gateways), None for a random one."""
        return client_id_for(username, self.accounts.accounts()[username])


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


Connect = Callable[..., Client]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """connect(port, username, password=None, ca_cert=None, client_id=None) -> a connected Client, closed after
    the test."""
    clients: list[Client] = []

    def make(
        port: int,
        username: str | None,
        password: str | None = None,
        *,
        ca_cert: Path | None = None,
        client_id: str | None = None,
    ) -> Client:
        client = Client(username=username, password=password, ca_cert=ca_cert, client_id=client_id)
        clients.append(client)
        client.connect(port)
        return client

    yield make
    for client in clients:
        client.close()


def login(connect: Connect, broker: LiveBroker, username: str) -> Client:
    """Log ``username`` in with its stored password and assert that the broker accepts it."""
    client = connect(broker.port, username, broker.password(username), client_id=broker.client_id(username))
    assert client.connack is not None
    assert not client.connack.is_failure, f"{username} was refused: {client.connack}"
    return client


def unique(prefix: str = "dev") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_wrong_password_and_anonymous_are_refused(broker: LiveBroker, connect: Connect) -> None:
    wrong = connect(broker.port, "gw-a", "not-the-password", client_id="gw-a-agent")
    anonymous = connect(broker.port, None)
    unknown = connect(broker.port, "gw-nobody", broker.password("gw-a"), client_id="gw-nobody-agent")
    other_id = connect(broker.port, "gw-a", broker.password("gw-a"))  # right password, random client id
    for client in (wrong, anonymous, unknown, other_id):
        assert client.connack is not None
        assert client.connack.is_failure
        assert client.connack.value == NOT_AUTHORIZED  # what Mosquitto 2.0 answers to v5 clients
    right = connect(broker.port, "gw-a", broker.password("gw-a"), client_id="gw-a-agent")
    assert right.connack is not None
    assert not right.connack.is_failure  # the plugin accepts a hash that energyhub.runtime.passwords made
    service = connect(broker.port, "ehub-ingest", broker.password("ehub-ingest"))  # any client id
    assert service.connack is not None
    assert not service.connack.is_failure


def test_dev_mode_admits_anonymous_clients_to_the_site_only(dev_broker: LiveBroker, connect: Connect) -> None:
    topics = dev_broker.topics
    anonymous = connect(dev_broker.port, None)
    assert anonymous.connack is not None
    assert not anonymous.connack.is_failure
    assert anonymous.subscribe(f"{topics.base}/#").value == 1  # granted QoS 1
    assert anonymous.subscribe(f"$share/dev/{topics.base}/gw/+/meas/+").value == 1
    assert anonymous.subscribe("#").value == NOT_AUTHORIZED
    assert anonymous.publish("elsewhere/topic", b"x").value == NOT_AUTHORIZED
    topic = topics.measurement("gw-a", unique())
    assert not anonymous.publish(topic, b"anon").is_failure
    anonymous.expect(topic, b"anon")
    # Named accounts keep their own rules in dev mode, and a wrong password is still refused.
    wrong = connect(dev_broker.port, "gw-a", "not-the-password", client_id="gw-a-agent")
    assert wrong.connack is not None
    assert wrong.connack.is_failure
    gateway = login(connect, dev_broker, "gw-a")
    assert gateway.subscribe(f"{topics.base}/#").value == NOT_AUTHORIZED
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
    # The plugin refuses every filter beyond A's own (the attacks on the session broker: test_broker_attacks.py),
    # and the receive check on every delivery would hold even if a subscription got through.
    for wide in (topics.setpoints_for("gw-b"), f"{topics.base}/gw/+/setpoint/+", f"{topics.base}/#", "#"):
        assert gateway_a.subscribe(wide).value == NOT_AUTHORIZED, wide
    assert gateway_a.subscribe(topics.setpoints_for("gw-a")).value == 1
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
    late_a = login(
        connect, broker, "gw-a"
    )  # as gw-a-agent: takes gateway_a's place, as a restarted agent would
    assert late_a.subscribe(state_b).value == NOT_AUTHORIZED
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

    # Delivery confirmations come from the ingest only: not from control, nor from a gateway for itself.
    confirm = topics.confirm("gw-a")
    assert gateway_a.publish(confirm, b"forged").value == NOT_AUTHORIZED
    assert control.publish(confirm, b"forged").value == NOT_AUTHORIZED
    assert not ingest.publish(confirm, b"stored 1-5").is_failure
    observer.expect(confirm, b"stored 1-5")
    assert gateway_a.subscribe(confirm).value == 1
    # The ingest may clear a retained measurement (an empty retained message), which control may not.
    measurement = topics.measurement("gw-a", device)
    assert not gateway_a.publish(measurement, b"stale", retain=True).is_failure
    assert control.publish(measurement, b"", retain=True).value == NOT_AUTHORIZED
    assert not ingest.publish(measurement, b"", retain=True).is_failure


def _login_refused(broker: LiveBroker, username: str, password: str) -> bool:
    return _login_refused_at(broker.port, username, password)


def _still_connected(client: Client) -> bool:
    """True if ``client`` can still publish (a PUBACK comes back) and the broker has not disconnected it."""
    client.serve()
    if client.disconnected is not None:
        return False
    try:
        client.publish("nobody/may/write/this", b"?")  # denied, but the PUBACK still comes
    except TimeoutError:
        return False
    return client.disconnected is None


def _dropped(client: Client) -> bool:
    client.serve()
    return client.disconnected is not None


def test_account_changes_reach_the_running_broker_at_once(broker: LiveBroker, connect: Connect) -> None:
    accounts = BrokerAccounts(broker.accounts.directory, broker.topics)  # as a separate CLI process would
    bystander = login(connect, broker, "gw-b")  # must not notice any of this
    new = accounts.add_gateway("gw-late")
    assert _login_refused(broker, "gw-late", new.password)  # not known to the running broker yet
    assert accounts.reload_broker()
    assert not _login_refused(broker, "gw-late", new.password)  # in effect when reload_broker returns
    late = connect(broker.port, "gw-late", new.password, client_id="gw-late-agent")
    topics = broker.topics
    assert not late.publish(topics.measurement("gw-late", unique()), b"hello").is_failure  # its role came too
    assert late.publish(topics.measurement("gw-a", unique()), b"forged").value == NOT_AUTHORIZED
    assert late.subscribe(topics.setpoints_for("gw-late")).value == 1
    assert late.subscribe(topics.setpoints_for("gw-a")).value == NOT_AUTHORIZED

    rotated = accounts.add_gateway("gw-late", rotate=True)
    assert rotated.password != new.password
    assert accounts.reload_broker()
    assert _login_refused(broker, "gw-late", new.password)
    assert not _login_refused(broker, "gw-late", rotated.password)
    # The connection made with the old password is put off the broker by the change.
    wait_for(lambda: _dropped(late), timeout_s=TIMEOUT_S, what="the old password's connection dropped")

    current = connect(broker.port, "gw-late", rotated.password, client_id="gw-late-agent")
    accounts.remove("gw-late")
    assert accounts.reload_broker()
    assert _login_refused(broker, "gw-late", rotated.password)
    wait_for(lambda: _dropped(current), timeout_s=TIMEOUT_S, what="the removed account's connection dropped")
    assert _still_connected(bystander)
    assert broker.process.running  # all without a restart


def test_a_reload_with_nothing_changed_sends_nothing(broker: LiveBroker, connect: Connect) -> None:
    accounts = broker.accounts
    gateway = login(connect, broker, "gw-a")
    assert accounts.reload_broker()
    admin = accounts.credentials(ADMIN_ACCOUNT)
    with DynsecControl(HOST, broker.port, username=admin.username, password=admin.password) as control:
        state = BrokerState.query(control)
    desired = json.loads(accounts.dynsec_path.read_text())
    plaintexts = {u: accounts.credentials(u).password for u in accounts.accounts()}
    assert plan_changes(state, desired, plaintexts, keep=ADMIN_ACCOUNT) == ([], [])
    assert set(state.clients) == set(accounts.accounts())
    assert state.clients["gw-a"]["clientid"] == "gw-a-agent"
    assert "clientid" not in state.clients["ehub-ingest"]
    assert _still_connected(gateway)
    # The file holds our document again, not the copy the broker saved while changing.
    assert desired["_comment"].startswith("Generated by energyhub")
    assert stat.S_IMODE(accounts.dynsec_path.parent.stat().st_mode) == 0o700


def test_a_restarted_broker_loads_what_was_changed_while_it_ran(tmp_path: Path, connect: Connect) -> None:
    settings = ServiceSettings(state_dir=tmp_path, host=HOST, mqtt_port=free_port(), mqtt_tls_port=None)
    topics = Topics(site=settings.site, root=settings.topic_root)
    accounts = BrokerAccounts(tmp_path.resolve() / "broker", topics)
    accounts.add_gateway("gw-old")
    with Supervisor() as supervisor:
        process = start_broker(supervisor, settings)
        added = accounts.add_gateway("gw-new")
        rotated = accounts.add_gateway("gw-old", rotate=True)
        assert accounts.reload_broker()
        process.stop()
        assert not accounts.reload_broker()  # no broker runs: nothing to tell
        process = start_broker(supervisor, settings)
        assert not _login_refused_at(settings.mqtt_port, "gw-new", added.password)
        assert not _login_refused_at(settings.mqtt_port, "gw-old", rotated.password)
        assert read_dynsec(accounts.dynsec_path) is not None


def _login_refused_at(port: int, username: str, password: str) -> bool:
    client = Client(username=username, password=password, client_id=f"{username}-agent")
    try:
        return client.connect(port).is_failure
    finally:
        client.close()


def test_queued_messages_survive_a_kill_9(tmp_path: Path) -> None:
    """The broker saves its sessions and queues every few seconds (autosave_interval), not only at a clean exit."""
    settings = ServiceSettings(state_dir=tmp_path, host=HOST, mqtt_port=free_port(), mqtt_tls_port=None)
    topics = Topics(site=settings.site, root=settings.topic_root)
    accounts = BrokerAccounts(tmp_path.resolve() / "broker", topics)
    gateway = accounts.add_gateway("gw-a")
    topic = topics.measurement("gw-a", "meter-1")
    database = accounts.directory / "data" / "mosquitto.db"
    with Supervisor() as supervisor:
        process = start_broker(supervisor, settings)
        ingest = accounts.credentials("ehub-ingest")

        def ingest_client() -> Client:
            return Client(username=ingest.username, password=ingest.password, client_id="ehub-ingest-durable")

        away = ingest_client()
        # Clean start off, as the ingest connects: Mosquitto 2.0 writes only such sessions to its database.
        away.connect(settings.mqtt_port, clean_start=False, session_expiry_s=3600)
        assert away.subscribe(topic).value == 1
        away.close()  # offline now: what comes next is queued in its session

        sender = Client(username="gw-a", password=gateway.password, client_id="gw-a-agent")
        sender.connect(settings.mqtt_port)
        payloads = [f"queued {n}".encode() for n in range(5)]
        assert not any(rc.is_failure for rc in sender.publish_many([(topic, p) for p in payloads]))
        sender.close()
        queued_at = time.time()
        wait_for(
            lambda: database.exists() and database.stat().st_mtime > queued_at,
            timeout_s=15.0,
            what="the broker's next autosave",
        )
        process.signal(signal.SIGKILL)  # no clean shutdown: only what autosave wrote survives
        assert process.popen is not None
        process.popen.wait(timeout=TIMEOUT_S)
        supervisor.restart(process)

        back = ingest_client()
        assert not back.connect(settings.mqtt_port, clean_start=False, session_expiry_s=3600).is_failure
        assert back.session_present
        back.wait_until(lambda: back.received().get(topic) == payloads, "the queued messages")
        back.close()


def test_cli_add_gateway_reloads_the_running_broker(broker: LiveBroker) -> None:
    state_dir = broker.accounts.directory.parent
    result = CliRunner().invoke(app, ["add-gateway", "gw-cli", "--state-dir", str(state_dir)])
    assert result.exit_code == 0, result.output
    assert "reloaded" in result.stdout
    password = next(
        line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("password:")
    )
    assert not _login_refused(broker, "gw-cli", password)


def test_tls_listener_needs_the_ca(broker: LiveBroker, connect: Connect) -> None:
    ca_cert = broker.accounts.directory / "certs" / "ca.crt"
    secure = connect(
        broker.tls_port, "gw-a", broker.password("gw-a"), ca_cert=ca_cert, client_id="gw-a-agent"
    )
    assert secure.connack is not None
    assert not secure.connack.is_failure
    assert not secure.publish(broker.topics.measurement("gw-a", unique()), b"over tls").is_failure

    wrong = connect(broker.tls_port, "gw-a", "not-the-password", ca_cert=ca_cert, client_id="gw-a-agent")
    assert wrong.connack is not None
    assert wrong.connack.is_failure  # the same accounts on the TLS listener

    untrusting = Client(username="gw-a", password=broker.password("gw-a"))
    untrusting.paho.tls_set()  # the system's CAs only: our private CA is unknown
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusting.paho.connect(HOST, broker.tls_port)
