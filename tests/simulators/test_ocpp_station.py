"""The simulated OCPP charge point against a minimal central system built IN the test on the same ``ocpp`` library
and ``websockets.serve`` on 127.0.0.1 (a test double for the CSMS, not a mock of the charger); and the composite
limit computation table-driven."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import ssl
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from ocpp.exceptions import InternalError
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.server import Request, Response, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from energyhub.broker.certs import ensure_certificates
from energyhub.simulators.ocpp_schedule import (
    Profile,
    ProfileError,
    Purpose,
    clear_profiles,
    composite_limit_w,
    composite_schedule,
    install_profile,
    parse_profile,
)
from energyhub.simulators.ocpp_station import ChargePointSim, ConnectorSpec, PlazaCharger, plaza_step
from energyhub.synthetic.sessions import plan_sessions

PASSWORD = "s3cret-charger"
INTERVAL = 0.05


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- the central system (test double) -------------------------------------------------------------------------
class Central:
    def __init__(self) -> None:
        self.messages: list[tuple[str, str, dict[str, Any]]] = []  # (charge point, action, payload)
        self.cps: dict[str, Any] = {}
        self.auth_failures = 0
        self.fail: dict[str, int] = {}  # action -> how many more to answer with a CallError
        self.late: dict[str, int] = {}  # action -> how many more to answer only after `late_s`
        self.late_s = 0.0
        self.heartbeat_s = 300
        self.url = ""
        self._tx_ids = itertools.count(100)

    def record(self, cp_id: str, action: str, payload: dict[str, Any]) -> None:
        self.messages.append((cp_id, action, payload))
        if self.fail.get(action, 0) > 0:
            self.fail[action] -= 1
            raise InternalError(description=f"test double refuses this {action}")

    def of(self, action: str, cp_id: str | None = None) -> list[dict[str, Any]]:
        return [p for c, a, p in self.messages if a == action and (cp_id is None or c == cp_id)]

    def next_tx(self) -> int:
        return next(self._tx_ids)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        cp_id = request.path.strip("/")
        token = base64.b64encode(f"{cp_id}:{PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {token}":
            self.auth_failures += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, "bad credentials\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        cp_id = ws.request.path.strip("/") if ws.request else "?"
        cp = (Csms16 if ws.subprotocol == "ocpp1.6" else Csms201)(cp_id, ws)
        cp.central = self
        self.cps[cp_id] = cp
        with contextlib.suppress(ConnectionClosed):
            await cp.start()


class Csms16(ChargePoint16):
    central: Central

    @on("BootNotification")
    def boot(self, **kw: Any) -> Any:
        self.central.record(self.id, "BootNotification", kw)
        return result16.BootNotification(
            current_time=iso(time.time()), interval=self.central.heartbeat_s, status="Accepted"
        )

    @on("StatusNotification")
    def status(self, **kw: Any) -> Any:
        self.central.record(self.id, "StatusNotification", kw)
        return result16.StatusNotification()

    @on("Heartbeat")
    def heartbeat(self, **kw: Any) -> Any:
        self.central.record(self.id, "Heartbeat", kw)
        return result16.Heartbeat(current_time=iso(time.time()))

    @on("StartTransaction")
    async def start_tx(self, **kw: Any) -> Any:
        self.central.record(self.id, "StartTransaction", kw)
        if self.central.late.get("StartTransaction", 0) > 0:
            self.central.late["StartTransaction"] -= 1
            await asyncio.sleep(self.central.late_s)  # a slow central system, past the charger's timeout
        return result16.StartTransaction(
            transaction_id=self.central.next_tx(), id_tag_info={"status": "Accepted"}
        )

    @on("StopTransaction")
    def stop_tx(self, **kw: Any) -> Any:
        self.central.record(self.id, "StopTransaction", kw)
        return result16.StopTransaction()

    @on("MeterValues")
    def meter(self, **kw: Any) -> Any:
        self.central.record(self.id, "MeterValues", kw)
        return result16.MeterValues()


class Csms201(ChargePoint201):
    central: Central

    @on("BootNotification")
    def boot(self, **kw: Any) -> Any:
        self.central.record(self.id, "BootNotification", kw)
        return result201.BootNotification(
            current_time=iso(time.time()), interval=self.central.heartbeat_s, status="Accepted"
        )

    @on("StatusNotification")
    def status(self, **kw: Any) -> Any:
        self.central.record(self.id, "StatusNotification", kw)
        return result201.StatusNotification()

    @on("Heartbeat")
    def heartbeat(self, **kw: Any) -> Any:
        self.central.record(self.id, "Heartbeat", kw)
        return result201.Heartbeat(current_time=iso(time.time()))

    @on("TransactionEvent")
    def transaction_event(self, **kw: Any) -> Any:
        self.central.record(self.id, "TransactionEvent", kw)
        return result201.TransactionEvent()

    @on("NotifyEVChargingNeeds")
    def needs(self, **kw: Any) -> Any:
        self.central.record(self.id, "NotifyEVChargingNeeds", kw)
        return result201.NotifyEVChargingNeeds(status="Accepted")

    @on("MeterValues")
    def meter(self, **kw: Any) -> Any:
        self.central.record(self.id, "MeterValues", kw)
        return result201.MeterValues()


@pytest.fixture
async def central() -> AsyncIterator[Central]:
    c = Central()
    async with serve(
        c.handler,
        "127.0.0.1",
        0,
        subprotocols=[Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")],
        process_request=c.process_request,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        c.url = f"ws://127.0.0.1:{port}"
        yield c


@pytest.fixture
async def tls_central(tmp_path: Path) -> AsyncIterator[tuple[Central, ssl.SSLContext]]:
    """The central system over TLS (security profile 2), with the broker's certificate code; and the context a
    charger trusts it by."""
    paths = ensure_certificates(tmp_path / "certs", ["127.0.0.1"])
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(paths.server_cert, paths.server_key)
    c = Central()
    async with serve(
        c.handler,
        "127.0.0.1",
        0,
        subprotocols=[Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")],
        process_request=c.process_request,
        ssl=server_tls,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        c.url = f"wss://127.0.0.1:{port}"
        yield c, ssl.create_default_context(cafile=paths.ca_cert)


@contextlib.asynccontextmanager
async def running(sim: ChargePointSim) -> AsyncIterator[ChargePointSim]:
    stop = asyncio.Event()
    task = asyncio.create_task(sim.run(stop))
    try:
        yield sim
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def until(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def sample(meter_value: dict[str, Any], measurand: str) -> float:
    for s in meter_value["sampled_value"]:
        if s["measurand"] == measurand:
            return float(s["value"])
    raise KeyError(measurand)


def car_sim(central: Central, cp_id: str = "cp-car", **kw: Any) -> ChargePointSim:
    return ChargePointSim(
        cp_id,
        central.url,
        version="1.6",
        connectors=[ConnectorSpec(connector_id=1, kind="ac", max_power_w=22_080.0)],
        password=PASSWORD,
        meter_interval_s=INTERVAL,
        backoff_s=(0.02, 0.2),
        **kw,
    )


def tx_default(limit_a: float, *, level: int = 0, profile_id: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "charging_profile_id": profile_id,
        "stack_level": level,
        "charging_profile_purpose": "TxDefaultProfile",
        "charging_profile_kind": "Absolute",
        "charging_schedule": {
            "charging_rate_unit": "A",
            "charging_schedule_period": [{"start_period": 0, "limit": limit_a}],
        },
        **extra,
    }


def meter_16(central: Central, cp_id: str, *, in_tx: bool = True) -> list[dict[str, Any]]:
    out = [p for p in central.of("MeterValues", cp_id) if (p.get("transaction_id") is not None) == in_tx]
    return [p["meter_value"][0] for p in out]


# -- connecting -----------------------------------------------------------------------------------------------
@pytest.mark.live  # a WebSocket server of its own on TCP
async def test_boot_status_heartbeat_and_meter_without_a_session(central: Central) -> None:
    central.heartbeat_s = 1
    async with running(car_sim(central)) as sim:
        await until(lambda: central.of("Heartbeat", "cp-car"), "a heartbeat at the boot answer's interval", 3)
        boot = central.of("BootNotification", "cp-car")[0]
        assert (boot["charge_point_vendor"], boot["charge_point_model"]) == ("energyhub-sim", "AC-22")
        assert next((s["connector_id"], s["status"]) for s in central.of("StatusNotification", "cp-car")) == (
            1,
            "Available",
        )
        assert sim.heartbeat_interval_s == 1
        idle = meter_16(central, "cp-car", in_tx=False)
        assert idle
        assert sample(idle[-1], "Power.Active.Import") == 0.0


@pytest.mark.live  # a WebSocket server of its own on TCP
async def test_a_wrong_password_is_refused_and_the_charger_keeps_trying(central: Central) -> None:
    sim = ChargePointSim(
        "cp-bad",
        central.url,
        version="1.6",
        connectors=[ConnectorSpec(connector_id=1, kind="ac", max_power_w=22_080.0)],
        password="wrong",
        backoff_s=(0.02, 0.05),
    )
    async with running(sim):
        await until(lambda: central.auth_failures >= 3, "several refused attempts")
        assert not sim.connected.is_set()
        assert not central.of("BootNotification", "cp-bad")


@pytest.mark.live  # a WebSocket server of its own on TCP
async def test_security_profile_2_boots_over_tls_trusting_the_ca(
    tls_central: tuple[Central, ssl.SSLContext],
) -> None:
    central, trust = tls_central
    async with running(car_sim(central, ssl_context=trust)) as sim:
        await until(sim.connected.is_set, "the charger to boot over TLS")
        assert central.of("BootNotification", "cp-car")


# -- a 1.6 session --------------------------------------------------------------------------------------------
@pytest.mark.live  # a WebSocket server of its own on TCP
async def test_a_16_session_starts_meters_rising_energy_and_stops_when_full(central: Central) -> None:
    async with running(car_sim(central)) as sim:
        await until(sim.connected.is_set, "the charger to connect")
        sim.plug_in(1, energy_wanted_wh=4.0, departure_ts=time.time() + 3600)
        await until(lambda: central.of("StopTransaction"), "the car to be full and the transaction to stop")
        sim.unplug(1)
        await until(lambda: central.of("StatusNotification")[-1]["status"] == "Available", "Available again")

    start = central.of("StartTransaction")[0]
    assert start["connector_id"] == 1
    assert start["id_tag"] == "SIM"
    values = [p for p in central.of("MeterValues") if p.get("transaction_id") is not None]
    assert {p["transaction_id"] for p in values} == {100}  # the id the CSMS gave
    energy = [sample(p["meter_value"][0], "Energy.Active.Import.Register") for p in values]
    assert energy == sorted(energy)
    assert energy[-1] > energy[0]
    power = [sample(p["meter_value"][0], "Power.Active.Import") for p in values]
    assert max(power) == pytest.approx(22_080.0)
    current = [sample(p["meter_value"][0], "Current.Import") for p in values]
    assert max(current) == pytest.approx(32.0)  # 22 kW on three phases at 230 V
    stop = central.of("StopTransaction")[0]
    assert stop["transaction_id"] == 100
    assert stop["reason"] == "Local"
    assert stop["meter_stop"] - start["meter_start"] == pytest.approx(4.0, abs=1.0)
    statuses = [s["status"] for s in central.of("StatusNotification")]
    assert statuses[1:] == ["Preparing", "Charging", "Finishing", "Available"]


async def _charging(central: Central, sim: ChargePointSim) -> None:
    await until(sim.connected.is_set, "the charger to connect")
    sim.plug_in(1, energy_wanted_wh=1e6, departure_ts=time.time() + 3600)
    await until(lambda: sim.power_w(1) > 20_000, "the car to charge at full power")


async def _power_after(central: Central, cp_id: str, t: float, watts: float, what: str) -> None:
    def seen() -> bool:
        return any(
            parse_iso(v["timestamp"]) > t and sample(v, "Power.Active.Import") == pytest.approx(watts)
            for v in meter_16(central, cp_id)
        )

    await until(seen, what, 3)


@pytest.mark.live  # a WebSocket server of its own on TCP
async def test_a_profile_lowers_power_and_falls_back_to_the_level_0_default_when_it_expires(
    central: Central,
) -> None:
    async with running(car_sim(central)) as sim:
        await _charging(central, sim)
        cp = central.cps["cp-car"]
        answer = await cp.call(call16.SetChargingProfile(connector_id=0, cs_charging_profiles=tx_default(16)))
        assert answer.status == "Accepted"
        t = time.time()
        await _power_after(central, "cp-car", t, 16 * 690, "the level-0 default of 16 A")
        # Control's limit, valid for a short while: the charger's own clock ends it.
        valid_to = time.time() + 0.5
        limited = tx_default(6, level=1, profile_id=2, valid_to=iso(valid_to))
        answer = await cp.call(call16.SetChargingProfile(connector_id=1, cs_charging_profiles=limited))
        assert answer.status == "Accepted"
        t = time.time()
        await _power_after(central, "cp-car", t, 6 * 690, "control's 6 A within the next meter values")
        assert t + 3 * INTERVAL + 0.2 > min(
            parse_iso(v["timestamp"])
            for v in meter_16(central, "cp-car")
            if parse_iso(v["timestamp"]) > t and sample(v, "Power.Active.Import") == pytest.approx(6 * 690)
        )
        schedule = await cp.call(
            call16.GetCompositeSchedule(connector_id=1, duration=10, charging_rate_unit="A")
        )
        periods = schedule.charging_schedule["charging_schedule_period"]
        assert schedule.status == "Accepted"
        assert periods[0]["limit"] == pytest.approx(6.0)
        assert periods[-1]["limit"] == pytest.approx(16.0)  # the composite knows the expiry ahead
        await _power_after(central, "cp-car", valid_to, 16 * 690, "the fallback to 16 A after valid_to")
        # A limit already expired when it arrives changes nothing.
        stale = tx_default(6, level=2, profile_id=3, valid_to=iso(time.time() - 10))
        answer = await cp.call(call16.SetChargingProfile(connector_id=1, cs_charging_profiles=stale))
        assert answer.status == "Accepted"
        assert sim.limit_w(1) == pytest.approx(16 * 690)
        cleared = await cp.call(call16.ClearChargingProfile(id=1))
        assert cleared.status == "Accepted"
        assert sim.limit_w(1) == pytest.approx(22_080.0)


@pytest.mark.live  # a WebSocket server of its own on TCP
async def test_reject_mode_and_bad_profiles_are_answered_rejected(central: Central) -> None:
    async with running(car_sim(central)) as sim:
        await _charging(central, sim)
        cp = central.cps["cp-car"]
        sim.reject_profiles = True
        answer = await cp.call(call16.SetChargingProfile(connector_id=1, cs_charging_profiles=tx_default(6)))
        assert answer.status == "Rejected"
        assert sim.limit_w(1) == pytest.approx(22_080.0)
        sim.reject_profiles = False
        max_on_connector = {**tx_default(6), "charging_profile_purpose": "ChargePointMaxProfile"}
        answer = await cp.call(
            call16.SetChargingProfile(connector_id=1, cs_charging_profiles=max_on_connector)
        )
        assert answer.status == "Rejected"  # a station maximum belongs on connector 0
        answer = await cp.call(call16.SetChargingProfile(connector_id=7, cs_charging_profiles=tx_default(6)))
        assert answer.status == "Rejected"  # no such connector
        assert sim.limit_w(1) == pytest.approx(22_080.0)
        # A station maximum caps the default.
        cap = {**tx_default(10, profile_id=9), "charging_profile_purpose": "ChargePointMaxProfile"}
        answer = await cp.call(call16.SetChargingProfile(connector_id=0, cs_charging_profiles=cap))
        assert answer.status == "Accepted"
        assert sim.limit_w(1) == pytest.approx(10 * 690)


# -- offline ----------------------------------------------------------------------------------------------------
@pytest.mark.live  # a WebSocket server of its own on TCP
async def test_a_dropped_connection_queues_meter_values_and_delivers_all_in_order(central: Central) -> None:
    async with running(car_sim(central)) as sim:
        await _charging(central, sim)
        await until(lambda: len(meter_16(central, "cp-car")) >= 3, "meter values before the drop")
        sim.drop_connection(0.5)
        dropped_at = time.time()
        await until(lambda: sim.queued >= 5, "meter values queued while offline")
        await until(lambda: len(central.of("BootNotification")) == 2, "the reconnect")
        back_at = time.time()
        await until(lambda: sim.queued == 0, "the queue to drain")
        await until(
            lambda: parse_iso(meter_16(central, "cp-car")[-1]["timestamp"]) > back_at + 2 * INTERVAL,
            "meter values after the reconnect",
        )
    values = meter_16(central, "cp-car")
    stamps = [parse_iso(v["timestamp"]) for v in values]
    assert stamps == sorted(stamps)  # in order
    offline = [t for t in stamps if dropped_at + 0.1 < t < back_at - 0.1]
    assert len(offline) >= 4, "the meter values of the offline time arrived"
    # Continuity: each step of the register is the power drawn over the time between two samples; a lost meter
    # value would show as a step as large as two (0.3 Wh here; the printed register and ms timestamps round to
    # about 0.01 Wh).
    energy = [sample(v, "Energy.Active.Import.Register") for v in values]
    power = [sample(v, "Power.Active.Import") for v in values]
    for i in range(1, len(values)):
        expected = power[i - 1] * (stamps[i] - stamps[i - 1]) / 3600.0
        assert energy[i] - energy[i - 1] == pytest.approx(expected, abs=0.012), f"meter value {i}"
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) < 4 * INTERVAL, "no meter value missing"


@pytest.mark.live  # a WebSocket server of its own on TCP
async def test_a_queued_message_refused_with_a_call_error_is_not_resent(central: Central) -> None:
    async with running(car_sim(central)) as sim:
        await _charging(central, sim)
        central.fail["MeterValues"] = 3
        await until(lambda: sim.call_errors >= 3, "three refused meter values")
        await until(lambda: len(meter_16(central, "cp-car")) >= 10, "the charger to go on sending")
        assert sim.connected.is_set()
    stamps = [v["timestamp"] for v in meter_16(central, "cp-car")]
    assert len(stamps) == len(set(stamps)), "a refused meter value was sent again"


@pytest.mark.live  # a WebSocket server of its own on TCP
async def test_an_unanswered_start_is_tried_again_and_the_session_goes_on(central: Central) -> None:
    central.late, central.late_s = {"StartTransaction": 1}, 0.45
    async with running(car_sim(central, response_timeout_s=0.3)) as sim:
        await until(sim.connected.is_set, "the charger to connect")
        sim.plug_in(1, energy_wanted_wh=1e6, departure_ts=time.time() + 3600)
        await until(lambda: len(central.of("StartTransaction")) == 2, "StartTransaction sent again")
        await until(lambda: meter_16(central, "cp-car"), "meter values of the transaction")
        assert sim.connected.is_set()
    # The late answer (id 100) came after the charger gave up on it; the retry's answer (101) counts.
    assert {p["transaction_id"] for p in central.of("MeterValues") if p.get("transaction_id")} == {101}
    meter_start = [p["meter_start"] for p in central.of("StartTransaction")]
    assert meter_start[0] == meter_start[1]  # the same message, sent again


def unique_events(received: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events once each, as a CSMS keeps them: one in flight when the socket drops is sent again after the
    reconnect (at least once, as OCPP has it), and must then be the same event."""
    first: dict[int, dict[str, Any]] = {}
    for e in received:
        if e["seq_no"] in first:
            assert {**e, "offline": None} == {**first[e["seq_no"]], "offline": None}, "a resent event differs"
        first.setdefault(e["seq_no"], e)
    return list(first.values())


