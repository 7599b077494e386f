"""Small helpers for tests that talk to the real broker."""

from __future__ import annotations

import asyncio
import functools
import re
import select
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from energyhub.cli.services import RunningServices, free_port, start_broker
from energyhub.io.mqtt import IncomingMessage, MqttLink, MqttLinkError
from energyhub.runtime.settings import ServiceSettings
from energyhub.runtime.supervisor import ManagedProcess, Supervisor, find_binary, wait_for
from energyhub.wire.topics import Topics

if TYPE_CHECKING:
    from energyhub.broker.accounts import BrokerAccounts

HOST = "127.0.0.1"
TIMEOUT_S = 5.0


def login_client_id(services: RunningServices, account: str) -> str:
    """The client id ``account`` may use: a gateway only its own ``<gateway>-agent`` (the broker refuses any other),
    a service account a fresh one per connection."""
    from energyhub.broker.dynsec import (
        client_id_for,  # here: test_broker_attacks.py also runs against the acl_file setup
    )

    creds = services.accounts.credentials(account)
    return client_id_for(creds.username, creds.role) or f"{account}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Received:
    """A message an ``Observer`` received; ``retain`` is the flag as delivered (set on stored messages)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class Observer:
    """A test's own connection through the project's client, with the few calls the tests make: ``subscribe(filter,
    qos=)``, ``publish(topic, payload, qos=, retain=)`` and ``messages`` to iterate over what arrives."""

    def __init__(self, link: MqttLink) -> None:
        self.link = link

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        (granted,) = await self.link.subscribe([(topic_filter, qos)])
        if granted >= 0x80:
            raise MqttLinkError(f"the broker refused the subscription to {topic_filter} (0x{granted:02x})")

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish and, at QoS 1, wait for the PUBACK; a refusal raises."""
        await self.link.publish(topic, payload, qos=qos, retain=retain)

    @property
    def messages(self) -> AsyncIterator[Received]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Received]:
        while True:
            m = await self.link.next_message()
            yield Received(m.topic, m.payload, m.qos, m.retained)


@asynccontextmanager
async def mqtt_client(services: RunningServices, username: str) -> AsyncIterator[Observer]:
    """An ``Observer`` logged in as ``username``, disconnected at the end."""
    link = await link_as(services, username)
    try:
        yield Observer(link)
    finally:
        await link.disconnect()


async def can_log_in(services: RunningServices, username: str, *, timeout_s: float = 5.0) -> None:
    """Wait until the broker accepts ``username`` (a SIGHUP reload of the password file is asynchronous)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            link = await link_as(services, username)
        except MqttLinkError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)  # poll interval of a condition wait, not a synchronisation sleep
        else:
            await link.disconnect()
            return


async def next_message(client: Observer, *, timeout_s: float = 5.0) -> Received:
    async with asyncio.timeout(timeout_s):
        async for message in client.messages:
            return message
    raise AssertionError("no message")


async def link_as(
    services: RunningServices, account: str, *, client_id: str | None = None, **kwargs: Any
) -> MqttLink:
    """The project's own MQTT client, logged in as ``account`` (a gateway or a service).

    A gateway logs in as ``<gateway>-agent``, the one client id its account has: a second link as the same gateway
    (or its running edge agent) is disconnected by the broker when this one connects."""
    creds = services.accounts.credentials(account)
    return await MqttLink.connect(
        services.settings.host,
        services.settings.mqtt_port,
        client_id=client_id or login_client_id(services, account),
        username=creds.username,
        password=creds.password,
        **kwargs,
    )


# -- a broker of a test's own -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrivateBroker:
    """Mosquitto started by the project's code (``start_broker``: its mosquitto.conf, accounts, persistence with
    autosave) on a free loopback port, for tests that kill it or flood it: the session's broker stays clean."""

    settings: ServiceSettings
    topics: Topics
    accounts: BrokerAccounts
    supervisor: Supervisor
    process: ManagedProcess

    @property
    def port(self) -> int:
        return self.settings.mqtt_port

    @property
    def database(self) -> Path:
        """Where Mosquitto saves sessions, their queues and retained messages (autosave and at exit)."""
        return self.accounts.directory / "data" / "mosquitto.db"

    def login(self, account: str) -> tuple[str, str]:
        creds = self.accounts.credentials(account)
        return creds.username, creds.password

    def client_id(self, account: str) -> str:
        """The gateway's one client id, or a fresh one for a service account."""
        from energyhub.broker.dynsec import client_id_for  # local: see login_client_id

        role = self.accounts.accounts()[account]
        return client_id_for(account, role) or f"{account}-{uuid.uuid4().hex[:8]}"

    async def link(self, account: str, *, client_id: str | None = None, **kwargs: Any) -> MqttLink:
        username, password = self.login(account)
        return await MqttLink.connect(
            HOST,
            self.port,
            client_id=client_id or self.client_id(account),
            username=username,
            password=password,
            **kwargs,
        )

    def paho(self, account: str, *, client_id: str | None = None, **kwargs: Any) -> PahoClient:
        """A ``PahoClient`` logged in as ``account`` (not yet connected)."""
        username, password = self.login(account)
        return PahoClient(
            username=username, password=password, client_id=client_id or self.client_id(account), **kwargs
        )

    def saved_ns(self) -> int:
        """When the broker last saved its database (0: never)."""
        try:
            return self.database.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def kill_and_restart(self) -> None:
        """SIGKILL (no clean shutdown: only what the last autosave wrote survives), then start it again with the
        same config on the same port."""
        self.process.signal(signal.SIGKILL)
        assert self.process.popen is not None
        self.process.popen.wait(timeout=TIMEOUT_S)
        self.supervisor.restart(self.process)


