"""An estate broker bridged to a core broker (issue 17): the bridge's topics, its account on the core, the guard
against a second ingest group on the estate, and the ingest reading several sites.

The first tests need no broker: what the bridge section and the accounts say. The live ones start a real core
Mosquitto (with a TLS listener) and a real estate Mosquitto whose mosquitto.conf carries the bridge over TLS,
both written by ``energyhub.broker``. Negative checks ("X never arrives") are made sound without sleeps as in
test_broker_live.py: the message that must not arrive is sent first, an allowed one after it by the same
publisher at QoS 1, so once the allowed one is in the forbidden one would have come before it.
"""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from energyhub.broker.accounts import AccountError, BrokerAccounts
from energyhub.broker.bridge import (
    BridgeError,
    BridgeSettings,
    BridgeTopic,
    bridge_topics,
    check_no_loop,
    filters_overlap,
    render_bridge,
)
from energyhub.broker.cli import app
from energyhub.broker.config import BrokerConfig, write_mosquitto_conf
from energyhub.broker.dynsec import AclType, Role, account_acls
from energyhub.cli.services import free_port, start_broker
from energyhub.ingest.service import IngestService
from energyhub.ingest.settings import IngestSettings
from energyhub.io.mqtt import IncomingMessage
from energyhub.runtime.settings import ServiceSettings
from energyhub.runtime.supervisor import ManagedProcess, Supervisor, wait_for
from energyhub.wire.messages import Measurement, Quality, encode
from energyhub.wire.topics import Topics
from tests.mqtt_helpers import PahoClient as Client

HOST = "127.0.0.1"
NOT_AUTHORIZED = 0x87
NO_SUBSCRIBERS = 0x10
ROOT = "ehub/v1"
ESTATE = "estate-a"


# -- without a broker -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("a/+/c", "a/b/c", True),
        ("a/+/meas/+", "a/+/confirm", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/b", "a/b/c", False),
        ("a/+", "a/b/c", False),
        ("x/#", "y/#", False),
        ("+/+/confirm", "a/b/#", True),
    ],
)
def test_filters_overlap_as_mqtt_matches(a: str, b: str, overlap: bool) -> None:
    assert filters_overlap(a, b) is overlap
    assert filters_overlap(b, a) is overlap


def test_the_bridge_brings_in_nothing_it_sends_out() -> None:
    topics = Topics(site=ESTATE)
    patterns = bridge_topics(topics)
    check_no_loop(patterns)  # ours pass
    assert {p.pattern for p in patterns if p.direction == "in"} == {f"{ROOT}/{ESTATE}/gw/+/confirm"}
    assert all(p.pattern.startswith(f"{ROOT}/{ESTATE}/") for p in patterns)
    with pytest.raises(BridgeError, match="overlap"):
        check_no_loop([*patterns, BridgeTopic(f"{ROOT}/{ESTATE}/gw/#", "in")])
    with pytest.raises(BridgeError, match="shared group"):
        check_no_loop([BridgeTopic(f"$share/ingest/{ROOT}/{ESTATE}/gw/+/confirm", "in")])


def _core_and_estate(tmp_path: Path) -> tuple[BrokerAccounts, BrokerAccounts, Path]:
    core = BrokerAccounts(tmp_path / "core", Topics(site="core"))
    core.ensure_service_accounts()
    credentials = core.credentials_path(core.add_bridge(ESTATE).username)
    estate = BrokerAccounts(tmp_path / "estate", Topics(site=ESTATE))
    estate.ensure_service_accounts()
    return core, estate, credentials


def test_the_bridge_section_names_the_core_its_account_and_mqtt5(tmp_path: Path) -> None:
    _core, _estate, credentials = _core_and_estate(tmp_path)
    ca = tmp_path / "ca.crt"
    ca.write_text("not read here", encoding="utf-8")
    settings = BridgeSettings(core_host="::1", core_port=18831, credentials_file=credentials, ca_file=ca)
    lines = render_bridge(settings, Topics(site=ESTATE))
    password = json.loads(credentials.read_text(encoding="utf-8"))["password"]
    for line in (
        "connection ehub-bridge-estate-a",
        "address [::1]:18831",
        "bridge_protocol_version mqttv50",
        "remote_clientid ehub-bridge-estate-a",
        f"remote_password {password}",
        "cleansession false",
        f"bridge_cafile {ca.resolve()}",
        f"topic {ROOT}/{ESTATE}/gw/+/meas/+ out 1",
        f"topic {ROOT}/{ESTATE}/gw/+/confirm in 1",
    ):
        assert line in lines
    assert sum(line.startswith("topic ") for line in lines) == 5


