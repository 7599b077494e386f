"""The API's one MQTT connection: the live view reads through it and the overrides publish through it.

One ``MqttLink`` for the whole process, kept up by ``energyhub.runtime.connection.keep_connected`` (jittered
back-off, TLS and login from the settings). Before issue 16 every override opened a connection of its own; now a
request only writes one PUBLISH on the link that is already up. While the link is down a publish fails at once
with ``BrokerUnavailable`` (the route answers 503), and a broker that takes the packet but never acknowledges it
fails the publish after ``publish_timeout_s``, so no request waits for the broker to come back.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence

from energyhub.io.mqtt import IncomingMessage, MqttLink, MqttLinkError
from energyhub.runtime.connection import ConnectedSettings, keep_connected

__all__ = ["BrokerLink", "BrokerRefused", "BrokerUnavailable"]

log = logging.getLogger(__name__)
# Messages handed to the live view per wake-up: a burst is taken in one go, without starving the event loop.
TAKE_AT_ONCE = 1000


class BrokerUnavailable(ConnectionError):
    """The broker is not connected or did not acknowledge in time; the message says which. ``maybe_sent``: the
    message was written and may yet reach the gateway (only its PUBACK did not come)."""

    def __init__(self, message: str, *, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


class BrokerRefused(ConnectionError):
    """The broker answered, but refused the message (its PUBACK reason code)."""


class BrokerLink:
    """Connect, subscribe to ``filters``, hand every message to ``on_message``; publish on the same link."""

    def __init__(
        self,
        settings: ConnectedSettings,
        filters: Sequence[tuple[str, int]],
        on_message: Callable[[IncomingMessage], None],
        *,
        publish_timeout_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.filters = list(filters)
        self.on_message = on_message
        self.publish_timeout_s = publish_timeout_s
        # A service account may connect with any client id; a fixed one would make two API instances kick each
        # other off the broker.
        self.client_id = f"ehub-api-{uuid.uuid4().hex[:12]}"
        self.ready = asyncio.Event()  # set while the link is up and subscribed
        self.connections = 0  # links made since start: 1 unless the broker went away
        self.last_error: str | None = None  # why the last link ended, for the 503 while it is down
        self._link: MqttLink | None = None

    @property
    def where(self) -> str:
        return f"{self.settings.mqtt_host}:{self.settings.mqtt_port}"

    async def run(self) -> None:
        """Until cancelled: keep the link up and read it."""
        await keep_connected(self._connect, self._use, what="api", ready=self.ready, on_lost=self._lost)

    def _lost(self, exc: Exception) -> None:
        self.last_error = str(exc)

    async def _connect(self) -> MqttLink:
        return await self.settings.connect_mqtt(self.client_id)

    async def _use(self, link: MqttLink) -> None:
        self.connections += 1
        self._link = link  # overrides may go out while the subscriptions are still being made
        try:
            # Retain as published: a measurement published retained shows as such live too, not only when the
            # broker hands it out from its store (the live view ignores retained readings and acks).
            granted = await link.subscribe(self.filters, retain_as_published=True)
            refused = [f for (f, _), code in zip(self.filters, granted, strict=True) if code >= 0x80]
            if refused:
                raise MqttLinkError(f"the broker refused the subscriptions {refused} (codes {granted})")
            self.ready.set()
            log.info("connected to the broker at %s as %s", self.where, self.client_id)
            while True:
                await link.wait_messages(None)  # raises when the link ends
                for message in link.take(TAKE_AT_ONCE):
                    try:
                        self.on_message(message)
                    except Exception:  # a bug on one message must not stop the live view and the overrides
                        log.exception("could not handle the message on %s", message.topic)
        except asyncio.CancelledError:
            await link.disconnect()  # the API stops: a clean goodbye, not a reset the broker logs as an error
            raise
        finally:
            self._link = None

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK, ``publish_timeout_s`` at most."""
        link = self._link
        if link is None or link.closed.done():
            why = f"; last error: {self.last_error}" if self.last_error else ""
            raise BrokerUnavailable(f"not connected to the broker at {self.where} (reconnecting{why})")
        try:
            batch = link.publish_batch([(topic, payload)], qos=1)
        except MqttLinkError as exc:  # found gone before a byte was written
            raise BrokerUnavailable(f"the broker at {self.where} is away: {exc}") from None
        try:
            async with asyncio.timeout(self.publish_timeout_s):
                await link.wait(batch.done)
        except TimeoutError:
            raise BrokerUnavailable(
                f"the broker at {self.where} did not acknowledge it within {self.publish_timeout_s:g} s",
                maybe_sent=True,
            ) from None
        except MqttLinkError as exc:  # written, then the link broke: the broker may have taken it
            raise BrokerUnavailable(
                f"the connection to the broker at {self.where} broke before it acknowledged: {exc}",
                maybe_sent=True,
            ) from None
        if batch.refused:
            raise BrokerRefused(
                f"the broker at {self.where} refused the message on {topic} "
                f"(reason code 0x{batch.refused[0][1]:02x})"
            )
