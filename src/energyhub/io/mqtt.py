"""A lean MQTT 5 client: QoS 1 publishing with PUBACK tracking, subscriptions, Last Will, acknowledgement on demand.

The one MQTT client of every service (edge agent, ingest, control, API). docs/mqtt.md gives the reasons and the
evidence: against paho-mqtt 2.x in the same run (bench/mqtt_clients.py) it takes about a fifth of the CPU per
published QoS 1 message and a tenth per received one, and the protocol cases the services rely on (a persistent
session across a reconnect, QoS 1 in flight when the broker is killed, packet ids wrapping, Receive Maximum) are
proven on a real Mosquitto for it (tests/io/test_mqtt_link.py) and for paho (tests/io/test_mqtt_paho.py).

It speaks only what the services need (CONNECT, PUBLISH QoS 0/1 both ways, PUBACK, SUBSCRIBE, PINGREQ,
DISCONNECT), writes a whole batch of PUBLISH packets in one socket write, keeps to the broker's Receive Maximum, and
reports each PUBACK's reason code. For the ingest: acknowledging a received message only once it is stored
(``manual_ack``), a persistent session, and a Receive Maximum, which makes the broker hold back further messages
while that many are unacknowledged: the ingest's back-pressure when the database is away. No QoS 2; nothing kept
across connections on the client's side: a caller sends again what it has no PUBACK for (the agent from its buffer).
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

_T = TypeVar("_T")

__all__ = ["Batch", "IncomingMessage", "MqttLink", "MqttLinkError", "Will"]

_CONNECT, _CONNACK, _PUBLISH, _PUBACK = 0x10, 0x20, 0x30, 0x40
_SUBSCRIBE, _SUBACK, _PINGREQ, _PINGRESP, _DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0
_H = struct.Struct(">H")
_PUBACK_PACKET = struct.Struct(">BBH")  # type, remaining length 2, packet id: success, no reason code
_PROP_RECEIVE_MAXIMUM = 0x21
_PROP_SESSION_EXPIRY = 0x11
# MQTT 5 property identifiers by wire type, to skip the ones a gateway has no use for.
_BYTE_PROPS = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_TWO_BYTE_PROPS = {0x13, 0x21, 0x22, 0x23}
_FOUR_BYTE_PROPS = {0x02, 0x11, 0x18, 0x27}
_STRING_PROPS = {0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F}
_BINARY_PROPS = {0x09, 0x16}
_CONNACK_REASONS = {
    0x80: "unspecified error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
}


class MqttLinkError(ConnectionError):
    """The connection was refused, lost or broken; the message says which and why."""


def _tls_failure(host: str, port: int, exc: ssl.SSLError) -> str:
    """Why a TLS handshake failed, in words that point at the fix (the CA file, or a plain port)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS handshake with the broker at {host}:{port} failed: certificate verify failed "
            f"({exc.verify_message}): check mqtt.ca_file (--mqtt-ca-file) is the broker's CA and the broker's "
            f"certificate names {host}"
        )
    return (
        f"TLS handshake with the broker at {host}:{port} failed ({exc.reason or exc}): is it the broker's TLS "
        "port? a plain port takes no mqtt.ca_file (--mqtt-ca-file)"
    )


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class IncomingMessage(NamedTuple):
    """One received PUBLISH. A named tuple: immutable, and cheap to make (a frozen dataclass took 2.5 times as
    long, measured), which counts at the tens of thousands a second an ingest drain receives (bench/ingest.py)."""

    topic: str
    payload: bytes
    qos: int = 0
    packet_id: int = 0  # for ``MqttLink.ack`` (QoS 1, manual acknowledgement)
    duplicate: bool = False  # the broker sends it again: an earlier delivery was not acknowledged
    retained: bool = False  # from the broker's store (sent on subscribing), not published just now


class Batch:
    """PUBLISH packets sent together; ``done`` resolves when the broker acknowledged every one of them."""

    __slots__ = ("done", "pending", "refused")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.done: asyncio.Future[None] = loop.create_future()
        self.pending = count
        self.refused: list[tuple[int, int]] = []  # (index in the batch, PUBACK reason code)
        if count == 0:
            self.done.set_result(None)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return _H.pack(len(data)) + data


