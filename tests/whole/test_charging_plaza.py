"""The charging plaza over OCPP, end to end: simulated OCPP charge points (a 2.0.1 DC truck charger, a 1.6J AC car
charger) connect to the plaza gateway's agent, a real process; a real broker; control in this process.

Checked from outside the code under test: the profiles the charger itself holds, the power its meter values show
on the broker, the hub's flow as the plaza's grid meter gives it, the charger's own fall back to its failsafe, and
every meter value's timestamp across a dropped connection."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from energyhub.cli.services import free_port
from energyhub.control.online import ControlSettings, OnlineController
from energyhub.domain.bookings import Booking, BookingStore
from energyhub.domain.community import load_community
from energyhub.edge.charger_passwords import add_charger
from energyhub.edge.gateway_config import gateway_config
from energyhub.simulators.devices import MeterDevice
from energyhub.simulators.modbus_server import GatewayServer
from energyhub.simulators.ocpp_station import ChargePointSim, ConnectorSpec
from energyhub.simulators.sdm630 import MeterState
from energyhub.wire.messages import Measurement, decode
from energyhub.wire.roles import CHARGER_W_PER_A
from energyhub.wire.topics import Topics
from tests.communities import ean
from tests.mqtt_helpers import link_as

REPO = Path(__file__).resolve().parents[2]
HUB_IMPORT_KW = 150.0
BASE_LOAD_KW = 20.0
HEARTBEAT_TIMEOUT_S = 3.0
TTL_S = 6.0
PASSWORD = "plaza-test-password-0123"


def community(site: str, gateway: str, meter_port: int, ocpp_port: int) -> dict:
    return {
        "version": 1,
        "community": {"id": site, "name": "Plaza over OCPP", "timezone": "Europe/Amsterdam"},
        "hub": {"id": "hub", "capacity_kva": 1000, "limits": {"import_kw": HUB_IMPORT_KW, "export_kw": 0}},
        "loops": [
            {
                "id": "loop-1",
                "connections": [
                    {
                        "id": "c-plaza",
                        "ean": ean(777),
                        "company": "Charging plaza",
                        "capacity_kva": 630,
                        "limits": {"import_kw": 400, "export_kw": 0},
                        "annual_use_kwh": 500_000,
                        "gateways": [{"id": gateway, "ocpp": {"host": "127.0.0.1", "port": ocpp_port}}],
                        "devices": [
                            {
                                "id": "meter",
                                "role": "meter",
                                "profile": "eastron_sdm630",
                                "modbus": {"host": "127.0.0.1", "port": meter_port, "unit_id": 1},
                            },
                            {
                                "id": "truck-1",
                                "role": "ev",
                                "profile": "ocpp",
                                "power_kw": 350,
                                "vehicle": "truck",
                                "ocpp": {"charge_point_id": "PLAZA-DC-1", "version": "2.0.1"},
                            },
                            {
                                "id": "car-1",
                                "role": "ev",
                                "profile": "ocpp",
                                "power_kw": 22,
                                "vehicle": "car",
                                "ocpp": {"charge_point_id": "PLAZA-AC-1", "version": "1.6"},
                            },
                        ],
                    }
                ],
            }
        ],
    }


class Watch:
    """Each device's measurements as a subscriber on the broker receives them, once per sequence number."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[int, Measurement]] = {}

    async def run(self, services, topics: Topics) -> None:
        link = await link_as(services, "ehub-ingest", client_id="plaza-watch")
        try:
            await link.subscribe([(topics.all_measurements(), 1)])
            while True:
                message = await link.next_message()
                info = topics.parse(message.topic)
                m = decode(Measurement, message.payload)
                self.seen.setdefault(info.device or "", {})[m.seq] = m
        finally:
            link.abort()

    def of(self, device: str) -> list[Measurement]:
        return sorted(self.seen.get(device, {}).values(), key=lambda m: m.ts)

    def latest(self, device: str) -> Measurement | None:
        found = self.of(device)
        return found[-1] if found else None


