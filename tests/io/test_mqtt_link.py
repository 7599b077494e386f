"""The gateway's own MQTT 5 client against the real, locked-down Mosquitto."""

from __future__ import annotations

import asyncio

import pytest

from energyhub.io.mqtt import MqttLink, MqttLinkError, Will
from energyhub.wire.topics import Topics
from tests.mqtt_helpers import link_as, mqtt_client, next_message


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
