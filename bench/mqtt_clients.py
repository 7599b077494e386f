"""The project's MQTT client (``MqttLink``) against paho-mqtt 2.x, in the same run, on the same real Mosquitto.

Mosquitto is started as `energyhub services` starts it (src/energyhub/cli/services.py: the project's mosquitto.conf,
dynamic-security accounts, persistence, Receive Maximum 100 announced to clients) on a free loopback port. Two
patterns, each client in turn, in rotating order per round so drift in this machine's load hits all alike:

(a) edge: a gateway account publishes N measurements (an SDM630's values, encoded with energyhub.wire.messages as
    the agent does) at QoS 1, one poll of POLL devices at a time, and waits for every PUBACK of a poll before it
    sends the next (the agent's ``_send``). From the first PUBLISH to the last PUBACK.
(b) ingest: N measurements are queued for an offline persistent session (published beforehand, not measured); the
    client connects to that session (clean start off, session expiry, Receive Maximum 15,000, manual
    acknowledgement), takes what has arrived in batches of up to 5,000, "stores" each batch (touches every
    payload: the same for every client) and only then acknowledges its messages. From CONNECT until all N are
    acknowledged and a SUBSCRIBE round trip after the last PUBACK has come back (so the PUBACKs are at the broker).

The broker runs the project's mosquitto.conf, which sets ``set_tcp_nodelay true``. Without it (Mosquitto's
default; ``--no-tcp-nodelay`` takes the line out) the broker writes each PUBACK as a small segment and Nagle holds
the second one until the client's delayed ACK of the first, some 40 ms: every poll's round trip then takes ~40 ms
whichever client sends it, which hides the clients' own cost.

Figures: messages/s (wall) and CPU µs per message (this process's CPU time, ``time.process_time``, all threads:
the broker runs in its own process). Medians over the rounds; the ratio of each client to MqttLink is taken per
round (all clients ran in it, one after the other) and its median quoted.

Clients: MqttLink; paho driven by asyncio through its socket callbacks (``paho-asyncio``, how an asyncio service
would use it and how aiomqtt does); paho with its own network thread (``paho-thread``, ``loop_start``, the
program itself synchronous); aiomqtt, if installed, for reference (it has no manual acknowledgement: its ingest
figure acknowledges on receipt).

    .venv/bin/python bench/mqtt_clients.py                     # 5 rounds; about 90 s
    .venv/bin/python bench/mqtt_clients.py --rounds 3 --clients own,paho-asyncio
    .venv/bin/python bench/mqtt_clients.py --no-tcp-nodelay --rounds 1 --edge-messages 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

import energyhub.cli.services as services_module  # noqa: E402
from energyhub.cli.services import broker_accounts, free_port, start_broker  # noqa: E402
from energyhub.io.mqtt import MqttLink  # noqa: E402
from energyhub.runtime.settings import ServiceSettings  # noqa: E402
from energyhub.runtime.supervisor import Supervisor  # noqa: E402
from energyhub.wire.messages import Measurement, Quality, encode  # noqa: E402
from energyhub.wire.profile import load_profile  # noqa: E402
from energyhub.wire.topics import Topics  # noqa: E402

try:
    import aiomqtt
except ImportError:  # not a dependency of the services any more
    aiomqtt = None

HOST = "127.0.0.1"
GATEWAY = "gw-bench"
POLL = 20  # devices per poll: the messages the agent sends together
RECEIVE_MAXIMUM = 15_000  # the ingest's max_pending
STORE_BATCH = 5_000  # the ingest's batch_max_points
BROKER_RECEIVE_MAXIMUM = 100  # max_inflight_messages in the project's mosquitto.conf
SESSION_EXPIRY_S = 3600
TIMEOUT_S = 60.0
QUIET = logging.getLogger("bench.aiomqtt")  # aiomqtt warns of every publish beyond 10 pending
QUIET.setLevel(logging.ERROR)


def without_tcp_nodelay() -> None:
    """Have ``start_broker`` write the project's mosquitto.conf without ``set_tcp_nodelay true`` (Mosquitto's default)."""
    write = services_module.write_mosquitto_conf

    def write_without_nodelay(config: Any, accounts: Any) -> Path:
        path = write(config, accounts)
        path.write_text(path.read_text().replace("set_tcp_nodelay true\n", ""))
        return path

    services_module.write_mosquitto_conf = write_without_nodelay  # type: ignore[assignment]


class Env:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.topics = Topics(site=settings.site, root=settings.topic_root)
        accounts = broker_accounts(settings)
        self.gateway = accounts.credentials(GATEWAY)
        self.ingest = accounts.credentials("ehub-ingest")
        self.port = settings.mqtt_port
        self.barrier = f"{self.topics.base}/control/bench-barrier"  # no one publishes here

    def edge_login(self) -> dict[str, Any]:
        return {
            "client_id": f"{GATEWAY}-agent",
            "username": self.gateway.username,
            "password": self.gateway.password,
        }


def measurements(topics: Topics, n: int) -> list[tuple[str, bytes]]:
    """N messages as the agent sends them: one per device per poll, an SDM630's values each."""
    names = [v.name for v in load_profile("eastron_sdm630").values]
    t0 = datetime.now(UTC)
    out = []
    for seq in range(n):
        device = seq % POLL
        values: dict[str, float | None] = {name: 230.0 + 0.37 * i + seq % 97 for i, name in enumerate(names)}
        m = Measurement(ts=t0, session=1, seq=seq, quality=Quality.GOOD, values=values)
        out.append((topics.measurement(GATEWAY, f"meter-{device:02d}"), encode(m)))
    return out