def test_bridge_credentials_of_another_estate_or_missing_are_refused_with_the_fix(tmp_path: Path) -> None:
    core, _estate, credentials = _core_and_estate(tmp_path)
    other = BrokerAccounts(tmp_path / "other", Topics(site="estate-b"))
    with pytest.raises(AccountError, match=r"serves site 'estate-b'.*add-bridge estate-b"):
        other.set_bridge(BridgeSettings(core_host=HOST, core_port=1883, credentials_file=credentials))
    with pytest.raises(AccountError, match=r"missing.*add-bridge estate-b"):
        other.set_bridge(
            BridgeSettings(core_host=HOST, core_port=1883, credentials_file=tmp_path / "nope.json")
        )
    with pytest.raises(BridgeError, match="core port 0"):
        BridgeSettings(core_host=HOST, core_port=0, credentials_file=credentials)
    with pytest.raises(AccountError, match="own site"):
        core.add_bridge("core")
    with pytest.raises(AccountError, match="--rotate"):
        core.add_bridge(ESTATE)


def _role(accounts: BrokerAccounts, name: str) -> set[tuple[str, str]]:
    document = json.loads(accounts.dynsec_path.read_text(encoding="utf-8"))
    role = next(r for r in document["roles"] if r["rolename"] == name)
    return {(acl["acltype"], acl["topic"]) for acl in role["acls"]}


def test_the_core_gives_the_bridge_its_estate_only_and_the_ingest_every_estate(tmp_path: Path) -> None:
    core, _estate, _credentials = _core_and_estate(tmp_path)
    bridge = _role(core, "ehub-bridge-estate-a")
    assert all(topic.startswith(f"{ROOT}/{ESTATE}/") for _kind, topic in bridge)
    assert {t for k, t in bridge if k.startswith("subscribe")} == {f"{ROOT}/{ESTATE}/gw/+/confirm"}
    assert (str(AclType.PUBLISH_SEND), f"{ROOT}/{ESTATE}/gw/+/meas/+") in bridge
    assert not any("setpoint" in t or "control" in t for _k, t in bridge)
    document = json.loads(core.dynsec_path.read_text(encoding="utf-8"))
    entry = next(c for c in document["clients"] if c["username"] == "ehub-bridge-estate-a")
    assert entry["clientid"] == "ehub-bridge-estate-a"  # one bridge per estate
    ingest = _role(core, "ehub-ingest")
    assert (str(AclType.SUBSCRIBE_PATTERN), f"$share/+/{ROOT}/{ESTATE}/gw/#") in ingest
    assert (str(AclType.PUBLISH_SEND), f"{ROOT}/{ESTATE}/gw/+/confirm") in ingest
    assert (str(AclType.SUBSCRIBE_PATTERN), f"$share/+/{ROOT}/core/gw/#") in ingest


def test_a_bridged_estate_gives_the_ingest_nothing_and_keeps_its_password_private(tmp_path: Path) -> None:
    _core, estate, credentials = _core_and_estate(tmp_path)
    assert _role(estate, "ehub-ingest")  # before: the estate's own ingest may read it
    estate.set_bridge(BridgeSettings(core_host=HOST, core_port=1883, credentials_file=credentials))
    assert _role(estate, "ehub-ingest") == set()
    assert account_acls("ehub-ingest", Role.INGEST, Topics(site=ESTATE), bridged_estate=True) == []
    config = BrokerConfig(
        directory=estate.directory, host=HOST, port=free_port(), tls_port=None, certificates=None
    )
    conf = write_mosquitto_conf(config, estate)
    assert "connection ehub-bridge-estate-a" in conf.read_text(encoding="utf-8")
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600  # it holds the bridge's password
    estate.set_bridge(None)
    assert _role(estate, "ehub-ingest")
    assert "connection" not in write_mosquitto_conf(config, estate).read_text(encoding="utf-8")