# -- a 2.0.1 truck ----------------------------------------------------------------------------------------------
@pytest.mark.live  # a WebSocket server of its own on TCP
async def test_a_201_truck_sends_contiguous_transaction_events_and_its_charging_needs(
    central: Central,
) -> None:
    sim = ChargePointSim(
        "cp-truck",
        central.url,
        version="2.0.1",
        connectors=[ConnectorSpec(connector_id=1, kind="dc", max_power_w=350_000.0)],
        password=PASSWORD,
        meter_interval_s=INTERVAL,
        backoff_s=(0.02, 0.2),
    )
    departure = time.time() + 3600
    async with running(sim):
        await until(sim.connected.is_set, "the truck charger to connect")
        boot = central.of("BootNotification")[0]
        assert boot["charging_station"] == {"model": "DC-350", "vendor_name": "energyhub-sim"}
        cap = {
            "id": 5,
            "stack_level": 0,
            "charging_profile_purpose": "ChargingStationMaxProfile",
            "charging_profile_kind": "Absolute",
            "charging_schedule": [
                {
                    "id": 1,
                    "charging_rate_unit": "W",
                    "charging_schedule_period": [{"start_period": 0, "limit": 100_000}],
                }
            ],
        }
        answer = await central.cps["cp-truck"].call(
            call201.SetChargingProfile(evse_id=0, charging_profile=cap)
        )
        assert answer.status == "Accepted"
        composite = await central.cps["cp-truck"].call(
            call201.GetCompositeSchedule(duration=60, evse_id=1, charging_rate_unit="W")
        )
        assert composite.status == "Accepted"
        assert composite.schedule["charging_schedule_period"][0]["limit"] == pytest.approx(100_000)
        sim.plug_in(1, energy_wanted_wh=25.0, departure_ts=departure, soc_pct=30.0)
        await until(lambda: len(central.of("TransactionEvent")) >= 4, "transaction events")
        sim.drop_connection(0.3)  # events while offline are queued, flagged offline, numbered on
        await until(
            lambda: any(e["event_type"] == "Ended" for e in central.of("TransactionEvent")), "the end", 6
        )
    events = unique_events(central.of("TransactionEvent"))
    assert [e["seq_no"] for e in events] == list(range(len(events)))
    assert events[0]["event_type"] == "Started"
    assert events[0]["trigger_reason"] == "CablePluggedIn"
    assert events[-1]["event_type"] == "Ended"
    assert events[-1]["trigger_reason"] == "EnergyLimitReached"
    assert {e["transaction_info"]["transaction_id"] for e in events} == {
        events[0]["transaction_info"]["transaction_id"]
    }
    assert any(e.get("offline") for e in events), "events sent after the reconnect are flagged offline"
    updated = [e for e in events if e["event_type"] == "Updated"]
    assert any(e["transaction_info"]["charging_state"] == "Charging" for e in updated)
    power = [sample(e["meter_value"][0], "Power.Active.Import") for e in updated]
    assert max(power) == pytest.approx(100_000.0)  # the station maximum in W caps the 350 kW charger
    soc = [sample(e["meter_value"][0], "SoC") for e in updated]
    assert soc == sorted(soc)
    assert soc[0] >= 30.0
    assert soc[-1] > soc[0]
    needs = central.of("NotifyEVChargingNeeds")[0]
    assert needs["evse_id"] == 1
    charging = needs["charging_needs"]
    assert charging["requested_energy_transfer"] == "DC"
    assert parse_iso(charging["departure_time"]) == pytest.approx(departure, abs=0.01)
    dc = charging["dc_charging_parameters"]
    assert dc["energy_amount"] == 25
    assert dc["ev_max_power"] == 350_000
    assert dc["state_of_charge"] == 30
    statuses = [s["connector_status"] for s in central.of("StatusNotification")]
    assert "Occupied" in statuses