@contextmanager
def private_broker(state_dir: Path, gateways: Iterable[str] = ("gw-a", "gw-b")) -> Iterator[PrivateBroker]:
    from energyhub.broker.accounts import BrokerAccounts

    settings = ServiceSettings(state_dir=state_dir, host=HOST, mqtt_port=free_port(), mqtt_tls_port=None)
    topics = Topics(site=settings.site, root=settings.topic_root)
    accounts = BrokerAccounts(state_dir.resolve() / "broker", topics)
    for gateway in gateways:
        accounts.add_gateway(gateway)
    with Supervisor() as supervisor:
        process = start_broker(supervisor, settings)
        yield PrivateBroker(
            settings=settings, topics=topics, accounts=accounts, supervisor=supervisor, process=process
        )


@functools.cache
def mosquitto_version() -> tuple[int, ...]:
    """The installed Mosquitto's version, e.g. (2, 0, 11)."""
    out = subprocess.run([find_binary("mosquitto"), "-h"], capture_output=True, text=True, check=False)
    found = re.search(r"mosquitto version (\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    assert found, f"no version in `mosquitto -h`: {out.stdout[:200]!r}"
    return tuple(int(part) for part in found.groups())


async def until(condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    """Wait, without blocking the event loop, until ``condition`` holds; raise ``TimeoutError`` naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.1f} s waiting for {what}")
        await asyncio.sleep(0.02)  # poll interval of a condition wait, not a synchronisation sleep


async def receive(link: MqttLink, count: int, timeout_s: float = TIMEOUT_S) -> list[IncomingMessage]:
    """Exactly the next ``count`` messages (fewer within ``timeout_s`` fails)."""
    out: list[IncomingMessage] = []
    async with asyncio.timeout(timeout_s):
        while len(out) < count:
            await link.wait_messages(None)
            out += link.take(count - len(out))
    return out


async def barrier(link: MqttLink, topic_filter: str) -> None:
    """A round trip through the broker: the broker handles a connection's packets in order and answers on one
    ordered stream, so once this SUBACK is in, what the broker wrote to us before it (deliveries it released
    on our PUBACKs, a resumed session's messages) is in ``link.messages``. ``topic_filter`` must be one the
    account may read and no one publishes on."""
    (granted,) = await asyncio.wait_for(link.subscribe([(topic_filter, 0)]), TIMEOUT_S)
    assert granted == 0, f"barrier subscription to {topic_filter} refused: 0x{granted:02x}"


class PahoClient:
    """A paho MQTT v5 client that records CONNACK, PUBACKs, SUBACKs, messages and a DISCONNECT.

    No network thread: the client's socket is served while a test waits on it (``_until``), so a refused login
    costs no reconnect back-off and every wait is a condition with a timeout.
    """

    def __init__(
        self,
        *,
        username: str | None,
        password: str | None,
        ca_cert: Path | None = None,
        client_id: str | None = None,
        will: tuple[str, bytes] | None = None,
        manual_ack: bool = False,
        max_inflight: int = 100,
    ) -> None:
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
        if username is not None:
            self.paho.username_pw_set(username, password)
        if ca_cert is not None:
            self.paho.tls_set(ca_certs=str(ca_cert))  # verifies the chain and the host name
        if will is not None:
            self.paho.will_set(will[0], will[1], qos=1, retain=False)
        self.paho.max_inflight_messages_set(max_inflight)
        self.connack: ReasonCode | None = None
        self.connack_properties: Properties | None = None
        self.session_present = False
        self.pubacks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self.disconnected: ReasonCode | None = None
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_publish = self._on_publish
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_message = self._on_message

    def _on_connect(self, _c: mqtt.Client, _u: object, flags: Any, rc: ReasonCode, props: Any) -> None:
        self.connack = rc
        self.connack_properties = props
        self.session_present = bool(flags.session_present)

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self.disconnected = rc

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties) -> None:
        self.pubacks[mid] = rc

    def _on_subscribe(self, _c: mqtt.Client, _u: object, mid: int, rcs: list[ReasonCode], _p: object) -> None:
        self.subacks[mid] = rcs

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        self.messages.append(message)

    def _until(self, condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
        def served() -> bool:
            self.paho.loop(timeout=0.02)  # read and write what is pending, run the callbacks
            # paho reads one packet per call when it has nothing outgoing: take what is already here too.
            for _ in range(10_000):
                sock = self.paho.socket()
                if sock is None or not select.select([sock], [], [], 0)[0]:
                    break
                self.paho.loop_read()
            return condition()

        wait_for(served, timeout_s=timeout_s, interval_s=0.0, what=what)

    def connect(
        self,
        port: int,
        *,
        clean_start: bool = True,
        session_expiry_s: int | None = None,
        receive_maximum: int | None = None,
    ) -> ReasonCode:
        """Connect and return the CONNACK's reason code; ``session_expiry_s`` asks for a persistent session,
        ``receive_maximum`` bounds the QoS 1 messages the broker sends before they are acknowledged."""
        properties = None
        if session_expiry_s is not None or receive_maximum is not None:
            properties = Properties(PacketTypes.CONNECT)
            if session_expiry_s is not None:
                properties.SessionExpiryInterval = session_expiry_s
            if receive_maximum is not None:
                properties.ReceiveMaximum = receive_maximum
        self.connack = None
        self.paho.connect(HOST, port, keepalive=30, clean_start=clean_start, properties=properties)
        self._until(lambda: self.connack is not None, "CONNACK")
        assert self.connack is not None
        return self.connack

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        return self.publish_many([(topic, payload)], retain=retain)[0]

    def publish_many(
        self, messages: Iterable[tuple[str, bytes]], *, retain: bool = False
    ) -> list[ReasonCode]:
        """Publish all at QoS 1 at once; return the PUBACKs' reason codes in order."""
        mids = []
        for topic, payload in messages:
            info = self.paho.publish(topic, payload, qos=1, retain=retain)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"paho did not take the message: {info.rc}"
            self.pubacks.pop(info.mid, None)  # ids repeat after 65,535: not an older PUBACK of this id
            mids.append(info.mid)
        self._until(lambda: all(mid in self.pubacks for mid in mids), f"{len(mids)} PUBACKs")
        return [self.pubacks[mid] for mid in mids]

    def subscribe(self, topic_filter: str) -> ReasonCode:
        """Subscribe at QoS 1 and return the SUBACK's reason code."""
        _, mid = self.paho.subscribe(topic_filter, qos=1)
        assert mid is not None
        self.subacks.pop(mid, None)  # ids repeat after 65,535
        self._until(lambda: mid in self.subacks, f"SUBACK for {topic_filter}")
        return self.subacks[mid][0]

    def ack(self, messages: Iterable[mqtt.MQTTMessage]) -> None:
        """Acknowledge received QoS 1 messages (``manual_ack``) and write the PUBACKs."""
        for message in messages:
            self.paho.ack(message.mid, message.qos)
        self.serve()

    def received(self) -> dict[str, list[bytes]]:
        result: dict[str, list[bytes]] = {}
        for message in self.messages:
            result.setdefault(message.topic, []).append(bytes(message.payload))
        return result

    def expect(self, topic: str, payload: bytes) -> None:
        """Wait until ``payload`` has arrived on ``topic`` (older retained messages may come first)."""
        self._until(lambda: payload in self.received().get(topic, []), f"{payload!r} on {topic}")

    def wait_until(self, condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
        """Serve the connection until ``condition`` holds."""
        self._until(condition, what, timeout_s)

    def serve(self) -> None:
        """Handle what the broker sent so far (a DISCONNECT, say) without waiting."""
        self.paho.loop(timeout=0.01)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop(timeout=0.01)  # flush the DISCONNECT