def test_the_cli_makes_the_bridge_account_and_the_bridge(tmp_path: Path) -> None:
    runner = CliRunner()
    core = ["--state-dir", str(tmp_path / "core"), "--site", "core"]
    made = runner.invoke(app, ["add-bridge", ESTATE, *core])
    assert made.exit_code == 0, made.output
    path = tmp_path / "core" / "broker" / "credentials" / "ehub-bridge-estate-a.json"
    assert str(path) in made.output
    estate = ["--state-dir", str(tmp_path / "estate"), "--site", ESTATE]
    args = ["bridge", "--core-host", HOST, "--core-port", "1883", "--credentials", str(path), *estate]
    bridged = runner.invoke(app, args)
    assert bridged.exit_code == 0, bridged.output
    stored = json.loads((tmp_path / "estate" / "broker" / "bridge.json").read_text(encoding="utf-8"))
    assert stored["core_port"] == 1883
    wrong = runner.invoke(
        app, ["bridge", "--core-host", HOST, "--credentials", str(path), "--site", "estate-b"]
    )
    assert wrong.exit_code == 2
    assert "ehub-bridge-estate-b" in wrong.output
    assert "--core-host and --credentials" in runner.invoke(app, ["bridge", *estate]).output
    assert runner.invoke(app, ["bridge", "--off", *estate]).exit_code == 0
    assert not (tmp_path / "estate" / "broker" / "bridge.json").exists()
    assert "confirm" in runner.invoke(app, ["bridge", "--help"]).output


# -- the ingest's side ------------------------------------------------------------------------------------------


def _measurement(seq: int) -> bytes:
    return encode(
        Measurement(ts=datetime.now(UTC), session=1, seq=seq, quality=Quality.GOOD, values={"power_w": 1.0})
    )


def test_the_ingest_reads_every_site_in_one_group_and_stores_each_under_its_own_site() -> None:
    one = IngestService(IngestSettings(site="solo"))
    assert [f for f, _ in one._filters()] == [
        f"$share/ingest/{ROOT}/solo/gw/+/meas/+",
        f"$share/ingest/{ROOT}/solo/gw/+/state",
        f"$share/ingest/{ROOT}/solo/gw/+/ack/+",
    ]
    core = IngestService(IngestSettings(site="core", sites=["estate-a", "estate-b"]))
    filters = [f for f, _ in core._filters()]
    assert len(filters) == 6
    assert all(f.startswith("$share/ingest/") for f in filters)
    assert f"$share/ingest/{ROOT}/estate-b/gw/+/meas/+" in filters
    for site in ("estate-a", "estate-b"):
        pending = core._prepare(
            IncomingMessage(topic=f"{ROOT}/{site}/gw/gw-001/meas/meter", payload=_measurement(3))
        )
        assert pending.why is None, pending.reason
        assert pending.site == site
        assert pending.line is not None
        assert f"site={site}" in pending.line
    # The same gateway id on two estates is two gateways to the gap count too.
    assert core.tracker is not None
    assert set(core.tracker.gateways()) == {"estate-a/gw-001", "estate-b/gw-001"}
    elsewhere = core._prepare(
        IncomingMessage(topic=f"{ROOT}/core/gw/gw-001/meas/meter", payload=_measurement(4))
    )
    assert elsewhere.why == "topic"
    assert "estate-a, estate-b" in (elsewhere.reason or "")


def test_ingest_settings_name_several_sites_and_refuse_one_community_for_them(tmp_path: Path) -> None:
    assert IngestSettings(site="x").all_sites == ["x"]
    assert IngestSettings(sites="estate-a, estate-b").all_sites == ["estate-a", "estate-b"]
    with pytest.raises(ValueError, match="more than once"):
        IngestSettings(sites=["a", "a"])
    with pytest.raises(ValueError, match="not a valid identifier"):
        IngestSettings(sites=["Estate A"])
    community = tmp_path / "community.yaml"
    community.write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="describes one site"):
        IngestSettings(sites=["a", "b"], community=community)


# -- live: a core and a bridged estate --------------------------------------------------------------------------