# -- the composite limit, table-driven (pure) -------------------------------------------------------------------
NOW = 1_780_000_000.0


def prof(
    purpose: Purpose, limit: float, *, connector: int = 1, level: int = 0, unit: str = "A", **kw: Any
) -> Profile:
    from energyhub.simulators.ocpp_schedule import Period

    periods = kw.pop("periods", (Period(start_s=0, limit=limit),))
    return Profile(
        id=kw.pop("id", hash((purpose, limit, connector, level)) % 10_000),
        connector_id=connector,
        purpose=purpose,
        stack_level=level,
        kind=kw.pop("kind", "Absolute"),
        unit=unit,
        periods=periods,
        start_s=kw.pop("start_s", NOW - 100),
        **kw,
    )


TX, DEFAULT, MAX = Purpose.TX, Purpose.TX_DEFAULT, Purpose.STATION_MAX


@pytest.mark.parametrize(
    ("profiles", "expected_w"),
    [
        ([], 22_080.0),  # no profile: the hardware rating
        ([prof(DEFAULT, 16, connector=0)], 11_040.0),  # A at 230 V x 3 phases
        (
            [prof(DEFAULT, 16, connector=0), prof(DEFAULT, 6, connector=0, level=1)],
            4_140.0,
        ),  # highest level wins
        (
            [prof(DEFAULT, 6, connector=0, level=1), prof(DEFAULT, 16, connector=0)],
            4_140.0,
        ),  # order does not count
        (
            [prof(DEFAULT, 16, connector=0), prof(DEFAULT, 10, connector=1)],
            6_900.0,
        ),  # the connector's own wins a tie
        ([prof(DEFAULT, 6, connector=0), prof(TX, 20)], 13_800.0),  # a TxProfile replaces the default
        ([prof(TX, 20), prof(MAX, 10, connector=0)], 6_900.0),  # ... and the station max caps it
        ([prof(DEFAULT, 6, level=1, valid_to=NOW - 1), prof(DEFAULT, 16)], 11_040.0),  # expired: falls away
        ([prof(DEFAULT, 6, level=1, valid_from=NOW + 1), prof(DEFAULT, 16)], 11_040.0),  # not yet valid
        ([prof(DEFAULT, 6, level=1, valid_to=NOW + 1), prof(DEFAULT, 16)], 4_140.0),  # valid until valid_to
        ([prof(DEFAULT, 6, level=1, duration_s=50), prof(DEFAULT, 16)], 11_040.0),  # its schedule is over
        ([prof(DEFAULT, 5_000, unit="W")], 5_000.0),  # W as given
    ],
)
def test_composite_limit(profiles: list[Profile], expected_w: float) -> None:
    assert composite_limit_w(profiles, 1, NOW, max_power_w=22_080.0, phases=3) == pytest.approx(expected_w)


