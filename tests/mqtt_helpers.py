"""Small helpers for tests that talk to the real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from energyhub.cli.services import RunningServices
from energyhub.io.mqtt import MqttLink
from energyhub.runtime.supervisor import wait_for

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


@asynccontextmanager
async def mqtt_client(services: RunningServices, username: str) -> AsyncIterator[aiomqtt.Client]:
    creds = services.accounts.credentials(username)
    client = aiomqtt.Client(
        hostname=services.settings.host,
        port=services.settings.mqtt_port,
        username=creds.username,
        password=creds.password,
        identifier=login_client_id(services, username),
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    async with client:
        yield client


async def can_log_in(services: RunningServices, username: str, *, timeout_s: float = 5.0) -> None:
    """Wait until the broker accepts ``username`` (a SIGHUP reload of the password file is asynchronous)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            async with mqtt_client(services, username):
                return
        except aiomqtt.MqttError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)  # poll interval of a condition wait, not a synchronisation sleep


async def next_message(client: aiomqtt.Client, *, timeout_s: float = 5.0) -> aiomqtt.Message:
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
    ) -> None:
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self.paho.username_pw_set(username, password)
        if ca_cert is not None:
            self.paho.tls_set(ca_certs=str(ca_cert))  # verifies the chain and the host name
        if will is not None:
            self.paho.will_set(will[0], will[1], qos=1, retain=False)
        self.paho.max_inflight_messages_set(100)
        self.connack: ReasonCode | None = None
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

    def _on_connect(self, _c: mqtt.Client, _u: object, flags: Any, rc: ReasonCode, _p: object) -> None:
        self.connack = rc
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
            return condition()

        wait_for(served, timeout_s=timeout_s, interval_s=0.0, what=what)

    def connect(
        self, port: int, *, clean_start: bool = True, session_expiry_s: int | None = None
    ) -> ReasonCode:
        """Connect and return the CONNACK's reason code; ``session_expiry_s`` asks for a persistent session."""
        properties = None
        if session_expiry_s is not None:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = session_expiry_s
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
        mids = [self.paho.publish(topic, payload, qos=1, retain=retain).mid for topic, payload in messages]
        self._until(lambda: all(mid in self.pubacks for mid in mids), f"{len(mids)} PUBACKs")
        return [self.pubacks[mid] for mid in mids]

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

    def wait_until(self, condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
        """Serve the connection until ``condition`` holds."""
        self._until(condition, what, timeout_s)

    def serve(self) -> None:
        """Handle what the broker sent so far (a DISCONNECT, say) without waiting."""
        self.paho.loop(timeout=0.01)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop(timeout=0.01)  # flush the DISCONNECT