@dataclass(frozen=True)
class Bridged:
    core: BrokerAccounts
    estate: BrokerAccounts
    core_port: int
    core_tls_port: int
    estate_port: int
    core_log: Path

    def client(self, accounts: BrokerAccounts, username: str, client_id: str | None = None) -> Client:
        return Client(
            username=username, password=accounts.credentials(username).password, client_id=client_id
        )


def _service(folder: Path, site: str, *, tls: bool) -> ServiceSettings:
    return ServiceSettings(
        state_dir=folder,
        host=HOST,
        mqtt_port=free_port(),
        mqtt_tls_port=free_port() if tls else None,
        site=site,
    )


@pytest.fixture(scope="module")
def bridged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridged]:
    folder = tmp_path_factory.mktemp("bridged")
    core_settings, estate_settings = (
        _service(folder / "core", "core", tls=True),
        _service(folder / "a", ESTATE, tls=False),
    )
    core, estate, credentials = _core_and_estate_at(core_settings, estate_settings)
    core.add_bridge("estate-x")  # an account with no estate broker behind it, to log in as in the tests
    with Supervisor() as supervisor:
        processes: list[ManagedProcess] = [start_broker(supervisor, core_settings)]
        estate.set_bridge(
            BridgeSettings(
                core_host=HOST,
                core_port=core_settings.mqtt_tls_port or 0,
                credentials_file=credentials,
                ca_file=core.directory / "certs" / "ca.crt",  # made by the core's start: TLS to the core
            )
        )
        processes.append(start_broker(supervisor, estate_settings))
        run = Bridged(
            core=core,
            estate=estate,
            core_port=core_settings.mqtt_port,
            core_tls_port=core_settings.mqtt_tls_port or 0,
            estate_port=estate_settings.mqtt_port,
            core_log=folder / "core" / "log" / "mosquitto.log",
        )
        wait_for(
            lambda: "u'ehub-bridge-estate-a'" in run.core_log.read_text(errors="replace"),
            timeout_s=15,
            what="the estate's bridge to log in to the core",
        )
        yield run


def _core_and_estate_at(
    core: ServiceSettings, estate: ServiceSettings
) -> tuple[BrokerAccounts, BrokerAccounts, Path]:
    core_accounts = BrokerAccounts(core.state_dir.resolve() / "broker", Topics(site=core.site))
    core_accounts.ensure_service_accounts()
    credentials = core_accounts.credentials_path(core_accounts.add_bridge(estate.site).username)
    estate_accounts = BrokerAccounts(estate.state_dir.resolve() / "broker", Topics(site=estate.site))
    estate_accounts.ensure_service_accounts()
    for gateway in ("gw-a", "gw-b"):
        estate_accounts.add_gateway(gateway)
    return core_accounts, estate_accounts, credentials


@pytest.mark.live
def test_the_bridge_logs_in_over_tls_with_its_bound_client_id(bridged: Bridged) -> None:
    log = bridged.core_log.read_text(errors="replace")
    assert f"on port {bridged.core_tls_port}" in log
    assert "as ehub-bridge-estate-a (p5" in log  # MQTT 5, with the client id the account is bound to


@pytest.mark.live
def test_estate_traffic_goes_out_and_only_confirmations_come_back(bridged: Bridged) -> None:
    base, tag = f"{ROOT}/{ESTATE}", uuid.uuid4().hex.encode()
    at_core = bridged.client(bridged.core, "ehub-ingest")
    at_core.connect(bridged.core_port)
    assert at_core.subscribe(f"{base}/gw/#").value == 1
    assert at_core.subscribe(f"{base}/control/#").value == 1
    control = bridged.client(bridged.estate, "ehub-control")
    control.connect(bridged.estate_port)
    assert control.subscribe(f"{base}/gw/+/meas/+").value == 1
    gateway = bridged.client(bridged.estate, "gw-a", client_id="gw-a-agent")
    gateway.connect(bridged.estate_port)
    assert gateway.subscribe(f"{base}/gw/gw-a/confirm").value == 1
    # Stays on the estate: control's heartbeat and setpoints. "No matching subscribers" (0x10) says the bridge
    # does not even subscribe to them here. Then the gateway's traffic, which goes out.
    assert control.publish(f"{base}/control/heartbeat", tag).value == NO_SUBSCRIBERS
    assert control.publish(f"{base}/gw/gw-a/setpoint/meter", tag).value == NO_SUBSCRIBERS
    assert gateway.publish(f"{base}/gw/gw-a/state", tag).value == 0
    assert gateway.publish(f"{base}/gw/gw-a/meas/meter", tag).value == 0
    at_core.expect(f"{base}/gw/gw-a/meas/meter", tag)
    assert f"{base}/gw/gw-a/state" in at_core.received()
    assert f"{base}/control/heartbeat" not in at_core.received()
    assert f"{base}/gw/gw-a/setpoint/meter" not in at_core.received()
    # From the core only the confirmation comes in; a measurement published there stays there.
    assert at_core.publish(f"{base}/gw/gw-a/meas/other", b"from the core").value == 0
    assert at_core.publish(f"{base}/gw/gw-a/confirm", tag).value == 0
    gateway.expect(f"{base}/gw/gw-a/confirm", tag)
    control.serve()
    assert b"from the core" not in control.received().get(f"{base}/gw/gw-a/meas/other", [])
    for client in (at_core, control, gateway):
        client.close()