def test_periods_phases_and_relative_profiles() -> None:
    from energyhub.simulators.ocpp_schedule import Period

    stepped = prof(
        DEFAULT,
        0,
        periods=(Period(start_s=0, limit=16), Period(start_s=60, limit=8, phases=1)),
        start_s=NOW - 90,
    )
    assert composite_limit_w([stepped], 1, NOW, max_power_w=22_080.0) == pytest.approx(8 * 230)
    relative = prof(DEFAULT, 10, kind="Relative", duration_s=60, start_s=None)
    assert composite_limit_w([relative], 1, NOW, max_power_w=22_080.0, tx_start=NOW - 30) == pytest.approx(
        6_900
    )
    assert composite_limit_w([relative], 1, NOW, max_power_w=22_080.0, tx_start=NOW - 90) == pytest.approx(
        22_080
    )
    # Outside a transaction a TxProfile does not count.
    assert composite_limit_w([prof(TX, 6)], 1, NOW, max_power_w=22_080.0, in_transaction=False) == 22_080.0


def test_composite_schedule_lists_each_change() -> None:
    profiles = [prof(DEFAULT, 16, connector=0), prof(DEFAULT, 6, level=1, valid_to=NOW + 30)]
    assert composite_schedule(profiles, 1, NOW, 100, max_power_w=22_080.0) == [
        (0.0, 4_140.0),
        (30.0, 11_040.0),
    ]


