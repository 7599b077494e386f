"""Small helpers for tests that talk to the real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
from paho.mqtt.enums import MQTTProtocolVersion

from hub.mqtt_link import MqttLink
from hub.services import RunningServices


@asynccontextmanager
async def mqtt_client(services: RunningServices, username: str) -> AsyncIterator[aiomqtt.Client]:
    creds = services.accounts.credentials(username)
    client = aiomqtt.Client(
        hostname=services.settings.host,
        port=services.settings.mqtt_port,
        username=creds.username,
        password=creds.password,
        identifier=f"{username}-{uuid.uuid4().hex[:8]}",
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
    """The project's own MQTT client, logged in as ``account`` (a gateway or a service)."""
    creds = services.accounts.credentials(account)
    return await MqttLink.connect(
        services.settings.host,
        services.settings.mqtt_port,
        client_id=client_id or f"{account}-{uuid.uuid4().hex[:8]}",
        username=creds.username,
        password=creds.password,
        **kwargs,
    )