@pytest.mark.live
def test_the_bridge_account_on_the_core_is_held_to_its_estate(bridged: Bridged) -> None:
    name = "ehub-bridge-estate-x"
    impostor = bridged.client(bridged.core, name, client_id="someone-else")
    assert impostor.connect(bridged.core_port).value != 0  # bound to its client id
    bridge = bridged.client(bridged.core, name, client_id=name)
    assert bridge.connect(bridged.core_port).value == 0
    x, a = f"{ROOT}/estate-x", f"{ROOT}/{ESTATE}"
    # Allowed: accepted, with no one subscribed here (0x10).
    assert bridge.publish(f"{x}/gw/g1/meas/meter", b"1").value == NO_SUBSCRIBERS
    assert bridge.publish(f"{x}/deadletter/ingest", b"1").value == NO_SUBSCRIBERS
    for topic in (
        f"{a}/gw/g1/meas/meter",
        f"{ROOT}/core/gw/g1/meas/meter",
        f"{x}/gw/g1/setpoint/meter",
        f"{x}/gw/g1/confirm",
        f"{x}/control/heartbeat",
    ):
        assert bridge.publish(topic, b"1").value == NOT_AUTHORIZED, topic
    assert bridge.subscribe(f"{x}/gw/+/confirm").value == 1
    for topic_filter in (f"{x}/gw/+/meas/+", f"{a}/gw/+/confirm", f"$share/ingest/{x}/gw/+/confirm", "#"):
        assert bridge.subscribe(topic_filter).value == NOT_AUTHORIZED, topic_filter
    bridge.close()


@pytest.mark.live
def test_an_ingest_group_on_a_bridged_estate_is_refused_so_each_measurement_is_taken_once(
    bridged: Bridged,
) -> None:
    """Shared groups are per broker: a group "ingest" here and the core's "ingest" would each take every
    measurement (once here, once through the bridge), store it twice and confirm it twice."""
    base = f"{ROOT}/{ESTATE}"
    group = f"$share/ingest/{base}/gw/+/meas/+"
    core_worker = bridged.client(bridged.core, "ehub-ingest")
    core_worker.connect(bridged.core_port)
    assert core_worker.subscribe(group).value == 1
    estate_worker = bridged.client(bridged.estate, "ehub-ingest")
    estate_worker.connect(bridged.estate_port)
    granted = estate_worker.subscribe(group).value
    gateway = bridged.client(bridged.estate, "gw-b", client_id="gw-b-agent")
    gateway.connect(bridged.estate_port)
    payloads = [uuid.uuid4().hex.encode() for _ in range(5)]
    assert [
        rc.value for rc in gateway.publish_many([(f"{base}/gw/gw-b/meas/meter", p) for p in payloads])
    ] == [0] * 5
    topic = f"{base}/gw/gw-b/meas/meter"
    core_worker.wait_until(lambda: len(core_worker.received().get(topic, [])) >= 5, "5 at the core")
    if granted < NOT_AUTHORIZED:  # unguarded: the estate's group takes every one as well
        estate_worker.wait_until(lambda: len(estate_worker.received().get(topic, [])) >= 5, "5 at the estate")
    taken = core_worker.received().get(topic, []) + estate_worker.received().get(topic, [])
    assert sorted(taken) == sorted(payloads), f"taken {len(taken)} times for 5 (estate SUBACK {granted})"
    assert granted == NOT_AUTHORIZED
    for client in (core_worker, estate_worker, gateway):
        client.close()