def store(payloads: list[bytes]) -> int:
    """The simulated database write: the same for every client."""
    return sum(len(p) for p in payloads)


class Meter:
    """Wall and process CPU time from ``start`` to ``stop``."""

    def start(self) -> None:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def stop(self, messages: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter() - self.wall0, time.process_time() - self.cpu0
        return messages / wall, cpu / messages * 1e6


# -- MqttLink ---------------------------------------------------------------------------------------------------
async def own_edge(env: Env, messages: list[tuple[str, bytes]]) -> tuple[float, float]:
    link = await MqttLink.connect(HOST, env.port, **env.edge_login())
    meter = Meter()
    meter.start()
    for i in range(0, len(messages), POLL):
        batch = link.publish_batch(messages[i : i + POLL])
        await link.wait(batch.done)
        if batch.refused:
            raise SystemExit(f"MqttLink: the broker refused {batch.refused}")
    figures = meter.stop(len(messages))
    await link.disconnect()
    return figures


async def own_ingest(env: Env, client_id: str, n: int) -> tuple[float, float]:
    meter = Meter()
    meter.start()
    link = await MqttLink.connect(
        HOST,
        env.port,
        client_id=client_id,
        username=env.ingest.username,
        password=env.ingest.password,
        session_expiry_s=SESSION_EXPIRY_S,
        receive_maximum=RECEIVE_MAXIMUM,
        manual_ack=True,
    )
    if not link.session_present:
        raise SystemExit("MqttLink: the session was not resumed")
    acked = 0
    async with asyncio.timeout(TIMEOUT_S):
        while acked < n:
            await link.wait_messages(None)
            batch = link.take(STORE_BATCH)
            store([m.payload for m in batch])
            link.ack(batch)
            acked += len(batch)
        await link.subscribe([(env.barrier, 1)])
    figures = meter.stop(acked)
    await link.disconnect()
    if acked != n:
        raise SystemExit(f"MqttLink: {acked} messages instead of {n}")
    return figures


# -- paho driven by asyncio -------------------------------------------------------------------------------------
class PahoAsyncio:
    """paho on the asyncio loop through its socket callbacks (paho's examples/loop_asyncio.py, as aiomqtt does)."""

    def __init__(self, client_id: str, username: str, password: str, *, manual_ack: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack
        )
        self.client.username_pw_set(username, password)
        # paho does not take the broker's Receive Maximum from CONNACK: it is set to it here (its default is 20).
        self.client.max_inflight_messages_set(BROKER_RECEIVE_MAXIMUM)
        self.client.on_socket_open = self._opened
        self.client.on_socket_close = self._closed
        self.client.on_socket_register_write = self._want_write
        self.client.on_socket_unregister_write = self._done_writing
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.connected: asyncio.Future[Any] = self.loop.create_future()
        self.session_present = False
        self.subscribed: asyncio.Future[None] | None = None
        self._misc: asyncio.Task[None] | None = None

    def _opened(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self.loop.add_reader(sock, client.loop_read)
        self._misc = self.loop.create_task(self._keepalive())

    def _closed(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self.loop.remove_reader(sock)
        if self._misc is not None:
            self._misc.cancel()

    def _want_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def _done_writing(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)

    async def _keepalive(self) -> None:
        while self.client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1.0)  # paho's housekeeping tick (keepalive), not a synchronisation

    def _on_connect(self, _c: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        self.session_present = bool(flags.session_present)
        if not self.connected.done():
            self.connected.set_result(rc)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, _rcs: Any, _p: Any) -> None:
        if self.subscribed is not None and not self.subscribed.done():
            self.subscribed.set_result(None)

    async def connect(
        self, port: int, *, clean_start: bool = True, properties: Properties | None = None
    ) -> None:
        self.client.connect(HOST, port, keepalive=60, clean_start=clean_start, properties=properties)
        rc = await asyncio.wait_for(self.connected, TIMEOUT_S)
        if rc.is_failure:
            raise SystemExit(f"paho: connection refused: {rc}")

    async def subscribe(self, topic_filter: str) -> None:
        self.subscribed = self.loop.create_future()
        self.client.subscribe(topic_filter, qos=1)
        await asyncio.wait_for(self.subscribed, TIMEOUT_S)

    def close(self) -> None:
        self.client.disconnect()


def ingest_properties() -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    return props


async def paho_asyncio_edge(env: Env, messages: list[tuple[str, bytes]]) -> tuple[float, float]:
    login = env.edge_login()
    paho = PahoAsyncio(login["client_id"], login["username"], login["password"])
    await paho.connect(env.port)
    state = {"acked": 0, "target": 0, "refused": 0}
    waiter: list[asyncio.Future[None]] = []

    def on_publish(_c: mqtt.Client, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
        state["acked"] += 1
        state["refused"] += rc.is_failure
        if state["acked"] >= state["target"] and not waiter[0].done():
            waiter[0].set_result(None)

    paho.client.on_publish = on_publish
    meter = Meter()
    meter.start()
    for i in range(0, len(messages), POLL):
        poll = messages[i : i + POLL]
        state["target"] += len(poll)
        waiter[:] = [paho.loop.create_future()]
        for topic, payload in poll:
            if paho.client.publish(topic, payload, qos=1).rc != mqtt.MQTT_ERR_SUCCESS:
                raise SystemExit("paho: publish failed")
        await asyncio.wait_for(waiter[0], TIMEOUT_S)
    figures = meter.stop(len(messages))
    paho.close()
    if state["refused"]:
        raise SystemExit(f"paho: the broker refused {state['refused']} messages")
    return figures


async def paho_asyncio_ingest(env: Env, client_id: str, n: int) -> tuple[float, float]:
    meter = Meter()
    meter.start()
    paho = PahoAsyncio(client_id, env.ingest.username, env.ingest.password, manual_ack=True)
    received: deque[mqtt.MQTTMessage] = deque()
    arrived = asyncio.Event()

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        received.append(message)
        arrived.set()

    paho.client.on_message = on_message
    await paho.connect(env.port, clean_start=False, properties=ingest_properties())
    if not paho.session_present:
        raise SystemExit("paho: the session was not resumed")
    acked = 0
    async with asyncio.timeout(TIMEOUT_S):
        while acked < n:
            if not received:
                arrived.clear()
                await arrived.wait()
            batch = [received.popleft() for _ in range(min(STORE_BATCH, len(received)))]
            store([m.payload for m in batch])
            for m in batch:
                paho.client.ack(m.mid, m.qos)
            acked += len(batch)
        await paho.subscribe(env.barrier)
    figures = meter.stop(acked)
    paho.close()
    if acked != n:
        raise SystemExit(f"paho: {acked} messages instead of {n}")
    return figures


# -- paho with its own network thread ---------------------------------------------------------------------------
def paho_thread_client(
    client_id: str, username: str, password: str, *, manual_ack: bool = False
) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack
    )
    client.username_pw_set(username, password)
    client.max_inflight_messages_set(BROKER_RECEIVE_MAXIMUM)
    return client


def paho_thread_connect(client: mqtt.Client, port: int, **kwargs: Any) -> bool:
    connected = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(_c: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        result.update(rc=rc, session_present=bool(flags.session_present))
        connected.set()

    client.on_connect = on_connect
    client.connect(HOST, port, keepalive=60, **kwargs)
    client.loop_start()
    if not connected.wait(TIMEOUT_S) or result["rc"].is_failure:
        raise SystemExit(f"paho-thread: not connected: {result}")
    return bool(result["session_present"])


def paho_thread_edge(env: Env, messages: list[tuple[str, bytes]]) -> tuple[float, float]:
    login = env.edge_login()
    client = paho_thread_client(login["client_id"], login["username"], login["password"])
    paho_thread_connect(client, env.port)
    state = {"acked": 0, "target": 0, "refused": 0}
    done = threading.Event()

    def on_publish(_c: mqtt.Client, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
        state["acked"] += 1
        state["refused"] += rc.is_failure
        if state["acked"] >= state["target"]:
            done.set()

    client.on_publish = on_publish
    meter = Meter()
    meter.start()
    for i in range(0, len(messages), POLL):
        poll = messages[i : i + POLL]
        done.clear()
        state["target"] += len(poll)
        for topic, payload in poll:
            if client.publish(topic, payload, qos=1).rc != mqtt.MQTT_ERR_SUCCESS:
                raise SystemExit("paho-thread: publish failed")
        if not done.wait(TIMEOUT_S):
            raise SystemExit("paho-thread: PUBACKs missing")
    figures = meter.stop(len(messages))
    client.disconnect()
    client.loop_stop()
    if state["refused"]:
        raise SystemExit(f"paho-thread: the broker refused {state['refused']} messages")
    return figures


def paho_thread_ingest(env: Env, client_id: str, n: int) -> tuple[float, float]:
    meter = Meter()
    meter.start()
    client = paho_thread_client(client_id, env.ingest.username, env.ingest.password, manual_ack=True)
    received: deque[mqtt.MQTTMessage] = deque()
    arrived = threading.Condition()
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with arrived:
            received.append(message)
            arrived.notify()

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    if not paho_thread_connect(client, env.port, clean_start=False, properties=ingest_properties()):
        raise SystemExit("paho-thread: the session was not resumed")
    acked = 0
    while acked < n:
        with arrived:
            if not arrived.wait_for(lambda: bool(received), TIMEOUT_S):
                raise SystemExit(f"paho-thread: {acked} of {n} messages")
            batch = [received.popleft() for _ in range(min(STORE_BATCH, len(received)))]
        store([m.payload for m in batch])
        for m in batch:
            client.ack(m.mid, m.qos)
        acked += len(batch)
    client.subscribe(env.barrier, qos=1)
    if not subscribed.wait(TIMEOUT_S):
        raise SystemExit("paho-thread: no SUBACK")
    figures = meter.stop(acked)
    client.disconnect()
    client.loop_stop()
    return figures


# -- aiomqtt (reference) ----------------------------------------------------------------------------------------
async def aiomqtt_edge(env: Env, messages: list[tuple[str, bytes]]) -> tuple[float, float]:
    assert aiomqtt is not None
    login = env.edge_login()
    async with aiomqtt.Client(
        HOST,
        env.port,
        username=login["username"],
        password=login["password"],
        identifier=login["client_id"],
        protocol=aiomqtt.ProtocolVersion.V5,
        max_inflight_messages=BROKER_RECEIVE_MAXIMUM,
        logger=QUIET,
    ) as client:
        meter = Meter()
        meter.start()
        for i in range(0, len(messages), POLL):
            await asyncio.gather(*(client.publish(t, p, qos=1) for t, p in messages[i : i + POLL]))
        return meter.stop(len(messages))


async def aiomqtt_ingest(env: Env, client_id: str, n: int) -> tuple[float, float]:
    assert aiomqtt is not None
    meter = Meter()
    meter.start()
    count = 0
    async with aiomqtt.Client(
        HOST,
        env.port,
        username=env.ingest.username,
        password=env.ingest.password,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=ingest_properties(),
        logger=QUIET,
    ) as client:
        async with asyncio.timeout(TIMEOUT_S):
            batch: list[bytes] = []
            async for message in client.messages:  # acknowledged on receipt: aiomqtt has no manual ack
                batch.append(bytes(message.payload))  # type: ignore[arg-type]
                count += 1
                if len(batch) >= STORE_BATCH or count == n:
                    store(batch)
                    batch = []
                if count == n:
                    break
            await client.subscribe(env.barrier, qos=1)
        return meter.stop(count)


# -- the run ----------------------------------------------------------------------------------------------------
async def queue_for_session(env: Env, client_id: str, messages: list[tuple[str, bytes]]) -> None:
    """A persistent session subscribed to the measurements, offline, with ``messages`` queued in it."""
    sub = await MqttLink.connect(
        HOST,
        env.port,
        client_id=client_id,
        username=env.ingest.username,
        password=env.ingest.password,
        session_expiry_s=SESSION_EXPIRY_S,
    )
    granted = await sub.subscribe([(env.topics.all_measurements(), 1)])
    if granted != [1]:
        raise SystemExit(f"subscription refused: {granted}")
    await sub.disconnect()
    pub = await MqttLink.connect(HOST, env.port, **env.edge_login())
    batch = pub.publish_batch(messages)
    await asyncio.wait_for(pub.wait(batch.done), TIMEOUT_S)
    await pub.disconnect()
    if batch.refused:
        raise SystemExit(f"refused while queueing: {batch.refused[:3]}")


async def drop_session(env: Env, client_id: str, client: str) -> None:
    """Check that the broker holds nothing unacknowledged for the session (every PUBACK of the run arrived),
    then end it: a clean start with no expiry, or every later publish would be queued in it too."""
    login = {"client_id": client_id, "username": env.ingest.username, "password": env.ingest.password}
    link = await MqttLink.connect(HOST, env.port, session_expiry_s=SESSION_EXPIRY_S, manual_ack=True, **login)
    # On a resumed session Mosquitto sends what is unacknowledged or queued right after CONNACK, before it
    # reads our SUBSCRIBE: once the SUBACK is in, anything left would be here.
    await link.subscribe([(env.barrier, 1)])
    left = len(link.take(RECEIVE_MAXIMUM))
    await link.disconnect()
    if left:
        raise SystemExit(f"{client}: the broker still holds {left} unacknowledged messages")
    link = await MqttLink.connect(HOST, env.port, **login)
    await link.disconnect()


EdgeRun = Callable[[Env, list[tuple[str, bytes]]], tuple[float, float]]
IngestRun = Callable[[Env, str, int], tuple[float, float]]


def sync(run: Callable[..., Awaitable[tuple[float, float]]]) -> Callable[..., tuple[float, float]]:
    return lambda *args: asyncio.run(run(*args))


CLIENTS: dict[str, tuple[EdgeRun, IngestRun]] = {
    "own": (sync(own_edge), sync(own_ingest)),
    "paho-asyncio": (sync(paho_asyncio_edge), sync(paho_asyncio_ingest)),
    "paho-thread": (paho_thread_edge, paho_thread_ingest),
}
if aiomqtt is not None:
    CLIENTS["aiomqtt"] = (sync(aiomqtt_edge), sync(aiomqtt_ingest))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--edge-messages", type=int, default=10_000, help="per client and round")
    parser.add_argument(
        "--ingest-messages", type=int, default=20_000, help="per client and round (more than Receive Maximum)"
    )
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"of {', '.join(CLIENTS)}")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--no-tcp-nodelay",
        action="store_true",
        help="the broker without set_tcp_nodelay (Mosquitto's default): Nagle holds PUBACKs back",
    )
    args = parser.parse_args()
    names = [c for c in args.clients.split(",") if c]
    unknown = set(names) - set(CLIENTS)
    if unknown or "own" not in names:
        raise SystemExit(f"--clients: unknown {sorted(unknown)} or without 'own' (the baseline)")
    if args.ingest_messages > 100_000:
        raise SystemExit("--ingest-messages: at most 100,000 (max_queued_messages of the project's broker)")
    results: dict[str, dict[str, list[tuple[float, float]]]] = {
        name: {"edge": [], "ingest": []} for name in names
    }
    if args.no_tcp_nodelay:
        without_tcp_nodelay()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, Supervisor() as supervisor:
        settings = ServiceSettings(
            state_dir=Path(tmp) / "state", host=HOST, mqtt_port=free_port(), mqtt_tls_port=None
        )
        accounts = broker_accounts(settings)
        accounts.ensure_service_accounts()
        accounts.add_gateway(GATEWAY)
        start_broker(supervisor, settings)
        env = Env(settings)
        edge_messages = measurements(env.topics, args.edge_messages)
        ingest_messages = measurements(env.topics, args.ingest_messages)
        for round_no in range(args.rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for name in order:
                edge, ingest = CLIENTS[name]
                results[name]["edge"].append(edge(env, edge_messages))
                client_id = f"ehub-ingest-bench-{name}-{uuid.uuid4().hex[:6]}"
                asyncio.run(queue_for_session(env, client_id, ingest_messages))
                results[name]["ingest"].append(ingest(env, client_id, len(ingest_messages)))
                asyncio.run(drop_session(env, client_id, name))
            print(
                f"round {round_no + 1}/{args.rounds} done ({time.perf_counter() - started:.0f} s)", flush=True
            )

    conf = "project config without set_tcp_nodelay" if args.no_tcp_nodelay else "project config"
    print(
        f"\n{args.rounds} rounds per client, QoS 1 measurements of {len(edge_messages[0][1])} bytes, "
        f"Mosquitto {conf} on loopback; medians (range)"
    )
    print(
        f"edge: {args.edge_messages:,} messages in polls of {POLL}, each poll's PUBACKs awaited; ingest: "
        f"{args.ingest_messages:,} queued in a persistent session, drained with Receive Maximum "
        f"{RECEIVE_MAXIMUM:,}, manual ack per batch of <= {STORE_BATCH:,}"
    )
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for pattern in ("edge", "ingest"):
        print(
            f"\n{pattern:7} {'client':13} {'msg/s':>9} {'(range)':>17} {'CPU µs/msg':>11} {'(range)':>13}"
            "   paho etc. / own"
        )
        base = results["own"][pattern]
        for name in names:
            rates = [r for r, _ in results[name][pattern]]
            cpus = [c for _, c in results[name][pattern]]
            rate, cpu = statistics.median(rates), statistics.median(cpus)
            summary.setdefault(name, {})[pattern] = {"msg_per_s": rate, "cpu_us_per_msg": cpu}
            note = " (auto ack)" if name == "aiomqtt" and pattern == "ingest" else ""
            # Per round (the clients ran one after the other in it), then the median: drift cancels out.
            cpu_ratio = statistics.median(
                c / b for (_, c), (_, b) in zip(results[name][pattern], base, strict=True)
            )
            rate_ratio = statistics.median(
                r / b for (r, _), (b, _) in zip(results[name][pattern], base, strict=True)
            )
            summary[name][pattern].update(cpu_ratio=cpu_ratio, rate_ratio=rate_ratio)
            ratio = "" if name == "own" else f"CPU {cpu_ratio:.2f}x, rate {rate_ratio:.2f}x"
            print(
                f"{'':7} {name:13} {rate:9,.0f} {min(rates):8,.0f}-{max(rates):<8,.0f} {cpu:11.1f} "
                f"{min(cpus):6.1f}-{max(cpus):<6.1f}   {ratio}{note}"
            )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "edge_messages": args.edge_messages,
                    "ingest_messages": args.ingest_messages,
                    "rounds": args.rounds,
                    "tcp_nodelay": not args.no_tcp_nodelay,
                    **summary,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