def test_install_replaces_by_id_or_by_level_and_clear_matches_criteria() -> None:
    a, b = prof(DEFAULT, 16, id=1), prof(DEFAULT, 6, id=2)  # same connector, purpose and level
    assert install_profile([a], b) == [b]
    c = prof(MAX, 10, connector=0, id=3)
    kept, removed = clear_profiles([b, c], purpose="ChargePointMaxProfile")
    assert (kept, removed) == ([b], 1)
    assert clear_profiles([b, c], profile_id=99) == ([b, c], 0)


@pytest.mark.parametrize(
    ("connector", "raw", "message"),
    [
        (1, {**tx_default(6), "charging_profile_purpose": "Nope"}, "charging_profile_purpose"),
        (0, {**tx_default(6), "charging_profile_purpose": "TxProfile"}, "TxProfile needs a connector"),
        (1, tx_default(6, valid_to="tomorrow"), "charging_profile.valid_to"),
        (1, {**tx_default(6), "charging_schedule": {"charging_rate_unit": "kW"}}, "charging_rate_unit"),
        (
            1,
            {
                **tx_default(6),
                "charging_schedule": {
                    "charging_rate_unit": "A",
                    "charging_schedule_period": [{"start_period": 5, "limit": 6}],
                },
            },
            "must start at 0",
        ),
        (
            1,
            {
                **tx_default(6),
                "charging_schedule": {
                    "charging_rate_unit": "A",
                    "charging_schedule_period": [{"start_period": 0, "limit": -1}],
                },
            },
            "charging_schedule_period[0].limit",
        ),
    ],
)
def test_bad_profiles_name_the_field(connector: int, raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_profile(connector, raw)


# -- the plaza --------------------------------------------------------------------------------------------------
def test_the_plaza_plugs_in_the_planned_sessions() -> None:
    sim = ChargePointSim(
        "plaza-1",
        "ws://127.0.0.1:9",  # never run: no connection is made
        version="2.0.1",
        connectors=[ConnectorSpec(connector_id=1, kind="dc", max_power_w=350_000.0)],
    )
    day = datetime(2026, 6, 15, tzinfo=UTC)
    arrival, departure, wanted = plan_sessions(7, "truck-1", "truck", day)[0]
    chargers = [PlazaCharger(sim=sim, connector_id=1, vehicle="truck", key="truck-1")]
    plans = plaza_step(chargers, arrival - 1, seed=7)
    assert sim.session(1) is None
    plaza_step(chargers, arrival + 1, seed=7, plans=plans)
    session = sim.session(1)
    assert session is not None
    assert (session.energy_wanted_wh, session.departure_s) == (wanted, departure)
    assert sim.in_transaction(1)
    assert sim.queued == 1