@pytest.mark.live
def test_the_estate_keeps_the_bridges_queue_across_its_own_restart_while_the_core_is_away(
    tmp_path: Path,
) -> None:
    """``cleansession false`` with ``local_cleansession false``: Mosquitto 2.0.11 queues for the away core and
    saves that queue (with ``cleansession true`` it did not: eclipse/mosquitto#2604, fixed in 2.0.15)."""
    core_settings, estate_settings = (
        _service(tmp_path / "core", "core", tls=False),
        _service(tmp_path / "a", ESTATE, tls=False),
    )
    core, estate, credentials = _core_and_estate_at(core_settings, estate_settings)
    estate.set_bridge(
        BridgeSettings(core_host=HOST, core_port=core_settings.mqtt_port, credentials_file=credentials)
    )
    # An ordinary subscription in a persistent session: Mosquitto 2.0 saves those (not shared ones: persist_write.c
    # saves only ordinary subscriptions, which is why the ingest subscribes again at every connect), so what the
    # bridge forwards when it is back waits for the worker, whichever of the two reconnects first.
    topic_filter = f"{ROOT}/{ESTATE}/gw/+/meas/+"
    log = tmp_path / "core" / "log" / "mosquitto.log"
    with Supervisor() as supervisor:
        core_broker = start_broker(supervisor, core_settings)
        estate_broker = start_broker(supervisor, estate_settings)
        wait_for(
            lambda: "u'ehub-bridge-estate-a'" in log.read_text(errors="replace"), timeout_s=15, what="bridge"
        )
        worker = bridged_client(core, "ehub-ingest", "ehub-ingest-w1")
        worker.connect(core_settings.mqtt_port, clean_start=False, session_expiry_s=600)
        assert worker.subscribe(topic_filter).value == 1
        worker.close()
        core_broker.stop()  # the core is away (SIGTERM: it saves the worker's session)
        gateway = bridged_client(estate, "gw-a", "gw-a-agent")
        gateway.connect(estate_settings.mqtt_port)
        payloads = [f"queued {n}".encode() for n in range(50)]
        codes = gateway.publish_many([(f"{ROOT}/{ESTATE}/gw/gw-a/meas/meter", p) for p in payloads])
        assert all(code.value == 0 for code in codes)  # the bridge's queue is a subscriber
        gateway.close()
        estate_broker.stop()  # SIGTERM: it saves its database, the bridge's queue with it
        estate_broker.start()
        estate_broker.wait_ready()
        core_broker.start()
        core_broker.wait_ready()
        worker = bridged_client(core, "ehub-ingest", "ehub-ingest-w1")
        worker.connect(core_settings.mqtt_port, clean_start=False, session_expiry_s=600)
        topic = f"{ROOT}/{ESTATE}/gw/gw-a/meas/meter"
        worker.wait_until(
            lambda: len(worker.received().get(topic, [])) >= len(payloads), "the queue", timeout_s=20
        )
        assert sorted(worker.received()[topic]) == sorted(payloads)
        worker.close()


def bridged_client(accounts: BrokerAccounts, username: str, client_id: str) -> Client:
    return Client(username=username, password=accounts.credentials(username).password, client_id=client_id)


@pytest.mark.live
def test_a_bridge_added_to_a_running_core_works_at_once(bridged: Bridged) -> None:
    credentials = bridged.core.add_bridge("estate-y")
    assert bridged.core.reload_broker()
    bridge = bridged_client(bridged.core, credentials.username, credentials.username)
    assert bridge.connect(bridged.core_port).value == 0
    worker = bridged_client(bridged.core, "ehub-ingest", "ehub-ingest-y")
    worker.connect(bridged.core_port)
    assert worker.subscribe(f"$share/ingest/{ROOT}/estate-y/gw/+/meas/+").value == 1  # the ingest's role grew
    assert bridge.publish(f"{ROOT}/estate-y/gw/g1/meas/meter", b"y").value == 0
    worker.expect(f"{ROOT}/estate-y/gw/g1/meas/meter", b"y")
    for client in (bridge, worker):
        client.close()
