"""The ingest against the real Mosquitto and the real influxd: every message stored once, whatever fails."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from energyhub.cli.services import free_port, start_influxd
from energyhub.ingest.service import IngestService
from energyhub.ingest.settings import IngestSettings, SettingsError, load_settings
from energyhub.io.influx import InfluxClient
from energyhub.io.mqtt import MqttLink
from energyhub.runtime.settings import ServiceSettings
from energyhub.runtime.supervisor import Supervisor, wait_for
from energyhub.wire.messages import (
    DeadLetter,
    GatewayHealth,
    GatewayState,
    Measurement,
    MessageError,
    Quality,
    decode,
    encode,
)
from energyhub.wire.topics import Topics
from tests import communities
from tests.faults import per_session
from tests.mqtt_helpers import can_log_in, link_as

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)


def ingest_settings(services, unique_id: str, **over) -> IngestSettings:
    s = services.settings
    values = {
        "site": s.site,
        "worker": unique_id,
        "share_group": unique_id,
        "mqtt_host": s.host,
        "mqtt_port": s.mqtt_port,
        "mqtt_credentials_file": services.accounts.credentials_path("ehub-ingest"),
        "influx_url": s.influx_url,
        "influx_db": s.influx_db,
        "batch_max_delay_s": 0.05,
        "metrics_interval_s": 0.5,
        **over,
    }
    return IngestSettings(**values)


@contextlib.asynccontextmanager
async def running(settings: IngestSettings):
    service = IngestService(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.connected.wait(), 10)
        yield service
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def measurement(
    seq: int, *, session: int = 1, values: dict | None = None, replay: bool = False
) -> Measurement:
    values = values if values is not None else {"power_w": 1000.0 + seq, "energy_wh": 5e6 + seq}
    missing = sum(v is None for v in values.values())
    quality = Quality.GOOD if not missing else Quality.BAD if missing == len(values) else Quality.PARTIAL
    return Measurement(
        ts=T0 + timedelta(seconds=seq),
        session=session,
        seq=seq,
        quality=quality,
        values=values,
        replay=replay,
    )


async def stored_rows(influx_url: str, db: str, gateway: str) -> list[dict]:
    async with InfluxClient(url=influx_url, database=db) as client:
        series = await client.query(f"SELECT * FROM device WHERE gateway = '{gateway}'")
    return [row for s in series for row in s.rows()]


async def wait_until(condition, timeout_s: float = 20.0, what: str = "condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = await condition()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)  # poll interval of a condition wait


async def test_n_measurements_give_n_points_with_every_field(services, unique_id, gateway):
    topics = Topics(site=services.settings.site)
    metrics_port = free_port()
    settings = ingest_settings(services, unique_id, metrics_port=metrics_port)
    # Values that could not be read are absent from the point, not zero.
    sent = [
        measurement(i, values={"power_w": float(i), "voltage_v": None if i % 3 == 0 else 230.0, "pf": -0.5})
        for i in range(150)
    ]
    async with running(settings) as service:
        link = await link_as(services, gateway)
        state = GatewayState(
            online=True,
            session=1,
            ts=T0,
            agent_version="x",
            health=GatewayHealth(devices_ok=1, devices_failing=0, buffer_depth=3),
        )
        batch = link.publish_batch(
            [(topics.state(gateway), encode(state))]
            + [(topics.measurement(gateway, f"m{i % 3}"), encode(m)) for i, m in enumerate(sent)]
        )
        await link.wait(batch.done)

        async def all_stored():
            rows = await stored_rows(services.settings.influx_url, services.settings.influx_db, gateway)
            return rows if len(rows) >= len(sent) else None

        rows = await wait_until(all_stored, what="150 points")
        assert len(rows) == len(sent)
        by_seq = {row["seq"]: row for row in rows}
        for m in sent:
            row = by_seq[m.seq]
            assert row["power_w"] == m.values["power_w"]
            assert row["voltage_v"] == m.values["voltage_v"]  # None where it was not read
            assert row["quality"] == m.quality.value
            assert row["replay"] is False
            assert row["session"] == 1  # a field (an integer), not a tag
            assert row["device"] == f"m{m.seq % 3}"
        async with InfluxClient(url=services.settings.influx_url, database=services.settings.influx_db) as c:
            counts = await c.query(f"SELECT count(*) FROM device WHERE gateway = '{gateway}'")
            (count_row,) = counts[0].rows()
            assert count_row["count_power_w"] == 150
            assert count_row["count_voltage_v"] == 100  # the 50 unread ones are not stored as anything
            assert count_row["count_seq"] == 150
            states = await c.query(f"SELECT * FROM gateway_state WHERE gateway = '{gateway}'")
            (state_row,) = states[0].rows()
            assert (state_row["online"], state_row["buffer_depth"], state_row["agent_version"]) == (
                True,
                3,
                "x",
            )
        # Other tests' gateways on this broker left retained states, which this worker stores too: 151 or more.
        stored = service.metrics.totals["points"]
        assert stored >= 151
        # Prometheus sees the same.
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert f"ehub_ingest_points_total {float(stored)}" in text
        await link.disconnect()

        # The ingest's own figures reach InfluxDB too.
        async def own_figures():
            async with InfluxClient(
                url=services.settings.influx_url, database=services.settings.influx_db
            ) as c:
                series = await c.query(f"SELECT last(points) FROM ingest WHERE worker = '{unique_id}'")
            return series and series[0].rows()[0]["last"] == stored

        await wait_until(own_figures, what="the ingest's own point")


async def test_redelivered_messages_overwrite_and_gaps_and_replays_are_counted(services, unique_id, gateway):
    topics = Topics(site=services.settings.site)
    settings = ingest_settings(services, unique_id, share_group=None)
    async with running(settings) as service:
        link = await link_as(services, gateway)
        birth = GatewayState(online=True, session=4, ts=T0)
        seqs = [0, 1, 2, 3, 3, 2, 6, 7, 9]  # redeliveries of 2 and 3; 4, 5 and 8 never arrive
        batch = link.publish_batch(
            [(topics.state(gateway), encode(birth))]
            + [
                (topics.measurement(gateway, "meter"), encode(measurement(s, session=4, replay=s >= 6)))
                for s in seqs
            ]
        )
        await link.wait(batch.done)

        async def stored():
            return service.metrics.stored_by_gateway[gateway] >= len(seqs) + 1

        await wait_until(stored, what="all points written")
        rows = await stored_rows(services.settings.influx_url, services.settings.influx_db, gateway)
        assert sorted(r["seq"] for r in rows) == [0, 1, 2, 3, 6, 7, 9]  # twice sent, once stored
        assert service.metrics.gaps[gateway] == 3
        assert service.metrics.replayed[gateway] == 3
        await link.disconnect()


async def test_a_new_session_writes_into_the_same_series_and_keeps_its_own_seqs(services, unique_id, gateway):
    """An agent restart (a new session) opens no new series: session is a field, and each point keeps its own."""
    topics = Topics(site=services.settings.site)
    async with running(ingest_settings(services, unique_id, share_group=None)) as service:
        link = await link_as(services, gateway)
        # Sessions 5 and 6 of two devices, seq 0-3 each; the second a minute later, as after a restart.
        sent = [
            (
                device,
                measurement(seq, session=session).model_copy(
                    update={"ts": T0 + timedelta(minutes=session, seconds=seq)}
                ),
            )
            for session in (5, 6)
            for device in ("meter", "pv")
            for seq in range(4)
        ]
        batch = link.publish_batch([(topics.measurement(gateway, d), encode(m)) for d, m in sent])
        await link.wait(batch.done)

        async def all_stored():
            return service.metrics.stored_by_gateway[gateway] >= len(sent)

        await wait_until(all_stored, what="both sessions written")
        async with InfluxClient(url=services.settings.influx_url, database=services.settings.influx_db) as c:
            series = await c.query(f"SHOW SERIES FROM device WHERE gateway = '{gateway}'")
            keys = sorted(row[0] for s in series for row in s.values)
            assert len(keys) == 2, keys  # one per device, whatever the sessions
            assert not any("session=" in key for key in keys), keys
            tag_keys = {row[0] for s in await c.query("SHOW TAG KEYS FROM device") for row in s.values}
            assert "session" not in tag_keys
            field_types = {
                name: kind for s in await c.query("SHOW FIELD KEYS FROM device") for name, kind in s.values
            }
            assert field_types["session"] == "integer"
            rows = await c.query(
                f"SELECT seq, session FROM device WHERE gateway = '{gateway}' GROUP BY device"
            )
        by_device = {s.tags["device"]: sorted((r["session"], r["seq"]) for r in s.rows()) for s in rows}
        expected = sorted((m.session, m.seq) for _d, m in sent[:4] + sent[8:12])
        assert by_device == {"meter": expected, "pv": expected}
        # Counted per session by influxd, as the fault and estate tests count (8 points each: 2 devices x 4).
        db = services.settings
        counts = await asyncio.to_thread(
            per_session,
            db.influx_url,
            db.influx_db,
            f"gateway = '{gateway}'",
            "count(seq), min(seq), max(seq)",
        )
        assert counts == {(gateway, 5): [8, 0, 3], (gateway, 6): [8, 0, 3]}
        await link.disconnect()


async def test_a_point_influxdb_refuses_does_not_block_the_good_ones(services, unique_id, gateway):
    topics = Topics(site=services.settings.site)
    field = f"probe_{unique_id}"
    async with InfluxClient(url=services.settings.influx_url, database=services.settings.influx_db) as client:
        # The same field already holds text in this shard: a float for it is a type conflict (HTTP 400).
        await client.write(f'device,gateway=other {field}="text" {int(T0.timestamp() * 1e9)}')
    async with running(ingest_settings(services, unique_id)) as service:
        deadletters = await _subscribe(services, topics.deadletter("ingest"))
        link = await link_as(services, gateway)
        messages = [measurement(i) for i in range(20)]
        bad = measurement(20, values={field: 1.0, "power_w": 5.0})
        messages.insert(7, bad)
        batch = link.publish_batch([(topics.measurement(gateway, "meter"), encode(m)) for m in messages])
        await link.wait(batch.done)
        letter = decode(DeadLetter, (await asyncio.wait_for(deadletters.next_message(), 10)).payload)
        assert "field type conflict" in letter.reason
        assert base64.b64decode(letter.payload_b64) == encode(bad)

        async def good_ones():
            rows = await stored_rows(services.settings.influx_url, services.settings.influx_db, gateway)
            return rows if len(rows) >= 20 else None

        rows = await wait_until(good_ones, what="the 20 good points")
        assert sorted(r["seq"] for r in rows) == list(range(20))
        assert service.metrics.totals["dead_letters"] == 1
        await link.disconnect()
        await deadletters.disconnect()


async def _subscribe(services, topic: str) -> MqttLink:
    link = await link_as(services, "ehub-api")  # the API account reads the whole site
    await link.subscribe([(topic, 1)])
    return link


async def test_two_workers_in_one_group_store_every_message_once(services, unique_id, gateway):
    topics = Topics(site=services.settings.site)
    first = ingest_settings(services, unique_id, worker=f"{unique_id}-a")
    second = ingest_settings(services, unique_id, worker=f"{unique_id}-b")
    async with running(first) as a, running(second) as b:
        link = await link_as(services, gateway)
        batch = link.publish_batch(
            [(topics.measurement(gateway, f"d{i % 7}"), encode(measurement(i))) for i in range(400)]
        )
        await link.wait(batch.done)

        def mine(service) -> int:
            return service.metrics.stored_by_gateway[gateway]

        async def both_done():
            return mine(a) + mine(b) >= 400

        await wait_until(both_done, what="400 points between the two workers")
        # The load was split, and nothing stored twice.
        assert mine(a) > 50
        assert mine(b) > 50
        assert mine(a) + mine(b) == 400
        rows = await stored_rows(services.settings.influx_url, services.settings.influx_db, gateway)
        assert len(rows) == 400
        await link.disconnect()


async def test_influxd_stopped_mid_stream_loses_nothing(services, unique_id, gateway, tmp_path):
    topics = Topics(site=services.settings.site)
    db_settings = ServiceSettings(
        state_dir=tmp_path, influx_port=free_port(), influx_rpc_port=free_port(), influx_db="outage"
    )
    with Supervisor() as supervisor:
        influxd = start_influxd(supervisor, db_settings)
        async with InfluxClient(url=db_settings.influx_url, database="outage") as client:
            await client.create_database()
        settings = ingest_settings(
            services, unique_id, influx_url=db_settings.influx_url, influx_db="outage", retry_max_s=0.5
        )
        async with running(settings) as service:
            link = await link_as(services, gateway)

            async def publish(seqs):
                batch = link.publish_batch(
                    [(topics.measurement(gateway, "meter"), encode(measurement(s))) for s in seqs]
                )
                await link.wait(batch.done)

            await publish(range(0, 100))

            async def stored(n):
                async def check():
                    return service.metrics.stored_by_gateway[gateway] >= n

                return check

            await wait_until(await stored(100), what="the first 100")
            influxd.stop()
            await publish(range(100, 250))  # the ingest holds these while the database is away

            async def retrying():
                return service.metrics.totals["retries"] >= 2

            await wait_until(retrying, what="write retries")
            influxd.start()
            influxd.wait_ready()
            await wait_until(await stored(250), timeout_s=30, what="all 250 after the restart")
            rows = await stored_rows(db_settings.influx_url, "outage", gateway)
            assert sorted(r["seq"] for r in rows) == list(range(250))
            await link.disconnect()


async def test_worker_killed_with_sigkill_mid_stream_loses_nothing(services, unique_id, gateway, tmp_path):
    topics = Topics(site=services.settings.site)
    s = services.settings
    config = tmp_path / "ingest.yaml"
    config.write_text(
        f"site: {s.site}\nshare_group: {unique_id}\nsession_expiry_s: 600\nbatch_max_delay_s: 0.05\n"
        f"influx_url: {s.influx_url}\ninflux_db: {s.influx_db}\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "energyhub.cli.main",
        "ingest",
        "--config",
        str(config),
        "--worker",
        unique_id,
        "--mqtt-port",
        str(s.mqtt_port),
        "--mqtt-credentials-file",
        str(services.accounts.credentials_path("ehub-ingest")),
    ]
    log = (tmp_path / "ingest.log").open("w")
    worker = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    link = await link_as(services, gateway)
    total = 3000

    async def count():
        rows = await stored_rows(s.influx_url, s.influx_db, gateway)
        return len(rows)

    try:
        # Until the worker has subscribed nobody keeps messages for it: send the first one until it is stored
        # (storing it again is harmless), then its session queues everything for it.
        async def started():
            await link.wait(
                link.publish_batch([(topics.measurement(gateway, "m"), encode(measurement(0)))]).done
            )
            return await count() >= 1

        try:
            await wait_until(started, timeout_s=30, what="the worker to store its first point")
        except AssertionError:
            raise AssertionError((tmp_path / "ingest.log").read_text()[-3000:]) from None
        for start in range(1, total, 100):
            batch = link.publish_batch(
                [
                    (topics.measurement(gateway, "m"), encode(measurement(i)))
                    for i in range(start, min(start + 100, total))
                ]
            )
            await link.wait(batch.done)
            if start == 1001:
                os.kill(worker.pid, signal.SIGKILL)  # mid-stream: some stored, some held, some queued
                worker.wait()
        worker = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

        async def everything():
            return await count() >= total

        await wait_until(everything, timeout_s=60, what=f"{total} points after the restart")
        rows = await stored_rows(s.influx_url, s.influx_db, gateway)
        assert sorted(r["seq"] for r in rows) == list(range(total))
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        await link.disconnect()


def test_settings_flags_over_environment_over_file(tmp_path, monkeypatch):
    path = tmp_path / "ingest.yaml"
    path.write_text("worker: from-file\nmqtt_port: 1111\ninflux_db: filedb\n")
    monkeypatch.setenv("EHUB_INGEST_MQTT_PORT", "2222")
    settings = load_settings(path, worker="from-flag")
    assert (settings.worker, settings.mqtt_port, settings.influx_db) == ("from-flag", 2222, "filedb")
    path.write_text("batch_max_points: -5\nno_such_key: 1\n")
    with pytest.raises(SettingsError, match=rf"(?s){path} .*batch_max_points: .*greater.*no_such_key: Extra"):
        load_settings(path)
    with pytest.raises(SettingsError, match="no such settings file"):
        load_settings(tmp_path / "missing.yaml")


# -- bad input: dead letters, never a crash ---------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
_GOOD = encode(measurement(1))
_PAYLOADS = st.one_of(
    st.binary(max_size=200),
    st.integers(1, len(_GOOD) - 1).map(lambda n: _GOOD[:n]),  # truncated JSON
    _JSON.map(lambda v: json.dumps(v).encode()),  # JSON of the wrong shape
    st.sampled_from(["seq", "session", "ts", "quality"]).flatmap(  # one field of the wrong type or size
        lambda key: _JSON.map(lambda v: json.dumps({**json.loads(_GOOD), key: v}).encode())
    ),
    st.just(_GOOD.replace(b'"power_w":1001.0', b'"power_w":1e999')),  # infinite
    st.just(_GOOD.replace(b'"seq":1', b'"seq":' + str(10**40).encode())),  # a huge integer
    st.text(max_size=8).map(lambda k: json.dumps({**json.loads(_GOOD), "values": {k: 1.0}}).encode()),
)


# Device levels a gateway may publish to but that are no device id: odd unicode, spaces, upper case, empty.
# Control characters are left out: the broker itself refuses them (MQTT forbids them in topic names).
def _noncharacter(c: str) -> bool:
    """U+FDD0-U+FDEF and every U+xxFFFE/U+xxFFFF: Mosquitto refuses a topic with one by disconnecting the
    publisher, so such a topic never reaches the ingest."""
    return 0xFDD0 <= ord(c) <= 0xFDEF or ord(c) & 0xFFFE == 0xFFFE


_BAD_DEVICE = (
    st.text(st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="/+#"), max_size=12)
    .filter(lambda d: not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", d))
    .filter(lambda d: not any(_noncharacter(c) for c in d))
)


@pytest.fixture(scope="module")
def ingest_process(services, tmp_path_factory):
    s = services.settings
    log_path = tmp_path_factory.mktemp("ingest") / "ingest.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "energyhub.cli.main",
            "ingest",
            "--worker",
            "fuzz",
            "--site",
            s.site,
            "--mqtt-port",
            str(s.mqtt_port),
            "--mqtt-credentials-file",
            str(services.accounts.credentials_path("ehub-ingest")),
            "--influx-url",
            s.influx_url,
            "--influx-db",
            s.influx_db,
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    # Subscribed only once it says so; what is published before that reaches nobody.
    wait_for(lambda: "connected as" in log_path.read_text(), timeout_s=20, what="the ingest to subscribe")
    yield process, log_path
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=15)
    log.close()


@pytest.fixture(scope="module")
def fuzz_gateway(services):
    name = "gw-fuzz"
    services.accounts.add_gateway(name)
    services.accounts.reload_broker()
    asyncio.run(can_log_in(services, name))
    return name


_COUNTER = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cases=st.lists(
        st.one_of(st.tuples(st.just("payload"), _PAYLOADS), st.tuples(_BAD_DEVICE, st.just(_GOOD))),
        min_size=1,
        max_size=12,
    )
)
def test_bad_payloads_and_topics_end_as_dead_letters(services, ingest_process, fuzz_gateway, cases):
    process, log_path = ingest_process
    topics = Topics(site=services.settings.site)
    sent: dict[str, bytes] = {}
    for kind, payload in cases:
        n = next(_COUNTER)
        device = f"bad{n}" if kind == "payload" else f"{kind}~{n}"  # unique, and invalid where it should be
        if kind == "payload":
            with contextlib.suppress(MessageError):
                decode(Measurement, payload)
                continue  # hypothesis made a valid measurement: not a case for this test
        # Built by hand: Topics itself refuses a bad device id.
        sent[f"{topics.gateway_subtree(fuzz_gateway)}/meas/{device}"] = payload

    async def exchange() -> dict[str, DeadLetter]:
        letters: dict[str, DeadLetter] = {}
        observer = await _subscribe(services, topics.deadletter("ingest"))
        link = await link_as(services, fuzz_gateway)
        try:
            await link.wait(link.publish_batch(list(sent.items())).done)
            async with asyncio.timeout(20):
                while not set(sent) <= set(letters):
                    letter = decode(DeadLetter, (await observer.next_message()).payload)
                    letters[letter.topic] = letter
        finally:
            await link.disconnect()
            await observer.disconnect()
        return letters

    try:
        letters = asyncio.run(exchange())
    except TimeoutError:
        raise AssertionError(log_path.read_text()[-3000:]) from None
    assert process.poll() is None, "the ingest stopped"
    for topic, payload in sent.items():
        assert base64.b64decode(letters[topic].payload_b64) == payload  # the original bytes, unchanged
        assert letters[topic].reason


def test_the_fuzzed_ingest_still_stores_good_measurements(services, ingest_process, fuzz_gateway):
    topics = Topics(site=services.settings.site)
    good = measurement(123_456)

    async def exchange() -> list[dict]:
        link = await link_as(services, fuzz_gateway)
        await link.wait(link.publish_batch([(topics.measurement(fuzz_gateway, "good"), encode(good))]).done)
        await link.disconnect()

        async def stored():
            rows = await stored_rows(services.settings.influx_url, services.settings.influx_db, fuzz_gateway)
            return [r for r in rows if r["seq"] == 123_456]

        return await wait_until(stored, what="the good measurement")

    assert asyncio.run(exchange())[0]["device"] == "good"


async def test_what_cannot_be_a_reading_is_a_dead_letter_and_confirmed_and_a_retained_one_is_cleared(
    services, unique_id, gateway, tmp_path
):
    """Stored ones and refused ones are confirmed to the gateway by (session, seq); a retained measurement is not,
    and no later subscriber gets it from the broker."""
    topics = Topics(site=services.settings.site)
    community = tmp_path / "c.yaml"
    doc = communities.base()
    doc["loops"][0]["connections"][0]["gateways"] = [{"id": gateway}]  # its devices: meter and pv1
    community.write_text(communities.dump(doc))
    settings = ingest_settings(services, unique_id, share_group=None, community=community)
    now = datetime.now(UTC)
    good = measurement(0, session=7).model_copy(update={"ts": now})
    ahead = measurement(1, session=7).model_copy(update={"ts": now + timedelta(hours=2)})
    unset = measurement(2, session=7).model_copy(update={"ts": datetime(1970, 1, 1, 0, 5, tzinfo=UTC)})
    stranger = measurement(3, session=7).model_copy(update={"ts": now})
    forged = measurement(4, session=7).model_copy(update={"ts": datetime(2099, 1, 1, tzinfo=UTC)})
    async with running(settings):
        letters = await _subscribe(services, topics.deadletter("ingest"))
        link = await link_as(services, gateway)
        await link.subscribe([(topics.confirm(gateway), 1)])
        meter, other = topics.measurement(gateway, "meter"), topics.measurement(gateway, "other")
        await link.wait(
            link.publish_batch(
                [
                    (meter, encode(good)),
                    (meter, encode(ahead)),
                    (meter, encode(unset)),
                    (other, encode(stranger)),
                ]
            ).done
        )
        await link.wait(link.publish_batch([(meter, encode(forged))], retain=True).done)
        confirmed: set[int] = set()
        why: dict[str, str] = {}
        async with asyncio.timeout(20):
            while confirmed != {0, 1, 2, 3} or len(why) < 4:
                if await link.wait_messages(0.1):
                    for m in link.take(100):
                        note = json.loads(m.payload)
                        assert note["session"] == 7
                        confirmed |= {s for a, b in note["ranges"] for s in range(a, b + 1)}
                if await letters.wait_messages(0.1):
                    for m in letters.take(100):
                        letter = decode(DeadLetter, m.payload)
                        why[letter.reason] = letter.topic
        assert 4 not in confirmed  # the retained one: not a real reading, nothing to delete for it
        reasons = " | ".join(why)
        assert "ahead of this service's clock" in reasons
        assert "before 2000" in reasons
        assert "not in the community file" in reasons
        assert "a retained measurement" in reasons
        await link.disconnect()
        await letters.disconnect()
        # A subscriber that comes later gets no retained measurement from the broker (once the ingest cleared it).

        async def retained_now() -> bool:
            late = await _subscribe(services, topics.measurement(gateway, "meter"))
            try:
                return await late.wait_messages(0.5) and any(m.retained and m.payload for m in late.take(10))
            finally:
                await late.disconnect()

        async with asyncio.timeout(10):
            while await retained_now():
                pass
    rows = await stored_rows(services.settings.influx_url, services.settings.influx_db, gateway)
    # This worker's points carry the community's tags (another module's ingest may share the broker).
    assert sorted(r["seq"] for r in rows if r.get("connection")) == [0]