async def until(condition, timeout_s: float, what: str, explain=lambda: "") -> float:
    """Wait for ``condition``; the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}\n{explain()}")
        await asyncio.sleep(0.05)  # poll interval of a condition wait
    return time.monotonic() - started


def control_profile(sim: ChargePointSim) -> list:
    return [p for p in sim.profiles if p.stack_level == 1]


@pytest.mark.timeout(240)
async def test_control_steers_the_plaza_over_ocpp_and_the_charger_falls_back_by_itself(
    services, unique_id, gateway, tmp_path
):
    s = services.settings
    topics = Topics(site=s.site)
    meter = MeterDevice(unit_id=1, state=MeterState(power_w=BASE_LOAD_KW * 1000))
    meter_server = GatewayServer(host="127.0.0.1", port=free_port(), devices=[meter])
    ocpp_port = free_port()
    doc = community(s.site, gateway, meter_server.port, ocpp_port)
    path = tmp_path / "community.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    credentials = services.accounts.credentials_path(gateway)
    config = gateway_config(
        load_community(path),
        gateway,
        mqtt_host="127.0.0.1",
        mqtt_port=s.mqtt_port,
        credentials_file=credentials,
        buffer_path=tmp_path / "buffer.db",
        ocpp_security_profile=1,  # loopback only; TLS is tested in tests/edge/test_ocpp_server.py
    )
    config |= {"heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S, "interval_s": 0.5, "timeout_s": 0.2}
    chargers_file = Path(config["ocpp"]["credentials_file"])
    chargers_file.parent.mkdir(parents=True, exist_ok=True)
    for station in ("PLAZA-DC-1", "PLAZA-AC-1"):
        add_charger(chargers_file, station, PASSWORD)
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    assert config["ocpp"]["port"] == ocpp_port
    truck_device = next(d for d in config["devices"] if d["id"] == "truck-1")
    assert truck_device["setpoint_bounds"]["max_current_a"][1] == pytest.approx(
        350_000 / CHARGER_W_PER_A, abs=0.1
    )

    url = f"ws://127.0.0.1:{ocpp_port}"
    truck = ChargePointSim(
        "PLAZA-DC-1",
        url,
        version="2.0.1",
        connectors=[ConnectorSpec(connector_id=1, kind="dc", max_power_w=350_000)],
        password=PASSWORD,
        meter_interval_s=0.25,
    )
    car = ChargePointSim(
        "PLAZA-AC-1",
        url,
        version="1.6",
        connectors=[ConnectorSpec(connector_id=1, kind="ac", max_power_w=22_000)],
        password=PASSWORD,
        meter_interval_s=0.25,
    )
    stop_sims, stop_control = asyncio.Event(), asyncio.Event()
    watch = Watch()
    log = (tmp_path / "edge.log").open("w")
    agent = subprocess.Popen(
        [sys.executable, "-m", "energyhub", "edge", "--config", str(tmp_path / "gateway.yaml")],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def logs() -> str:
        log.flush()
        return (tmp_path / "edge.log").read_text()[-4000:]

    async def physics() -> None:
        # The plaza's grid meter sees the base load and what the two chargers draw.
        while True:
            meter.state.power_w = BASE_LOAD_KW * 1000 + truck.power_w(1) + car.power_w(1)
            await asyncio.sleep(0.1)

    tasks: list[asyncio.Task] = []
    control = None
    try:
        await meter_server.start()
        tasks += [
            asyncio.create_task(truck.run(stop_sims)),
            asyncio.create_task(car.run(stop_sims)),
            asyncio.create_task(physics()),
            asyncio.create_task(watch.run(services, topics)),
        ]
        await until(
            lambda: truck.connected.is_set() and car.connected.is_set(), 30, "both stations booted", logs
        )
        # Without control yet: both at their level-0 failsafe profile, 6 A.
        failsafe_w = 6.0 * CHARGER_W_PER_A
        await until(lambda: abs(truck.limit_w(1) - failsafe_w) < 50, 10, "the truck's failsafe profile", logs)

        departure = time.time() + 2 * 3600
        truck.plug_in(1, energy_wanted_wh=250_000, departure_ts=departure)
        # The car's 1.6 charger says nothing of its session: its driver booked it through the API instead.
        car_leaves = datetime.fromtimestamp(time.time() + 3600, UTC).replace(microsecond=0)
        BookingStore(tmp_path / "bookings").save(
            "c-plaza", "car-1", Booking(energy_kwh=30, departure=car_leaves)
        )
        car.plug_in(1, energy_wanted_wh=45_000, departure_ts=car_leaves.timestamp() + 600)
        control = OnlineController(
            ControlSettings(
                community=path,
                site=s.site,
                cycle_s=0.5,
                setpoint_ttl_s=TTL_S,
                bookings_dir=tmp_path / "bookings",
                mqtt_port=s.mqtt_port,
                mqtt_credentials_file=services.accounts.credentials_path("ehub-control"),
                influx_url=s.influx_url,
                influx_db=s.influx_db,
            )
        )
        tasks.append(asyncio.create_task(control.run(stop_control)))

        # Control's limit reaches the charger as a charging profile: level 1, with an end.
        await until(lambda: bool(control_profile(truck)), 40, "control's profile at the truck charger", logs)
        assert all(p.valid_to is not None for p in control_profile(truck))
        # The hub may import 150 kW, the base load takes 20: the truck gets what is left (less the margin).
        await until(
            lambda: 60_000 < truck.limit_w(1) < (HUB_IMPORT_KW - BASE_LOAD_KW) * 1000 + 1_000,
            30,
            "a limit that keeps the hub's 150 kW",
            lambda: f"limit {truck.limit_w(1)}\n{logs()}",
        )

        def following() -> bool:
            m = watch.latest("truck-1")
            return (
                m is not None
                and m.values.get("power_w") is not None
                and abs(m.values["power_w"] - truck.limit_w(1)) < 0.05 * truck.limit_w(1)
            )

        await until(following, 20, "the truck's measured power following its limit", logs)
        # The session's energy and departure reach control, from the ISO 15118 charging needs.
        snap_of = lambda: control.last_snapshot  # noqa: E731
        index = control.control.charger_index["c-plaza/truck-1"]

        def needs_known() -> bool:
            snap = snap_of()
            return (
                snap is not None
                and snap.charger_wanted_kwh is not None
                and snap.charger_departure_ts is not None
                and snap.charger_departure_ts[index] == pytest.approx(departure, abs=1.0)
            )

        await until(needs_known, 20, "the truck's energy and departure in control's snapshot", logs)
        snap = snap_of()
        assert snap is not None
        assert snap.charger_wanted_kwh is not None
        assert 0 < snap.charger_wanted_kwh[index] <= 250.0
        # The car's booking: its energy less what it took since it was seen plugged in, its departure.
        car_index = control.control.charger_index["c-plaza/car-1"]

        def booked() -> bool:
            snap = snap_of()
            return (
                snap is not None
                and snap.charger_departure_ts is not None
                and snap.charger_departure_ts[car_index] == car_leaves.timestamp()
            )

        await until(booked, 20, "the car's booking in control's snapshot", logs)
        snap = snap_of()
        assert snap is not None
        assert snap.charger_wanted_kwh is not None
        assert 25.0 < snap.charger_wanted_kwh[car_index] <= 30.0

        # The hub's flow as its grid meter says: within the limit once control has taken in the car that came
        # (its load estimate is smoothed over seconds, so a vehicle plugging in is a transient of a few seconds).
        within: list[float] = []

        def settled() -> bool:
            # Within the limit for the last two seconds (conditions are polled every 50 ms).
            within.append(meter.state.power_w)
            del within[:-40]
            return len(within) == 40 and max(within) <= HUB_IMPORT_KW * 1000

        await until(
            settled,
            60,
            "the hub back within its limit",
            lambda: f"hub {meter.state.power_w} truck {truck.power_w(1)} car {car.power_w(1)}",
        )
        samples = []
        for _ in range(20):
            samples.append(meter.state.power_w / 1000)

            await asyncio.sleep(0.25)  # samples over five seconds, not a synchronisation
        assert max(samples) <= HUB_IMPORT_KW * 1.02, samples
        assert truck.power_w(1) > 60_000  # and not by starving the truck: it takes what is left

        # A dropped connection loses no meter value: the charger queues them and the gateway stores each.
        before = len(watch.of("truck-1"))
        truck.drop_connection(3.0)
        await until(lambda: not truck.connected.is_set(), 5, "the truck offline")
        dropped_at = time.time()
        await until(lambda: truck.connected.is_set(), 30, "the truck back", logs)
        back_at = time.time()
        await until(lambda: len(watch.of("truck-1")) > before + 16, 20, "meter values after the drop", logs)
        values = [m for m in watch.of("truck-1") if dropped_at - 2 < m.ts.timestamp() < back_at + 1]
        gaps = [b.ts.timestamp() - a.ts.timestamp() for a, b in itertools.pairwise(values)]
        assert gaps, "no meter values around the drop"
        assert max(gaps) < 0.25 * 3, (gaps, logs())  # one every 0.25 s, also while it was away
        energy = [m.values["energy_delivered_wh"] for m in values if m.values.get("energy_delivered_wh")]
        assert energy == sorted(energy)

        # Control stops (its goodbye): the gateway clears control's profile, the charger is at its failsafe.
        stop_control.set()
        took = await until(
            lambda: abs(truck.limit_w(1) - failsafe_w) < 50,
            HEARTBEAT_TIMEOUT_S + 3,
            "the truck back at its failsafe after control stopped",
            logs,
        )
        assert took <= HEARTBEAT_TIMEOUT_S + 3

        # Control again, then the gateway itself killed: the charger's own clock ends control's profile.
        stop_control = asyncio.Event()
        control = OnlineController(control.settings)
        tasks.append(asyncio.create_task(control.run(stop_control)))
        await until(lambda: truck.limit_w(1) > 2 * failsafe_w, 40, "control's limit at the truck again", logs)
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        killed_at = time.monotonic()
        took = await until(
            lambda: abs(truck.limit_w(1) - failsafe_w) < 50, TTL_S + 3, "the truck's profile expiring", logs
        )
        assert time.monotonic() - killed_at <= TTL_S + 3
        await until(lambda: truck.power_w(1) <= failsafe_w + 1, 2, "the truck's power at its failsafe")
    finally:
        stop_control.set()
        stop_sims.set()
        if agent.poll() is None:
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await meter_server.stop()
        log.close()