def _binary(data: bytes) -> bytes:
    return _H.pack(len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise MqttLinkError("malformed variable byte integer from the broker")


def _properties(data: bytes, pos: int) -> tuple[dict[int, int], int]:
    """Parse a property block; return the integer-valued ones by id and the position after it."""
    length, pos = _read_varint(data, pos)
    end = pos + length
    found: dict[int, int] = {}
    while pos < end:
        prop = data[pos]
        pos += 1
        if prop in _BYTE_PROPS:
            found[prop] = data[pos]
            pos += 1
        elif prop in _TWO_BYTE_PROPS:
            found[prop] = _H.unpack_from(data, pos)[0]
            pos += 2
        elif prop in _FOUR_BYTE_PROPS:
            found[prop] = struct.unpack_from(">I", data, pos)[0]
            pos += 4
        elif prop == 0x0B:  # subscription identifier
            found[prop], pos = _read_varint(data, pos)
        elif prop in _STRING_PROPS or prop in _BINARY_PROPS:
            pos += 2 + _H.unpack_from(data, pos)[0]
        elif prop == 0x26:  # user property: a string pair
            pos += 2 + _H.unpack_from(data, pos)[0]
            pos += 2 + _H.unpack_from(data, pos)[0]
        else:
            raise MqttLinkError(f"unknown MQTT property 0x{prop:02x} from the broker")
    return found, end


class _Protocol(asyncio.Protocol):
    def __init__(self, link: MqttLink) -> None:
        self.link = link
        self.buffer = bytearray()

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._lost(MqttLinkError(f"connection to the broker lost: {exc or 'closed by the broker'}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        buf = self.buffer
        pos = 0
        try:
            while len(buf) - pos >= 2:
                first = buf[pos]
                # Remaining length: 1 to 4 bytes; wait for more data when the packet is not all here yet.
                length, shift, i, complete = 0, 0, pos + 1, False
                while i < len(buf) and i - pos <= 4:
                    byte = buf[i]
                    i += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        complete = True
                        break
                    shift += 7
                if not complete:
                    if i - pos > 4:
                        raise MqttLinkError("malformed packet length from the broker")
                    break
                if i + length > len(buf):
                    break
                self.link._packet(first, bytes(buf[i : i + length]))
                pos = i + length
            if self.link._outbox and not self.link.closed.done():
                self.link._send_window()  # PUBACKs in this chunk may have opened the window
        except (MqttLinkError, IndexError, struct.error, UnicodeDecodeError) as exc:
            self.link._lost(
                exc if isinstance(exc, MqttLinkError) else MqttLinkError(f"malformed packet: {exc}")
            )
            if self.link._transport is not None:
                self.link._transport.abort()
            return
        del buf[:pos]


class MqttLink:
    """One MQTT 5 connection. Use ``await MqttLink.connect(...)``; ``closed`` resolves (with the error) when it ends."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, keepalive_s: int, *, manual_ack: bool = False
    ) -> None:
        self._loop = loop
        self._manual_ack = manual_ack
        self.session_present = False
        self._transport: asyncio.Transport | None = None
        self._connack: asyncio.Future[tuple[int, dict[int, int]]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        # Received, not yet taken; a plain deque (``_arrival`` wakes a waiter): asyncio.Queue costs more per message.
        self.messages: deque[IncomingMessage] = deque()
        self.receive_maximum = 65535
        self._keepalive_s = keepalive_s
        self._next_id = 0
        self._inflight: dict[int, tuple[Batch, int]] = {}
        # PUBLISH packets not yet written: (batch, index, fixed header, topic, payload), in order.
        self._outbox: deque[tuple[Batch, int, int, str, bytes]] = deque()
        self._suback: dict[int, asyncio.Future[bytes]] = {}
        self._last_sent = loop.time()
        self._last_heard = loop.time()
        self._pinger: asyncio.Task[None] | None = None
        self._session_flag = False
        self._arrival = asyncio.Event()

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 15,
        will: Will | None = None,
        tls: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
        session_expiry_s: int = 0,
        receive_maximum: int | None = None,
        manual_ack: bool = False,
    ) -> MqttLink:
        """Connect. ``session_expiry_s`` > 0 keeps the session (subscriptions, unacknowledged and queued messages)
        across reconnects with the same ``client_id``; ``receive_maximum`` bounds the QoS 1 messages the broker
        sends before we acknowledge; with ``manual_ack`` nothing received is acknowledged until ``ack``."""
        loop = asyncio.get_running_loop()
        link = cls(loop, keepalive_s, manual_ack=manual_ack)
        try:
            async with asyncio.timeout(timeout_s):
                transport, _ = await loop.create_connection(
                    lambda: _Protocol(link), host, port, ssl=tls, server_hostname=host if tls else None
                )
                link._transport = transport
                transport.write(
                    link._connect_packet(
                        client_id, username, password, will, session_expiry_s, receive_maximum
                    )
                )
                reason, props = await link._connack
        except ssl.SSLError as exc:
            link.abort()
            raise MqttLinkError(_tls_failure(host, port, exc)) from None
        except (OSError, TimeoutError) as exc:  # MqttLinkError too: the connection lost before CONNACK
            link.abort()
            if tls is None and link._transport is not None:
                # Mosquitto's TLS listener drops a plain client without a word: say what that usually means.
                raise MqttLinkError(
                    f"the broker at {host}:{port} closed the connection before answering MQTT ({exc}): is it a "
                    "TLS port? give the broker's CA (mqtt.ca_file, --mqtt-ca-file) or use its plain port"
                ) from None
            if tls is not None and link._transport is None and isinstance(exc, ConnectionResetError):
                # A plain listener takes the TLS ClientHello for a broken MQTT packet and drops the connection.
                raise MqttLinkError(
                    f"TLS handshake with the broker at {host}:{port} failed (the connection was reset): is it the "
                    "broker's TLS port? a plain port takes no mqtt.ca_file (--mqtt-ca-file)"
                ) from None
            if isinstance(exc, MqttLinkError):
                raise
            raise MqttLinkError(
                f"cannot connect to the broker at {host}:{port}: {exc or 'timed out'}"
            ) from None
        if reason >= 0x80:
            link.abort()
            why = _CONNACK_REASONS.get(reason, f"reason code 0x{reason:02x}")
            raise MqttLinkError(f"the broker at {host}:{port} refused the connection: {why}")
        link.receive_maximum = props.get(_PROP_RECEIVE_MAXIMUM, 65535)
        link.session_present = link._session_flag
        if keepalive_s > 0:  # 0: no keepalive (MQTT), so no pings and no silence limit
            link._pinger = loop.create_task(link._keepalive())
        return link

    def _connect_packet(
        self,
        client_id: str,
        username: str | None,
        password: str | None,
        will: Will | None,
        session_expiry_s: int,
        receive_maximum: int | None,
    ) -> bytes:
        # Clean start unless the session is to be kept: the gateway keeps what it missed in its on-disk buffer.
        flags = 0x00 if session_expiry_s > 0 else 0x02
        payload = _string(client_id)
        if will is not None:
            flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
            payload += b"\x00" + _string(will.topic) + _binary(will.payload)
        if username is not None:
            flags |= 0x80
            payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _binary(password.encode())
        props = bytes((_PROP_SESSION_EXPIRY,)) + struct.pack(">I", session_expiry_s)
        if receive_maximum is not None:
            props += bytes((_PROP_RECEIVE_MAXIMUM,)) + _H.pack(receive_maximum)
        header = (
            _string("MQTT") + bytes((5, flags)) + _H.pack(self._keepalive_s) + _varint(len(props)) + props
        )
        return _packet(_CONNECT, header + payload)

    # -- sending ------------------------------------------------------------------------------------------------
    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._inflight and self._next_id not in self._suback:
                return self._next_id
        raise MqttLinkError("no free packet identifier: 65535 messages in flight")

    def _open_transport(self) -> asyncio.Transport:
        if self._transport is None or self.closed.done():
            raise MqttLinkError("not connected to the broker")
        return self._transport

    def _write(self, data: bytes) -> None:
        self._open_transport().write(data)
        self._last_sent = self._loop.time()

    def publish_batch(
        self, messages: Sequence[tuple[str, bytes]], *, qos: int = 1, retain: bool = False
    ) -> Batch:
        """Send every message, in one write as far as the broker's Receive Maximum allows (the rest go out, in
        order, as PUBACKs free the window); the batch's ``done`` resolves once each has its PUBACK (QoS 1)."""
        self._open_transport()  # before queuing: a full window would not write, so would not find the link gone
        batch = Batch(self._loop, len(messages) if qos else 0)
        first = _PUBLISH | (qos << 1) | (1 if retain else 0)
        self._outbox.extend(
            (batch, index, first, topic, payload) for index, (topic, payload) in enumerate(messages)
        )
        self._send_window()
        return batch

    def _send_window(self) -> None:
        """Write queued PUBLISH packets while fewer QoS 1 messages than the broker's Receive Maximum are in flight.
        Sending more is a protocol error the broker answers by closing the connection."""
        outbox, parts = self._outbox, []
        while outbox:
            batch, index, first, topic, payload = outbox[0]
            topic_bytes = topic.encode()
            if (first >> 1) & 0x03:  # QoS 1: counts against the window
                if len(self._inflight) >= self.receive_maximum:
                    break
                packet_id = self._packet_id()
                self._inflight[packet_id] = (batch, index)
                head = _H.pack(len(topic_bytes)) + topic_bytes + _H.pack(packet_id) + b"\x00"
            else:
                head = _H.pack(len(topic_bytes)) + topic_bytes + b"\x00"
            outbox.popleft()
            parts.append(bytes((first,)) + _varint(len(head) + len(payload)) + head + payload)
        if parts:
            self._write(b"".join(parts))

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish one message and wait for its PUBACK; a refusal raises with the broker's reason code."""
        batch = self.publish_batch([(topic, payload)], qos=qos, retain=retain)
        await self.wait(batch.done)
        if batch.refused:
            raise MqttLinkError(
                f"the broker refused a message on {topic} (reason 0x{batch.refused[0][1]:02x})"
            )

    async def subscribe(
        self, filters: Sequence[tuple[str, int]], *, retain_as_published: bool = False
    ) -> list[int]:
        """Subscribe and return the granted QoS (or reason code) per filter.

        ``retain_as_published`` keeps the publisher's retain flag on live deliveries (MQTT 5), so a consumer can
        tell a message published with retain from one that was not; without it only stored ones carry the flag.
        """
        packet_id = self._packet_id()
        options = 0x08 if retain_as_published else 0x00
        body = (
            _H.pack(packet_id)
            + b"\x00"
            + b"".join(_string(f) + bytes((qos | options,)) for f, qos in filters)
        )
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._suback[packet_id] = future
        self._write(_packet(_SUBSCRIBE, body))
        codes = await self.wait(future)
        return list(codes)

    def ack(self, messages: Sequence[IncomingMessage]) -> None:
        """Acknowledge received QoS 1 messages (``manual_ack``), in the order received, in one write."""
        pack = _PUBACK_PACKET.pack
        data = b"".join([pack(_PUBACK, 2, m.packet_id) for m in messages if m.qos == 1])
        if data:
            self._write(data)

    async def next_message(self) -> IncomingMessage:
        """The next message on a subscribed topic; raises when the link ends first."""
        while not await self.wait_messages(None):
            pass
        return self.messages.popleft()

    async def wait_messages(self, timeout_s: float | None) -> bool:
        """Wait until a message is queued (True) or ``timeout_s`` passes (False); raise when the link ends.

        Nothing is taken from the queue while waiting, so a cancelled or timed-out wait loses no message.
        """
        if self.messages:
            return True
        self._arrival.clear()
        waiting: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._arrival.wait()), self.closed}
        try:
            await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in waiting:
                if future is not self.closed:
                    future.cancel()
        if self.messages:
            return True
        if self.closed.done():
            self.closed.result()  # raises the reason the link ended
            raise MqttLinkError("connection to the broker closed")
        return False

    def take(self, limit: int) -> list[IncomingMessage]:
        """Up to ``limit`` queued messages, at once, without waiting."""
        queued = self.messages
        if limit >= len(queued):
            out = list(queued)
            queued.clear()
            return out
        return [queued.popleft() for _ in range(limit)]

    async def wait(self, future: asyncio.Future[_T]) -> _T:
        """Wait for ``future`` (a batch's ``done``), raising instead when the link ends first."""
        waiting: set[asyncio.Future[Any]] = {future, self.closed}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if future.done():
            return future.result()
        self.closed.result()  # raises the reason the link ended
        raise MqttLinkError("connection to the broker closed")

    async def disconnect(self) -> None:
        """A clean goodbye: the broker does not send the Last Will."""
        if self._transport is not None and not self.closed.done():
            self._transport.write(bytes((_DISCONNECT, 0)))
            self._transport.close()
        self._finish(None)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._finish(MqttLinkError("connection aborted"))

    # -- receiving ----------------------------------------------------------------------------------------------
    def _packet(self, first: int, body: bytes) -> None:
        self._last_heard = self._loop.time()
        kind = first & 0xF0
        if kind == _PUBACK:
            packet_id = _H.unpack_from(body, 0)[0]
            reason = body[2] if len(body) > 2 else 0
            entry = self._inflight.pop(packet_id, None)
            if entry is None:
                return
            batch, index = entry
            if reason >= 0x80:
                batch.refused.append((index, reason))
            batch.pending -= 1
            if batch.pending == 0 and not batch.done.done():
                batch.done.set_result(None)
        elif kind == _PUBLISH:
            qos = (first >> 1) & 0x03
            topic_length = _H.unpack_from(body, 0)[0]
            topic = body[2 : 2 + topic_length].decode()
            pos = 2 + topic_length
            packet_id = 0
            if qos:
                packet_id = _H.unpack_from(body, pos)[0]
                pos += 2
            if body[pos] == 0:  # no properties, as almost every message: skip the parser
                pos += 1
            else:
                _, pos = _properties(body, pos)
            self.messages.append(
                IncomingMessage(topic, body[pos:], qos, packet_id, bool(first & 0x08), bool(first & 0x01))
            )
            self._arrival.set()
            if qos == 1 and not self._manual_ack:
                self._write(bytes((_PUBACK, 2)) + _H.pack(packet_id))
        elif kind == _CONNACK:
            if not self._connack.done():
                props, _ = _properties(body, 2) if len(body) > 2 else ({}, 2)
                self._session_flag = bool(body[0] & 0x01)
                self._connack.set_result((body[1], props))
        elif kind == _SUBACK:
            packet_id = _H.unpack_from(body, 0)[0]
            _, pos = _properties(body, 2)
            future = self._suback.pop(packet_id, None)
            if future is not None and not future.done():
                future.set_result(body[pos:])
        elif kind == _DISCONNECT:
            reason = body[0] if body else 0
            self._lost(MqttLinkError(f"the broker disconnected us (reason 0x{reason:02x})"))
        # PINGRESP needs nothing beyond the _last_heard update above.

    async def _keepalive(self) -> None:
        interval = self._keepalive_s
        while not self.closed.done():
            await asyncio.sleep(interval / 4)
            now = self._loop.time()
            if now - self._last_heard > 1.5 * interval:
                self._lost(MqttLinkError(f"the broker has not answered for {now - self._last_heard:.0f} s"))
                if self._transport is not None:
                    self._transport.abort()
                return
            # Also when we send but hear nothing (QoS 0 has no PUBACK): only a PINGRESP then shows the broker is there.
            if now - self._last_sent > interval / 2 or now - self._last_heard > interval / 2:
                self._write(bytes((_PINGREQ, 0)))

    def _lost(self, exc: MqttLinkError) -> None:
        if not self._connack.done():
            self._connack.set_exception(exc)
        self._finish(exc)

    def _finish(self, exc: MqttLinkError | None) -> None:
        if self._pinger is not None and self._pinger is not asyncio.current_task():
            self._pinger.cancel()
        self._arrival.set()
        self._outbox.clear()  # never written: their batches end with the link, as the in-flight ones do
        if not self.closed.done():
            if exc is None:
                self.closed.set_result(None)
            else:
                self.closed.set_exception(exc)
                self.closed.exception()  # retrieved here so an unawaited link does not log it
